//! The agent side: the settings file, the kernel (release, nftables over netlink), `table inet
//! jitgate` and its elements, the agent's credential, the server (reachable, its clock, its
//! certificate), free disk space under the state directory.

use std::path::PathBuf;

use jitgate_api_types::doctor::CheckOut;
use jitgate_cli::doctor::{AgentCheckArgs, AGENT_CONFIG};
use jitgate_enforce_nft::{NftError, NftFirewall};

use super::server::error_chain;
use super::{cert, certificate, disk, fact, fail, ok, pick, warn, Settings};

/// The state directory the package's unit gives the agent.
const DEFAULT_STATE_DIR: &str = "/var/lib/jitgate-agent";
/// The first release with `NFT_MSG_DESTROYSETELEM`.
const MIN_KERNEL: (u32, u32) = (6, 3);
/// A clock this far from the server's (beyond the header's second and half the round trip) is a
/// warning; past [`CLOCK_FAIL_SECS`] a failure.
const CLOCK_WARN_SECS: f64 = 5.0;
const CLOCK_FAIL_SECS: f64 = 60.0;

const AS_ROOT: &str =
    "run the doctor as root (sudo jitgate doctor agent): reading nftables needs CAP_NET_ADMIN, as the agent has";

pub async fn checks(args: AgentCheckArgs) -> Vec<CheckOut> {
    let (settings, config) = Settings::load(args.config.as_deref(), AGENT_CONFIG);
    let mut out: Vec<CheckOut> = config.into_iter().collect();
    let state_dir = PathBuf::from(
        pick(args.state_dir.map(|p| p.display().to_string()), "JITGATE_STATE_DIR", &settings, "state_dir")
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
    );

    out.push(kernel());
    out.extend(nftables());

    // The credential names the server and its certificate unless flags or settings do.
    let cred_path = state_dir.join(jitgate_agent::CREDENTIAL_FILE);
    let credential: Option<jitgate_agent::Credential> = match std::fs::read(&cred_path) {
        Ok(data) => match serde_json::from_slice::<jitgate_agent::Credential>(&data) {
            Ok(c) => {
                out.push(fact(
                    ok(
                        "credential",
                        format!("agent {} ({}), {} mode, joined through {}", c.name, c.agent_id, c.mode, c.server),
                    ),
                    "agentId",
                    c.agent_id.clone(),
                ));
                Some(c)
            }
            Err(e) => {
                out.push(fail(
                    "credential",
                    format!("{} is not an agent credential: {e}", cred_path.display()),
                    "join again: remove the file and start the agent with a new join token (jitgate agent token create)",
                ));
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.push(fail(
                "credential",
                format!("no credential at {}: the agent has not joined", cred_path.display()),
                "make a join token on the server (jitgate agent token create …) and start the agent with it \
                 (join_token in /etc/jitgate/agent.toml, or --join-token)",
            ));
            None
        }
        Err(e) => {
            out.push(fail("credential", format!("cannot read {}: {e}", cred_path.display()), AS_ROOT));
            None
        }
    };

    let mut servers = args.server;
    if servers.is_empty() {
        servers = settings.strings("server");
    }
    if servers.is_empty() {
        if let Some(c) = &credential {
            servers = if c.servers.is_empty() { vec![c.server.clone()] } else { c.servers.clone() };
        }
    }
    let ca_cert = args
        .ca_cert
        .or_else(|| pick(None, "JITGATE_CA_CERT", &settings, "ca_cert").map(PathBuf::from))
        .or_else(|| credential.as_ref().and_then(|c| c.ca_cert.clone()));
    let mut pins = args.pins;
    if pins.is_empty() {
        let texts = settings.strings("server_fingerprint");
        let texts = if texts.is_empty() {
            credential.as_ref().map(|c| c.server_fingerprints.clone()).unwrap_or_default()
        } else {
            texts
        };
        for t in texts {
            match jitgate_core::certinfo::parse_pin(&t) {
                Ok(p) => pins.push(p),
                Err(e) => out.push(fail(
                    "server",
                    format!("the server fingerprint {t:?} cannot be read: {e}"),
                    "write it as jitgate serve prints it (64 hex digits, colons allowed)",
                )),
            }
        }
    }
    if servers.is_empty() {
        out.push(fail(
            "server",
            "no server known: no --server, no server in the settings, no credential",
            "name the control plane: jitgate doctor agent --server https://HOST:8443 (and --ca-cert)",
        ));
    }
    let mut first_answer = None;
    for url in &servers {
        let settings = jitgate_client::Settings::new(url.as_str())
            .ca_cert_path(ca_cert.as_deref())
            .pins(pins.clone())
            .timeouts(std::time::Duration::from_secs(5), std::time::Duration::from_secs(10));
        match jitgate_client::health::health(&settings, url, true).await {
            Ok(h) if h.status == 200 => {
                out.push(ok("server", format!("{url} answers /healthz in {} ms", h.elapsed.as_millis())));
                first_answer = first_answer.or(Some(h));
            }
            Ok(h) => out.push(fail(
                "server",
                format!("{url}/healthz answered {}", h.status),
                "check that the URL is jitgate's (not a proxy's error page) and look at the server's log",
            )),
            Err(e) => {
                let text = error_chain(&e);
                let fix = if let Some(hint) = jitgate_agent::clock_hint(&text) {
                    hint
                } else if text.contains("certificate") || text.contains("UnknownIssuer") || text.contains("fingerprint")
                {
                    "the server's certificate is not trusted: give its cert.pem (or the CA's) with --ca-cert or ca_cert, \
                     or the fingerprint it prints with --server-fingerprint"
                } else {
                    "check the URL, that jitgate serve runs there (jitgate doctor server on that host), and that no \
                     firewall between the hosts drops its port"
                };
                out.push(fail("server", format!("cannot reach {url}: {text}"), fix));
            }
        }
    }
    if let Some(h) = &first_answer {
        if let Some(offset) = h.clock_offset() {
            out.push(clock(&h.url, offset, h.elapsed.as_secs_f64()));
        }
        if let Some(der) = &h.peer_certificate {
            out.push(certificate(
                &format!("{}'s certificate", h.url),
                cert::from_der(der),
                "renew the server's certificate (on the server: jitgate doctor server says which file), then give agents the new one if they trust it directly",
            ));
        }
    }

    out.push(disk(&state_dir, "state directory"));
    out
}

/// The running kernel's release against [`MIN_KERNEL`].
fn kernel() -> CheckOut {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    match parse_release(&release) {
        Some(v) if v >= MIN_KERNEL => {
            ok("kernel", format!("Linux {release} (6.3 or later: expired grants are deleted with DESTROYSETELEM)"))
        }
        Some(_) => fail(
            "kernel",
            format!("Linux {release}: the agent needs 6.3 or later (NFT_MSG_DESTROYSETELEM)"),
            "upgrade the kernel to Linux 6.3 or later (Debian 13, Ubuntu 24.04 and newer have it)",
        ),
        None => warn(
            "kernel",
            format!("cannot tell the version of kernel release {release}"),
            "make sure it is Linux 6.3 or later",
        ),
    }
}

/// `6.18.44-fc-v1045` → (6, 18).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// nftables reached over netlink (the tables listed), usable the way the agent uses it, and our
/// table with its elements.
fn nftables() -> Vec<CheckOut> {
    let opened = NftFirewall::open().and_then(|mut fw| fw.tables().map(|t| (fw, t)));
    let (mut fw, tables) = match opened {
        Ok(x) => x,
        Err(e) => {
            let fix = if permission(&e) {
                AS_ROOT
            } else {
                "the kernel has no nftables (nf_tables module): load it (modprobe nf_tables) or use a kernel with it"
            };
            return vec![fail("nftables", e.to_string(), fix)];
        }
    };
    let names: Vec<String> = tables.iter().map(|t| t.describe()).collect();
    let mut out = vec![match NftFirewall::usable() {
        Ok(()) => fact(
            ok(
                "nftables",
                format!(
                    "netlink answers ({} table{}{}); nft and the kernel accept the agent's table",
                    tables.len(),
                    if tables.len() == 1 { "" } else { "s" },
                    if names.is_empty() { String::new() } else { format!(": {}", names.join(", ")) }
                ),
            ),
            "tables",
            tables.len(),
        ),
        Err(e) => fail(
            "nftables",
            e.to_string(),
            "install nftables (apt-get install nftables) and run as root; a refused DESTROYSETELEM needs Linux 6.3",
        ),
    }];
    out.push(match fw.inspect() {
        Ok(Some(c)) => {
            let detail = format!(
                "table inet {}: {} sets, {} elements ({} protected ports, {} grants, {} DNAT mappings)",
                jitgate_enforce_nft::TABLE,
                c.sets.len(),
                c.elements(),
                c.protected(),
                c.grants(),
                c.dnat()
            );
            let check = fact(ok("table", detail), "elements", c.elements());
            fact(fact(fact(check, "protected", c.protected()), "grants", c.grants()), "dnat", c.dnat())
        }
        Ok(None) => fail(
            "table",
            format!("table inet {} is missing: no port of this host is under jitgate's control", jitgate_enforce_nft::TABLE),
            "start the agent (systemctl start jitgate-agent): it makes the table when it applies its state; if it runs, \
             its log says why it cannot (journalctl -u jitgate-agent)",
        ),
        Err(e) => fail("table", format!("reading table inet {}: {e}", jitgate_enforce_nft::TABLE), AS_ROOT),
    });
    out
}

fn permission(e: &NftError) -> bool {
    match e {
        NftError::Kernel { errno, .. } => *errno == 1,
        NftError::Socket { source, .. } => source.kind() == std::io::ErrorKind::PermissionDenied,
        _ => false,
    }
}

/// The server's `Date` against this host's clock: the header has whole seconds, so a second
/// (and half the round trip) of difference is none.
fn clock(url: &str, offset: f64, rtt: f64) -> CheckOut {
    let slack = 1.0 + rtt / 2.0;
    let off = offset.abs() - slack;
    let side = if offset > 0.0 { "behind" } else { "ahead of" };
    let detail = format!("this host's clock is {:.0} s {side} {url}'s", offset.abs());
    let fix = "synchronise the clocks (timedatectl set-ntp true, or chrony): grants are programmed from remaining \
               durations, but audit times, certificates and tokens need the right time";
    let c = if off <= CLOCK_WARN_SECS {
        ok("clock", format!("within {:.0} s of {url}'s clock", offset.abs().max(1.0)))
    } else if off <= CLOCK_FAIL_SECS {
        warn("clock", detail, fix)
    } else {
        fail("clock", detail, fix)
    };
    fact(c, "offsetSeconds", offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_api_types::doctor::CheckStatus;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(parse_release("6.3.0"), Some((6, 3)));
        assert_eq!(parse_release("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(parse_release("weird"), None);
        assert!((5, 10) < MIN_KERNEL && (6, 3) >= MIN_KERNEL && (7, 0) >= MIN_KERNEL);
    }

    #[test]
    fn the_clock_allows_the_header_resolution_and_fails_far_off() {
        assert_eq!(clock("u", 1.0, 0.01).status, CheckStatus::Ok);
        assert_eq!(clock("u", -5.5, 0.01).status, CheckStatus::Ok);
        let w = clock("u", -20.0, 0.01);
        assert_eq!(w.status, CheckStatus::Warn);
        assert!(w.detail.contains("20 s ahead of"), "{}", w.detail);
        let f = clock("u", 600.0, 0.01);
        assert_eq!(f.status, CheckStatus::Fail);
        assert!(f.detail.contains("600 s behind") && f.fix.is_some(), "{}", f.detail);
    }
}
