//! `jitgate audit …`: list, export and verify the audit log.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::{call, ConnArgs};

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Show audit records (newest filters first: --from/--to/--caller/--resource-id/--operation/--status).
    #[command(
        after_help = "Example:\n  jitgate audit list --caller alice --status Failed\n  jitgate audit list --resource-id /subscriptions/$SUB/resourceGroups/prod --from 2026-11-01T00:00:00Z"
    )]
    List(QueryArgs),
    /// Write every matching record, following the pages, as JSON lines or CSV.
    #[command(
        after_help = "Example:\n  jitgate audit export --format csv > audit.csv\n  jitgate audit export --format jsonl --from 2026-11-01T00:00:00Z"
    )]
    Export(QueryArgs),
    /// Verify the hash chain: through the API, or offline on a data directory (--data-dir).
    #[command(
        after_help = "Examples:\n  jitgate audit verify\n  jitgate audit verify --data-dir /var/lib/jitgate     # offline, no server needed\nExit status: 0 intact, 1 broken (the first bad record is named), 2 usage."
    )]
    Verify(VerifyArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Jsonl,
    Csv,
}

#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// Records at or after this time (RFC 3339).
    #[arg(long)]
    pub from: Option<String>,
    /// Records before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
    /// Records of this principal.
    #[arg(long)]
    pub caller: Option<String>,
    /// Records about this resource or anything under it (an ARM id prefix).
    #[arg(long)]
    pub resource_id: Option<String>,
    /// Records of this operation (an action string).
    #[arg(long)]
    pub operation: Option<String>,
    /// Succeeded or Failed.
    #[arg(long)]
    pub status: Option<String>,
    /// table, jsonl (one record a line) or csv.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Verify the database in this data directory directly, without a server.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

const FIELDS: [&str; 9] = [
    "sequence",
    "eventTimestamp",
    "operationName",
    "status",
    "caller",
    "callerIpAddress",
    "resourceId",
    "correlationId",
    "properties",
];

fn csv_cell(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Lists or exports; with `all`, follows every nextLink.
pub async fn query(args: QueryArgs, all: bool) -> anyhow::Result<()> {
    let (url, token, client) = args.conn.connect()?;
    let mut params: Vec<(&str, String)> = Vec::new();
    for (k, v) in [
        ("from", &args.from),
        ("to", &args.to),
        ("caller", &args.caller),
        ("resourceId", &args.resource_id),
        ("operation", &args.operation),
        ("status", &args.status),
    ] {
        if let Some(v) = v {
            params.push((k, v.clone()));
        }
    }
    let mut next = Some(client.get(format!("{url}/api/v1/audit")).query(&params).bearer_auth(&token));
    if args.format == Format::Csv {
        println!("{}", FIELDS.join(","));
    }
    while let Some(req) = next.take() {
        let page = call(req).await?;
        for r in page["value"].as_array().into_iter().flatten() {
            match args.format {
                Format::Jsonl => println!("{}", serde_json::to_string(r)?),
                Format::Csv => println!("{}", FIELDS.iter().map(|f| csv_cell(&r[*f])).collect::<Vec<_>>().join(",")),
                Format::Table => println!(
                    "{:>6}  {}  {:<9}  {:<16}  {}  {}",
                    r["sequence"],
                    r["eventTimestamp"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or(""),
                    r["caller"].as_str().unwrap_or(""),
                    r["operationName"].as_str().unwrap_or(""),
                    r["resourceId"].as_str().unwrap_or("")
                ),
            }
        }
        if all || args.format != Format::Table {
            next = page["nextLink"].as_str().map(|l| client.get(l).bearer_auth(&token));
        }
    }
    Ok(())
}
