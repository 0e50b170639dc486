//! `jitgate doctor`: checks a host and says what to do about each failure. The server side
//! (`server`) reads the store read-only beside a running server; the agent side (`agent`) reads
//! the kernel's nftables state and asks the server. Every check becomes one
//! [`CheckOut`]; the exit code is 0 only when none failed.

mod agent;
mod cert;
mod server;

use std::path::{Path, PathBuf};

use jitgate_api_types::doctor::{CheckOut, CheckStatus, DoctorOut};
use jitgate_cli::doctor::DoctorArgs;

/// A certificate that expires within this many days is a warning.
const CERT_WARN_DAYS: i64 = 30;

/// Runs the checks the arguments name, prints the report; `Ok(true)` when no check failed.
pub async fn run(args: DoctorArgs) -> anyhow::Result<bool> {
    let plan = args
        .plan(|p| Path::new(p).exists())
        .map_err(|e| jitgate_cli::output::fail(jitgate_cli::output::exit::USAGE, e))?;
    let mut checks = Vec::new();
    if let Some(s) = plan.server {
        checks.extend(server::checks(s).await);
    }
    if let Some(a) = plan.agent {
        checks.extend(agent::checks(a).await);
    }
    let report = DoctorOut { ok: checks.iter().all(|c| c.status != CheckStatus::Fail), checks };
    if plan.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", jitgate_cli::doctor::render(&report));
    }
    Ok(report.ok)
}

fn check(name: &str, status: CheckStatus, detail: impl Into<String>, fix: Option<String>) -> CheckOut {
    CheckOut { name: name.into(), status, detail: detail.into(), fix, facts: serde_json::Map::new() }
}

pub(crate) fn ok(name: &str, detail: impl Into<String>) -> CheckOut {
    check(name, CheckStatus::Ok, detail, None)
}

pub(crate) fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> CheckOut {
    check(name, CheckStatus::Warn, detail, Some(fix.into()))
}

pub(crate) fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> CheckOut {
    check(name, CheckStatus::Fail, detail, Some(fix.into()))
}

/// Adds a number (or text) to a check's `facts`.
pub(crate) fn fact(mut c: CheckOut, key: &str, value: impl Into<serde_json::Value>) -> CheckOut {
    c.facts.insert(key.into(), value.into());
    c
}

/// A settings file (`jitgate serve --config` / `jitgate agent --config`): the one named, else
/// the package's default when it exists. Only the keys the checks need are read; the file's
/// own validation is the command's that reads it.
pub(crate) struct Settings {
    pub path: Option<PathBuf>,
    table: toml::Table,
}

impl Settings {
    /// Reads the file; a check `config` says which file was read, or why it could not be.
    pub fn load(named: Option<&Path>, default: &str) -> (Settings, Option<CheckOut>) {
        let path = match named {
            Some(p) => p.to_owned(),
            None if Path::new(default).exists() => PathBuf::from(default),
            None => return (Settings { path: None, table: toml::Table::new() }, None),
        };
        let read = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| text.parse::<toml::Table>().map_err(|e| e.to_string()));
        match read {
            Ok(table) => {
                let c = ok("config", format!("{} read", path.display()));
                (Settings { path: Some(path), table }, Some(c))
            }
            Err(e) => {
                let c = fail(
                    "config",
                    format!("cannot read {}: {}", path.display(), e.trim()),
                    "fix the file (TOML; keys are the command's long flags with - written _), or name another with --config",
                );
                (Settings { path: None, table: toml::Table::new() }, Some(c))
            }
        }
    }

    pub fn string(&self, key: &str) -> Option<String> {
        self.table.get(key).and_then(|v| v.as_str()).map(str::to_owned)
    }

    /// A string, or every string of an array (a repeatable flag).
    pub fn strings(&self, key: &str) -> Vec<String> {
        match self.table.get(key) {
            Some(toml::Value::String(s)) => jitgate_client::split_urls(s),
            Some(toml::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).map(str::to_owned).collect(),
            _ => vec![],
        }
    }
}

/// The first of: the flag, the environment variable, the settings file.
pub(crate) fn pick(flag: Option<String>, env: &str, settings: &Settings, key: &str) -> Option<String> {
    flag.or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty())).or_else(|| settings.string(key))
}

/// Free space on the filesystem holding `dir` ([`disk_status`]).
pub(crate) fn disk(dir: &Path, what: &str) -> CheckOut {
    // The directory itself, or the nearest parent that exists (it may not be made yet).
    let Some(existing) = dir.ancestors().find(|p| p.exists()) else {
        return fail("disk", format!("{} does not exist", dir.display()), format!("check the {what}"));
    };
    let st = match rustix::fs::statvfs(existing) {
        Ok(st) => st,
        Err(e) => {
            return fail(
                "disk",
                format!("statvfs {}: {e}", existing.display()),
                "run the doctor as a user that can read it",
            )
        }
    };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let total = st.f_blocks.saturating_mul(st.f_frsize).max(1);
    let percent = free as f64 * 100.0 / total as f64;
    let detail = format!("{} free of {} ({percent:.0} %) under {}", bytes(free), bytes(total), dir.display());
    let fix = format!(
        "free space on that filesystem or move the {what} to a larger one: the database, its log and the audit archives grow there"
    );
    let c = match disk_status(free, total) {
        CheckStatus::Fail => fail("disk", detail, fix),
        CheckStatus::Warn => warn("disk", detail, fix),
        CheckStatus::Ok => ok("disk", detail),
    };
    fact(fact(c, "freeBytes", free), "totalBytes", total)
}

/// A failure below 256 MiB or 1 % free, a warning below 1 GiB or 5 %.
fn disk_status(free: u64, total: u64) -> CheckStatus {
    let percent = free as f64 * 100.0 / total.max(1) as f64;
    if free < 256 << 20 || percent < 1.0 {
        CheckStatus::Fail
    } else if free < 1 << 30 || percent < 5.0 {
        CheckStatus::Warn
    } else {
        CheckStatus::Ok
    }
}

fn bytes(n: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / GIB)
    } else {
        format!("{} MiB", n >> 20)
    }
}

/// The certificate at `path` (or presented as DER): expiry and fingerprint, a warning within
/// [`CERT_WARN_DAYS`], a failure once expired or unreadable.
pub(crate) fn certificate(what: &str, info: Result<cert::CertInfo, String>, renew: &str) -> CheckOut {
    let info = match info {
        Ok(i) => i,
        Err(e) => return fail("tls", e, renew.to_owned()),
    };
    let now = time::OffsetDateTime::now_utc();
    let days = cert::days_left(&info, now);
    let until = jitgate_core::rfc3339(info.not_after);
    let prints = format!("SHA-256 {}, public key SHA-256 {}", info.fingerprint(), info.key_fingerprint());
    let c = if info.not_after <= now {
        fail("tls", format!("{what} expired on {until} ({prints})"), renew.to_owned())
    } else if days < CERT_WARN_DAYS {
        warn("tls", format!("{what} expires on {until}, in {days} days ({prints})"), renew.to_owned())
    } else {
        ok("tls", format!("{what} valid until {until} ({days} days), {prints}"))
    };
    let c = fact(fact(c, "daysLeft", days), "fingerprint", info.fingerprint());
    fact(c, "keyFingerprint", info.key_fingerprint())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_is_measured_where_the_directory_would_be() {
        let dir = tempfile::tempdir().unwrap();
        let c = disk(&dir.path().join("not-yet/made"), "data directory");
        assert!(c.facts["freeBytes"].as_u64().unwrap() > 0, "{c:?}");
        assert!(c.detail.contains("free of"), "{}", c.detail);
        const GIB: u64 = 1 << 30;
        assert_eq!(disk_status(50 * GIB, 100 * GIB), CheckStatus::Ok);
        assert_eq!(disk_status(4 * GIB, 100 * GIB), CheckStatus::Warn, "under 5 %");
        assert_eq!(disk_status(GIB / 2, 2 * GIB), CheckStatus::Warn, "under 1 GiB");
        assert_eq!(disk_status(GIB / 2, 100 * GIB), CheckStatus::Fail, "under 1 %");
        assert_eq!(disk_status(100 << 20, GIB), CheckStatus::Fail, "under 256 MiB");
    }

    #[test]
    fn settings_files_give_strings_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "state_dir = \"/s\"\nserver = [\"https://a\", \"https://b\"]\n# ca_cert = \"x\"\n")
            .unwrap();
        let (s, c) = Settings::load(Some(&file), "/nonexistent");
        assert_eq!(c.unwrap().status, CheckStatus::Ok);
        assert_eq!(s.string("state_dir").as_deref(), Some("/s"));
        assert_eq!(s.strings("server"), ["https://a", "https://b"]);
        assert_eq!(s.string("ca_cert"), None);

        std::fs::write(&file, "state_dir = [").unwrap();
        let (_, c) = Settings::load(Some(&file), "/nonexistent");
        let c = c.unwrap();
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(c.detail.contains("agent.toml"), "{}", c.detail);
        let (s, c) = Settings::load(None, "/nonexistent/agent.toml");
        assert!(c.is_none() && s.path.is_none());
    }

    #[test]
    fn the_packaged_settings_files_parse() {
        for (file, key) in [("jitgate.toml", "data_dir"), ("agent.toml", "state_dir")] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/etc").join(file);
            let (s, c) = Settings::load(Some(&path), "/nonexistent");
            assert_eq!(c.unwrap().status, CheckStatus::Ok, "{file}");
            assert!(s.string(key).is_some(), "{file} sets {key}");
        }
    }

    #[test]
    fn certificates_warn_within_thirty_days_and_fail_when_expired() {
        let now = time::OffsetDateTime::now_utc();
        let info = |days: i64| cert::CertInfo {
            not_after: now + time::Duration::days(days) + time::Duration::hours(1),
            sha256: [0xAB; 32],
            spki_sha256: [0xCD; 32],
        };
        assert_eq!(certificate("c", Ok(info(90)), "renew").status, CheckStatus::Ok);
        let soon = certificate("c", Ok(info(10)), "renew");
        assert_eq!((soon.status, soon.fix.as_deref()), (CheckStatus::Warn, Some("renew")));
        assert!(soon.detail.contains("in 10 days") && soon.detail.contains("AB:AB:AB"), "{}", soon.detail);
        assert!(soon.detail.contains("public key SHA-256 CD:CD"), "{}", soon.detail);
        assert_eq!(certificate("c", Ok(info(-2)), "renew").status, CheckStatus::Fail);
        assert_eq!(certificate("c", Err("unreadable".into()), "renew").status, CheckStatus::Fail);
    }
}
