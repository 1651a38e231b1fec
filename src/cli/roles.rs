//! `icahub roles grant|revoke|list|link-mattermost|unlink-mattermost`: the roles approvals and
//! the API check, and which Mattermost user is which identity (for the approval buttons). Every
//! change is recorded with who made it.

use crate::config::Config;
use crate::domain::identity::{MattermostUser, Role};
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
    /// Map a Mattermost user to IDENTITY, so their clicks on approval buttons count as IDENTITY's
    /// (with IDENTITY's roles). Link by user name (MM_USERNAME), or by user id (--user-id) for
    /// servers whose callbacks carry only the id; an identity may have one of each.
    LinkMattermost {
        identity: String,
        /// The Mattermost user name (`@alice` or `alice`).
        #[arg(required_unless_present = "user_id", conflicts_with = "user_id")]
        mm_username: Option<String>,
        /// The Mattermost user id (26 letters and digits) instead of the user name.
        #[arg(long)]
        user_id: Option<String>,
    },
    /// Remove IDENTITY's Mattermost links.
    UnlinkMattermost { identity: String },
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
        RolesCommand::LinkMattermost {
            identity,
            mm_username,
            user_id,
        } => {
            let user = match (mm_username, user_id) {
                (_, Some(id)) => MattermostUser::id(&id).with_context(|| {
                    format!("{id:?} is not a Mattermost user id (letters and digits)")
                })?,
                (Some(n), None) => MattermostUser::name(&n).with_context(|| {
                    format!("{n:?} is not a Mattermost user name (letters, digits, '.', '_', '-')")
                })?,
                (None, None) => anyhow::bail!("give MM_USERNAME or --user-id"),
            };
            let changed =
                identity::link_mattermost(store.as_ref(), &identity, &user, &by, now).await?;
            if args.json {
                println!(
                    "{}",
                    json!({"identity": identity, "mattermost_user": user.value(), "by_id": matches!(user, MattermostUser::Id(_)), "action": "linked", "changed": changed})
                );
            } else if changed {
                println!("linked {} to {identity}", user.describe());
            } else {
                println!(
                    "nothing to do: {} is already linked to {identity}",
                    user.describe()
                );
            }
        }
        RolesCommand::UnlinkMattermost { identity } => {
            let changed = identity::unlink_mattermost(store.as_ref(), &identity, &by, now).await?;
            if args.json {
                println!(
                    "{}",
                    json!({"identity": identity, "action": "unlinked", "changed": changed})
                );
            } else if changed {
                println!("removed the Mattermost links of {identity}");
            } else {
                println!("nothing to do: {identity} has no Mattermost link");
            }
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
                    let mm: Vec<String> = [
                        i.mattermost_user.as_ref().map(|u| format!("@{u}")),
                        i.mattermost_user_id.as_ref().map(|u| format!("id:{u}")),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    let mm = if mm.is_empty() {
                        String::new()
                    } else {
                        format!("  (mattermost {})", mm.join(", "))
                    };
                    println!("{:<32} {}{mm}", i.name, roles.join(", "));
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
