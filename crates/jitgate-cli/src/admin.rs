//! `jitgate login`, `vm …`, `token …`, `completions`, `man`.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Subcommand};
use serde_json::{json, Value};

use crate::output::{exit, fail, print, table, OutputFormat};
use crate::{call, ConnArgs};

#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  jitgate login --url https://jit.example.com:8443 --token jg_… --ca-cert cert.pem --subscription $SUB
  jitgate login --url https://jit.example.com:8443 --oidc      # sign in with the server's OIDC provider (device flow)
  jitgate login --url https://jit.example.com:8443 --oidc --browser   # … in a browser on this machine")]
pub struct LoginArgs {
    /// The server's URL.
    #[arg(long = "url", env = "JITGATE_URL")]
    pub url: String,
    /// An API token (or an ID token) to save.
    #[arg(long, env = "JITGATE_TOKEN", hide_env_values = true, required_unless_present = "oidc")]
    pub token: Option<String>,
    /// Sign in through the server's OIDC issuer with the device flow: open the link shown, enter the
    /// code, and the ID token is saved (sign in again when it expires). Issuers without a device
    /// endpoint get the browser flow.
    #[arg(long, conflicts_with = "token")]
    pub oidc: bool,
    /// With --oidc: sign in in a browser on this machine (authorization code with PKCE and a
    /// loopback redirect) instead of the device flow. `$BROWSER` (else xdg-open) opens the link.
    #[arg(long, requires = "oidc")]
    pub browser: bool,
    /// The CA (or self-signed) certificate of the server, PEM.
    #[arg(long = "ca-cert", env = "JITGATE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// The subscription commands use when given none.
    #[arg(long, env = "JITGATE_SUBSCRIPTION")]
    pub subscription: Option<String>,
}

/// The issuer and client the server names, and the issuer's discovery document.
struct Idp {
    client: reqwest::Client,
    client_id: String,
    discovery: Value,
}

async fn discover(client: &reqwest::Client, url: &str) -> anyhow::Result<Idp> {
    let cfg = call(client.get(format!("{url}/api/v1/auth/config"))).await?;
    let (Some(issuer), Some(client_id)) = (cfg["oidcIssuer"].as_str(), cfg["oidcClientId"].as_str()) else {
        return Err(fail(exit::USAGE, "this server has no OIDC sign-in configured; use --token"));
    };
    let idp = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
    let discovery: Value = idp
        .get(format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(Idp { client: idp, client_id: client_id.to_owned(), discovery })
}

impl Idp {
    fn endpoint(&self, key: &str) -> anyhow::Result<&str> {
        self.discovery[key].as_str().ok_or_else(|| {
            let issuer = self.discovery["issuer"].as_str().unwrap_or("the issuer");
            fail(exit::ERROR, format!("{issuer} names no {key}"))
        })
    }
}

/// The OAuth 2.0 device authorization grant (RFC 8628); returns the ID token.
async fn device_flow(idp: &Idp) -> anyhow::Result<String> {
    let (device_ep, token_ep) = (idp.endpoint("device_authorization_endpoint")?, idp.endpoint("token_endpoint")?);
    let client_id = idp.client_id.as_str();
    let start: Value = idp
        .client
        .post(device_ep)
        .form(&[("client_id", client_id), ("scope", "openid profile email")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let device_code =
        start["device_code"].as_str().ok_or_else(|| fail(exit::ERROR, "the issuer sent no device_code"))?;
    let link = start["verification_uri_complete"].as_str().or(start["verification_uri"].as_str()).unwrap_or("");
    eprintln!("To sign in, open {link} and enter the code {}", start["user_code"].as_str().unwrap_or(""));
    let mut interval = start["interval"].as_u64().unwrap_or(5);
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(start["expires_in"].as_u64().unwrap_or(600));
    loop {
        if std::time::Instant::now() > deadline {
            return Err(fail(exit::TIMEOUT, "the sign-in was not completed in time"));
        }
        let r: Value = idp
            .client
            .post(token_ep)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code),
                ("client_id", client_id),
            ])
            .send()
            .await?
            .json()
            .await?;
        if let Some(t) = r["id_token"].as_str() {
            return Ok(t.to_owned());
        }
        match r["error"].as_str() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += 5,
            Some(e) => return Err(fail(exit::DENIED, format!("sign-in refused: {e}"))),
            None => return Err(fail(exit::ERROR, "the issuer answered without an ID token")),
        }
        tokio::time::sleep(std::time::Duration::from_secs(interval)).await;
    }
}

fn random_b64(bytes: usize) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// How long the browser flow waits for the redirect back.
const BROWSER_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// The authorization code grant with PKCE (RFC 7636) and a loopback redirect (RFC 8252 §7.3);
/// returns the ID token.
async fn browser_flow(idp: &Idp) -> anyhow::Result<String> {
    use base64::Engine;
    use sha2::Digest;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let (auth_ep, token_ep) = (idp.endpoint("authorization_endpoint")?, idp.endpoint("token_endpoint")?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let redirect = format!("http://127.0.0.1:{}/callback", listener.local_addr()?.port());
    let verifier = random_b64(32);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let state = random_b64(16);
    let mut link = reqwest::Url::parse(auth_ep)
        .map_err(|e| fail(exit::ERROR, format!("the issuer's authorization_endpoint is not a URL: {e}")))?;
    link.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &idp.client_id)
        .append_pair("redirect_uri", &redirect)
        .append_pair("scope", "openid profile email")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", &state);
    eprintln!("To sign in, open {link}");
    let opener = std::env::var("BROWSER").unwrap_or_else(|_| "xdg-open".to_owned());
    let _ = std::process::Command::new(opener)
        .arg(link.as_str())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();

    let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
    let code = loop {
        let accepted = tokio::time::timeout_at(deadline, listener.accept()).await;
        let Ok(accepted) = accepted else {
            return Err(fail(exit::TIMEOUT, "the sign-in was not completed in time"));
        };
        let (mut stream, _) = accepted?;
        // Only the request line matters; a peer that sends more than a few KiB without one is dropped.
        let mut reader = BufReader::new((&mut stream).take(8 * 1024));
        let mut line = String::new();
        if tokio::time::timeout(std::time::Duration::from_secs(10), reader.read_line(&mut line)).await.is_err() {
            continue;
        }
        // GET /callback?code=…&state=… HTTP/1.1
        let target = line.split_whitespace().nth(1).unwrap_or("");
        let Ok(url) = reqwest::Url::parse(&format!("http://127.0.0.1{target}")) else { continue };
        if url.path() != "/callback" {
            drop(reader);
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            continue;
        }
        let param = |k: &str| url.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned());
        let (page, outcome) = if param("state").as_deref() != Some(state.as_str()) {
            (
                "The sign-in answer did not match this request; run jitgate login again.",
                Err(fail(exit::DENIED, "the sign-in answer carried the wrong state")),
            )
        } else if let Some(e) = param("error") {
            let why = param("error_description").map(|d| format!("{e}: {d}")).unwrap_or(e);
            ("The sign-in was refused; see the terminal.", Err(fail(exit::DENIED, format!("sign-in refused: {why}"))))
        } else if let Some(code) = param("code") {
            ("Signed in to jitgate. You can close this tab.", Ok(code))
        } else {
            ("The sign-in answer carried no code.", Err(fail(exit::ERROR, "the issuer redirected without a code")))
        };
        let html = format!("<!doctype html><title>jitgate</title><p>{page}</p>");
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            html.len()
        );
        drop(reader);
        let _ = stream.write_all(format!("{head}{html}").as_bytes()).await;
        break outcome?;
    };
    let r: Value = idp
        .client
        .post(token_ep)
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect.as_str()),
            ("client_id", idp.client_id.as_str()),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await?
        .json()
        .await?;
    match (r["id_token"].as_str(), r["error"].as_str()) {
        (Some(t), _) => Ok(t.to_owned()),
        (None, Some(e)) => Err(fail(exit::DENIED, format!("sign-in refused: {e}"))),
        (None, None) => Err(fail(exit::ERROR, "the issuer answered without an ID token")),
    }
}

/// Checks the settings against the server, then writes the profile (0600).
pub async fn login(a: LoginArgs) -> anyhow::Result<()> {
    let ca = a.ca_cert.as_ref().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
    let client = crate::client::http_client(ca.as_deref())?;
    let url = a.url.trim_end_matches('/').to_owned();
    let token = match a.token {
        Some(t) => t,
        None => {
            let idp = discover(&client, &url).await?;
            if a.browser || idp.discovery["device_authorization_endpoint"].as_str().is_none() {
                browser_flow(&idp).await?
            } else {
                device_flow(&idp).await?
            }
        }
    };
    call(client.get(format!("{url}/api/v1/roleDefinitions")).bearer_auth(&token)).await?;
    let path = crate::profile::save(&crate::profile::Profile {
        url: Some(url.clone()),
        token: Some(token),
        ca_cert: ca,
        subscription: a.subscription,
    })?;
    println!("logged in to {url}; settings saved in {}", path.display());
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct VmArgs {
    #[command(subcommand)]
    pub command: VmCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum VmCommand {
    /// List VMs, or one inventory view.
    #[command(after_help = "Examples:\n  jitgate vm list --configured\n  jitgate vm list --unsupported -o json")]
    List(VmListArgs),
    /// Register a VM (agents register their own; this is for VMs behind a gateway or before an agent).
    #[command(
        after_help = "Example:\n  jitgate vm add --id /subscriptions/$SUB/resourceGroups/prod/providers/Microsoft.Compute/virtualMachines/web1 --os Linux -l westeurope --address 10.0.0.4"
    )]
    Add(VmAddArgs),
    /// Remove a VM (refused while a policy protects it).
    #[command(after_help = "Example:\n  jitgate vm rm web1")]
    Rm(VmRef),
    /// Put a VM behind a gateway agent, with its inner address.
    #[command(after_help = "Example:\n  jitgate vm attach-gateway web1 --gateway gw1 --address 10.8.0.2")]
    AttachGateway(AttachArgs),
}

#[derive(Debug, Clone, Args)]
pub struct VmListArgs {
    /// Only VMs a policy protects.
    #[arg(long, conflicts_with_all = ["not_configured", "unsupported"])]
    pub configured: bool,
    /// Only supported VMs no policy protects yet.
    #[arg(long, conflicts_with = "unsupported")]
    pub not_configured: bool,
    /// Only VMs jitgate cannot protect (no enforcement point, nftables unusable …), with the reason.
    #[arg(long)]
    pub unsupported: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VmAddArgs {
    /// The VM's ARM id.
    #[arg(long)]
    pub id: String,
    /// Linux or Windows (chooses the default rule: 22 or 3389).
    #[arg(long, default_value = "Linux")]
    pub os: String,
    /// The VM's location (region).
    #[arg(long, short = 'l')]
    pub location: String,
    /// The address users connect to (shown when access opens).
    #[arg(long)]
    pub address: Option<String>,
    /// The gateway agent in front of the VM (then --address is its inner address).
    #[arg(long)]
    pub gateway: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VmRef {
    /// ARM id, or name when unique.
    pub vm: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct AttachArgs {
    /// The VM: ARM id, or name when unique.
    pub vm: String,
    /// The gateway agent's name.
    #[arg(long)]
    pub gateway: String,
    /// The VM's address behind the gateway.
    #[arg(long)]
    pub address: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

fn print_vms(format: OutputFormat, v: &Value) {
    print(format, v, |v| {
        let rows: Vec<Vec<String>> = v["value"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|vm| {
                let s = |k: &str| vm[k].as_str().unwrap_or("").to_owned();
                vec![
                    s("name"),
                    s("osType"),
                    s("location"),
                    s("address"),
                    vm["enforcement"]["agent"].as_str().unwrap_or("-").into(),
                    vm["enforcementState"].as_str().or(vm["unsupportedReason"].as_str()).unwrap_or("").into(),
                ]
            })
            .collect();
        table(&["NAME", "OS", "LOCATION", "ADDRESS", "ENFORCED BY", "STATE"], &rows);
    });
}

pub async fn vm(a: VmArgs, format: OutputFormat) -> anyhow::Result<()> {
    match a.command {
        VmCommand::List(l) => {
            let (url, token, client) = l.conn.connect()?;
            let view = if l.configured {
                "?view=configured"
            } else if l.not_configured {
                "?view=notConfigured"
            } else if l.unsupported {
                "?view=unsupported"
            } else {
                ""
            };
            let out = call(client.get(format!("{url}/api/v1/vms{view}")).bearer_auth(token)).await?;
            print_vms(format, &out);
        }
        VmCommand::Add(v) => {
            let (url, token, client) = v.conn.connect()?;
            let body =
                json!({"id": v.id, "osType": v.os, "location": v.location, "address": v.address, "gateway": v.gateway});
            let out = call(client.put(format!("{url}/api/v1/vms")).bearer_auth(token).json(&body)).await?;
            print(format, &out, |o| println!("registered {}", o["id"].as_str().unwrap_or("")));
        }
        VmCommand::Rm(r) => {
            let (url, token, client) = r.conn.connect()?;
            let id = crate::policy::resolve_vm(&client, &url, &token, &r.vm).await?;
            let out = call(client.delete(format!("{url}/api/v1/vms")).query(&[("id", &id)]).bearer_auth(token)).await?;
            print(format, &out, |o| println!("removed {}", o["id"].as_str().unwrap_or("")));
        }
        VmCommand::AttachGateway(g) => {
            let (url, token, client) = g.conn.connect()?;
            let id = crate::policy::resolve_vm(&client, &url, &token, &g.vm).await?;
            let current =
                call(client.get(format!("{url}/api/v1/vms")).query(&[("id", &id)]).bearer_auth(&token)).await?;
            let body = json!({"id": id, "osType": current["osType"], "location": current["location"], "address": g.address, "gateway": g.gateway});
            let out = call(client.put(format!("{url}/api/v1/vms")).bearer_auth(token).json(&body)).await?;
            print(format, &out, |o| println!("{} is behind gateway {}", o["id"].as_str().unwrap_or(""), g.gateway));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; prints the token alone (it is shown only this once).
    #[command(after_help = "Example:\n  jitgate token create --principal alice --expires-in 8h")]
    Create(TokenCreate),
    /// List a principal's tokens (never their secrets).
    #[command(after_help = "Example:\n  jitgate token list --principal alice")]
    List(TokenFor),
    /// Revoke a token by id.
    #[command(after_help = "Example:\n  jitgate token revoke 7")]
    Revoke(TokenRevoke),
}

#[derive(Debug, Clone, Args)]
pub struct TokenCreate {
    /// The principal the token signs in as.
    #[arg(long)]
    pub principal: String,
    /// Lifetime: 30m, 8h, 30d or ISO-8601; default: as long as the server allows (its maximum,
    /// and never beyond the token or sign-in you create it with). The expiry is printed on stderr.
    #[arg(long)]
    pub expires_in: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TokenFor {
    /// The principal the token signs in as.
    #[arg(long)]
    pub principal: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TokenRevoke {
    /// The token's id (from `jitgate token list`).
    pub id: i64,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn token(a: TokenArgs, format: OutputFormat) -> anyhow::Result<()> {
    match a.command {
        TokenCommand::Create(c) => {
            let (url, token, client) = c.conn.connect()?;
            let body = match &c.expires_in {
                Some(d) => json!({"expiresIn": crate::iso_duration(d)?}),
                None => json!({}),
            };
            let out = call(
                client.post(format!("{url}/api/v1/principals/{}/tokens", c.principal)).bearer_auth(token).json(&body),
            )
            .await?;
            print(format, &out, |o| {
                // The token alone on stdout (for scripts); when it ends on stderr.
                println!("{}", o["token"].as_str().unwrap_or(""));
                match o["expiresOn"].as_str() {
                    Some(at) => eprintln!("token {} for {} expires {at}", o["id"], c.principal),
                    None => eprintln!("token {} for {} does not expire", o["id"], c.principal),
                }
            });
        }
        TokenCommand::List(l) => {
            let (url, token, client) = l.conn.connect()?;
            let out =
                call(client.get(format!("{url}/api/v1/principals/{}/tokens", l.principal)).bearer_auth(token)).await?;
            print(format, &out, |o| {
                let rows: Vec<Vec<String>> = o["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        vec![
                            t["id"].to_string(),
                            t["createdAt"].as_str().unwrap_or("").into(),
                            t["expiresOn"].as_str().unwrap_or("never").into(),
                            if t["revoked"] == true { "revoked".into() } else { "active".into() },
                        ]
                    })
                    .collect();
                table(&["ID", "CREATED", "EXPIRES", "STATE"], &rows);
            });
        }
        TokenCommand::Revoke(r) => {
            let (url, token, client) = r.conn.connect()?;
            let out = call(client.delete(format!("{url}/api/v1/tokens/{}", r.id)).bearer_auth(token)).await?;
            print(format, &out, |o| println!("revoked token {}", o["id"]));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct PrincipalArgs {
    #[command(subcommand)]
    pub command: PrincipalCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PrincipalCommand {
    /// List principals: the name roles are assigned to (oidc:… for an OIDC identity), its type,
    /// and for OIDC identities the display name, issuer and subject.
    #[command(
        after_help = "Example:\n  jitgate principal list\n  jitgate role assign --principal oidc:3f2a… --role Reader --scope /subscriptions/$SUB"
    )]
    List(PrincipalList),
}

#[derive(Debug, Clone, Args)]
pub struct PrincipalList {
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn principal(a: PrincipalArgs, format: OutputFormat) -> anyhow::Result<()> {
    match a.command {
        PrincipalCommand::List(l) => {
            let (url, token, client) = l.conn.connect()?;
            let out = call(client.get(format!("{url}/api/v1/principals")).bearer_auth(token)).await?;
            print(format, &out, |o| {
                let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
                let rows: Vec<Vec<String>> = o["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| vec![text(&p["name"]), text(&p["type"]), text(&p["displayName"]), text(&p["issuer"])])
                    .collect();
                table(&["NAME", "TYPE", "DISPLAY NAME", "ISSUER"], &rows);
            });
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    pub shell: clap_complete::Shell,
}

/// Shell completions from the command tree.
pub fn completions(a: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "jitgate", &mut std::io::stdout());
    Ok(())
}

/// The man page (roff) from the command tree.
pub fn man() -> anyhow::Result<()> {
    let cmd = crate::Cli::command();
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).map_err(|e| fail(exit::ERROR, e.to_string()))
}
