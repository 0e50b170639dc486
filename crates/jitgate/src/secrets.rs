//! Files the server keeps private, and the key that seals webhook secrets: where it comes from
//! (`JITGATE_SECRETS_KEY`, or a key file made on first start), `jitgate secrets rotate`, the lock
//! that keeps a rotation from running under a live server, and file modes in the data directory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use jitgate_cli::secrets::RotateArgs;
use jitgate_core::audit::{AuditEvent, AuditStatus};
use jitgate_store::secrets::{Keyring, SecretKey};
use jitgate_store::AuditStore;
use jitgate_store_postgres::PgStore;
use jitgate_store_sqlite::SqliteStore;

/// The environment variable that holds the keys themselves (the current one first).
pub const KEY_ENV: &str = "JITGATE_SECRETS_KEY";
/// The key file's name in the data directory when no other is given.
pub const DEFAULT_KEY_FILE: &str = "secrets.key";
const LOCK_FILE: &str = "jitgate.lock";

/// Where the keys came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File { path: PathBuf, created: bool },
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env => write!(f, "{KEY_ENV}"),
            KeySource::File { path, .. } => write!(f, "the secrets key file {}", path.display()),
        }
    }
}

/// The keyring for `serve`: from `JITGATE_SECRETS_KEY`, else from the key file (the flag, or
/// `DATA_DIR/secrets.key`), which is made (0600) when it does not exist yet.
pub fn load_keys(data_dir: &Path, key_file: Option<&Path>) -> anyhow::Result<(Keyring, KeySource)> {
    if let Some(text) = std::env::var(KEY_ENV).ok().filter(|t| !t.trim().is_empty()) {
        if let Some(f) = key_file {
            bail!("both {KEY_ENV} and --secrets-key-file {} are set: use one", f.display());
        }
        let keys = Keyring::parse(&text).map_err(|e| anyhow::anyhow!("{KEY_ENV}: {e}"))?;
        return Ok((keys, KeySource::Env));
    }
    let path = key_file.map(Path::to_path_buf).unwrap_or_else(|| data_dir.join(DEFAULT_KEY_FILE));
    if path.exists() {
        tighten(&path)?;
        let keys = read_key_file(&path)?;
        return Ok((keys, KeySource::File { path, created: false }));
    }
    let keys = Keyring::generate().map_err(|e| anyhow::anyhow!(e))?;
    write_new_private(&path, keys.to_text().as_bytes())
        .with_context(|| format!("making the secrets key file {}", path.display()))?;
    tracing::info!(file = %path.display(), key = keys.current().id(), "made a new secrets key");
    Ok((keys, KeySource::File { path, created: true }))
}

fn read_key_file(path: &Path) -> anyhow::Result<Keyring> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the secrets key file {}", path.display()))?;
    Keyring::parse(&text).map_err(|e| anyhow::anyhow!("the secrets key file {}: {e}", path.display()))
}

/// Opens the store with `keys`, turning a key that does not fit into an error that says so (and
/// removing a key file made a moment ago for it, so the next start is not misled by it).
pub fn open_store(db: &Path, keys: Keyring, source: &KeySource) -> anyhow::Result<SqliteStore> {
    match SqliteStore::open(db, keys) {
        Ok(s) => Ok(s),
        Err(e) => {
            let text = e.to_string();
            if let KeySource::File { path, created: true } = source {
                let _ = std::fs::remove_file(path);
            }
            if text.contains("webhook secrets:") {
                bail!(
                    "opening {}: {text}. The secrets key from {source} is not the one the database's webhook secrets were sealed with: give the right one (--secrets-key-file or {KEY_ENV})",
                    db.display()
                );
            }
            Err(anyhow::anyhow!(text)).with_context(|| format!("opening {}", db.display()))
        }
    }
}

/// Opens the PostgreSQL store at `url` with `keys`, turning a key that does not fit into an error
/// that says so (as [`open_store`] does for SQLite).
pub async fn open_postgres(url: &str, keys: Keyring, source: &KeySource) -> anyhow::Result<PgStore> {
    match PgStore::open(url, keys).await {
        Ok(s) => Ok(s),
        Err(e) => {
            let text = e.to_string();
            if let KeySource::File { path, created: true } = source {
                let _ = std::fs::remove_file(path);
            }
            let shown = jitgate_store_postgres::redact(url);
            if text.contains("webhook secrets:") {
                bail!(
                    "opening {shown}: {text}. The secrets key from {source} is not the one the database's webhook secrets were sealed with: give the right one (--secrets-key-file or {KEY_ENV})"
                );
            }
            Err(anyhow::anyhow!(text)).with_context(|| format!("opening {shown}"))
        }
    }
}

/// Records in the audit log that webhook secrets were sealed or re-sealed at open.
pub async fn audit_sealing(
    store: &(impl AuditStore + ?Sized),
    sealed: usize,
    resealed: usize,
    keys_id: &str,
    why: &str,
) -> anyhow::Result<()> {
    if sealed + resealed == 0 {
        return Ok(());
    }
    let event = AuditEvent {
        time: time::OffsetDateTime::now_utc(),
        operation: "jitgate/secrets/seal/action".into(),
        status: AuditStatus::Started,
        caller: "jitgate".into(),
        caller_ip: None,
        resource_id: "/webhooks".into(),
        correlation_id: format!("secrets-{keys_id}"),
        properties: Default::default(),
    }
    .succeeded()
    .with("reason", why)
    .with("keyId", keys_id)
    .with("sealed", sealed.to_string())
    .with("resealed", resealed.to_string());
    store.record(event).await.map_err(|e| anyhow::anyhow!(e))
}

/// `jitgate secrets generate`: a new key, printed.
pub fn generate() -> anyhow::Result<()> {
    println!("{}", SecretKey::generate().map_err(|e| anyhow::anyhow!(e))?.encode());
    Ok(())
}

/// `jitgate secrets rotate`: a new key first in the file (the old ones kept, so a crash at any
/// point leaves a file that opens every secret), every secret re-sealed under it in one
/// transaction, then the old keys retired from the file.
pub async fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    if std::env::var(KEY_ENV).is_ok_and(|t| !t.trim().is_empty()) {
        bail!(
            "the keys come from {KEY_ENV}: rotate by setting it to \"NEW,OLD\" (NEW from `jitgate secrets generate`) and restarting the server, which re-seals every secret under NEW at start; then drop OLD"
        );
    }
    let db = args.data_dir.join("jitgate.db");
    if !db.exists() {
        bail!("no database at {}", db.display());
    }
    let _lock = lock_data_dir(&args.data_dir)?;
    let path = args.secrets_key_file.clone().unwrap_or_else(|| args.data_dir.join(DEFAULT_KEY_FILE));
    if !path.exists() {
        bail!("no secrets key file at {} (give --secrets-key-file)", path.display());
    }
    tighten(&path)?;
    let old = read_key_file(&path)?;
    let source = KeySource::File { path: path.clone(), created: false };
    // The old keys must open every secret before anything changes.
    drop(open_store(&db, old.clone(), &source)?);
    let new = SecretKey::generate().map_err(|e| anyhow::anyhow!(e))?;
    let both = Keyring::new(new.clone(), old.keys().to_vec());
    replace_private(&path, both.to_text().as_bytes())
        .with_context(|| format!("writing the secrets key file {}", path.display()))?;
    let store = open_store(&db, both.clone(), &source)?;
    let report = store.seal_report();
    audit_sealing(&store, report.sealed, report.resealed, new.id(), "rotation").await?;
    drop(store);
    let retired = if args.keep_old {
        Vec::new()
    } else {
        let only_new = Keyring::new(new.clone(), vec![]);
        replace_private(&path, only_new.to_text().as_bytes())
            .with_context(|| format!("writing the secrets key file {}", path.display()))?;
        old.ids()
    };
    println!(
        "secrets key rotated: {} webhook secret(s) re-sealed under key {} in {}{}",
        report.resealed + report.sealed + report.current,
        new.id(),
        path.display(),
        if retired.is_empty() {
            String::from("; the old keys stay for opening only")
        } else {
            format!("; retired {}", retired.join(", "))
        }
    );
    Ok(())
}

/// Holds the data directory for this process: a second server, or a rotation while a server
/// runs, is refused instead of changing what the other one relies on.
pub struct DataDirLock {
    _file: File,
}

pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = data_dir.join(LOCK_FILE);
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(&path).with_context(|| format!("opening {}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            // The holder's PID, for the message a second process prints.
            use std::io::Seek;
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = writeln!(file, "{}", std::process::id());
            let _ = file.sync_all();
            Ok(DataDirLock { _file: file })
        }
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
                .map(|pid| format!(" (PID {pid})"))
                .unwrap_or_default();
            bail!(
                "another jitgate process{holder} holds the data directory {}: stop it first, or give this one \
                 its own --data-dir",
                data_dir.display()
            )
        }
        Err(e) => Err(anyhow::anyhow!("locking {}: {e}", path.display())),
    }
}

/// Creates `path` with `contents`, readable by its owner only; fails if it exists.
pub fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()?;
    sync_parent(path)
}

/// Replaces `path` atomically (a temporary file, synced, renamed over it), mode 0600.
pub fn replace_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    write_new_private(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Takes group and other permissions off a file (0644 → 0600, 0444 → 0400), saying so.
pub fn tighten(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_file() && mode & 0o077 != 0 {
            let tight = mode & 0o700;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(tight))
                .with_context(|| format!("restricting {} to its owner", path.display()))?;
            tracing::warn!(file = %path.display(), from = format!("{mode:04o}"), to = format!("{tight:04o}"), "restricted a file to its owner");
            eprintln!("jitgate: {} was mode {mode:04o}; restricted to {tight:04o} (owner only)", path.display());
        }
    }
    Ok(())
}

/// At `serve` start: warns when the data directory lets group or others in, and restricts the
/// files and directories the server keeps there (database, WAL, TLS key and certificate, key file,
/// lock, archives) to their owner. Nothing else in the directory is touched.
pub fn secure_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data_dir)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %data_dir.display(), mode = format!("{mode:04o}"), "the data directory is open to group or others");
            eprintln!(
                "jitgate: WARNING: the data directory {} is mode {mode:04o}: group or others may enter it. The server keeps its files owner-only, but `chmod 700 {}` is safer.",
                data_dir.display(),
                data_dir.display()
            );
        }
        let mut files: Vec<PathBuf> =
            ["jitgate.db", "jitgate.db-wal", "jitgate.db-shm", "jitgate.db-journal", LOCK_FILE, DEFAULT_KEY_FILE]
                .iter()
                .map(|f| data_dir.join(f))
                .collect();
        for sub in ["tls", "audit-archive"] {
            let dir = data_dir.join(sub);
            let Ok(meta) = std::fs::symlink_metadata(&dir) else { continue };
            if !meta.is_dir() {
                continue;
            }
            let m = meta.permissions().mode() & 0o7777;
            if m & 0o077 != 0 {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(m & 0o700))
                    .with_context(|| format!("restricting {} to its owner", dir.display()))?;
                eprintln!("jitgate: {} was mode {m:04o}; restricted to {:04o} (owner only)", dir.display(), m & 0o700);
            }
            for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                files.push(entry?.path());
            }
        }
        for f in files.iter().filter(|f| f.exists()) {
            tighten(f)?;
        }
    }
    Ok(())
}
