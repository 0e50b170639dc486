//! Throttling: a loopback proxy answers `RequestLimitExceeded` (503, EC2's XML) to the first N
//! requests and forwards the rest to moto. The client retries through it; with its attempts
//! spent the error is EC2's code. The same proxy plays EC2's internal errors, credentials it
//! calls expired and refusals that are final; loopback servers play answers that must not be
//! believed (a page repeating its NextToken, a page that is not EC2's).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use jitgate_aws::testing::Moto;
use jitgate_aws::{Backoff, Ec2, Ec2Client, Ec2Error, Filter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

/// EC2's error answer with `code`.
fn refusal(code: &str) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>refused by the test</Message></Error></Errors><RequestID>throttled-by-test</RequestID></Response>"
    )
    .into_bytes()
}

/// The proxy: its URL, and how many requests it refused.
struct Throttle {
    url: Url,
    refused: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
}

/// One request: its signature headers (`authorization`, `x-amz-*`) and its body (the head is
/// read up to its end, the body by `Content-Length`).
async fn read_request(conn: &mut TcpStream) -> Option<(Vec<(String, String)>, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize =
        headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    while data.len() < head_end + length {
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let signature = headers.into_iter().filter(|(k, _)| k == "authorization" || k.starts_with("x-amz-")).collect();
    Some((signature, data[head_end..head_end + length].to_vec()))
}

async fn throttle(upstream: Option<Url>, refuse_first: usize) -> Throttle {
    refuse(upstream, refuse_first, 503, "RequestLimitExceeded").await
}

/// A proxy that answers `status` with EC2's error `code` to the first `refuse_first` requests.
async fn refuse(upstream: Option<Url>, refuse_first: usize, status: u16, code: &'static str) -> Throttle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let forwarded = Arc::new(AtomicUsize::new(0));
    let (r, f) = (refused.clone(), forwarded.clone());
    let http = reqwest::Client::new();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let (r, f, http, upstream) = (r.clone(), f.clone(), http.clone(), upstream.clone());
            tokio::spawn(async move {
                let Some((signature, body)) = read_request(&mut conn).await else { return };
                let refuse =
                    r.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < refuse_first).then_some(n + 1)).is_ok();
                let (status, answer) = match (&upstream, refuse) {
                    (Some(up), false) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        let mut forward = http.post(up.clone());
                        for (k, v) in signature {
                            forward = forward.header(k, v);
                        }
                        let resp = forward
                            .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
                            .body(body)
                            .send()
                            .await
                            .unwrap();
                        (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
                    }
                    _ => (status, refusal(code)),
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Throttle { url, refused, forwarded }
}

fn client(endpoint: &Url, max_attempts: u32) -> Ec2Client {
    let mut config = Moto::config_for(endpoint.clone());
    config.retry = Backoff { max_attempts, ..config.retry };
    Ec2Client::new(config).unwrap()
}

#[tokio::test]
async fn throttled_calls_succeed_after_retries() {
    let Some(moto) = Moto::start("throttled_calls_succeed_after_retries") else { return };
    let vpc = moto.client().create_vpc("10.60.0.0/16").await.unwrap();
    let proxy = throttle(Some(moto.url()), 3).await;
    let ec2 = client(&proxy.url, 4);
    let groups = ec2.describe_security_groups(&[Filter::new("vpc-id", [vpc.as_str()])]).await.unwrap();
    assert_eq!(groups.len(), 1, "a new VPC has its default group: {groups:?}");
    assert_eq!(groups[0].group_name, "default");
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 3);
    assert_eq!(proxy.forwarded.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn spent_retries_answer_request_limit_exceeded() {
    let proxy = throttle(None, usize::MAX).await;
    let ec2 = client(&proxy.url, 3);
    let e = ec2.describe_instances(&[]).await.unwrap_err();
    match &e {
        Ec2Error::Api { status, code, request_id, .. } => {
            assert_eq!((*status, code.as_str()), (503, "RequestLimitExceeded"));
            assert_eq!(request_id.as_deref(), Some("throttled-by-test"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 3, "one request per attempt");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transport_error_after_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ec2 = client(&Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap(), 2);
    let e = ec2.delete_security_group("sg-1").await.unwrap_err();
    assert!(matches!(e, Ec2Error::Transport(_)), "{e:?}");
    assert!(e.to_string().contains(&port.to_string()), "{e}");
}

#[tokio::test]
async fn internal_errors_are_retried_and_expired_credentials_renewed_once() {
    let Some(moto) = Moto::start("internal_errors_are_retried_and_expired_credentials_renewed_once") else { return };
    let vpc = moto.client().create_vpc("10.70.0.0/16").await.unwrap();
    let by_vpc = [Filter::new("vpc-id", [vpc.as_str()])];
    let failing = refuse(Some(moto.url()), 2, 500, "InternalError").await;
    assert_eq!(client(&failing.url, 3).describe_security_groups(&by_vpc).await.unwrap().len(), 1);
    assert_eq!(failing.refused.load(Ordering::SeqCst), 2);
    // An expired token is renewed and the call made again at once, outside the attempts.
    let expired = refuse(Some(moto.url()), 1, 400, "ExpiredToken").await;
    assert_eq!(client(&expired.url, 1).describe_security_groups(&by_vpc).await.unwrap().len(), 1);
    assert_eq!(expired.refused.load(Ordering::SeqCst), 1);
    // Twice is final.
    let still = refuse(Some(moto.url()), 2, 400, "ExpiredToken").await;
    let e = client(&still.url, 3).describe_security_groups(&by_vpc).await.unwrap_err();
    assert_eq!(e.code(), Some("ExpiredToken"));
    // A refusal that is not transient is not retried.
    let denied = refuse(Some(moto.url()), 5, 403, "UnauthorizedOperation").await;
    let e = client(&denied.url, 4).describe_security_groups(&by_vpc).await.unwrap_err();
    assert_eq!(e.code(), Some("UnauthorizedOperation"));
    assert_eq!(denied.refused.load(Ordering::SeqCst), 1);
}

/// A server answering every request with `answer` (status 200).
async fn always(answer: &'static str) -> Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                if read_request(&mut conn).await.is_none() {
                    return;
                }
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", answer.len());
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test]
async fn a_page_repeating_its_token_or_another_answer_is_an_error_not_a_loop() {
    let looping =
        always("<DescribeInstancesResponse><reservationSet/><nextToken>again</nextToken></DescribeInstancesResponse>")
            .await;
    let e = client(&looping, 1).describe_instances(&[]).await.unwrap_err();
    assert!(matches!(&e, Ec2Error::Decode(m) if m.contains("same NextToken")), "{e:?}");
    let portal = always("<html><body>Sign in to the guest network</body></html>").await;
    let e = client(&portal, 1).describe_security_groups(&[]).await.unwrap_err();
    assert!(matches!(&e, Ec2Error::Decode(m) if m.contains("<html>")), "{e:?}");
}
