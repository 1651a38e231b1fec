//! `icahub roles grant|revoke|list|link-mattermost|unlink-mattermost`: the roles approvals and
//! the API check, and which Mattermost user is which identity (for the approval buttons). Every
//! change is recorded with who made it.

use crate::config::Config;
use crate::domain::identity::{MattermostUser, Role};
use crate::identity;
use crate::mattermost::api::MattermostApi;
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
    /// Give IDENTITY the ROLE: devops, technical_approver, business_approver, finance, auditor,
    /// admin, alert_sender, reader, override_approver.
    Grant { identity: String, role: String },
    /// Take ROLE away from IDENTITY.
    Revoke { identity: String, role: String },
    /// Every identity and its roles.
    List,
    /// Map a Mattermost user to IDENTITY, so their clicks on approval buttons count as IDENTITY's
    /// (with IDENTITY's roles). Clicks are matched on the user's immutable id only: a user name
    /// (MM_USERNAME) is resolved to its id once, now, through the Mattermost API
    /// (ICAHUB_MATTERMOST_URL and ICAHUB_MATTERMOST_TOKEN); without them, give --user-id.
    LinkMattermost {
        identity: String,
        /// The Mattermost user name (`@alice` or `alice`), looked up on the server.
        #[arg(required_unless_present = "user_id", conflicts_with = "user_id")]
        mm_username: Option<String>,
        /// The Mattermost user id (26 lowercase letters and digits).
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
            let api = MattermostApi::from_config(&config.mattermost);
            let (user_id, username) = resolve(api.as_ref(), mm_username, user_id).await?;
            let changed = identity::link_mattermost(
                store.as_ref(),
                &identity,
                &user_id,
                username.as_deref(),
                &by,
                now,
            )
            .await?;
            let label = match &username {
                Some(n) => format!("Mattermost user @{n} (id {user_id})"),
                None => format!("Mattermost user id {user_id}"),
            };
            if args.json {
                println!(
                    "{}",
                    json!({"identity": identity, "mattermost_user_id": user_id, "mattermost_username": username,
                           "verified": api.is_some(), "action": "linked", "changed": changed})
                );
            } else if changed {
                println!("linked {label} to {identity}");
                if api.is_none() {
                    println!(
                        "(not checked with a Mattermost server: ICAHUB_MATTERMOST_URL is not set)"
                    );
                }
            } else {
                println!("nothing to do: {label} is already linked to {identity}");
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
                let mut legacy = 0;
                for i in ids {
                    let roles: Vec<&str> = i.roles.iter().map(|r| r.as_str()).collect();
                    let mut mm: Vec<String> = Vec::new();
                    if let Some(id) = &i.mattermost_user_id {
                        mm.push(match &i.mattermost_username {
                            Some(n) => format!("id:{id} (@{n} when linked)"),
                            None => format!("id:{id}"),
                        });
                    }
                    if let Some(n) = i.legacy_mattermost_name() {
                        legacy += 1;
                        mm.push(format!("@{n}: NAME-ONLY LINK, GRANTS NOTHING; re-link"));
                    }
                    let mm = if mm.is_empty() {
                        String::new()
                    } else {
                        format!("  (mattermost {})", mm.join(", "))
                    };
                    println!("{:<32} {}{mm}", i.name, roles.join(", "));
                }
                if legacy > 0 {
                    println!(
                        "\n{legacy} identity(ies) have a Mattermost link by user name from an earlier version; \
                         names can be changed by their owners, so such links no longer count. Re-link each by id: \
                         `icahub roles link-mattermost IDENTITY NAME` (with ICAHUB_MATTERMOST_URL and \
                         ICAHUB_MATTERMOST_TOKEN set, to look the name up) or `--user-id ID`."
                    );
                }
            }
        }
    }
    Ok(())
}

/// The user id (and, when the server was asked, the user name) to link.
async fn resolve(
    api: Option<&MattermostApi>,
    mm_username: Option<String>,
    user_id: Option<String>,
) -> anyhow::Result<(String, Option<String>)> {
    match (mm_username, user_id) {
        (_, Some(id)) => {
            let Some(MattermostUser::Id(id)) = MattermostUser::id(&id) else {
                anyhow::bail!(
                    "{id:?} is not a Mattermost user id (26 lowercase letters and digits, e.g. rd49ehbqyjytddasoownkuqrxe)"
                );
            };
            let Some(api) = api else {
                return Ok((id, None));
            };
            match api.user(&id).await {
                Ok(Some(u)) => Ok((u.id, Some(u.username).filter(|n| !n.is_empty()))),
                Ok(None) => anyhow::bail!("{} has no user with id {id}", api.base()),
                Err(e) => anyhow::bail!("could not check user id {id} with {}: {e}", api.base()),
            }
        }
        (Some(n), None) => {
            let Some(MattermostUser::Name(name)) = MattermostUser::name(&n) else {
                anyhow::bail!(
                    "{n:?} is not a Mattermost user name (letters, digits, '.', '_', '-')"
                );
            };
            let Some(api) = api else {
                anyhow::bail!(
                    "linking by user name needs the Mattermost server, to look the name up once and link its immutable user id \
                     (a name can be changed by its owner, so it is never matched): set ICAHUB_MATTERMOST_URL and \
                     ICAHUB_MATTERMOST_TOKEN, or link by id with `--user-id <id>` (System Console > Users shows it)"
                );
            };
            match api.user_by_name(&name).await {
                Ok(Some(u)) if !u.active() => {
                    anyhow::bail!("Mattermost user @{name} ({}) is deactivated", u.id)
                }
                Ok(Some(u)) => Ok((u.id, Some(name))),
                Ok(None) => anyhow::bail!("{} has no user named @{name}", api.base()),
                Err(e) => anyhow::bail!("could not look up @{name} on {}: {e}", api.base()),
            }
        }
        (None, None) => anyhow::bail!("give MM_USERNAME or --user-id"),
    }
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
