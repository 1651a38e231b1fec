//! `icahub roles grant|revoke|list`: the roles approvals and the API check. Every change is
//! recorded with who made it.

use crate::config::Config;
use crate::domain::identity::Role;
use crate::identity;
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Debug, Args)]
pub struct RolesArgs {
    #[command(subcommand)]
    pub command: RolesCommand,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Who is making the change, for the record (default: $USER).
    #[arg(long, global = true)]
    pub by: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// Give IDENTITY the ROLE: devops, technical_approver, business_approver, finance, auditor, admin.
    Grant { identity: String, role: String },
    /// Take ROLE away from IDENTITY.
    Revoke { identity: String, role: String },
    /// Every identity and its roles.
    List,
}

fn role(s: &str) -> anyhow::Result<Role> {
    Role::parse(s).with_context(|| {
        format!(
            "{s:?} is not a role: use one of {}",
            Role::ALL.map(|r| r.as_str()).join(", ")
        )
    })
}

pub async fn run(args: RolesArgs) -> anyhow::Result<()> {
    let config = Config::from_env(None)?;
    let store = crate::startup::open_store(&config).await?;
    let by = super::keys::operator(args.by);
    let now = chrono::Utc::now();
    match args.command {
        RolesCommand::Grant { identity, role: r } => {
            let changed =
                identity::set_role(store.as_ref(), &identity, role(&r)?, true, &by, now).await?;
            report(args.json, &identity, &r, "granted", changed);
        }
        RolesCommand::Revoke { identity, role: r } => {
            let changed =
                identity::set_role(store.as_ref(), &identity, role(&r)?, false, &by, now).await?;
            report(args.json, &identity, &r, "revoked", changed);
        }
        RolesCommand::List => {
            let ids = identity::list_identities(store.as_ref()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&ids)?);
            } else if ids.is_empty() {
                println!("no identities have roles; grant one with `icahub roles grant NAME ROLE`");
            } else {
                for i in ids {
                    let roles: Vec<&str> = i.roles.iter().map(|r| r.as_str()).collect();
                    println!("{:<32} {}", i.name, roles.join(", "));
                }
            }
        }
    }
    Ok(())
}

fn report(json_out: bool, identity: &str, role: &str, what: &str, changed: bool) {
    if json_out {
        println!(
            "{}",
            json!({"identity": identity, "role": role, "action": what, "changed": changed})
        );
    } else if changed {
        println!("{what} {role} for {identity}");
    } else {
        println!(
            "nothing to do: {identity} {} {role}",
            if what == "granted" {
                "already has"
            } else {
                "does not have"
            }
        );
    }
}
