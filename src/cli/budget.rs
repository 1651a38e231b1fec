//! `icahub budget set|list|map|unmap|maps`: each project's monthly budget and its spend so far,
//! which approval requests are judged against (utilization = (spend + committed + estimate) /
//! budget, committed being the estimates of approved deployments whose runs have not
//! finished), and which project each pipeline's runs spend. Every change is recorded with who
//! made it.

use crate::config::Config;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct BudgetArgs {
    #[command(subcommand)]
    pub command: BudgetCommand,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Who is making the change, for the record (default: $USER).
    #[arg(long, global = true)]
    pub by: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Set PROJECT's monthly budget (USD), and optionally what it has spent this month.
    ///
    /// An approval spends the budget of its run's pipeline: the project `budget map` gives it,
    /// else the first ICAHUB_BUDGET_PROJECTS pattern it matches, else the pipeline's own name
    /// (a run not on the ledger: its deployment target). A request cannot choose another.
    Set {
        project: String,
        /// Monthly budget in US dollars.
        #[arg(long)]
        monthly: f64,
        /// Spend so far this month in US dollars (kept as it was when not given; 0 at first).
        #[arg(long)]
        spent: Option<f64>,
    },
    /// Every project's budget, spend and utilization.
    List,
    /// Make PIPELINE's runs spend PROJECT's budget (kept in the store; wins over
    /// ICAHUB_BUDGET_PROJECTS).
    Map { pipeline: String, project: String },
    /// Remove PIPELINE's map (its runs spend ICAHUB_BUDGET_PROJECTS' project, or their own).
    Unmap { pipeline: String },
    /// Every pipeline map.
    Maps,
}

pub async fn run(args: BudgetArgs) -> anyhow::Result<()> {
    let config = Config::from_env(None)?;
    let store = crate::startup::open_store(&config).await?;
    let by = super::keys::operator(args.by);
    let now = chrono::Utc::now();
    match args.command {
        BudgetCommand::Set {
            project,
            monthly,
            spent,
        } => {
            let b =
                crate::approvals::set_budget(store.as_ref(), &project, monthly, spent, &by, now)
                    .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                println!(
                    "{}: budget ${:.2}/month, spent ${:.2} ({:.1}% used)",
                    b.project,
                    b.monthly_budget,
                    b.current_spend,
                    b.current_spend / b.monthly_budget * 100.0
                );
            }
        }
        BudgetCommand::List => {
            let all = crate::approvals::list_budgets(store.as_ref()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no budgets; set one with `icahub budget set PROJECT --monthly USD`");
            } else {
                println!(
                    "{:<32} {:>14} {:>14} {:>14} {:>7}",
                    "PROJECT", "BUDGET", "SPENT", "COMMITTED", "USED"
                );
                for b in all {
                    let committed = b.committed_total(None);
                    println!(
                        "{:<32} {:>14.2} {:>14.2} {:>14.2} {:>6.1}%",
                        b.project,
                        b.monthly_budget,
                        b.current_spend,
                        committed,
                        (b.current_spend + committed) / b.monthly_budget * 100.0
                    );
                }
            }
        }
        BudgetCommand::Map { pipeline, project } => {
            let m = crate::approvals::set_budget_map(
                store.as_ref(),
                &pipeline,
                Some(&project),
                &by,
                now,
            )
            .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                println!("runs of pipeline {pipeline} now spend the budget of {project}");
            }
        }
        BudgetCommand::Unmap { pipeline } => {
            crate::approvals::set_budget_map(store.as_ref(), &pipeline, None, &by, now).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"pipeline": pipeline, "project": null})
                );
            } else {
                println!("pipeline {pipeline} has no budget map now");
            }
        }
        BudgetCommand::Maps => {
            let all = crate::approvals::list_budget_maps(store.as_ref()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no pipeline maps; add one with `icahub budget map PIPELINE PROJECT`");
            } else {
                println!("{:<40} {:<32} UPDATED", "PIPELINE", "PROJECT");
                for m in all {
                    println!(
                        "{:<40} {:<32} {} by {}",
                        m.pipeline,
                        m.project,
                        m.updated_at.format("%Y-%m-%d %H:%M"),
                        m.updated_by
                    );
                }
            }
        }
    }
    Ok(())
}
