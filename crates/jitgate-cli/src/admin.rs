//! `jitgate login`, `vm …`, `token …`, `completions`, `man`.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Subcommand};

use jitgate_api_types::native::{ListOut, VmIn, VmOut};
use jitgate_api_types::rbac::{PrincipalIn, TokenIn};
use jitgate_client::native::VmView;
use jitgate_client::oidc::Provider;
use jitgate_client::{Client, Settings};

use crate::output::{exit, fail, print, table, OutputFormat};
use crate::{CliError, ConnArgs};

#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  jitgate login --url https://jit.example.com:8443 --token jg_… --ca-cert cert.pem --subscription $SUB
  jitgate login --url https://jit.example.com:8443 --oidc      # sign in with the server's OIDC provider (device flow)
  jitgate login --url https://jit.example.com:8443 --oidc --browser   # … in a browser on this machine")]
pub struct LoginArgs {
    /// The server's URL; several (repeated, or a comma list) for replicas sharing one
    /// database, all saved in the profile.
    #[arg(long = "url", visible_alias = "server", env = "JITGATE_URL", value_delimiter = ',', required = true)]
    pub url: Vec<String>,
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
    /// Trust the server by the SHA-256 fingerprint of its certificate or public key instead of a
    /// CA (saved in the profile); repeat or comma-separate.
    #[arg(long, env = "JITGATE_SERVER_FINGERPRINT", value_delimiter = ',', value_parser = crate::pin)]
    pub server_fingerprint: Vec<[u8; 32]>,
    /// The subscription commands use when given none.
    #[arg(long, env = "JITGATE_SUBSCRIPTION")]
    pub subscription: Option<String>,
}

/// How long the browser flow waits for the redirect back.
const BROWSER_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// The command line that opens `link`: `$BROWSER` (its first entry when it lists several,
/// separated by `:`), which may carry arguments and a `%s` for the link (`firefox
/// --new-window %s`); else xdg-open. The link goes last when there is no `%s`.
pub fn browser_command(browser: Option<&str>, link: &str) -> Vec<String> {
    let entry = browser.and_then(|b| b.split(':').map(str::trim).find(|e| !e.is_empty())).unwrap_or("xdg-open");
    let mut words: Vec<String> = entry.split_whitespace().map(str::to_owned).collect();
    if words.iter().any(|w| w.contains("%s")) {
        for w in &mut words {
            *w = w.replace("%s", link);
        }
    } else {
        words.push(link.to_owned());
    }
    words
}

/// Opens `link` with `$BROWSER` (else xdg-open), quietly; the link is printed too.
fn open_browser(link: &str) {
    eprintln!("To sign in, open {link}");
    let words = browser_command(std::env::var("BROWSER").ok().as_deref(), link);
    let Some((program, args)) = words.split_first() else { return };
    let _ = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Checks the settings against the server, then writes the profile (0600).
pub async fn login(a: LoginArgs) -> Result<(), CliError> {
    let ca = a.ca_cert.as_ref().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
    let pins = a.server_fingerprint.clone();
    let client = Client::new(Settings::with_urls(&a.url).ca_cert_path(ca.as_deref()).pins(pins.clone()))?;
    if client.urls().is_empty() {
        return Err(fail(exit::USAGE, "no server: --url is empty"));
    }
    let url = client.urls().join(",");
    let token = match a.token {
        Some(t) => t,
        None => {
            let idp = Provider::discover(&client).await?;
            if a.browser || !idp.has_device_flow() {
                idp.browser_flow(open_browser, BROWSER_WAIT).await?
            } else {
                idp.device_flow(|link, code| eprintln!("To sign in, open {link} and enter the code {code}")).await?
            }
        }
    };
    client.with_token(token.as_str()).native().role_definitions().await?;
    let path = crate::profile::save(&crate::profile::Profile {
        url: Some(url.clone()),
        token: Some(token),
        ca_cert: ca,
        server_fingerprints: pins.iter().map(|p| jitgate_core::certinfo::colon_hex(p)).collect(),
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

fn print_vms(format: OutputFormat, v: &ListOut<VmOut>) {
    print(format, v, |v| {
        let rows: Vec<Vec<String>> = v
            .value
            .iter()
            .map(|vm| {
                let state = vm.enforcement_state.as_deref().or(vm.unsupported_reason.as_deref());
                vec![
                    vm.name.clone(),
                    vm.os_type.clone(),
                    vm.location.clone(),
                    vm.address.clone().unwrap_or_default(),
                    vm.enforcement.as_ref().map(|e| e.agent.as_str()).unwrap_or("-").to_owned(),
                    state.unwrap_or("").to_owned(),
                ]
            })
            .collect();
        table(&["NAME", "OS", "LOCATION", "ADDRESS", "ENFORCED BY", "STATE"], &rows);
    });
}

pub async fn vm(a: VmArgs, format: OutputFormat) -> Result<(), CliError> {
    match a.command {
        VmCommand::List(l) => {
            let client = l.conn.connect()?;
            let view = if l.configured {
                Some(VmView::Configured)
            } else if l.not_configured {
                Some(VmView::NotConfigured)
            } else if l.unsupported {
                Some(VmView::Unsupported)
            } else {
                None
            };
            let value = client.native().vms(view).await?;
            print_vms(format, &ListOut { value });
        }
        VmCommand::Add(v) => {
            let client = v.conn.connect()?;
            let body = VmIn {
                id: Some(v.id),
                os_type: Some(v.os),
                location: Some(v.location),
                address: v.address,
                gateway: v.gateway,
                classic: None,
            };
            let out = client.native().put_vm(&body).await?;
            print(format, &out, |o| println!("registered {}", o.id));
        }
        VmCommand::Rm(r) => {
            let client = r.conn.connect()?;
            let id = crate::policy::resolve_vm(&client, &r.vm).await?;
            let out = client.native().delete_vm(&id).await?;
            print(format, &out, |o| println!("removed {}", o.id));
        }
        VmCommand::AttachGateway(g) => {
            let client = g.conn.connect()?;
            let id = crate::policy::resolve_vm(&client, &g.vm).await?;
            let current = client.native().vm(&id).await?;
            let body = VmIn {
                id: Some(id),
                os_type: Some(current.os_type),
                location: Some(current.location),
                address: Some(g.address),
                gateway: Some(g.gateway.clone()),
                classic: None,
            };
            let out = client.native().put_vm(&body).await?;
            print(format, &out, |o| println!("{} is behind gateway {}", o.id, g.gateway));
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
    /// List a principal's tokens (never their secrets); your own without --principal.
    #[command(
        after_help = "Examples:\n  jitgate token list                    # your own tokens\n  jitgate token list --principal alice"
    )]
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
    /// Whose tokens; default: your own (the principal of the credential in use).
    #[arg(long)]
    pub principal: Option<String>,
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

pub async fn token(a: TokenArgs, format: OutputFormat) -> Result<(), CliError> {
    match a.command {
        TokenCommand::Create(c) => {
            let client = c.conn.connect()?;
            let body = TokenIn { expires_in: c.expires_in.as_deref().map(crate::iso_duration).transpose()? };
            let out = client.native().create_token(&c.principal, &body).await?;
            print(format, &out, |o| {
                // The token alone on stdout (for scripts); when it ends on stderr.
                println!("{}", o.token);
                match &o.expires_on {
                    Some(at) => eprintln!("token {} for {} expires {at}", o.id, c.principal),
                    None => eprintln!("token {} for {} does not expire", o.id, c.principal),
                }
            });
        }
        TokenCommand::List(l) => {
            let client = l.conn.connect()?;
            let principal = match l.principal {
                Some(p) => p,
                None => client.native().whoami().await?.principal.name,
            };
            let value = client.native().tokens(&principal).await?;
            print(format, &ListOut { value }, |o| {
                let rows: Vec<Vec<String>> = o
                    .value
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.to_string(),
                            t.created_at.clone(),
                            t.expires_on.clone().unwrap_or_else(|| "never".into()),
                            if t.revoked { "revoked".into() } else { "active".into() },
                        ]
                    })
                    .collect();
                table(&["ID", "CREATED", "EXPIRES", "STATE"], &rows);
            });
        }
        TokenCommand::Revoke(r) => {
            let client = r.conn.connect()?;
            let out = client.native().revoke_token(r.id).await?;
            print(format, &out, |o| println!("revoked token {}", o.id));
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
    /// Create a local principal (a user, or a service principal for scripts); then give it a
    /// role (`jitgate role assign`) and a token (`jitgate token create --principal NAME`).
    #[command(after_help = "Examples:
  jitgate principal create alice
  jitgate principal create deploy-bot --type ServicePrincipal
  jitgate role assign --principal alice --role \"JIT Requester\" --scope /subscriptions/$SUB/resourceGroups/prod
  jitgate token create --principal alice --expires-in 8h")]
    Create(PrincipalCreate),
    /// Delete a principal: its tokens and role assignments go with it, its live grants are revoked.
    #[command(after_help = "Example:\n  jitgate principal delete alice")]
    Delete(PrincipalDelete),
}

#[derive(Debug, Clone, Args)]
pub struct PrincipalList {
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PrincipalCreate {
    /// The principal's name (letters, digits, `.`, `_`, `-`, `@`).
    pub name: String,
    /// User or ServicePrincipal.
    #[arg(long = "type", default_value = "User", value_parser = ["User", "ServicePrincipal"])]
    pub kind: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PrincipalDelete {
    /// The principal's name (`jitgate principal list`).
    pub name: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:\n  jitgate whoami\n  jitgate whoami -o json")]
pub struct WhoAmIArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `jitgate whoami`: the principal, the credential and its expiry, the role assignments.
pub async fn whoami(a: WhoAmIArgs, format: OutputFormat) -> Result<(), CliError> {
    let client = a.conn.connect()?;
    let me = client.native().whoami().await?;
    print(format, &me, |m| {
        let shown = m.principal.display_name.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
        println!("{}{shown}, {}", m.principal.name, m.principal.kind);
        let credential = match m.token_id {
            Some(id) => format!("API token {id}"),
            None => "OIDC ID token".to_owned(),
        };
        println!(
            "signed in with {credential}, {}",
            match &m.expires_on {
                Some(at) => format!("valid until {at}"),
                None => "which does not expire".to_owned(),
            }
        );
        if m.role_assignments.is_empty() {
            println!(
                "no role assignments (an Owner gives one: jitgate role assign --principal {} …)",
                m.principal.name
            );
        } else {
            let rows: Vec<Vec<String>> =
                m.role_assignments.iter().map(|r| vec![r.role.clone(), r.scope.clone()]).collect();
            table(&["ROLE", "SCOPE"], &rows);
        }
    });
    Ok(())
}

pub async fn principal(a: PrincipalArgs, format: OutputFormat) -> Result<(), CliError> {
    match a.command {
        PrincipalCommand::List(l) => {
            let client = l.conn.connect()?;
            let value = client.native().principals().await?;
            print(format, &ListOut { value }, |o| {
                let text = |v: &Option<String>| v.clone().unwrap_or_default();
                let rows: Vec<Vec<String>> = o
                    .value
                    .iter()
                    .map(|p| vec![p.name.clone(), p.kind.clone(), text(&p.display_name), text(&p.issuer)])
                    .collect();
                table(&["NAME", "TYPE", "DISPLAY NAME", "ISSUER"], &rows);
            });
        }
        PrincipalCommand::Create(c) => {
            let client = c.conn.connect()?;
            let out = client.native().create_principal(&PrincipalIn { name: Some(c.name), kind: Some(c.kind) }).await?;
            print(format, &out, |p| {
                println!("created {} {}", p.kind, p.name);
                eprintln!(
                    "next: jitgate role assign --principal {0} --role … --scope …; jitgate token create --principal {0}",
                    p.name
                );
            });
        }
        PrincipalCommand::Delete(d) => {
            let client = d.conn.connect()?;
            let out = client.native().delete_principal(&d.name).await?;
            print(format, &out, |p| {
                println!("deleted {} {} (its tokens, role assignments and grants with it)", p.kind, p.name)
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
pub fn completions(a: CompletionsArgs) -> Result<(), CliError> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "jitgate", &mut std::io::stdout());
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write every page (the command and each subcommand) into this directory instead.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The man page (roff) from the command tree, or every page into a directory.
pub fn man(a: ManArgs) -> Result<(), CliError> {
    // `help` has no page of its own: jitgate(1) must not refer to one.
    let cmd = crate::Cli::command().disable_help_subcommand(true);
    match a.dir {
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).map_err(|e| fail(exit::ERROR, e.to_string())),
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(|e| fail(exit::ERROR, format!("creating {}: {e}", dir.display())))?;
            clap_mangen::generate_to(cmd, &dir)
                .map_err(|e| fail(exit::ERROR, format!("writing {}: {e}", dir.display())))?;
            println!("man pages written to {}", dir.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::browser_command;

    #[test]
    fn browser_commands_take_arguments_and_a_placeholder() {
        let link = "https://idp.example/authorize?x=1";
        assert_eq!(browser_command(None, link), ["xdg-open", link]);
        assert_eq!(browser_command(Some("firefox"), link), ["firefox", link]);
        assert_eq!(browser_command(Some("firefox --new-window %s"), link), ["firefox", "--new-window", link]);
        assert_eq!(browser_command(Some("chromium --app=%s"), link), ["chromium".to_owned(), format!("--app={link}")]);
        assert_eq!(browser_command(Some("w3m:lynx"), link), ["w3m", link]);
        assert_eq!(browser_command(Some(""), link), ["xdg-open", link]);
    }
}
