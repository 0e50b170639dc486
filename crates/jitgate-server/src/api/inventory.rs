//! The inventory views of `GET /api/v1/vms?view=…`.

use jitgate_api_types::datetime;
use jitgate_api_types::native::{ConnectionDetailsOut, ConnectionPortOut, VmOut};
use jitgate_core::enforcement::AgentMode;
use jitgate_store::Vm;

use super::vms::vm_out;
use crate::error::ApiError;
use crate::App;

/// The inventory views of `GET /api/v1/vms?view=…`, as the portal's JIT page groups VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Configured,
    NotConfigured,
    Unsupported,
}

impl View {
    pub(super) fn parse(s: &str) -> Result<Self, ApiError> {
        match s.to_ascii_lowercase().as_str() {
            "configured" => Ok(View::Configured),
            "notconfigured" => Ok(View::NotConfigured),
            "unsupported" => Ok(View::Unsupported),
            _ => Err(ApiError::bad_request(
                "InvalidView",
                format!("view '{s}' is not configured, notConfigured or unsupported"),
            )),
        }
    }
}

/// The VMs of one view, with the view's fields.
pub(super) async fn inventory(app: &App, vms: &[&Vm], view: View) -> Result<Vec<VmOut>, ApiError> {
    let disabled: Vec<String> =
        app.store.list_security_policies().await?.into_iter().filter(|p| !p.jit_enabled).map(|p| p.scope).collect();
    let now = app.clock.now();
    let mut out = Vec::new();
    for vm in vms {
        let policy = app.store.policy_of_vm(&vm.spec.id).await?;
        let mut entry = vm_out(app, vm);
        // Why JIT cannot protect the VM, in the order the portal gives them.
        let reason = if vm.spec.classic {
            Some("classic deployment: JIT protects ARM virtual machines only".to_string())
        } else if let Some(scope) = disabled.iter().find(|s| jitgate_core::rbac::scope_covers(s, vm.spec.id.as_str())) {
            Some(format!("JIT is disabled by a security policy on '{scope}'"))
        } else {
            entry.unsupported_reason.clone()
        };
        let belongs = match (&policy, &reason) {
            (Some(_), _) => View::Configured,
            (None, Some(_)) => View::Unsupported,
            (None, None) => View::NotConfigured,
        };
        if belongs != view {
            continue;
        }
        entry.classic = vm.spec.classic.then_some(true);
        entry.unsupported_reason = reason;
        if let Some(p) = policy {
            let access = app.store.vm_access(&vm.spec.id, now - time::Duration::days(7)).await?;
            entry.policy_id = Some(p.reference.id());
            entry.unsupported_reason = None;
            entry.approved_requests_last7_days = Some(access.approved_since);
            entry.last_access = access.last_access.map(datetime::format);
            entry.last_user = access.last_user;
            let state = match &vm.agent {
                None => "NotEnforced",
                Some(a) if a.nft_usable == Some(false) => "Unusable",
                Some(a) if app.is_stale(a) => "Stale",
                Some(_) => "Enforced",
            };
            entry.enforcement_state = Some(state.into());
            entry.warning = match state {
                "NotEnforced" => Some("no enforcement point: nothing closes these ports; run an agent on the VM or attach it to a gateway".into()),
                "Unusable" => Some("the enforcement point cannot program nftables: these ports are not closed".into()),
                "Stale" => Some("the enforcement point stopped reporting: its state is unknown".into()),
                _ => None,
            };
            let ports = p.vm(&vm.spec.id.key()).map(|v| v.ports.clone()).unwrap_or_default();
            entry.connection_details = Some(ConnectionDetailsOut {
                ports: ports
                    .iter()
                    .map(|r| ConnectionPortOut {
                        number: r.number,
                        protocol: r.protocol.as_str().into(),
                        allowed_source_address_prefixes: r
                            .sources
                            .prefixes()
                            .iter()
                            .map(|x| x.text().to_owned())
                            .collect(),
                        max_request_access_duration: r.max_duration.text().to_owned(),
                        mapped_port: r.mapped_port,
                    })
                    .collect(),
                enforcement_point: vm.agent.as_ref().map(|a| a.name.clone()),
                mode: vm.agent.as_ref().map(|a| a.mode.as_str().to_owned()),
                public_ip_address: vm
                    .agent
                    .as_ref()
                    .filter(|a| a.mode == AgentMode::Gateway)
                    .and_then(|a| a.public_address)
                    .map(|a| a.to_string()),
            });
        }
        out.push(entry);
    }
    Ok(out)
}
