//! `jitgate migrate`, `export`, `import` and `backup`: the store itself, not the API. Carried out
//! by the binary, which owns the concrete stores.

use std::path::PathBuf;

use clap::Args;

/// Which store a command works on: the SQLite database in a data directory, or a PostgreSQL
/// database.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The data directory of a SQLite store (its database is jitgate.db there).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL store: postgres://USER[:PASSWORD]@HOST:5432/DB.
    #[arg(long, env = "JITGATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// The store [`StoreArgs`] name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreArgs {
    /// `--data-dir` or `--database-url`, exactly one. A database URL that comes from
    /// `JITGATE_DATABASE_URL` gives way to a `--data-dir` on the command line.
    pub fn location(&self) -> Result<StoreLocation, String> {
        let from_env = std::env::var("JITGATE_DATABASE_URL").ok();
        match (&self.data_dir, &self.database_url) {
            (Some(dir), None) => Ok(StoreLocation::Sqlite(dir.clone())),
            (None, Some(url)) => Ok(StoreLocation::Postgres(url.clone())),
            (Some(dir), Some(url)) if from_env.as_deref() == Some(url.as_str()) => {
                Ok(StoreLocation::Sqlite(dir.clone()))
            }
            (Some(_), Some(_)) => Err("give --data-dir or --database-url, not both".into()),
            (None, None) => Err("name the store: --data-dir DIR (SQLite) or --database-url URL (PostgreSQL)".into()),
        }
    }
}

/// `jitgate migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `jitgate export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where to write the export (a new file, mode 0600), or - for standard output.
    #[arg(long, default_value = "-")]
    pub out: String,
}

/// `jitgate import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The export to read, or - for standard input.
    #[arg(long = "in", default_value = "-")]
    pub input: String,
}

/// `jitgate backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The data directory of the SQLite store to copy (its database is jitgate.db there).
    #[arg(long, env = "JITGATE_DATA_DIR", default_value = "./jitgate-data")]
    pub data_dir: PathBuf,
    /// The copy: a new database file (mode 0600).
    #[arg(long)]
    pub out: PathBuf,
}

pub const MIGRATE_EXAMPLES: &str = "Examples:
  jitgate migrate --database-url postgres://jitgate@db.example:5432/jitgate
  JITGATE_DATABASE_URL=postgres://jitgate@db.example:5432/jitgate jitgate migrate
  jitgate migrate --data-dir /var/lib/jitgate     # SQLite; stop the server first";

pub const EXPORT_EXAMPLES: &str = "Examples:
  jitgate export --data-dir /var/lib/jitgate --out jitgate.jsonl     # while the server runs
  jitgate export --database-url postgres://jitgate@db.example/jitgate > jitgate.jsonl";

pub const IMPORT_EXAMPLES: &str = "Examples:
  jitgate import --database-url postgres://jitgate@db.example/jitgate --in jitgate.jsonl
  jitgate export --data-dir /var/lib/jitgate | jitgate import --database-url postgres://jitgate@db.example/jitgate
  jitgate import --data-dir /var/lib/jitgate-new --in jitgate.jsonl  # SQLite; no server on it
Start the server on the new store with the same secrets key (DATA_DIR/secrets.key or
JITGATE_SECRETS_KEY): webhook secrets are copied sealed under it.";

pub const BACKUP_EXAMPLES: &str = "Examples:
  jitgate backup --data-dir /var/lib/jitgate --out /backup/jitgate-$(date +%F).db   # while the server runs
Restore: stop the server, put the copy in place as DATA_DIR/jitgate.db, start it.";
