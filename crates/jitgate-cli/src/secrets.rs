//! `jitgate secrets`: the key that seals webhook secrets at rest. Carried out by the binary, which
//! owns the concrete store.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    pub command: SecretsCommand,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Make a new secrets key, re-seal every webhook secret under it in one transaction, and
    /// retire the old key from the key file. Stop the server first (the command refuses while a
    /// server holds the data directory).
    #[command(
        after_help = "Examples:\n  jitgate secrets rotate --data-dir /var/lib/jitgate\n  jitgate secrets rotate --data-dir /var/lib/jitgate --secrets-key-file /etc/jitgate/secrets.key\n  jitgate secrets rotate --data-dir /var/lib/jitgate --keep-old   # the old key stays for opening only"
    )]
    Rotate(RotateArgs),
    /// Print a new random secrets key (for JITGATE_SECRETS_KEY: put it first, the old one after a
    /// comma, restart the server, then drop the old one).
    #[command(
        after_help = "Example:\n  JITGATE_SECRETS_KEY=\"$(jitgate secrets generate),$JITGATE_SECRETS_KEY\" jitgate serve"
    )]
    Generate,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The server's data directory (its database is jitgate.db there).
    #[arg(long, env = "JITGATE_DATA_DIR", default_value = "./jitgate-data")]
    pub data_dir: PathBuf,
    /// The key file (default: DATA_DIR/secrets.key).
    #[arg(long, env = "JITGATE_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// Keep the old keys in the file (for opening only) instead of retiring them.
    #[arg(long)]
    pub keep_old: bool,
}
