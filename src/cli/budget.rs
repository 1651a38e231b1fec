//! `icahub budget set|list`: each project's monthly budget and its spend so far, which approval
//! requests are judged against (utilization = (spend + estimate) / budget). Every change is
//! recorded with who made it.

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
    /// PROJECT is the `project` of approval requests, or the pipeline name of their run.
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
                    "{:<32} {:>14} {:>14} {:>7}",
                    "PROJECT", "BUDGET", "SPENT", "USED"
                );
                for b in all {
                    println!(
                        "{:<32} {:>14.2} {:>14.2} {:>6.1}%",
                        b.project,
                        b.monthly_budget,
                        b.current_spend,
                        b.current_spend / b.monthly_budget * 100.0
                    );
                }
            }
        }
    }
    Ok(())
}
