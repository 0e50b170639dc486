//! `jitgate connect VM -- ssh -p {port} user@{host}`: request access for my address, wait until
//! the port is open, run the command with the connection details filled in, and revoke the grant
//! when the command ends (or is interrupted).

use clap::Args;

use jitgate_api_types::arm::RequestOut;

use crate::output::{exit, fail};
use crate::{CliError, ConnArgs};

#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  jitgate connect web1 -- ssh -p {port} admin@{host}
  jitgate connect win1 --port 3389 --for 2h -- xfreerdp /v:{host}:{port}")]
pub struct ConnectArgs {
    /// The VM: ARM id, or name when unique.
    pub vm: String,
    /// The port to open and fill in as {port}.
    #[arg(long, default_value_t = 22)]
    pub port: u16,
    /// How long at most (the grant ends earlier, when the command does).
    #[arg(long = "for", default_value = "30m")]
    pub duration: String,
    /// `my-ip` (default) or a CIDR.
    #[arg(long, default_value = "my-ip")]
    pub source: String,
    /// Why access is needed; recorded with the request and in the audit log.
    #[arg(long)]
    pub justification: Option<String>,
    /// Connect even when the VM has no live enforcement point (nothing closes its ports, so the
    /// request protects nothing).
    #[arg(long)]
    pub allow_unenforced: bool,
    /// The command; `{host}` and `{port}` are replaced by where to connect.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Where to connect: the gateway's address and mapped port, or the VM's own.
fn endpoint(request: &RequestOut, vm_address: Option<&str>, vm_name: &str, port: u16) -> (String, u16) {
    let vm = request.virtual_machines.first();
    let mapped = vm.and_then(|v| v.ports.first()).and_then(|p| p.mapped_port);
    match (vm.and_then(|v| v.public_ip_address.as_deref()), mapped) {
        (Some(ip), Some(p)) => (ip.to_owned(), p),
        _ => (vm_address.unwrap_or(vm_name).to_owned(), port),
    }
}

pub async fn run(args: ConnectArgs) -> Result<i32, CliError> {
    let client = args.conn.connect()?;
    let (vm_id, policy_id) = crate::access::locate(&client, &args.vm).await?;
    let gap = client.native().vm(&vm_id).await?.unsupported_reason;
    if let Some(reason) = gap {
        let what = format!(
            "{} is not enforced ({reason}): no live enforcement point opens or closes its ports",
            crate::output::name_of(&vm_id)
        );
        if !args.allow_unenforced {
            return Err(fail(
                exit::NOT_ENFORCED,
                format!("{what}; run `jitgate agent` on it (or attach it to a gateway), or pass --allow-unenforced"),
            ));
        }
        eprintln!("jitgate: WARNING: {what} (--allow-unenforced)");
    }
    let justification =
        args.justification.clone().unwrap_or_else(|| format!("jitgate connect: {}", args.command.join(" ")));
    let body = crate::access::initiate_body(
        &vm_id,
        &[args.port],
        &args.source,
        None,
        Some(crate::iso_duration(&args.duration)?),
        Some(justification),
    );
    eprintln!("jitgate: requesting port {} of {} and waiting for the enforcement points…", args.port, args.vm);
    let started = std::time::Instant::now();
    let granted = client.arm().initiate(&policy_id, &body, true).await?;
    let id = granted.id.ok_or_else(|| fail(exit::ERROR, "the server answered without a request id"))?;
    let vm = client.native().vm(&vm_id).await?;
    let name = crate::output::name_of(&vm_id);
    let (host, port) = endpoint(&granted, vm.address.as_deref(), &name, args.port);
    let unenforced = crate::output::warn_unenforced(
        granted
            .virtual_machines
            .iter()
            .map(|v| (v.id.as_str(), v.enforcement.as_deref(), v.enforcement_warning.as_deref())),
    );
    if unenforced.is_empty() {
        eprintln!(
            "jitgate: open after {:.0} ms; connecting to {host}:{port} (request {id})",
            started.elapsed().as_secs_f64() * 1000.0
        );
    } else {
        eprintln!("jitgate: recorded, not enforced; connecting to {host}:{port} (request {id})");
    }
    let fill = |s: &String| s.replace("{host}", &host).replace("{port}", &port.to_string());
    let mut child = tokio::process::Command::new(fill(&args.command[0]))
        .args(args.command[1..].iter().map(fill))
        .spawn()
        .map_err(|e| fail(exit::ERROR, format!("starting {}: {e}", args.command[0])));
    let code = match &mut child {
        Ok(c) => {
            let status = tokio::select! {
                s = c.wait() => s.ok(),
                _ = tokio::signal::ctrl_c() => { let _ = c.kill().await; None }
            };
            status.and_then(|s| s.code()).unwrap_or(130)
        }
        Err(_) => exit::ERROR,
    };
    // Whatever happened, the port closes now.
    match client.native().revoke(id, false).await {
        Ok(_) => eprintln!("jitgate: request {id} revoked"),
        Err(e) => eprintln!("jitgate: could not revoke request {id} ({e}); it ends at its end time"),
    }
    child?;
    Ok(code)
}
