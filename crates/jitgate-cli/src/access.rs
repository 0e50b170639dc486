//! `jitgate access …`: access requests from the terminal.

use clap::{Args, Subcommand};

use jitgate_api_types::arm::{InitiateIn, InitiatePortIn, InitiateVmIn, RequestOut};
use jitgate_api_types::native::{DecisionIn, ExtendIn, ListOut, NativeRequestOut};
use jitgate_client::arm::PolicyScope;
use jitgate_client::native::Decision;
use jitgate_client::Client;

use crate::output::{name_of, number, OutputFormat};
use crate::{CliError, ConnArgs};

#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    #[command(subcommand)]
    pub command: AccessCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AccessCommand {
    /// Request access to ports of a VM (what Start-AzJitNetworkAccessPolicy does).
    Request(RequestArgs),
    /// End a request's grants now ("I'm done"); the ports close at once.
    #[command(after_help = "Example:\n  jitgate access revoke 42 --wait")]
    Revoke(RevokeArgs),
    /// List access requests (from the policies' histories) with their state.
    #[command(after_help = "Example:\n  jitgate access list --active\n  jitgate access list --vm web1 -o json")]
    List(ListArgs),
    /// Approve a request that waits for an approver (its window starts now).
    #[command(after_help = "Example:\n  jitgate access approve 42 --reason \"change CHG-1234\" --wait")]
    Approve(DecideArgs),
    /// Deny a request that waits for an approver.
    #[command(after_help = "Example:\n  jitgate access deny 42 --reason \"not during the freeze\"")]
    Deny(DecideArgs),
    /// Keep a granted port open longer (up to the port's maximum from now).
    #[command(after_help = "Example:\n  jitgate access extend 42 --for 2h --wait")]
    Extend(ExtendArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    /// The request id (the `id` of the initiate answer).
    pub id: i64,
    /// Wait until every enforcement point has closed the ports.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Examples:\n  jitgate access request --vm web1 --port 22 --for 1h --wait\n  jitgate access request --vm /subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/web1 --port 22 --port 3389 --source 203.0.113.0/24 --until 2026-11-25T18:00:00Z"
)]
pub struct RequestArgs {
    /// The VM: its ARM id, or its name when that is unique among registered VMs.
    #[arg(long)]
    pub vm: String,
    /// A port to open (repeat for several).
    #[arg(long = "port", required = true)]
    pub ports: Vec<u16>,
    /// The source to open for: `my-ip` (the default: the address the server sees) or a CIDR.
    #[arg(long, default_value = "my-ip")]
    pub source: String,
    /// How long: 30m, 1h, PT2H … (default 1h).
    #[arg(long = "for", conflicts_with = "until")]
    pub duration: Option<String>,
    /// Until when (RFC 3339, e.g. 2026-11-25T18:00:00Z).
    #[arg(long)]
    pub until: Option<String>,
    /// Why access is needed; recorded with the request and in the audit log.
    #[arg(long)]
    pub justification: Option<String>,
    /// Wait until every enforcement point has opened the ports; prints how long it took.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Finds the VM's ARM id and the policy that protects it.
pub async fn locate(client: &Client, vm: &str) -> Result<(String, String), CliError> {
    let id = crate::policy::resolve_vm(client, vm).await?;
    let parts: Vec<&str> = id.split('/').collect();
    let scope = PolicyScope {
        subscription: parts.get(2).copied().unwrap_or("").to_owned(),
        resource_group: Some(parts.get(4).copied().unwrap_or("").to_owned()),
        location: None,
    };
    for p in client.arm().list_policies(&scope).await? {
        if p.properties.virtual_machines.iter().any(|v| v.id.eq_ignore_ascii_case(&id)) {
            return Ok((id, p.id));
        }
    }
    Err(crate::output::fail(crate::output::exit::NOT_FOUND, format!("no JIT policy protects '{id}'")))
}

/// The initiate body for `ports` of `vm_id`: from `source` (`my-ip`: the address the server
/// sees), until `until` or for `duration`.
pub fn initiate_body(
    vm_id: &str,
    ports: &[u16],
    source: &str,
    until: Option<&str>,
    duration: Option<String>,
    justification: Option<String>,
) -> InitiateIn {
    let ports = ports
        .iter()
        .map(|p| InitiatePortIn {
            number: Some(i64::from(*p)),
            allowed_source_address_prefix: (source != "my-ip").then(|| source.to_owned()),
            end_time_utc: until.map(str::to_owned),
            duration: if until.is_some() { None } else { duration.clone() },
            ..InitiatePortIn::default()
        })
        .collect();
    InitiateIn {
        virtual_machines: Some(vec![InitiateVmIn { id: Some(vm_id.to_owned()), ports: Some(ports) }]),
        justification,
        start_time_utc: None,
    }
}

pub async fn request(args: RequestArgs, format: OutputFormat) -> Result<(), CliError> {
    let client = args.conn.connect()?;
    let (vm_id, policy_id) = locate(&client, &args.vm).await?;
    let duration = crate::iso_duration(args.duration.as_deref().unwrap_or("1h")).unwrap_or_default();
    let body = initiate_body(
        &vm_id,
        &args.ports,
        &args.source,
        args.until.as_deref(),
        Some(duration),
        args.justification.clone(),
    );
    if args.wait {
        eprintln!("jitgate: waiting for the enforcement points to open the port…");
    }
    let started = std::time::Instant::now();
    let out = client.arm().initiate(&policy_id, &body, args.wait).await?;
    let none = crate::output::warn_unenforced(
        out.virtual_machines
            .iter()
            .map(|v| (v.id.as_str(), v.enforcement.as_deref(), v.enforcement_warning.as_deref())),
    );
    if args.wait && none.is_empty() {
        eprintln!("jitgate: open on every enforcement point after {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
    }
    let vm = client.native().vm(&vm_id).await.ok();
    print_request_at(format, &out, &out, None, vm.as_ref().and_then(|v| v.address.as_deref()));
    if args.wait && !none.is_empty() {
        return Err(crate::output::fail(
            crate::output::exit::NOT_ENFORCED,
            format!(
                "the request is recorded, but {} has no enforcement point: nothing opened the port (run `jitgate agent` on it, or attach it to a gateway)",
                none.join(", ")
            ),
        ));
    }
    Ok(())
}

/// A request as a table (or JSON/YAML): VM, port, status, until, and where to connect.
pub fn print_request(format: OutputFormat, out: &NativeRequestOut) {
    print_request_at(format, out, &out.request, out.pending_extension_end_time_utc.as_deref(), None)
}

/// The same for `out` (whose request is `r`), connecting to `address` (the VM's own) when no
/// gateway mapping applies; `pending` is the end a waiting extension asks for.
pub fn print_request_at<T: serde::Serialize>(
    format: OutputFormat,
    out: &T,
    r: &RequestOut,
    pending: Option<&str>,
    address: Option<&str>,
) {
    crate::output::print(format, out, |_| {
        println!("request {}", number(r.id));
        let mut rows = Vec::new();
        for vm in &r.virtual_machines {
            let name = name_of(&vm.id);
            for p in &vm.ports {
                let connect = match (&vm.public_ip_address, p.mapped_port) {
                    (Some(ip), Some(m)) => host_port(ip, m),
                    _ => host_port(address.unwrap_or(&name), p.number),
                };
                rows.push(vec![name.clone(), p.number.to_string(), p.status.clone(), p.end_time_utc.clone(), connect]);
            }
        }
        crate::output::table(&["VM", "PORT", "STATUS", "UNTIL", "CONNECT TO"], &rows);
        if let Some(reason) = &r.decision_reason {
            println!("the approver's reason: {reason}");
        }
        if let Some(end) = pending {
            println!("an extension until {end} waits for an approver (jitgate access approve {})", number(r.id));
        }
    });
}

pub async fn revoke(args: RevokeArgs, format: OutputFormat) -> Result<(), CliError> {
    let client = args.conn.connect()?;
    let out = client.native().revoke(args.id, args.wait).await?;
    print_request(format, &out);
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct DecideArgs {
    /// The request id.
    pub id: i64,
    /// Why (recorded in the audit log).
    #[arg(long)]
    pub reason: Option<String>,
    /// Approve only: wait until every enforcement point has opened the ports.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn decide(args: DecideArgs, approve: bool, format: OutputFormat) -> Result<(), CliError> {
    let client = args.conn.connect()?;
    let decision = if approve { Decision::Approve } else { Decision::Deny };
    let body = DecisionIn { reason: args.reason.clone() };
    let out = client.native().decide(args.id, decision, &body, args.wait).await?;
    print_request(format, &out);
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct ExtendArgs {
    /// The request's id (from `jitgate access list`).
    pub id: i64,
    /// The new length from now: 30m, 1h, PT2H …
    #[arg(long = "for")]
    pub duration: String,
    /// Wait until every enforcement point has the new end.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn extend(args: ExtendArgs, format: OutputFormat) -> Result<(), CliError> {
    let client = args.conn.connect()?;
    let body = ExtendIn { duration: Some(crate::iso_duration(&args.duration)?), end_time_utc: None };
    let out = client.native().extend(args.id, &body, args.wait).await?;
    print_request(format, &out);
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Default: JITGATE_SUBSCRIPTION or the profile's.
    #[arg(long, env = "JITGATE_SUBSCRIPTION")]
    pub subscription: Option<String>,
    /// Only this VM (ARM id or name).
    #[arg(long)]
    pub vm: Option<String>,
    /// Only requests with a port still open or waiting.
    #[arg(long)]
    pub active: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn list(args: ListArgs, format: OutputFormat) -> Result<(), CliError> {
    let client = args.conn.connect()?;
    let sub = crate::policy::subscription(&args.subscription)?;
    let vm = match &args.vm {
        Some(v) => Some(crate::policy::resolve_vm(&client, v).await?.to_ascii_lowercase()),
        None => None,
    };
    let scope = PolicyScope { subscription: sub, resource_group: None, location: None };
    let mut requests = Vec::new();
    for p in client.arm().list_policies(&scope).await? {
        for r in p.properties.requests {
            let on_vm = vm.as_ref().is_none_or(|id| r.virtual_machines.iter().any(|v| v.id.eq_ignore_ascii_case(id)));
            let active = r
                .virtual_machines
                .iter()
                .flat_map(|v| &v.ports)
                .any(|p| matches!(p.status.as_str(), "Initiated" | "Pending" | "Scheduled"));
            if on_vm && (!args.active || active) {
                requests.push(NativeRequestOut {
                    request: r,
                    policy_id: Some(p.id.clone()),
                    pending_extension_end_time_utc: None,
                });
            }
        }
    }
    crate::output::print(format, &ListOut { value: requests }, |v| {
        let mut rows = Vec::new();
        for r in v.value.iter().map(|r| &r.request) {
            for vm in &r.virtual_machines {
                let name = name_of(&vm.id);
                for p in &vm.ports {
                    rows.push(vec![
                        number(r.id),
                        name.clone(),
                        p.number.to_string(),
                        p.status.clone(),
                        p.status_reason.clone(),
                        r.requestor.clone(),
                        p.end_time_utc.clone(),
                    ]);
                }
            }
        }
        crate::output::table(&["ID", "VM", "PORT", "STATUS", "REASON", "REQUESTOR", "UNTIL"], &rows);
    });
    Ok(())
}

/// `host:port`, with an IPv6 address in brackets (`[2001:db8::1]:22`).
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(super::host_port("203.0.113.10", 52222), "203.0.113.10:52222");
        assert_eq!(super::host_port("2001:db8::10", 52222), "[2001:db8::10]:52222");
        assert_eq!(super::host_port("web1", 22), "web1:22");
    }
}
