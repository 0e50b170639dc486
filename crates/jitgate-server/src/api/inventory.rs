//! The inventory views of `GET /api/v1/vms?view=…`, as the portal's JIT page groups VMs.

use jitgate_api_types::datetime;
use jitgate_api_types::native::{ConnectionDetailsOut, ConnectionPortOut, VmOut};
use jitgate_core::enforcement::AgentMode;
use jitgate_core::inventory::{classify, EnforcementState, View, VmFacts};
use jitgate_store::Vm;

use super::vms::{enforcer, vm_out};
use crate::error::ApiError;
use crate::App;

/// The view named by the `view` query parameter.
pub(super) fn parse_view(s: &str) -> Result<View, ApiError> {
    View::parse(s).ok_or_else(|| {
        ApiError::bad_request("InvalidView", format!("view '{s}' is not configured, notConfigured or unsupported"))
    })
}

/// The VMs of one view, with the view's fields (which VM belongs where is `core::inventory`'s).
pub(super) async fn inventory(app: &App, vms: &[&Vm], view: View) -> Result<Vec<VmOut>, ApiError> {
    let disabled: Vec<String> =
        app.store.list_security_policies().await?.into_iter().filter(|p| !p.jit_enabled).map(|p| p.scope).collect();
    let now = app.clock.now();
    let mut out = Vec::new();
    for vm in vms {
        let policy = app.store.policy_of_vm(&vm.spec.id).await?;
        let mut entry = vm_out(app, vm);
        let facts = VmFacts {
            id: vm.spec.id.as_str(),
            classic: vm.spec.classic,
            configured: policy.is_some(),
            enforcement_gap: entry.unsupported_reason.as_deref(),
        };
        let (belongs, reason) = classify(&facts, &disabled);
        if belongs != view {
            continue;
        }
        entry.classic = vm.spec.classic.then_some(true);
        entry.unsupported_reason = reason;
        if let Some(p) = policy {
            let access = app.store.vm_access(&vm.spec.id, now - time::Duration::days(7)).await?;
            entry.policy_id = Some(p.reference.id());
            entry.approved_requests_last7_days = Some(access.approved_since);
            entry.last_access = access.last_access.map(datetime::format);
            entry.last_user = access.last_user;
            let state = EnforcementState::of(vm.agent.as_ref().map(|a| enforcer(app, a)).as_ref());
            entry.enforcement_state = Some(state.as_str().into());
            entry.warning = state.warning().map(Into::into);
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
