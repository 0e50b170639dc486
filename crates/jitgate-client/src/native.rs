//! jitgate's own API (`/api/v1/…`): VMs and the inventory views, requests after initiate,
//! principals and tokens, roles, agents and their join tokens, the audit log, sign-in settings.

use reqwest::Method;

use jitgate_api_types::agent::{AgentOut, JoinTokenIn, JoinTokenInfoOut, JoinTokenOut};
use jitgate_api_types::audit::{AuditRecordOut, AuditVerifyOut};
use jitgate_api_types::native::{AuthConfigOut, DecisionIn, ExtendIn, ListOut, NativeRequestOut, VmIn, VmOut};
use jitgate_api_types::rbac::{
    PrincipalIn, PrincipalOut, RoleAssignmentIn, RoleAssignmentOut, RoleDefinitionIo, TokenCreatedOut, TokenIn,
    TokenOut, WhoAmIOut,
};

use crate::{Bearer, Call, Client, ClientError, Pager};

/// An inventory view of the VM list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmView {
    /// VMs a policy protects.
    Configured,
    /// Supported VMs no policy protects yet.
    NotConfigured,
    /// VMs jitgate cannot protect, with the reason.
    Unsupported,
}

impl VmView {
    pub fn as_str(self) -> &'static str {
        match self {
            VmView::Configured => "configured",
            VmView::NotConfigured => "notConfigured",
            VmView::Unsupported => "unsupported",
        }
    }
}

/// The filters of an audit query; `None` filters nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub caller: Option<String>,
    pub resource_id: Option<String>,
    pub operation: Option<String>,
    pub status: Option<String>,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
}

/// jitgate's own API.
#[derive(Debug, Clone, Copy)]
pub struct Native<'c> {
    pub(crate) client: &'c Client,
}

/// The page size the VM list is read in.
const VM_PAGE: &str = "1000";

impl<'c> Native<'c> {
    fn call(&self, method: Method, path: &str) -> Call {
        Call::new(method, self.client.at(path))
    }

    async fn list<T: serde::de::DeserializeOwned>(&self, call: Call) -> Result<Vec<T>, ClientError> {
        Ok(self.client.json::<ListOut<T>>(call).await?.value)
    }

    /// The registered VMs, or one inventory view of them: every page, following `nextLink`.
    pub async fn vms(&self, view: Option<VmView>) -> Result<Vec<VmOut>, ClientError> {
        let call = self.call(Method::GET, "/api/v1/vms").query("$top", VM_PAGE);
        self.client
            .all_pages(match view {
                Some(v) => call.query("view", v.as_str()),
                None => call,
            })
            .await
    }

    /// One VM by its ARM id.
    pub async fn vm(&self, id: &str) -> Result<VmOut, ClientError> {
        self.client.json(self.call(Method::GET, "/api/v1/vms").query("id", id)).await
    }

    /// Registers (or replaces) a VM.
    pub async fn put_vm(&self, vm: &VmIn) -> Result<VmOut, ClientError> {
        self.client.json(self.call(Method::PUT, "/api/v1/vms").json(vm)).await
    }

    /// Removes a VM; answers it as it was.
    pub async fn delete_vm(&self, id: &str) -> Result<VmOut, ClientError> {
        self.client.json(self.call(Method::DELETE, "/api/v1/vms").query("id", id)).await
    }

    /// Ends a request's grants now; with `wait`, once every enforcement point has closed them.
    pub async fn revoke(&self, id: i64, wait: bool) -> Result<NativeRequestOut, ClientError> {
        let call = self.call(Method::POST, &format!("/api/v1/requests/{id}/revoke")).query_if(wait, "wait", "applied");
        self.client.json(call).await
    }

    /// Approves or denies a request that waits for an approver; `wait` applies to approve.
    pub async fn decide(
        &self,
        id: i64,
        decision: Decision,
        body: &DecisionIn,
        wait: bool,
    ) -> Result<NativeRequestOut, ClientError> {
        let verb = match decision {
            Decision::Approve => "approve",
            Decision::Deny => "deny",
        };
        let wait = wait && decision == Decision::Approve;
        let call = self
            .call(Method::POST, &format!("/api/v1/requests/{id}/{verb}"))
            .query_if(wait, "wait", "applied")
            .json(body);
        self.client.json(call).await
    }

    /// Keeps a request's ports open longer.
    pub async fn extend(&self, id: i64, body: &ExtendIn, wait: bool) -> Result<NativeRequestOut, ClientError> {
        let call = self
            .call(Method::POST, &format!("/api/v1/requests/{id}/extend"))
            .query_if(wait, "wait", "applied")
            .json(body);
        self.client.json(call).await
    }

    pub async fn principals(&self) -> Result<Vec<PrincipalOut>, ClientError> {
        self.list(self.call(Method::GET, "/api/v1/principals")).await
    }

    /// Creates a local principal (`User` or `ServicePrincipal`).
    pub async fn create_principal(&self, body: &PrincipalIn) -> Result<PrincipalOut, ClientError> {
        self.client.json(self.call(Method::POST, "/api/v1/principals").json(body)).await
    }

    /// Deletes a principal: its tokens and role assignments go with it, its grants are revoked.
    pub async fn delete_principal(&self, name: &str) -> Result<PrincipalOut, ClientError> {
        self.client.json(self.call(Method::DELETE, &format!("/api/v1/principals/{name}"))).await
    }

    /// The caller: principal, credential and role assignments.
    pub async fn whoami(&self) -> Result<WhoAmIOut, ClientError> {
        self.client.json(self.call(Method::GET, "/api/v1/whoami")).await
    }

    /// Makes an API token for `principal`; the answer holds the secret, shown only this once.
    pub async fn create_token(&self, principal: &str, body: &TokenIn) -> Result<TokenCreatedOut, ClientError> {
        self.client.json(self.call(Method::POST, &format!("/api/v1/principals/{principal}/tokens")).json(body)).await
    }

    pub async fn tokens(&self, principal: &str) -> Result<Vec<TokenOut>, ClientError> {
        self.list(self.call(Method::GET, &format!("/api/v1/principals/{principal}/tokens"))).await
    }

    pub async fn revoke_token(&self, id: i64) -> Result<TokenOut, ClientError> {
        self.client.json(self.call(Method::DELETE, &format!("/api/v1/tokens/{id}"))).await
    }

    pub async fn role_definitions(&self) -> Result<Vec<RoleDefinitionIo>, ClientError> {
        self.list(self.call(Method::GET, "/api/v1/roleDefinitions")).await
    }

    /// Creates or replaces the custom role `name`.
    pub async fn put_role_definition(
        &self,
        name: &str,
        role: &RoleDefinitionIo,
    ) -> Result<RoleDefinitionIo, ClientError> {
        let name = name.replace('/', "%2F").replace(' ', "%20");
        self.client.json(self.call(Method::PUT, &format!("/api/v1/roleDefinitions/{name}")).json(role)).await
    }

    pub async fn assign_role(&self, body: &RoleAssignmentIn) -> Result<RoleAssignmentOut, ClientError> {
        self.client.json(self.call(Method::POST, "/api/v1/roleAssignments").json(body)).await
    }

    pub async fn agents(&self) -> Result<Vec<AgentOut>, ClientError> {
        self.list(self.call(Method::GET, "/api/v1/agents")).await
    }

    /// Revokes an agent's credential and removes it; answers it as it was.
    pub async fn delete_agent(&self, id: &str) -> Result<AgentOut, ClientError> {
        self.client.json(self.call(Method::DELETE, &format!("/api/v1/agents/{id}"))).await
    }

    pub async fn join_tokens(&self) -> Result<Vec<JoinTokenInfoOut>, ClientError> {
        self.list(self.call(Method::GET, "/api/v1/agentTokens")).await
    }

    pub async fn create_join_token(&self, body: &JoinTokenIn) -> Result<JoinTokenOut, ClientError> {
        self.client.json(self.call(Method::POST, "/api/v1/agentTokens").json(body)).await
    }

    /// The audit records `query` selects, page by page.
    pub fn audit(&self, query: &AuditQuery) -> Pager<'c, AuditRecordOut> {
        let mut call = self.call(Method::GET, "/api/v1/audit");
        for (k, v) in [
            ("from", &query.from),
            ("to", &query.to),
            ("caller", &query.caller),
            ("resourceId", &query.resource_id),
            ("operation", &query.operation),
            ("status", &query.status),
        ] {
            if let Some(v) = v {
                call = call.query(k, v.clone());
            }
        }
        Pager::new(self.client, call)
    }

    /// Recomputes the audit chain.
    pub async fn audit_verify(&self) -> Result<AuditVerifyOut, ClientError> {
        self.client.json(self.call(Method::GET, "/api/v1/audit/verify")).await
    }

    /// How humans sign in (no token needed).
    pub async fn auth_config(&self) -> Result<AuthConfigOut, ClientError> {
        self.client.json(self.call(Method::GET, "/api/v1/auth/config").bearer(Bearer::None)).await
    }
}
