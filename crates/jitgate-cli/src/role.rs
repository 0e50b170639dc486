//! `jitgate role …`: role definitions and assignments.

use clap::{Args, Subcommand};
use serde_json::json;

use crate::{call, ConnArgs};

#[derive(Debug, Clone, Args)]
pub struct RoleArgs {
    #[command(subcommand)]
    pub command: RoleCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum RoleCommand {
    /// Create the least-privileged JIT requester role (what Set-JitLeastPrivilegedRole does) and print it.
    #[command(
        after_help = "Example:\n  jitgate role create-least-privileged --name \"JIT Access Role\" --scope /subscriptions/$SUB"
    )]
    CreateLeastPrivileged(CreateLeastArgs),
    /// List the built-in and custom roles.
    #[command(after_help = "Example:\n  jitgate role list\n  jitgate role list -o json")]
    List(ListArgs),
    /// Assign a role to a principal at a scope.
    #[command(
        after_help = "Example:\n  jitgate role assign --principal alice --role \"JIT Network Access Requester\" --scope /subscriptions/$SUB/resourceGroups/prod"
    )]
    Assign(AssignArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CreateLeastArgs {
    /// The new role's name.
    #[arg(long, default_value = "JIT Access Role")]
    pub name: String,
    /// Where the role may be assigned, e.g. /subscriptions/{id}.
    #[arg(long)]
    pub scope: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct AssignArgs {
    /// Who gets the role.
    #[arg(long)]
    pub principal: String,
    /// The role's name (built-in or custom).
    #[arg(long)]
    pub role: String,
    /// Where it applies: /, /subscriptions/{id}, a resource group or a VM.
    #[arg(long)]
    pub scope: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// The role body Set-JitLeastPrivilegedRole makes, in Azure's role definition form.
pub fn least_privileged_body(name: &str, scope: &str) -> serde_json::Value {
    json!({
        "Name": name,
        "IsCustom": true,
        "Description": "Least-privileged just-in-time requester: request access and see JIT policies, nothing else.",
        "Actions": jitgate_core::rbac::REQUESTER_ACTIONS,
        "NotActions": [],
        "AssignableScopes": [scope],
    })
}

pub async fn run(args: RoleArgs, format: crate::output::OutputFormat) -> anyhow::Result<()> {
    match args.command {
        RoleCommand::CreateLeastPrivileged(a) => {
            let (url, token, client) = a.conn.connect()?;
            let name = a.name.replace('/', "%2F").replace(' ', "%20");
            let out = call(
                client
                    .put(format!("{url}/api/v1/roleDefinitions/{name}"))
                    .bearer_auth(token)
                    .json(&least_privileged_body(&a.name, &a.scope)),
            )
            .await?;
            // The role itself, in Azure's form, is the useful output for people and scripts alike.
            let json_out =
                if format == crate::output::OutputFormat::Yaml { format } else { crate::output::OutputFormat::Json };
            crate::output::print(json_out, &out, |_| {});
        }
        RoleCommand::List(a) => {
            let (url, token, client) = a.conn.connect()?;
            let out = call(client.get(format!("{url}/api/v1/roleDefinitions")).bearer_auth(token)).await?;
            for r in out["value"].as_array().into_iter().flatten() {
                let kind = if r["IsCustom"] == true { "custom" } else { "built-in" };
                println!(
                    "{:<32} {kind:<9} {}",
                    r["Name"].as_str().unwrap_or(""),
                    r["Description"].as_str().unwrap_or("")
                );
            }
        }
        RoleCommand::Assign(a) => {
            let (url, token, client) = a.conn.connect()?;
            let body = json!({"principal": a.principal, "role": a.role, "scope": a.scope});
            let out = call(client.post(format!("{url}/api/v1/roleAssignments")).bearer_auth(token).json(&body)).await?;
            crate::output::print(format, &out, |o| {
                println!(
                    "assignment {}: {} holds {} at {}",
                    o["id"].as_str().unwrap_or(""),
                    o["principal"].as_str().unwrap_or(""),
                    o["role"].as_str().unwrap_or(""),
                    o["scope"].as_str().unwrap_or("")
                );
            });
        }
    }
    Ok(())
}
