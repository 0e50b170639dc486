//! [`Ec2Client`]: the [`Ec2`] trait over HTTPS, the EC2 Query API signed with SigV4.

use std::time::{Duration, SystemTime};

use url::Url;

use crate::creds::{self, Credentials};
use crate::model::{Filter, Instance, IpPermission, SecurityGroup, Tag};
use crate::provider::Provider;
use crate::query::{self, Params};
use crate::retry::{self, Backoff};
use crate::xml::{self, Element};
use crate::{parse, sign, Ec2, Ec2Error};

/// The most pages one describe call follows.
const MAX_PAGES: usize = 1000;
/// The most items one describe call collects over its pages.
const MAX_ITEMS: usize = 100_000;
const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// How to reach EC2.
#[derive(Debug, Clone)]
pub struct Config {
    /// `us-east-1`, `eu-central-1` …: the endpoint's and the signature's region.
    pub region: String,
    /// Instead of `https://ec2.{region}.amazonaws.com/` (a VPC endpoint, a test server).
    pub endpoint_url: Option<Url>,
    /// The shared files' profile (else `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// These credentials instead of the chain.
    pub credentials: Option<Credentials>,
    /// Throttling and transient failures are retried on this schedule.
    pub retry: Backoff,
    /// One attempt's limit, answer included.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// `MaxResults` of describe calls (5 to 1000); `None` lets EC2 choose.
    pub page_size: Option<u32>,
}

impl Config {
    /// The defaults for `region`: the credential chain, 8 attempts, 30 s per attempt, pages of
    /// 1,000.
    pub fn new(region: impl Into<String>) -> Self {
        Config {
            region: region.into(),
            endpoint_url: None,
            profile: None,
            credentials: None,
            retry: Backoff::default(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            page_size: Some(1000),
        }
    }
}

/// A region name as AWS spells them (`us-east-1`, `us-gov-west-1`, `cn-north-1`).
fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

/// The EC2 client.
pub struct Ec2Client {
    http: reqwest::Client,
    endpoint: Url,
    region: String,
    credentials: Provider,
    retry: Backoff,
    page_size: Option<u32>,
}

impl std::fmt::Debug for Ec2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Client").field("endpoint", &self.endpoint.as_str()).field("region", &self.region).finish()
    }
}

impl Ec2Client {
    pub fn new(config: Config) -> Result<Self, Ec2Error> {
        Ec2Client::with_env(config, creds::process_env())
    }

    /// As [`Ec2Client::new`], reading the credential chain's variables from `env`.
    pub fn with_env(config: Config, env: creds::Env) -> Result<Self, Ec2Error> {
        if !valid_region(&config.region) {
            return Err(Ec2Error::Transport(format!(
                "{:?} is not an AWS region name (like us-east-1): give --region",
                config.region
            )));
        }
        let endpoint = match config.endpoint_url {
            Some(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
            Some(url) => {
                return Err(Ec2Error::Transport(format!("endpoint URL {url} is not an http(s) URL with a host")));
            }
            None => Url::parse(&format!("https://ec2.{}.amazonaws.com/", config.region))
                .map_err(|e| Ec2Error::Transport(format!("endpoint of region {}: {e}", config.region)))?,
        };
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Ec2Error::Transport(format!("building the HTTP client: {e}")))?;
        let credentials = match config.credentials {
            Some(c) => Provider::fixed(c)?,
            None => Provider::chain(config.profile, env)?,
        };
        Ok(Ec2Client {
            http,
            endpoint,
            region: config.region,
            credentials,
            retry: config.retry,
            page_size: config.page_size.map(|n| n.clamp(5, 1000)),
        })
    }

    /// The endpoint calls go to.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// One action, retried as [`Backoff`] says; the answer's root element.
    pub(crate) async fn call(&self, action: &str, params: &Params) -> Result<Element, Ec2Error> {
        let body = params.body(action);
        let mut attempt = 1;
        let mut renewed = false;
        loop {
            let err = match self.attempt(&body).await {
                Ok(root) => return answer_of(action, root),
                Err(e) => e,
            };
            // Temporary credentials that expired in EC2's eyes before ours: renew them once.
            if matches!(err.code(), Some("ExpiredToken" | "RequestExpired")) && !renewed {
                tracing::debug!(
                    action,
                    code = err.code().unwrap_or(""),
                    "EC2 refused the credentials as expired; renewing them"
                );
                self.credentials.forget().await;
                renewed = true;
                continue;
            }
            if !retry::retryable(&err) || !self.retry.another_after(attempt) {
                return Err(err);
            }
            let delay = self.retry.delay(attempt - 1, rand::random::<f64>());
            tracing::debug!(
                action,
                attempt,
                code = err.code().unwrap_or("transport"),
                error = %err,
                delay_ms = delay.as_millis() as u64,
                "EC2 call retried"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn attempt(&self, body: &str) -> Result<Element, Ec2Error> {
        let credentials = self.credentials.get().await?;
        let signed = sign::signature_headers(
            &credentials,
            &self.region,
            self.endpoint.as_str(),
            &[("content-type", CONTENT_TYPE)],
            body.as_bytes(),
            SystemTime::now(),
        )?;
        let mut request = self.http.post(self.endpoint.clone()).header("content-type", CONTENT_TYPE);
        for (name, value) in &signed {
            request = request.header(name, value);
        }
        let mut response = request
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| Ec2Error::Transport(format!("{}: {}", self.endpoint, error_chain(&e))))?;
        let status = response.status();
        let mut answer = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Ec2Error::Transport(format!("{}: reading the answer: {}", self.endpoint, error_chain(&e))))?
        {
            if answer.len() + chunk.len() > xml::MAX_ANSWER_BYTES {
                return Err(Ec2Error::Decode(format!("the answer is larger than {} bytes", xml::MAX_ANSWER_BYTES)));
            }
            answer.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(parse::error(status.as_u16(), &answer));
        }
        xml::parse(&answer).map_err(Ec2Error::Decode)
    }

    /// Every page of a describe call, each page's items taken by `items`.
    async fn pages<T>(
        &self,
        action: &str,
        params: impl Fn(Option<&str>) -> Params,
        items: impl Fn(&Element) -> Result<Vec<T>, Ec2Error>,
    ) -> Result<Vec<T>, Ec2Error> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let root = self.call(action, &params(token.as_deref())).await?;
            all.extend(items(&root)?);
            if all.len() > MAX_ITEMS {
                return Err(Ec2Error::Decode(format!(
                    "{action} answered more than {MAX_ITEMS} items; narrow the filters"
                )));
            }
            match parse::next_token(&root) {
                Some(next) if Some(&next) == token.as_ref() => {
                    return Err(Ec2Error::Decode(format!("{action} answered the same NextToken twice")));
                }
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
        Err(Ec2Error::Decode(format!("{action} did not end within {MAX_PAGES} pages")))
    }
}

/// `root` when it is the answer to `action` (`<{action}Response>`): anything else (a proxy's
/// page that happens to be XML) must not read as an empty list.
fn answer_of(action: &str, root: Element) -> Result<Element, Ec2Error> {
    let expected = format!("{action}Response");
    if root.name == expected {
        Ok(root)
    } else {
        Err(Ec2Error::Decode(format!("expected <{expected}>, the answer is <{}>", root.name)))
    }
}

/// An error with its sources (reqwest's own message omits the cause, e.g. "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An error whose code says the wanted state is there already.
fn already(result: Result<Element, Ec2Error>, code: &str) -> Result<(), Ec2Error> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(code) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Ec2 for Ec2Client {
    async fn describe_instances(&self, filters: &[Filter]) -> Result<Vec<Instance>, Ec2Error> {
        let size = self.page_size;
        self.pages("DescribeInstances", |t| query::describe_instances(filters, size, t), parse::instances).await
    }

    async fn describe_security_groups(&self, filters: &[Filter]) -> Result<Vec<SecurityGroup>, Ec2Error> {
        let size = self.page_size;
        self.pages(
            "DescribeSecurityGroups",
            |t| query::describe_security_groups(filters, size, t),
            parse::security_groups,
        )
        .await
    }

    async fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: &str,
        tags: &[Tag],
    ) -> Result<String, Ec2Error> {
        let root =
            self.call("CreateSecurityGroup", &query::create_security_group(name, description, vpc_id, tags)).await?;
        parse::created_group(&root)
    }

    async fn delete_security_group(&self, group_id: &str) -> Result<(), Ec2Error> {
        self.call("DeleteSecurityGroup", &query::delete_security_group(group_id)).await.map(drop)
    }

    async fn authorize_ingress(&self, group_id: &str, permissions: &[IpPermission]) -> Result<(), Ec2Error> {
        let result = self.call("AuthorizeSecurityGroupIngress", &query::ingress(group_id, permissions, true)).await;
        already(result, "InvalidPermission.Duplicate")
    }

    async fn revoke_ingress(&self, group_id: &str, permissions: &[IpPermission]) -> Result<(), Ec2Error> {
        let result = self.call("RevokeSecurityGroupIngress", &query::ingress(group_id, permissions, false)).await;
        already(result, "InvalidPermission.NotFound")
    }

    async fn set_instance_groups(&self, instance_id: &str, group_ids: &[String]) -> Result<(), Ec2Error> {
        self.call("ModifyInstanceAttribute", &query::set_instance_groups(instance_id, group_ids)).await.map(drop)
    }

    async fn create_tags(&self, resource_ids: &[String], tags: &[Tag]) -> Result<(), Ec2Error> {
        self.call("CreateTags", &query::create_tags(resource_ids, tags)).await.map(drop)
    }

    async fn delete_tags(&self, resource_ids: &[String], keys: &[String]) -> Result<(), Ec2Error> {
        self.call("DeleteTags", &query::delete_tags(resource_ids, keys)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_action_s_answer_is_taken() {
        let root = |xml: &str| crate::xml::parse(xml.as_bytes()).unwrap();
        assert!(answer_of("DescribeInstances", root("<DescribeInstancesResponse/>")).is_ok());
        let e = answer_of("DescribeInstances", root("<html><body/></html>")).unwrap_err();
        assert_eq!(e.to_string(), "unreadable EC2 answer: expected <DescribeInstancesResponse>, the answer is <html>");
        assert!(answer_of("DescribeInstances", root("<DescribeSecurityGroupsResponse/>")).is_err());
    }

    #[test]
    fn regions_and_endpoints() {
        for ok in ["us-east-1", "eu-central-1", "us-gov-west-1", "cn-north-1"] {
            assert!(valid_region(ok), "{ok}");
        }
        for bad in ["", "US-EAST-1", "us east", "x/../y", "-us", "us-", &"a".repeat(33)] {
            assert!(!valid_region(bad), "{bad}");
        }
        let c = Ec2Client::new(Config::new("eu-west-3")).unwrap();
        assert_eq!(c.endpoint().as_str(), "https://ec2.eu-west-3.amazonaws.com/");
        assert!(Ec2Client::new(Config::new("nope nope")).is_err());
        let mut custom = Config::new("us-east-1");
        custom.endpoint_url = Some(Url::parse("http://127.0.0.1:5000/").unwrap());
        assert_eq!(Ec2Client::new(custom).unwrap().endpoint().as_str(), "http://127.0.0.1:5000/");
        let mut bad = Config::new("us-east-1");
        bad.endpoint_url = Some(Url::parse("file:///etc/passwd").unwrap());
        assert!(Ec2Client::new(bad).is_err());
    }
}
