//! Azure's JIT policy API (`Microsoft.Security/…/jitNetworkAccessPolicies`, api-version
//! [`API_VERSION`]).

use reqwest::{Method, StatusCode};

pub use jitgate_api_types::arm::API_VERSION;
use jitgate_api_types::arm::{InitiateIn, PolicyIn, PolicyOut, RequestOut};

use crate::{Call, Client, ClientError};

/// Where one policy lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    pub name: String,
}

impl PolicyRef {
    /// The policy's ARM id.
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Security/locations/{}/jitNetworkAccessPolicies/{}",
            self.subscription, self.resource_group, self.location, self.name
        )
    }
}

/// Which policies a list covers: a subscription, narrowed by resource group and location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyScope {
    pub subscription: String,
    pub resource_group: Option<String>,
    pub location: Option<String>,
}

impl PolicyScope {
    /// The list's path.
    pub fn path(&self) -> String {
        let mut path = format!("/subscriptions/{}", self.subscription);
        if let Some(rg) = &self.resource_group {
            path.push_str(&format!("/resourceGroups/{rg}"));
        }
        path.push_str("/providers/Microsoft.Security");
        if let Some(l) = &self.location {
            path.push_str(&format!("/locations/{l}"));
        }
        path.push_str("/jitNetworkAccessPolicies");
        path
    }
}

/// What a policy delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The policy existed and is gone (200).
    Deleted,
    /// There was no such policy (204, as in Azure).
    NotFound,
}

/// Azure's JIT policy API.
#[derive(Debug, Clone, Copy)]
pub struct Arm<'c> {
    pub(crate) client: &'c Client,
}

impl Arm<'_> {
    fn call(&self, method: Method, path: &str) -> Call {
        Call::new(method, self.client.at(path)).query("api-version", API_VERSION)
    }

    pub async fn get_policy(&self, at: &PolicyRef) -> Result<PolicyOut, ClientError> {
        self.client.json(self.call(Method::GET, &at.id())).await
    }

    pub async fn put_policy(&self, at: &PolicyRef, body: &PolicyIn) -> Result<PolicyOut, ClientError> {
        self.client.json(self.call(Method::PUT, &at.id()).json(body)).await
    }

    pub async fn delete_policy(&self, at: &PolicyRef) -> Result<Deleted, ClientError> {
        let resp = self.client.send(self.call(Method::DELETE, &at.id())).await?;
        Ok(if resp.status() == StatusCode::NO_CONTENT { Deleted::NotFound } else { Deleted::Deleted })
    }

    /// Every policy in `scope`, across all pages.
    pub async fn list_policies(&self, scope: &PolicyScope) -> Result<Vec<PolicyOut>, ClientError> {
        self.client.all_pages(self.call(Method::GET, &scope.path())).await
    }

    /// Requests access under the policy `policy_id` (its ARM id); with `wait`, the answer comes
    /// once every enforcement point has applied the grants (`?wait=applied`). The call carries
    /// a fresh `x-ms-client-request-id`, so a repeat after a lost answer (on another replica
    /// too) gets the first answer instead of making a second request.
    pub async fn initiate(&self, policy_id: &str, body: &InitiateIn, wait: bool) -> Result<RequestOut, ClientError> {
        let call = self
            .call(Method::POST, &format!("{policy_id}/initiate"))
            .query_if(wait, "wait", "applied")
            .json(body)
            .idempotency_key();
        self.client.json(call).await
    }
}
