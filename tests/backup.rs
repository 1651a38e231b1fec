//! `icahub backup` / `icahub restore` as an operator runs them, on both backends: what the hub
//! stored (incidents, runs, approvals, the audit chains) comes back identical and verifies; a
//! restore refuses a non-empty target, a backup cut short, and a backup of the other kind.

mod support;

use icahub::config::{Config, Secret, StorageConfig};
use serde_json::{json, Value};
use std::path::Path;
use support::hub::TestHub;

fn cli(args: &[&str], envs: &[(&str, String)]) -> (bool, String) {
    support::cli(args, envs)
}

/// Alerts on three streams (one resolved), a finished run, an approval request.
async fn fill(hub: &TestHub) {
    for (rule, fired) in [("cpu", true), ("disk", true), ("mem", true), ("cpu", false)] {
        let mut v = support::fixture_json("azmon-common-metric-static-fired.json");
        let e = &mut v["data"]["essentials"];
        e["alertRule"] = json!(rule);
        e["monitorCondition"] = json!(if fired { "Fired" } else { "Resolved" });
        e["alertId"] = json!(format!("/alerts/{rule}-{fired}"));
        assert_eq!(
            hub.post_json("/api/v1/azdev/alert", v.to_string())
                .await
                .status,
            202
        );
    }
    let start = json!({"pipeline_name": "payments-deploy", "run_id": "run-b1", "branch": "main",
                       "commit": "9f2c1e7", "triggered_by": "carol"});
    assert_eq!(
        hub.post_json("/api/v1/azdev/run/start", start.to_string())
            .await
            .status,
        201
    );
    let ev = json!({"run_id": "run-b1", "event_type": "deploy", "event_data": {"step": 1}});
    assert_eq!(
        hub.post_json("/api/v1/azdev/run/event", ev.to_string())
            .await
            .status,
        201
    );
    let req = json!({"run_id": "run-b1", "deployment_target": "staging", "estimated_cost": 10.0,
                     "checklist": ["tests green"]});
    let r = hub
        .post_json("/api/v1/azdev/approval", req.to_string())
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// What a user would compare: the incidents, the run with its events, the approval.
async fn snapshot(hub: &TestHub) -> Value {
    let incidents = hub.get("/api/v1/azdev/incidents?limit=1000").await.json;
    let run = hub.get("/api/v1/azdev/run/run-b1").await.json;
    let year = chrono::Utc::now().format("%Y");
    let approval = hub
        .get(&format!("/api/v1/azdev/approval/APR-{year}-000001"))
        .await
        .json;
    json!({"incidents": incidents, "run": run, "approval": approval["status"]})
}

fn tables_env(prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ICAHUB_STORAGE", "tables".to_string()),
        (
            "ICAHUB_TABLES_CONNECTION_STRING",
            support::azurite::connection_string(),
        ),
        ("ICAHUB_TABLE_PREFIX", prefix.to_string()),
    ]
}

fn tables_config(dir: &Path, prefix: &str) -> Config {
    let mut c = Config::embedded(dir);
    c.storage = StorageConfig::Tables {
        connection_string: Secret::new(support::azurite::connection_string()),
        table_prefix: prefix.to_string(),
    };
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_storage_backup_restores_into_new_tables_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        support::azurite::unique_prefix("bka"),
        support::azurite::unique_prefix("bkb"),
    );
    let hub = TestHub::start(tables_config(dir.path(), &a)).await;
    fill(&hub).await;
    let before = snapshot(&hub).await;
    hub.stop().await;

    let file = dir.path().join("tables.ndjson");
    let f = file.display().to_string();
    let (ok, out) = cli(&["backup", "--out", &f], &tables_env(&a));
    assert!(ok, "{out}");
    assert!(
        out.contains("Table Storage entities") && out.contains("sha256"),
        "{out}"
    );
    let (ok, out) = cli(&["backup", "--out", &f], &tables_env(&a));
    assert!(!ok && out.contains("exists"), "never overwrites: {out}");

    let (ok, out) = cli(&["restore", "--from", &f], &tables_env(&b));
    assert!(ok, "{out}");
    let (ok, out) = cli(&["audit", "verify"], &tables_env(&b));
    assert!(ok, "the restored trail verifies: {out}");

    let restored = TestHub::start(tables_config(dir.path(), &b)).await;
    assert_eq!(snapshot(&restored).await, before);
    assert_eq!(
        before["incidents"]["incidents"].as_array().map(Vec::len),
        Some(3),
        "{before}"
    );
    restored.stop().await;

    // Over live data: refused, nothing changed.
    let (ok, out) = cli(&["restore", "--from", &f], &tables_env(&b));
    assert!(!ok && out.contains("already hold data"), "{out}");
    let again = dir.path().join("again.ndjson");
    let (ok, out) = cli(
        &["backup", "--out", &again.display().to_string()],
        &tables_env(&b),
    );
    assert!(ok, "{out}");
    let entities = |p: &Path| {
        let t = std::fs::read_to_string(p).unwrap();
        let mut v: Vec<String> = t.lines().skip(1).map(str::to_string).collect();
        v.sort();
        v
    };
    let restored_hub_keys = entities(&again).len() - entities(&file).len();
    assert!(
        restored_hub_keys > 0,
        "the restored hub issued its test key"
    );
    let (ok, out) = cli(&["restore", "--from", &f], &tables_env(&b));
    assert!(!ok, "{out}");
    let again2 = dir.path().join("again2.ndjson");
    let (ok, out) = cli(
        &["backup", "--out", &again2.display().to_string()],
        &tables_env(&b),
    );
    assert!(ok, "{out}");
    assert_eq!(
        entities(&again2),
        entities(&again),
        "a refused restore changes nothing"
    );

    // A backup of a prefix that does not exist is an error, not an empty file.
    let nothing = dir.path().join("nothing.ndjson");
    let (ok, out) = cli(
        &["backup", "--out", &nothing.display().to_string()],
        &tables_env(&support::azurite::unique_prefix("bkz")),
    );
    assert!(!ok && out.contains("does not exist"), "{out}");
    assert!(!nothing.exists());

    // A trailer that disagrees with the lines.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    let fewer = dir.path().join("fewer.ndjson");
    std::fs::write(&fewer, lines.join("\n")).unwrap();
    let (ok, out) = cli(
        &["restore", "--from", &fewer.display().to_string()],
        &tables_env(&support::azurite::unique_prefix("bkd")),
    );
    assert!(!ok && out.contains("trailer counts"), "{out}");

    // Cut short: refused before writing anything.
    let text = std::fs::read_to_string(&file).unwrap();
    let cut: Vec<&str> = text.lines().collect();
    let short = dir.path().join("short.ndjson");
    std::fs::write(&short, cut[..cut.len() - 2].join("\n")).unwrap();
    let c = support::azurite::unique_prefix("bkc");
    let (ok, out) = cli(
        &["restore", "--from", &short.display().to_string()],
        &tables_env(&c),
    );
    assert!(!ok && out.contains("cut short"), "{out}");
    let (ok, out) = cli(&["audit", "verify"], &tables_env(&c));
    assert!(ok, "an empty store: {out}");
    assert!(!out.contains("run-b1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_backup_is_a_snapshot_that_restores_into_an_empty_directory() {
    let (src, dst, other) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let hub = TestHub::start(Config::embedded(src.path())).await;
    fill(&hub).await;
    let before = snapshot(&hub).await;
    // Taken while the hub runs.
    let file = other.path().join("hub.db");
    let f = file.display().to_string();
    let env = |d: &Path| {
        vec![
            ("ICAHUB_STORAGE", "embedded".to_string()),
            ("ICAHUB_DATA_DIR", d.display().to_string()),
        ]
    };
    let (ok, out) = cli(&["backup", "--out", &f], &env(src.path()));
    assert!(ok, "{out}");
    hub.stop().await;

    let (ok, out) = cli(&["restore", "--from", &f], &env(dst.path()));
    assert!(ok, "{out}");
    let (ok, out) = cli(&["audit", "verify"], &env(dst.path()));
    assert!(ok, "{out}");
    let restored = TestHub::start(Config::embedded(dst.path())).await;
    assert_eq!(snapshot(&restored).await, before);
    restored.stop().await;

    let (ok, out) = cli(&["restore", "--from", &f], &env(dst.path()));
    assert!(!ok && out.contains("already exists"), "{out}");
    // The wrong kind of backup for the configured store.
    let (ok, out) = cli(&["restore", "--from", &f], &tables_env("unused1x"));
    assert!(!ok && out.contains("SQLite"), "{out}");
    let junk = other.path().join("junk.db");
    std::fs::write(&junk, b"SQLite format 3\0 but not really a database at all").unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let (ok, out) = cli(
        &["restore", "--from", &junk.display().to_string()],
        &env(fresh.path()),
    );
    assert!(!ok, "{out}");
    assert!(!fresh.path().join("icahub.db").exists());
}
