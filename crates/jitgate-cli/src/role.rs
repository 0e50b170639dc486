//! `jitgate role …`: role definitions and assignments.

use clap::{Args, Subcommand};

use jitgate_api_types::rbac::{RoleAssignmentIn, RoleDefinitionIo};

use crate::{CliError, ConnArgs};

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
pub fn least_privileged_body(name: &str, scope: &str) -> RoleDefinitionIo {
    RoleDefinitionIo {
        name: Some(name.to_owned()),
        id: None,
        is_custom: Some(true),
        description: Some(
            "Least-privileged just-in-time requester: request access and see JIT policies, nothing else.".to_owned(),
        ),
        actions: Some(jitgate_core::rbac::REQUESTER_ACTIONS.iter().map(|a| a.to_string()).collect()),
        not_actions: Some(Vec::new()),
        data_actions: None,
        not_data_actions: None,
        assignable_scopes: Some(vec![scope.to_owned()]),
    }
}

pub async fn run(args: RoleArgs, format: crate::output::OutputFormat) -> Result<(), CliError> {
    match args.command {
        RoleCommand::CreateLeastPrivileged(a) => {
            let client = a.conn.connect()?;
            let out = client.native().put_role_definition(&a.name, &least_privileged_body(&a.name, &a.scope)).await?;
            // The role itself, in Azure's form, is the useful output for people and scripts alike.
            let json_out =
                if format == crate::output::OutputFormat::Yaml { format } else { crate::output::OutputFormat::Json };
            crate::output::print(json_out, &out, |_| {});
        }
        RoleCommand::List(a) => {
            let client = a.conn.connect()?;
            let value = client.native().role_definitions().await?;
            let list = jitgate_api_types::native::ListOut { value };
            crate::output::print(format, &list, |l| {
                let rows: Vec<Vec<String>> = l
                    .value
                    .iter()
                    .map(|r| {
                        let kind = if r.is_custom == Some(true) { "custom" } else { "built-in" };
                        vec![
                            r.name.clone().unwrap_or_default(),
                            kind.to_owned(),
                            r.description.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                crate::output::table(&["NAME", "TYPE", "DESCRIPTION"], &rows);
            });
        }
        RoleCommand::Assign(a) => {
            let client = a.conn.connect()?;
            let body = RoleAssignmentIn { principal: Some(a.principal), role: Some(a.role), scope: Some(a.scope) };
            let out = client.native().assign_role(&body).await?;
            crate::output::print(format, &out, |o| {
                println!("assignment {}: {} holds {} at {}", o.id, o.principal, o.role, o.scope);
            });
        }
    }
    Ok(())
}
