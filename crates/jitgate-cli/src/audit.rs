//! `jitgate audit …`: list, export and verify the audit log.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use jitgate_api_types::audit::AuditRecordOut;
use jitgate_client::native::AuditQuery;

use crate::{CliError, ConnArgs};

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

/// A record's cells in the order of [`FIELDS`]; `properties` as compact JSON.
fn csv_row(r: &AuditRecordOut) -> String {
    let cells = [
        r.sequence.to_string(),
        r.event_timestamp.clone(),
        r.operation_name.clone(),
        r.status.clone(),
        r.caller.clone(),
        r.caller_ip_address.clone().unwrap_or_default(),
        r.resource_id.clone(),
        r.correlation_id.clone(),
        serde_json::to_string(&r.properties).unwrap_or_default(),
    ];
    cells.iter().map(|s| csv_cell(s)).collect::<Vec<_>>().join(",")
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Lists or exports; with `all`, follows every nextLink.
pub async fn query(args: QueryArgs, all: bool) -> Result<(), CliError> {
    let client = args.conn.connect()?;
    let q = AuditQuery {
        from: args.from,
        to: args.to,
        caller: args.caller,
        resource_id: args.resource_id,
        operation: args.operation,
        status: args.status,
    };
    let native = client.native();
    let mut pages = native.audit(&q);
    if args.format == Format::Csv {
        println!("{}", FIELDS.join(","));
    }
    if args.format == Format::Table {
        println!("{:<5}  {:<28}  {:<9}  {:<16}  OPERATION  RESOURCE", "SEQ", "TIME", "STATUS", "CALLER");
    }
    while let Some(page) = pages.next_page().await? {
        for r in &page {
            match args.format {
                // Keys in order, as the API's own JSON reads.
                Format::Jsonl => println!("{}", serde_json::to_string(&serde_json::to_value(r)?)?),
                Format::Csv => println!("{}", csv_row(r)),
                Format::Table => println!(
                    "{:<5}  {:<28}  {:<9}  {:<16}  {}  {}",
                    r.sequence, r.event_timestamp, r.status, r.caller, r.operation_name, r.resource_id
                ),
            }
        }
        if !(all || args.format != Format::Table) {
            break;
        }
    }
    Ok(())
}
