//! The connection profile written by `jitgate login` (mode 0600): URL, token, CA certificate and a
//! default subscription, used when flags and environment variables are absent.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub url: Option<String>,
    pub token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    /// SHA-256 fingerprints the server is trusted by instead of a CA (`AB:CD:…`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_fingerprints: Vec<String>,
    pub subscription: Option<String>,
}

/// `JITGATE_CONFIG`, else `$XDG_CONFIG_HOME/jitgate/profile.json`, else `~/.config/jitgate/profile.json`.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("JITGATE_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("jitgate").join("profile.json")
}

fn fail(message: String) -> crate::CliError {
    crate::output::fail(crate::output::exit::ERROR, message)
}

pub fn load() -> Profile {
    std::fs::read(path()).ok().and_then(|d| serde_json::from_slice(&d).ok()).unwrap_or_default()
}

pub fn save(p: &Profile) -> Result<PathBuf, crate::CliError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let path = path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(&path).map_err(|e| fail(format!("writing {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(&serde_json::to_vec_pretty(p)?)?;
    Ok(path)
}
