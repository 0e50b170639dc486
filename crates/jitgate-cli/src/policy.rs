//! `jitgate policy set|get|list|delete`: JIT policies from the terminal (what
//! Set-AzJitNetworkAccessPolicy and Get-AzJitNetworkAccessPolicy do).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;

use jitgate_api_types::arm::{PolicyIn, PolicyOut, PolicyPropertiesIn, PolicyVmIn, PortRuleIn};
use jitgate_api_types::native::ListOut;
use jitgate_client::arm::{Deleted, PolicyRef, PolicyScope};
use jitgate_client::Client;

use crate::output::{exit, fail, name_of, print, table, OutputFormat};
use crate::{CliError, ConnArgs};

#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Create or replace a policy.
    #[command(after_help = "Examples:
  jitgate policy set -g prod -l westeurope --vm web1 --port 22 --port 3389/tcp,from=10.0.0.0/24,max=PT1H
  jitgate policy set -g prod -l westeurope --vm web2 --port 22,approval,map=50022,cut   # approver, gateway port 50022, cut sessions
  jitgate policy set -g prod -l westeurope --vm web1 --vm web2 --defaults      # Linux 22, Windows 3389
  jitgate policy set -g prod -l westeurope --file policy.json                  # REST body or the $JitPolicy array")]
    Set(SetArgs),
    /// Show one policy.
    #[command(after_help = "Example:\n  jitgate policy get -g prod -l westeurope -o yaml")]
    Get(Where),
    /// List policies (of the subscription, narrowed by --resource-group and --location).
    #[command(after_help = "Example:\n  jitgate policy list\n  jitgate policy list -g prod -l westeurope -o json")]
    List(ListArgs),
    /// Delete a policy (its protection ends).
    #[command(after_help = "Example:\n  jitgate policy delete -g prod -l westeurope --name default")]
    Delete(Where),
}

#[derive(Debug, Clone, Args)]
pub struct Where {
    /// Default: JITGATE_SUBSCRIPTION or the profile's.
    #[arg(long, env = "JITGATE_SUBSCRIPTION")]
    pub subscription: Option<String>,
    /// The resource group the policy belongs to.
    #[arg(long, short = 'g')]
    pub resource_group: String,
    /// The policy's location (region), as in the ARM path.
    #[arg(long, short = 'l')]
    pub location: String,
    /// The policy's name.
    #[arg(long, default_value = "default")]
    pub name: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SetArgs {
    #[command(flatten)]
    pub at: Where,
    /// A VM (ARM id, or its name when unique); the --port options after it are its ports.
    #[arg(long = "vm")]
    pub vms: Vec<String>,
    /// `22[/tcp|/udp|/*][,from=CIDR]…[,max=PT3H][,approval[=PT1H]][,map=50022][,cut]` (defaults:
    /// protocol *, from *, max PT3H). `approval`: requests wait for an approver (for at most the
    /// duration given, default PT1H); `map=P`: a gateway forwards its port P to this one (DNAT);
    /// `cut`: live sessions stop at expiry or revoke.
    #[arg(long = "port")]
    pub ports: Vec<String>,
    /// VMs without --port get their OS's default rule (Linux 22, Windows 3389; *, any source, PT3H).
    #[arg(long)]
    pub defaults: bool,
    /// The policy as JSON: the REST body, or the `$JitPolicy` array of `{"id","ports":[…]}`.
    #[arg(long, conflicts_with_all = ["vms", "ports", "defaults"])]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Default: JITGATE_SUBSCRIPTION or the profile's.
    #[arg(long, env = "JITGATE_SUBSCRIPTION")]
    pub subscription: Option<String>,
    /// Only policies in this resource group.
    #[arg(long, short = 'g')]
    pub resource_group: Option<String>,
    /// Only policies in this location.
    #[arg(long, short = 'l')]
    pub location: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub fn subscription(given: &Option<String>) -> Result<String, CliError> {
    given.clone().or(crate::profile::load().subscription).ok_or_else(|| {
        fail(
            exit::USAGE,
            "no subscription: give --subscription, set JITGATE_SUBSCRIPTION, or `jitgate login --subscription`",
        )
    })
}

fn policy_ref(w: &Where) -> Result<PolicyRef, CliError> {
    Ok(PolicyRef {
        subscription: subscription(&w.subscription)?,
        resource_group: w.resource_group.clone(),
        location: w.location.clone(),
        name: w.name.clone(),
    })
}

/// Parses `22[/tcp][,from=CIDR…][,max=PT3H][,approval[=PT1H]][,map=PORT][,cut]`.
pub fn parse_port(spec: &str) -> Result<PortRuleIn, CliError> {
    let mut parts = spec.split(',');
    let head = parts.next().unwrap_or("");
    let (number, protocol) = match head.split_once('/') {
        Some((n, p)) => (n, p.to_ascii_uppercase()),
        None => (head, "*".to_string()),
    };
    let number: u16 = number
        .trim()
        .parse()
        .map_err(|_| fail(exit::USAGE, format!("--port {spec}: '{number}' is not a port number")))?;
    let protocol = match protocol.as_str() {
        "TCP" | "UDP" | "*" => protocol,
        other => return Err(fail(exit::USAGE, format!("--port {spec}: protocol '{other}' is not tcp, udp or *"))),
    };
    let mut from = Vec::new();
    let mut max = jitgate_core::duration::AccessDuration::from_seconds(jitgate_core::policy::DEFAULT_MAX_DURATION_SECS)
        .text()
        .to_owned();
    let mut rule = PortRuleIn::default();
    for p in parts {
        match p.split_once('=') {
            Some(("from", v)) => from.push(v.to_owned()),
            Some(("max", v)) => max = v.to_owned(),
            Some(("approval", v)) => {
                rule.require_approval = Some(true);
                rule.approval_timeout = Some(crate::iso_duration(v)?);
            }
            Some(("map", v)) => {
                let port: u16 = v.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                    fail(exit::USAGE, format!("--port {spec}: map={v} is not a port number (1-65535)"))
                })?;
                rule.mapped_port = Some(i64::from(port));
            }
            None if p == "approval" => rule.require_approval = Some(true),
            None if p == "cut" => rule.cut_sessions_at_expiry = Some(true),
            _ => {
                return Err(fail(
                    exit::USAGE,
                    format!(
                        "--port {spec}: '{p}' is not from=CIDR, max=DURATION, approval[=DURATION], map=PORT or cut"
                    ),
                ))
            }
        }
    }
    rule.number = Some(i64::from(number));
    rule.protocol = Some(protocol);
    rule.max_request_access_duration = Some(max);
    match from.len() {
        0 => rule.allowed_source_address_prefix = Some("*".to_owned()),
        1 => rule.allowed_source_address_prefix = from.pop(),
        _ => rule.allowed_source_address_prefixes = Some(from),
    }
    Ok(rule)
}

/// A policy body with these VMs and their rules.
fn policy_body(vms: Vec<PolicyVmIn>) -> PolicyIn {
    PolicyIn { kind: Some("Basic".to_owned()), properties: Some(PolicyPropertiesIn { virtual_machines: Some(vms) }) }
}

/// Turns a file's JSON into the REST body: either already one, or the PowerShell `$JitPolicy`
/// array, whose `allowedSourceAddressPrefix` may be a string or an array (`@("*")`). Problems name
/// the field.
pub fn body_from_file(text: &str) -> Result<PolicyIn, CliError> {
    let v: Value = serde_json::from_str(text).map_err(|e| fail(exit::ERROR, format!("the file is not JSON: {e}")))?;
    let rest = v.get("properties").and_then(|p| p.get("virtualMachines")).is_some_and(Value::is_array);
    let vms =
        match v {
            Value::Array(a) => a,
            Value::Object(_) if rest => {
                return jitgate_api_types::parse_json::<PolicyIn>(text.as_bytes()).map_err(|e| {
                    let at = e.target.map(|t| format!("{t}: ")).unwrap_or_default();
                    fail(exit::ERROR, format!("{at}{}", e.message))
                })
            }
            _ => return Err(fail(
                exit::ERROR,
                "the file must hold the REST body (with properties.virtualMachines) or an array of {\"id\",\"ports\"}",
            )),
        };
    let mut out = Vec::new();
    for (i, vm) in vms.iter().enumerate() {
        let id = vm
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| fail(exit::ERROR, format!("[{i}].id: every VM needs its id (a string)")))?;
        let mut ports = Vec::new();
        let listed = vm.get("ports").and_then(Value::as_array);
        for (j, p) in listed.into_iter().flatten().enumerate() {
            ports.push(ps_port(p, &format!("[{i}].ports[{j}]"))?);
        }
        out.push(PolicyVmIn { id: Some(id.to_owned()), ports: Some(ports), public_ip_address: None });
    }
    Ok(policy_body(out))
}

/// One port of the PowerShell shape; `at` names it in errors.
fn ps_port(p: &Value, at: &str) -> Result<PortRuleIn, CliError> {
    let text = |k: &str, v: &Value| -> Result<String, CliError> {
        v.as_str().map(str::to_owned).ok_or_else(|| fail(exit::ERROR, format!("{at}.{k}: {v} is not a string")))
    };
    let texts = |k: &str, a: &[Value]| -> Result<Vec<String>, CliError> { a.iter().map(|x| text(k, x)).collect() };
    let number = p
        .get("number")
        .and_then(Value::as_u64)
        .ok_or_else(|| fail(exit::ERROR, format!("{at}.number: a port number is required")))?;
    let mut rule = PortRuleIn { number: i64::try_from(number).ok(), ..PortRuleIn::default() };
    if let Some(x) = p.get("protocol") {
        rule.protocol = Some(text("protocol", x)?);
    }
    if let Some(x) = p.get("maxRequestAccessDuration") {
        rule.max_request_access_duration = Some(text("maxRequestAccessDuration", x)?);
    }
    const ONE: &str = "allowedSourceAddressPrefix";
    match p.get(ONE) {
        Some(Value::String(s)) => rule.allowed_source_address_prefix = Some(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 => rule.allowed_source_address_prefix = Some(text(ONE, &a[0])?),
        Some(Value::Array(a)) => rule.allowed_source_address_prefixes = Some(texts(ONE, a)?),
        Some(other) => {
            return Err(fail(exit::ERROR, format!("{at}.{ONE}: {other} is not a string or an array of strings")));
        }
        None => {}
    }
    if let Some(x) = p.get("allowedSourceAddressPrefixes") {
        let many = x.as_array().map(Vec::as_slice).unwrap_or_default();
        rule.allowed_source_address_prefixes = Some(texts("allowedSourceAddressPrefixes", many)?);
    }
    Ok(rule)
}

/// A VM's ARM id from its id or its unique name.
pub async fn resolve_vm(client: &Client, vm: &str) -> Result<String, CliError> {
    if vm.starts_with("/subscriptions/") {
        return Ok(vm.to_owned());
    }
    let found: Vec<String> = client
        .native()
        .vms(None)
        .await?
        .into_iter()
        .filter(|v| v.name.eq_ignore_ascii_case(vm))
        .map(|v| v.id)
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(fail(exit::NOT_FOUND, format!("no registered VM is named '{vm}'"))),
        _ => Err(fail(exit::ERROR, format!("several VMs are named '{vm}'; give its ARM id"))),
    }
}

fn print_policy(format: OutputFormat, p: &PolicyOut) {
    print(format, p, |p| {
        let mut rows = Vec::new();
        for vm in &p.properties.virtual_machines {
            let name = name_of(&vm.id);
            for port in &vm.ports {
                let sources = port
                    .allowed_source_address_prefix
                    .clone()
                    .unwrap_or_else(|| port.allowed_source_address_prefixes.as_deref().unwrap_or_default().join(","));
                let mut options = Vec::new();
                if port.require_approval == Some(true) {
                    options.push(match &port.approval_timeout {
                        Some(t) => format!("approval={t}"),
                        None => "approval".to_owned(),
                    });
                }
                if let Some(m) = port.mapped_port {
                    options.push(format!("map={m}"));
                }
                if port.cut_sessions_at_expiry == Some(true) {
                    options.push("cut".to_owned());
                }
                rows.push(vec![
                    name.clone(),
                    port.number.to_string(),
                    port.protocol.clone(),
                    sources,
                    port.max_request_access_duration.clone(),
                    options.join(","),
                ]);
            }
        }
        println!("{} ({})", p.name, p.id);
        table(&["VM", "PORT", "PROTOCOL", "SOURCES", "MAX", "OPTIONS"], &rows);
    });
}

/// `policy set`; `order` holds, in command-line order, which --vm / --port came when.
pub async fn set(args: SetArgs, format: OutputFormat, order: Vec<(bool, String)>) -> Result<(), CliError> {
    let client = args.at.conn.connect()?;
    let target = policy_ref(&args.at)?;
    let body = match &args.file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| fail(exit::ERROR, format!("{}: {e}", path.display())))?;
            let mut b = body_from_file(&text)?;
            let vms = b.properties.as_mut().and_then(|p| p.virtual_machines.as_mut());
            for vm in vms.into_iter().flatten() {
                if let Some(id) = &vm.id {
                    vm.id = Some(resolve_vm(&client, id).await?);
                }
            }
            b
        }
        None => {
            let mut vms: Vec<PolicyVmIn> = Vec::new();
            for (is_vm, value) in order {
                if is_vm {
                    let id = resolve_vm(&client, &value).await?;
                    vms.push(PolicyVmIn { id: Some(id), ports: Some(Vec::new()), public_ip_address: None });
                } else {
                    let Some(last) = vms.last_mut() else {
                        return Err(fail(exit::USAGE, "--port must follow the --vm it belongs to"));
                    };
                    last.ports.get_or_insert_with(Vec::new).push(parse_port(&value)?);
                }
            }
            if vms.is_empty() {
                return Err(fail(exit::USAGE, "name at least one --vm (or give --file)"));
            }
            let bare = vms.iter().find(|v| v.ports.as_ref().is_none_or(Vec::is_empty));
            if let Some(vm) = bare.filter(|_| !args.defaults) {
                let id = vm.id.as_deref().unwrap_or_default();
                return Err(fail(exit::USAGE, format!("--vm {id} has no --port: add ports or --defaults")));
            }
            policy_body(vms)
        }
    };
    let out = client.arm().put_policy(&target, &body).await?;
    crate::output::warn_unenforced(
        out.properties
            .virtual_machines
            .iter()
            .map(|v| (v.id.as_str(), v.enforcement.as_deref(), v.enforcement_warning.as_deref())),
    );
    print_policy(format, &out);
    Ok(())
}

pub async fn get(w: Where, format: OutputFormat) -> Result<(), CliError> {
    let client = w.conn.connect()?;
    let out = client.arm().get_policy(&policy_ref(&w)?).await?;
    print_policy(format, &out);
    Ok(())
}

/// What `policy delete -o json` prints.
#[derive(Debug, serde::Serialize)]
struct DeletedOut<'a> {
    deleted: &'a str,
}

pub async fn delete(w: Where, format: OutputFormat) -> Result<(), CliError> {
    let client = w.conn.connect()?;
    if client.arm().delete_policy(&policy_ref(&w)?).await? == Deleted::NotFound {
        return Err(fail(exit::NOT_FOUND, format!("no policy '{}' in {}/{}", w.name, w.resource_group, w.location)));
    }
    print(format, &DeletedOut { deleted: &w.name }, |_| println!("deleted policy {}", w.name));
    Ok(())
}

pub async fn list(a: ListArgs, format: OutputFormat) -> Result<(), CliError> {
    let client = a.conn.connect()?;
    let scope = PolicyScope {
        subscription: subscription(&a.subscription)?,
        resource_group: a.resource_group,
        location: a.location,
    };
    let all = client.arm().list_policies(&scope).await?;
    print(format, &ListOut { value: all }, |v| {
        let rows: Vec<Vec<String>> = v
            .value
            .iter()
            .map(|p| {
                let rg = p.id.split('/').nth(4).unwrap_or("").to_owned();
                vec![p.name.clone(), rg, p.location.clone(), p.properties.virtual_machines.len().to_string()]
            })
            .collect();
        table(&["NAME", "RESOURCE GROUP", "LOCATION", "VMS"], &rows);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire(rule: Result<PortRuleIn, CliError>) -> Option<Value> {
        rule.ok().map(|r| serde_json::to_value(r).expect("serializes"))
    }

    fn wire_body(b: &PolicyIn) -> Value {
        serde_json::to_value(b).expect("serializes")
    }

    #[test]
    fn port_specs() {
        assert_eq!(
            wire(parse_port("22")),
            Some(
                json!({"number": 22, "protocol": "*", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"})
            )
        );
        assert_eq!(
            wire(parse_port("3389/tcp,from=10.0.0.0/24,from=192.168.1.0/24,max=PT1H")),
            Some(
                json!({"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefixes": ["10.0.0.0/24", "192.168.1.0/24"], "maxRequestAccessDuration": "PT1H"})
            )
        );
        assert_eq!(
            wire(parse_port("22/tcp,approval,map=50022,cut")),
            Some(
                json!({"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H",
                       "requireApproval": true, "mappedPort": 50022, "cutSessionsAtExpiry": true})
            )
        );
        assert_eq!(
            wire(parse_port("22,approval=30m")),
            Some(
                json!({"number": 22, "protocol": "*", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H",
                       "requireApproval": true, "approvalTimeout": "PT30M"})
            )
        );
        for bad in ["ssh", "22/icmp", "22,color=red", "70000", "22,map=0", "22,map=x", "22,cut=yes", "22,approval=soon"]
        {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_powershell_array_shape_becomes_the_rest_body() {
        let ps = r#"[{"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
                     "ports": [{"number": 22, "protocol": "*", "allowedSourceAddressPrefix": ["*"], "maxRequestAccessDuration": "PT3H"},
                               {"number": 3389, "protocol": "*", "allowedSourceAddressPrefix": ["10.0.0.0/24", "10.1.0.0/24"], "maxRequestAccessDuration": "PT3H"}]}]"#;
        let b = wire_body(&body_from_file(ps).expect("converted"));
        let ports = &b["properties"]["virtualMachines"][0]["ports"];
        assert_eq!(ports[0]["allowedSourceAddressPrefix"], "*");
        assert_eq!(ports[1]["allowedSourceAddressPrefixes"], json!(["10.0.0.0/24", "10.1.0.0/24"]));
        let rest = r#"{"properties": {"virtualMachines": []}}"#;
        assert_eq!(wire_body(&body_from_file(rest).expect("as is"))["properties"]["virtualMachines"], json!([]));
        let err = body_from_file(r#"[{"id": "x", "ports": [{"protocol": "*"}]}]"#).expect_err("no number");
        assert!(err.to_string().contains("[0].ports[0].number"), "{err}");
        assert!(body_from_file("{nope").is_err());
        assert!(body_from_file(r#"[{"ports": []}]"#).expect_err("no id").to_string().contains("[0].id"));
    }
}
