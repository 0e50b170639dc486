//! `jitgate access …`: access requests from the terminal.

use clap::{Args, Subcommand};

use crate::{call, ConnArgs};

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
pub async fn locate(client: &reqwest::Client, url: &str, token: &str, vm: &str) -> anyhow::Result<(String, String)> {
    let id = crate::policy::resolve_vm(client, url, token, vm).await?;
    let parts: Vec<&str> = id.split('/').collect();
    let (sub, rg) = (parts.get(2).copied().unwrap_or(""), parts.get(4).copied().unwrap_or(""));
    let mut next = Some(format!("{url}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01"));
    while let Some(page) = next {
        let body = call(client.get(&page).bearer_auth(token)).await?;
        for p in body["value"].as_array().into_iter().flatten() {
            let covers = p["properties"]["virtualMachines"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["id"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(&id)));
            if covers {
                return Ok((id, p["id"].as_str().unwrap_or_default().to_owned()));
            }
        }
        next = body["nextLink"].as_str().map(String::from);
    }
    Err(crate::output::fail(crate::output::exit::NOT_FOUND, format!("no JIT policy protects '{id}'")))
}

pub async fn request(args: RequestArgs, format: crate::output::OutputFormat) -> anyhow::Result<()> {
    let (url, token, client) = args.conn.connect()?;
    let (vm_id, policy_id) = locate(&client, &url, &token, &args.vm).await?;
    let ports: Vec<serde_json::Value> = args
        .ports
        .iter()
        .map(|p| {
            let mut port = serde_json::json!({"number": p});
            if args.source != "my-ip" {
                port["allowedSourceAddressPrefix"] = serde_json::json!(args.source);
            }
            match (&args.until, &args.duration) {
                (Some(until), _) => port["endTimeUtc"] = serde_json::json!(until),
                (None, d) => {
                    port["duration"] =
                        serde_json::json!(crate::iso_duration(d.as_deref().unwrap_or("1h")).unwrap_or_default())
                }
            }
            port
        })
        .collect();
    let mut body = serde_json::json!({"virtualMachines": [{"id": vm_id, "ports": ports}]});
    if let Some(j) = &args.justification {
        body["justification"] = serde_json::json!(j);
    }
    let wait = if args.wait { "&wait=applied" } else { "" };
    if args.wait {
        eprintln!("jitgate: waiting for the enforcement points to open the port…");
    }
    let started = std::time::Instant::now();
    let out = call(
        client.post(format!("{url}{policy_id}/initiate?api-version=2020-01-01{wait}")).bearer_auth(&token).json(&body),
    )
    .await?;
    if args.wait {
        eprintln!("jitgate: open on every enforcement point after {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
    }
    let vm = call(client.get(format!("{url}/api/v1/vms")).query(&[("id", &vm_id)]).bearer_auth(&token)).await.ok();
    print_request_at(format, &out, vm.as_ref().and_then(|v| v["address"].as_str()));
    Ok(())
}

/// A request as a table (or JSON/YAML): VM, port, status, until, and where to connect.
pub fn print_request(format: crate::output::OutputFormat, out: &serde_json::Value) {
    print_request_at(format, out, None)
}

/// The same, connecting to `address` (the VM's own) when no gateway mapping applies.
pub fn print_request_at(format: crate::output::OutputFormat, out: &serde_json::Value, address: Option<&str>) {
    crate::output::print(format, out, |o| {
        println!("request {}", o["id"]);
        let mut rows = Vec::new();
        for vm in o["virtualMachines"].as_array().into_iter().flatten() {
            let name = vm["id"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("").to_owned();
            for p in vm["ports"].as_array().into_iter().flatten() {
                let connect = match (vm["publicIpAddress"].as_str(), p["mappedPort"].as_u64()) {
                    (Some(ip), Some(m)) => format!("{ip}:{m}"),
                    _ => format!("{}:{}", address.unwrap_or(&name), p["number"]),
                };
                rows.push(vec![
                    name.clone(),
                    p["number"].to_string(),
                    p["status"].as_str().unwrap_or("").into(),
                    p["endTimeUtc"].as_str().unwrap_or("").into(),
                    connect,
                ]);
            }
        }
        crate::output::table(&["VM", "PORT", "STATUS", "UNTIL", "CONNECT TO"], &rows);
        if let Some(end) = o["pendingExtensionEndTimeUtc"].as_str() {
            println!("an extension until {end} waits for an approver (jitgate access approve {})", o["id"]);
        }
    });
}

pub async fn revoke(args: RevokeArgs, format: crate::output::OutputFormat) -> anyhow::Result<()> {
    let (url, token, client) = args.conn.connect()?;
    let wait = if args.wait { "?wait=applied" } else { "" };
    let out = call(client.post(format!("{url}/api/v1/requests/{}/revoke{wait}", args.id)).bearer_auth(token)).await?;
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

pub async fn decide(args: DecideArgs, approve: bool, format: crate::output::OutputFormat) -> anyhow::Result<()> {
    let (url, token, client) = args.conn.connect()?;
    let verb = if approve { "approve" } else { "deny" };
    let wait = if args.wait && approve { "?wait=applied" } else { "" };
    let body = serde_json::json!({"reason": args.reason});
    let out =
        call(client.post(format!("{url}/api/v1/requests/{}/{verb}{wait}", args.id)).bearer_auth(token).json(&body))
            .await?;
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

pub async fn extend(args: ExtendArgs, format: crate::output::OutputFormat) -> anyhow::Result<()> {
    let (url, token, client) = args.conn.connect()?;
    let wait = if args.wait { "?wait=applied" } else { "" };
    let body = serde_json::json!({"duration": crate::iso_duration(&args.duration)?});
    let out =
        call(client.post(format!("{url}/api/v1/requests/{}/extend{wait}", args.id)).bearer_auth(token).json(&body))
            .await?;
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

pub async fn list(args: ListArgs, format: crate::output::OutputFormat) -> anyhow::Result<()> {
    let (url, token, client) = args.conn.connect()?;
    let sub = crate::policy::subscription(&args.subscription)?;
    let mut next = Some(format!(
        "{url}/subscriptions/{sub}/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01"
    ));
    let vm = match &args.vm {
        Some(v) => Some(crate::policy::resolve_vm(&client, &url, &token, v).await?.to_ascii_lowercase()),
        None => None,
    };
    let mut requests = Vec::new();
    while let Some(u) = next {
        let page = call(client.get(&u).bearer_auth(&token)).await?;
        for p in page["value"].as_array().into_iter().flatten() {
            for r in p["properties"]["requests"].as_array().into_iter().flatten() {
                let ports: Vec<&serde_json::Value> = r["virtualMachines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|v| v["ports"].as_array().into_iter().flatten())
                    .collect();
                let on_vm = vm.as_ref().is_none_or(|id| {
                    r["virtualMachines"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|v| v["id"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(id)))
                });
                let active =
                    ports.iter().any(|p| matches!(p["status"].as_str(), Some("Initiated" | "Pending" | "Scheduled")));
                if on_vm && (!args.active || active) {
                    let mut r = r.clone();
                    r["policyId"] = p["id"].clone();
                    requests.push(r);
                }
            }
        }
        next = page["nextLink"].as_str().map(String::from);
    }
    let value = serde_json::json!({"value": requests});
    crate::output::print(format, &value, |v| {
        let mut rows = Vec::new();
        for r in v["value"].as_array().into_iter().flatten() {
            for vm in r["virtualMachines"].as_array().into_iter().flatten() {
                let name = vm["id"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("").to_owned();
                for p in vm["ports"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        r["id"].to_string(),
                        name.clone(),
                        p["number"].to_string(),
                        p["status"].as_str().unwrap_or("").into(),
                        p["statusReason"].as_str().unwrap_or("").into(),
                        r["requestor"].as_str().unwrap_or("").into(),
                        p["endTimeUtc"].as_str().unwrap_or("").into(),
                    ]);
                }
            }
        }
        crate::output::table(&["ID", "VM", "PORT", "STATUS", "REASON", "REQUESTOR", "UNTIL"], &rows);
    });
    Ok(())
}
