//! `icahub outbox stats|list|show|redrive`: look at and repair the outbox from a terminal.
//! Reads the same configuration as `serve` (same storage); `--json` for scripts.

use crate::config::Config;
use crate::domain::routing::Sink;
use crate::storage::{parse_outbox_id, OutboxFilter, OutboxRow, OutboxStatus, Store};
use anyhow::{bail, Context};
use chrono::Utc;
use clap::{Args, Subcommand};
use serde_json::json;
use std::collections::BTreeMap;

#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    pub command: OutboxCommand,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Pending, due now, oldest age and dead letters, per sink.
    Stats,
    /// List deliveries (pending by default).
    List {
        /// Dead letters instead of pending deliveries.
        #[arg(long)]
        dead: bool,
        /// Only this sink: mattermost, pagerduty, control_plane or azure_devops.
        #[arg(long, value_parser = parse_sink)]
        sink: Option<Sink>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One delivery in full, payload included. ID is `OUT-<stream>-<seq>` as `list` shows it.
    Show { id: String },
    /// Send dead letters again: one by ID, or all of them (optionally of one sink).
    Redrive {
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<String>,
        #[arg(long)]
        all_dead: bool,
        #[arg(long, value_parser = parse_sink, requires = "all_dead")]
        sink: Option<Sink>,
    },
}

fn parse_sink(s: &str) -> Result<Sink, String> {
    Sink::parse(s).ok_or_else(|| {
        format!("{s:?} is not a sink: use mattermost, pagerduty, control_plane or azure_devops")
    })
}

fn parse_id(id: &str) -> anyhow::Result<(String, u64)> {
    parse_outbox_id(id)
        .with_context(|| format!("{id:?} is not an outbox id (expected OUT-<stream>-<seq>)"))
}

pub async fn run(args: OutboxArgs) -> anyhow::Result<()> {
    let config = Config::from_env(None)?;
    let store = crate::startup::open_store(&config).await?;
    match args.command {
        OutboxCommand::Stats => stats(store.as_ref(), args.json).await,
        OutboxCommand::List { dead, sink, limit } => {
            let status = if dead {
                OutboxStatus::Dead
            } else {
                OutboxStatus::Pending
            };
            let rows = store
                .outbox_list(&OutboxFilter {
                    status: Some(status),
                    sink,
                    limit,
                })
                .await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows.iter().map(row_json).collect::<Vec<_>>())?
                );
            } else if rows.is_empty() {
                println!("no {} deliveries", status.as_str());
            } else {
                print_table(&rows);
            }
            Ok(())
        }
        OutboxCommand::Show { id } => {
            let (stream, seq) = parse_id(&id)?;
            let Some(row) = store.outbox_get(&stream, seq).await? else {
                bail!("no outbox row {id}");
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&row_json(&row))?);
            } else {
                let v = row_json(&row);
                for (k, val) in v.as_object().into_iter().flatten() {
                    if k != "payload" {
                        println!(
                            "{k:>16}: {}",
                            val.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| val.to_string())
                        );
                    }
                }
                println!(
                    "         payload:\n{}",
                    serde_json::to_string_pretty(&redacted(&row.payload))?
                );
            }
            Ok(())
        }
        OutboxCommand::Redrive { id, all_dead, sink } => {
            let now = Utc::now();
            let targets: Vec<(String, u64)> = if all_dead {
                store
                    .outbox_list(&OutboxFilter {
                        status: Some(OutboxStatus::Dead),
                        sink,
                        limit: usize::MAX >> 1,
                    })
                    .await?
                    .into_iter()
                    .map(|r| (r.stream, r.seq))
                    .collect()
            } else {
                vec![parse_id(id.as_deref().unwrap_or_default())?]
            };
            let mut done = Vec::new();
            let mut not_dead = Vec::new();
            for (stream, seq) in targets {
                let id = crate::storage::outbox_id(&stream, seq);
                if store.outbox_redrive(&stream, seq, now).await? {
                    done.push(id);
                } else {
                    not_dead.push(id);
                }
            }
            if args.json {
                println!("{}", json!({"redriven": done, "not_dead": not_dead}));
            } else {
                println!(
                    "redriven: {} (due now; the dispatcher sends them on its next run)",
                    done.len()
                );
                for id in &not_dead {
                    println!("not redriven, not a dead letter: {id}");
                }
            }
            if !all_dead && done.is_empty() {
                bail!("nothing redriven");
            }
            Ok(())
        }
    }
}

fn row_json(r: &OutboxRow) -> serde_json::Value {
    json!({
        "id": r.id(),
        "sink": r.sink.as_str(),
        "kind": r.kind,
        "status": r.status.as_str(),
        "attempts": r.attempts,
        "created_at": r.created_at,
        "next_attempt_at": r.next_attempt_at,
        "delivered_at": r.delivered_at,
        "last_error": r.last_error,
        "lease_owner": r.lease_owner,
        "lease_until": r.lease_until,
        "event_id": r.event_id,
        "idempotency_key": r.idempotency_key,
        "payload": redacted(&r.payload),
    })
}

/// The payload as shown: an Azure DevOps check's job token stays in the store, off the screen.
fn redacted(payload: &serde_json::Value) -> serde_json::Value {
    let mut p = payload.clone();
    if let Some(check) = p.get_mut("check").and_then(|c| c.as_object_mut()) {
        if check.contains_key("auth_token") {
            check.insert("auth_token".into(), json!("***"));
        }
    }
    p
}

fn print_table(rows: &[OutboxRow]) {
    println!(
        "{:<28} {:<14} {:<18} {:<9} {:>8}  {:<20}  LAST ERROR",
        "ID", "SINK", "KIND", "STATUS", "ATTEMPTS", "NEXT ATTEMPT"
    );
    for r in rows {
        let err: String = r
            .last_error
            .as_deref()
            .unwrap_or("-")
            .chars()
            .take(60)
            .collect();
        println!(
            "{:<28} {:<14} {:<18} {:<9} {:>8}  {:<20}  {}",
            r.id(),
            r.sink.as_str(),
            r.kind,
            r.status.as_str(),
            r.attempts,
            r.next_attempt_at.format("%Y-%m-%d %H:%M:%S"),
            err
        );
    }
}

#[derive(Default, serde::Serialize)]
struct SinkStats {
    pending: u64,
    due: u64,
    oldest_pending_age_secs: Option<i64>,
    dead: u64,
}

async fn stats(store: &dyn Store, as_json: bool) -> anyhow::Result<()> {
    let now = Utc::now();
    let by_sink: BTreeMap<&str, SinkStats> = store
        .outbox_stats(now)
        .await?
        .into_iter()
        .map(|(sink, s)| {
            (
                sink,
                SinkStats {
                    pending: s.pending,
                    due: s.due,
                    oldest_pending_age_secs: s.oldest_age_secs(now).map(|a| a as i64),
                    dead: s.dead,
                },
            )
        })
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&by_sink)?);
        return Ok(());
    }
    println!(
        "{:<14} {:>8} {:>8} {:>12} {:>8}",
        "SINK", "PENDING", "DUE", "OLDEST", "DEAD"
    );
    for (sink, s) in &by_sink {
        let oldest = s
            .oldest_pending_age_secs
            .map(human_age)
            .unwrap_or_else(|| "-".into());
        println!(
            "{sink:<14} {:>8} {:>8} {:>12} {:>8}",
            s.pending, s.due, oldest, s.dead
        );
    }
    Ok(())
}

fn human_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
