//! Monthly budgets per project (`budget|<hash>` in the registry), the pipeline→project maps
//! kept with `icahub budget map` (`budgetmap|<hash>`), and the estimates of approved approvals
//! held against a budget until their run finishes (then spent, or released).

use super::{commit_of, contention, expect_of, key_hash, pause, Approvals, ATTEMPTS, REGISTRY};
use crate::domain::approval::{self, Approval, Budget};
use crate::services::ServiceError;
use crate::storage::{DocCommit, DocWrite, Expect, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A storage failure on a budget or a budget map, or contention on it.
pub(super) fn budget_err(e: StoreError) -> ServiceError {
    ServiceError::from_store("the budget was not read or changed", "this budget")(e)
}

fn budget_key(project: &str) -> String {
    format!(
        "budget|{}",
        key_hash(&[&project.trim().to_ascii_lowercase()])
    )
}

/// A project's budget, if one is set.
pub async fn budget(store: &dyn Store, project: &str) -> Result<Option<Budget>, StoreError> {
    match store.doc_get(REGISTRY, &budget_key(project)).await? {
        Some(d) => {
            Ok(Some(serde_json::from_value(d.value).map_err(|e| {
                StoreError::Corrupt(format!("budget: {e}"))
            })?))
        }
        None => Ok(None),
    }
}

/// One change of a budget document, with the audit note saying what changed.
fn budget_write(
    key: &str,
    b: &Budget,
    expect: Expect,
    note: Value,
    record_id: &str,
    now: DateTime<Utc>,
) -> DocCommit {
    commit_of(
        REGISTRY.into(),
        vec![
            DocWrite {
                key: key.into(),
                value: serde_json::to_value(b).unwrap_or_default(),
                expect,
            },
            crate::audit::note(now, note),
        ],
        Vec::new(),
        record_id,
        now,
    )
}

/// Every budget (`icahub budget list`).
pub async fn list_budgets(store: &dyn Store) -> Result<Vec<Budget>, StoreError> {
    store
        .doc_list(REGISTRY, "budget|")
        .await?
        .into_iter()
        .map(|d| {
            serde_json::from_value(d.value).map_err(|e| StoreError::Corrupt(format!("budget: {e}")))
        })
        .collect()
}

/// Set a project's monthly budget and, optionally, its spend so far this month. Audited.
pub async fn set_budget(
    store: &dyn Store,
    project: &str,
    monthly_budget: f64,
    current_spend: Option<f64>,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Budget, StoreError> {
    if project.trim().is_empty() || project.len() > 128 {
        return Err(StoreError::Config(
            "a project name is 1-128 characters".into(),
        ));
    }
    if !(monthly_budget.is_finite() && monthly_budget > 0.0) {
        return Err(StoreError::Config(
            "the monthly budget must be a positive number of US dollars".into(),
        ));
    }
    if current_spend.is_some_and(|s| !(s.is_finite() && s >= 0.0)) {
        return Err(StoreError::Config(
            "the current spend must be zero or more US dollars".into(),
        ));
    }
    let key = budget_key(project);
    for _ in 0..ATTEMPTS {
        let doc = store.doc_get(REGISTRY, &key).await?;
        let before: Option<Budget> = match &doc {
            Some(d) => serde_json::from_value(d.value.clone()).ok(),
            None => None,
        };
        let b = Budget {
            project: project.trim().to_string(),
            monthly_budget,
            current_spend: current_spend
                .or(before.as_ref().map(|b| b.current_spend))
                .unwrap_or(0.0),
            updated_at: now,
            updated_by: by.into(),
            committed: before
                .as_ref()
                .map(|b| b.committed.clone())
                .unwrap_or_default(),
        };
        let c = budget_write(
            &key,
            &b,
            expect_of(&doc),
            json!({"action": "budget.set", "project": b.project, "before": before, "after": b, "by": by, "at": now}),
            "budget-change",
            now,
        );
        if store.doc_commit(&c).await? {
            return Ok(b);
        }
    }
    Err(StoreError::Contention("budget changed concurrently".into()))
}

fn budget_map_key(pipeline: &str) -> String {
    format!(
        "budgetmap|{}",
        key_hash(&[&pipeline.trim().to_ascii_lowercase()])
    )
}

/// A pipeline's project, as `icahub budget map` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetMap {
    pub pipeline: String,
    pub project: String,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// Map `pipeline` to `project` (`None`: remove the map). Audited.
pub async fn set_budget_map(
    store: &dyn Store,
    pipeline: &str,
    project: Option<&str>,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Option<BudgetMap>, StoreError> {
    let pipeline = pipeline.trim();
    if pipeline.is_empty() || pipeline.len() > 256 {
        return Err(StoreError::Config(
            "a pipeline name is 1-256 characters".into(),
        ));
    }
    if project.is_some_and(|p| p.trim().is_empty() || p.len() > 128) {
        return Err(StoreError::Config(
            "a project name is 1-128 characters".into(),
        ));
    }
    let key = budget_map_key(pipeline);
    for _ in 0..ATTEMPTS {
        let doc = store.doc_get(REGISTRY, &key).await?;
        let before: Option<BudgetMap> = doc
            .as_ref()
            .and_then(|d| serde_json::from_value(d.value.clone()).ok());
        let after = project.map(|p| BudgetMap {
            pipeline: pipeline.to_string(),
            project: p.trim().to_string(),
            updated_at: now,
            updated_by: by.into(),
        });
        // A removed map is a tombstone: documents are never deleted from the chained store.
        let value = match &after {
            Some(m) => serde_json::to_value(m).unwrap_or_default(),
            None => {
                json!({"pipeline": pipeline, "project": null, "updated_at": now, "updated_by": by})
            }
        };
        let c = commit_of(
            REGISTRY.into(),
            vec![
                DocWrite {
                    key: key.clone(),
                    value,
                    expect: expect_of(&doc),
                },
                crate::audit::note(
                    now,
                    json!({"action": "budget.mapped", "pipeline": pipeline, "before": before, "after": after, "by": by, "at": now}),
                ),
            ],
            Vec::new(),
            "budget-change",
            now,
        );
        if store.doc_commit(&c).await? {
            return Ok(after);
        }
    }
    Err(StoreError::Contention(
        "budget map changed concurrently".into(),
    ))
}

/// Every pipeline→project map, removed ones left out (`icahub budget maps`).
pub async fn list_budget_maps(store: &dyn Store) -> Result<Vec<BudgetMap>, StoreError> {
    Ok(store
        .doc_list(REGISTRY, "budgetmap|")
        .await?
        .into_iter()
        .filter_map(|d| serde_json::from_value(d.value).ok())
        .collect())
}

impl Approvals {
    /// The project whose budget an approval spends: decided by the run's pipeline (its map, then
    /// `ICAHUB_BUDGET_PROJECTS`, then the pipeline's own name), never by the request, so a caller
    /// cannot pick a project without a budget. A run not on the ledger spends its target's.
    pub(super) async fn project_for(
        &self,
        pipeline: Option<&str>,
        target: &str,
    ) -> Result<String, ServiceError> {
        let Some(pipeline) = pipeline.map(str::trim).filter(|p| !p.is_empty()) else {
            return Ok(target.to_string());
        };
        if let Some(d) = self
            .store()
            .doc_get(REGISTRY, &budget_map_key(pipeline))
            .await
            .map_err(budget_err)?
        {
            if let Some(p) = d.value.get("project").and_then(Value::as_str) {
                return Ok(p.to_string());
            }
        }
        let name = pipeline.to_ascii_lowercase();
        for (pattern, project) in &self.config.budget_projects {
            let hit = match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == *pattern,
            };
            if hit {
                return Ok(project.clone());
            }
        }
        Ok(pipeline.to_string())
    }

    /// Hold `a`'s estimate against its project's budget as it becomes approved. With `enforce`
    /// (a signature), refused when the budget, with every other commitment, would go above the
    /// limit; an override commits without the check. `Ok(true)`: a commitment was written (to
    /// release if the approval's own commit then fails).
    pub(super) async fn commit_estimate(
        &self,
        a: &Approval,
        enforce: bool,
        now: DateTime<Utc>,
    ) -> Result<bool, ServiceError> {
        let Some(estimate) = a.estimated_cost.filter(|e| *e > 0.0) else {
            return Ok(false);
        };
        let key = budget_key(&a.project);
        for attempt in 0..ATTEMPTS {
            let Some(doc) = self
                .store()
                .doc_get(REGISTRY, &key)
                .await
                .map_err(budget_err)?
            else {
                return Ok(false);
            };
            let mut b: Budget = serde_json::from_value(doc.value.clone())
                .map_err(|e| budget_err(StoreError::Corrupt(format!("budget: {e}"))))?;
            if b.committed.contains_key(&a.id) {
                return Ok(false);
            }
            let check = b.check(estimate, Some(&a.id), now);
            if enforce {
                if let Some(why) = approval::over_budget(&check, self.config.policy.max_utilization)
                {
                    return Err(ServiceError::Conflict(format!(
                    "{} cannot be approved now: {why}; other approved deployments of {} have not finished yet",
                    a.id, a.project
                )));
                }
            }
            b.committed.insert(
                a.id.clone(),
                approval::Commitment {
                    estimate,
                    run_id: a.run_id.clone(),
                    at: now,
                },
            );
            let c = budget_write(
                &key,
                &b,
                Expect::Version(doc.version),
                json!({"action": "budget.committed", "project": b.project, "approval_id": a.id, "run_id": a.run_id, "estimate": estimate, "utilization": check.utilization, "at": now}),
                &a.id,
                now,
            );
            if self.store().doc_commit(&c).await.map_err(budget_err)? {
                return Ok(true);
            }
            pause(attempt).await;
        }
        Err(contention("this budget"))
    }
}

/// Take `id`'s commitment off `project`'s budget; with `spent`, add its estimate to the
/// recorded spend (its run finished successfully). Best effort, audited.
pub(super) async fn release_estimate(
    store: &dyn Store,
    project: &str,
    id: &str,
    spent: bool,
    now: DateTime<Utc>,
) {
    let key = budget_key(project);
    for attempt in 0..ATTEMPTS {
        let Ok(Some(doc)) = store.doc_get(REGISTRY, &key).await else {
            return;
        };
        let Ok(mut b) = serde_json::from_value::<Budget>(doc.value.clone()) else {
            return;
        };
        let Some(c) = b.committed.remove(id) else {
            return;
        };
        if spent {
            b.current_spend += c.estimate;
        }
        let write = budget_write(
            &key,
            &b,
            Expect::Version(doc.version),
            json!({"action": if spent { "budget.spent" } else { "budget.released" }, "project": b.project, "approval_id": id, "run_id": c.run_id, "estimate": c.estimate, "at": now}),
            id,
            now,
        );
        match store.doc_commit(&write).await {
            Ok(true) => return,
            Ok(false) => pause(attempt).await,
            Err(e) => {
                tracing::warn!(error = %e, approval_id = id, "could not release a budget commitment");
                return;
            }
        }
    }
}

/// A run finished: the approved estimates held for it become spend (succeeded) or are released.
pub async fn settle_run_estimates(
    store: &dyn Store,
    run_id: &str,
    succeeded: bool,
    now: DateTime<Utc>,
) {
    let Ok(all) = list_budgets(store).await else {
        return;
    };
    for b in all {
        for (id, c) in &b.committed {
            if c.run_id == run_id {
                release_estimate(store, &b.project, id, succeeded, now).await;
            }
        }
    }
}

/// A finished run settles the approved estimates the approvals hold for it.
impl crate::services::runs::RunFinished for super::Approvals {
    fn run_finished<'a>(
        &'a self,
        run_id: &'a str,
        succeeded: bool,
        now: DateTime<Utc>,
    ) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(settle_run_estimates(
            self.deps.store.as_ref(),
            run_id,
            succeeded,
            now,
        ))
    }
}
