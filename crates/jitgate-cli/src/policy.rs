//! `jitgate policy set|get|list|delete`: JIT policies from the terminal (what
//! Set-AzJitNetworkAccessPolicy and Get-AzJitNetworkAccessPolicy do).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::output::{exit, fail, print, table, OutputFormat};
use crate::{call, ConnArgs};

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
    /// `22[/tcp|/udp|/*][,from=CIDR]…[,max=PT3H]` (defaults: protocol *, from *, max PT3H).
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

pub fn subscription(given: &Option<String>) -> anyhow::Result<String> {
    given.clone().or(crate::profile::load().subscription).ok_or_else(|| {
        fail(
            exit::USAGE,
            "no subscription: give --subscription, set JITGATE_SUBSCRIPTION, or `jitgate login --subscription`",
        )
    })
}

fn policy_url(url: &str, w: &Where) -> anyhow::Result<String> {
    let sub = subscription(&w.subscription)?;
    Ok(format!(
        "{url}/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Security/locations/{}/jitNetworkAccessPolicies/{}?api-version=2020-01-01",
        w.resource_group, w.location, w.name
    ))
}

/// Parses `22[/tcp][,from=CIDR…][,max=PT3H]`.
pub fn parse_port(spec: &str) -> anyhow::Result<Value> {
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
    for p in parts {
        match p.split_once('=') {
            Some(("from", v)) => from.push(v.to_owned()),
            Some(("max", v)) => max = v.to_owned(),
            _ => return Err(fail(exit::USAGE, format!("--port {spec}: '{p}' is not from=CIDR or max=DURATION"))),
        }
    }
    let mut rule = json!({"number": number, "protocol": protocol, "maxRequestAccessDuration": max});
    match from.len() {
        0 => rule["allowedSourceAddressPrefix"] = json!("*"),
        1 => rule["allowedSourceAddressPrefix"] = json!(from[0]),
        _ => rule["allowedSourceAddressPrefixes"] = json!(from),
    }
    Ok(rule)
}

/// Turns a file's JSON into the REST body: either already one, or the PowerShell `$JitPolicy`
/// array, whose `allowedSourceAddressPrefix` may be a string or an array (`@("*")`). Problems name
/// the field.
pub fn body_from_file(text: &str) -> anyhow::Result<Value> {
    let v: Value = serde_json::from_str(text).map_err(|e| fail(exit::ERROR, format!("the file is not JSON: {e}")))?;
    let vms =
        match &v {
            Value::Array(a) => a.clone(),
            Value::Object(_) if v["properties"]["virtualMachines"].is_array() => return Ok(v),
            _ => return Err(fail(
                exit::ERROR,
                "the file must hold the REST body (with properties.virtualMachines) or an array of {\"id\",\"ports\"}",
            )),
        };
    let mut out = Vec::new();
    for (i, vm) in vms.iter().enumerate() {
        let id = vm["id"]
            .as_str()
            .ok_or_else(|| fail(exit::ERROR, format!("[{i}].id: every VM needs its id (a string)")))?;
        let mut ports = Vec::new();
        for (j, p) in vm["ports"].as_array().into_iter().flatten().enumerate() {
            let at = format!("[{i}].ports[{j}]");
            let number = p["number"]
                .as_u64()
                .ok_or_else(|| fail(exit::ERROR, format!("{at}.number: a port number is required")))?;
            let mut rule = json!({"number": number});
            for k in ["protocol", "maxRequestAccessDuration"] {
                if let Some(x) = p.get(k) {
                    rule[k] = x.clone();
                }
            }
            match p.get("allowedSourceAddressPrefix") {
                Some(Value::String(s)) => rule["allowedSourceAddressPrefix"] = json!(s),
                Some(Value::Array(a)) if a.len() == 1 => rule["allowedSourceAddressPrefix"] = a[0].clone(),
                Some(Value::Array(a)) => rule["allowedSourceAddressPrefixes"] = json!(a),
                Some(other) => {
                    return Err(fail(
                        exit::ERROR,
                        format!("{at}.allowedSourceAddressPrefix: {other} is not a string or an array of strings"),
                    ))
                }
                None => {}
            }
            if let Some(x) = p.get("allowedSourceAddressPrefixes") {
                rule["allowedSourceAddressPrefixes"] = x.clone();
            }
            ports.push(rule);
        }
        out.push(json!({"id": id, "ports": ports}));
    }
    Ok(json!({"kind": "Basic", "properties": {"virtualMachines": out}}))
}

/// A VM's ARM id from its id or its unique name.
pub async fn resolve_vm(client: &reqwest::Client, url: &str, token: &str, vm: &str) -> anyhow::Result<String> {
    if vm.starts_with("/subscriptions/") {
        return Ok(vm.to_owned());
    }
    let list = call(client.get(format!("{url}/api/v1/vms")).bearer_auth(token)).await?;
    let found: Vec<String> = list["value"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(vm)))
        .filter_map(|v| v["id"].as_str().map(String::from))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(fail(exit::NOT_FOUND, format!("no registered VM is named '{vm}'"))),
        _ => Err(fail(exit::ERROR, format!("several VMs are named '{vm}'; give its ARM id"))),
    }
}

fn print_policy(format: OutputFormat, p: &Value) {
    print(format, p, |p| {
        let mut rows = Vec::new();
        for vm in p["properties"]["virtualMachines"].as_array().into_iter().flatten() {
            let name = vm["id"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("").to_owned();
            for port in vm["ports"].as_array().into_iter().flatten() {
                let sources = port["allowedSourceAddressPrefix"].as_str().map(String::from).unwrap_or_else(|| {
                    port["allowedSourceAddressPrefixes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                });
                rows.push(vec![
                    name.clone(),
                    port["number"].to_string(),
                    port["protocol"].as_str().unwrap_or("").into(),
                    sources,
                    port["maxRequestAccessDuration"].as_str().unwrap_or("").into(),
                ]);
            }
        }
        println!("{} ({})", p["name"].as_str().unwrap_or(""), p["id"].as_str().unwrap_or(""));
        table(&["VM", "PORT", "PROTOCOL", "SOURCES", "MAX"], &rows);
    });
}

/// `policy set`; `order` holds, in command-line order, which --vm / --port came when.
pub async fn set(args: SetArgs, format: OutputFormat, order: Vec<(bool, String)>) -> anyhow::Result<()> {
    let (url, token, client) = args.at.conn.connect()?;
    let target = policy_url(&url, &args.at)?;
    let body = match &args.file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| fail(exit::ERROR, format!("{}: {e}", path.display())))?;
            let mut b = body_from_file(&text)?;
            for vm in b["properties"]["virtualMachines"].as_array_mut().into_iter().flatten() {
                if let Some(id) = vm["id"].as_str().map(String::from) {
                    vm["id"] = json!(resolve_vm(&client, &url, &token, &id).await?);
                }
            }
            b
        }
        None => {
            let mut vms: Vec<(String, Vec<Value>)> = Vec::new();
            for (is_vm, value) in order {
                if is_vm {
                    vms.push((resolve_vm(&client, &url, &token, &value).await?, Vec::new()));
                } else {
                    let Some(last) = vms.last_mut() else {
                        return Err(fail(exit::USAGE, "--port must follow the --vm it belongs to"));
                    };
                    last.1.push(parse_port(&value)?);
                }
            }
            if vms.is_empty() {
                return Err(fail(exit::USAGE, "name at least one --vm (or give --file)"));
            }
            if let Some((vm, _)) = vms.iter().find(|(_, p)| p.is_empty()).filter(|_| !args.defaults) {
                return Err(fail(exit::USAGE, format!("--vm {vm} has no --port: add ports or --defaults")));
            }
            json!({"kind": "Basic", "properties": {"virtualMachines": vms.iter().map(|(id, ports)| json!({"id": id, "ports": ports})).collect::<Vec<_>>()}})
        }
    };
    let out = call(client.put(&target).bearer_auth(&token).json(&body)).await?;
    print_policy(format, &out);
    Ok(())
}

pub async fn get(w: Where, format: OutputFormat) -> anyhow::Result<()> {
    let (url, token, client) = w.conn.connect()?;
    let out = call(client.get(policy_url(&url, &w)?).bearer_auth(&token)).await?;
    print_policy(format, &out);
    Ok(())
}

pub async fn delete(w: Where, format: OutputFormat) -> anyhow::Result<()> {
    let (url, token, client) = w.conn.connect()?;
    let resp = client.delete(policy_url(&url, &w)?).bearer_auth(&token).send().await?;
    let status = resp.status().as_u16();
    if status == 204 {
        return Err(fail(exit::NOT_FOUND, format!("no policy '{}' in {}/{}", w.name, w.resource_group, w.location)));
    }
    if !resp.status().is_success() {
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        return Err(anyhow::Error::new(crate::output::ApiFailure {
            status,
            code: v["error"]["code"].as_str().unwrap_or("").into(),
            message: v["error"]["message"].as_str().unwrap_or("").into(),
        }));
    }
    print(format, &json!({"deleted": w.name}), |_| println!("deleted policy {}", w.name));
    Ok(())
}

pub async fn list(a: ListArgs, format: OutputFormat) -> anyhow::Result<()> {
    let (url, token, client) = a.conn.connect()?;
    let sub = subscription(&a.subscription)?;
    let mut path = format!("{url}/subscriptions/{sub}");
    if let Some(rg) = &a.resource_group {
        path.push_str(&format!("/resourceGroups/{rg}"));
    }
    path.push_str("/providers/Microsoft.Security");
    if let Some(l) = &a.location {
        path.push_str(&format!("/locations/{l}"));
    }
    let mut next = Some(format!("{path}/jitNetworkAccessPolicies?api-version=2020-01-01"));
    let mut all = Vec::new();
    while let Some(u) = next {
        let page = call(client.get(&u).bearer_auth(&token)).await?;
        all.extend(page["value"].as_array().cloned().unwrap_or_default());
        next = page["nextLink"].as_str().map(String::from);
    }
    let value = json!({"value": all});
    print(format, &value, |v| {
        let rows: Vec<Vec<String>> = v["value"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let id = p["id"].as_str().unwrap_or("");
                let rg = id.split('/').nth(4).unwrap_or("").to_owned();
                let vms = p["properties"]["virtualMachines"].as_array().map(Vec::len).unwrap_or(0);
                vec![
                    p["name"].as_str().unwrap_or("").into(),
                    rg,
                    p["location"].as_str().unwrap_or("").into(),
                    vms.to_string(),
                ]
            })
            .collect();
        table(&["NAME", "RESOURCE GROUP", "LOCATION", "VMS"], &rows);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!(
            parse_port("22").ok(),
            Some(
                json!({"number": 22, "protocol": "*", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"})
            )
        );
        assert_eq!(
            parse_port("3389/tcp,from=10.0.0.0/24,from=192.168.1.0/24,max=PT1H").ok(),
            Some(
                json!({"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefixes": ["10.0.0.0/24", "192.168.1.0/24"], "maxRequestAccessDuration": "PT1H"})
            )
        );
        for bad in ["ssh", "22/icmp", "22,color=red", "70000"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_powershell_array_shape_becomes_the_rest_body() {
        let ps = r#"[{"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
                     "ports": [{"number": 22, "protocol": "*", "allowedSourceAddressPrefix": ["*"], "maxRequestAccessDuration": "PT3H"},
                               {"number": 3389, "protocol": "*", "allowedSourceAddressPrefix": ["10.0.0.0/24", "10.1.0.0/24"], "maxRequestAccessDuration": "PT3H"}]}]"#;
        let b = body_from_file(ps).expect("converted");
        let ports = &b["properties"]["virtualMachines"][0]["ports"];
        assert_eq!(ports[0]["allowedSourceAddressPrefix"], "*");
        assert_eq!(ports[1]["allowedSourceAddressPrefixes"], json!(["10.0.0.0/24", "10.1.0.0/24"]));
        let rest = r#"{"properties": {"virtualMachines": []}}"#;
        assert_eq!(body_from_file(rest).expect("as is")["properties"]["virtualMachines"], json!([]));
        let err = body_from_file(r#"[{"id": "x", "ports": [{"protocol": "*"}]}]"#).expect_err("no number");
        assert!(err.to_string().contains("[0].ports[0].number"), "{err}");
        assert!(body_from_file("{nope").is_err());
        assert!(body_from_file(r#"[{"ports": []}]"#).expect_err("no id").to_string().contains("[0].id"));
    }
}
