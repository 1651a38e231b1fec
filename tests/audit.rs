//! The hash-chained audit trail: records written through the real server verify clean; then
//! rows are edited, deleted, inserted and reordered directly in the embedded database and in
//! Azurite, and `verify` names each by its id (and `icahub audit verify` exits non-zero). The
//! export and its manifest: written in each format, checked, and a changed export is caught.

mod support;

use icahub::audit::{verify, ChainFinding};
use icahub::config::{Config, Secret, StorageConfig};
use serde_json::json;
use std::process::Command;
use support::azurite;
use support::fixture;
use support::hub::TestHub;

/// Alerts (an incident opened and resolved), a run with events and a finish, an approval signed.
async fn some_records(hub: &TestHub) {
    for f in [
        "azmon-common-metric-static-fired.json",
        "azmon-common-metric-resolved.json",
        "alertmanager-webhook-v4.json",
    ] {
        let path = if f.starts_with("alertmanager") {
            "/api/v1/alertmanager"
        } else {
            "/api/v1/azdev/alert"
        };
        let r = hub.post_json(path, fixture(f)).await;
        assert_eq!(r.status, 202, "{f}: {}", r.text);
    }
    let post = |path: &'static str, body: serde_json::Value| async move {
        let r = hub.post_json(path, body.to_string()).await;
        assert!(r.status < 300, "{path}: {}", r.text);
        r.json
    };
    post(
        "/api/v1/azdev/run/start",
        json!({"pipeline_name": "payments-deploy", "run_id": "9001", "branch": "main", "commit": "abc", "triggered_by": "carol"}),
    )
    .await;
    for t in ["build", "deploy"] {
        post(
            "/api/v1/azdev/run/event",
            json!({"run_id": "9001", "event_type": t, "event_data": {}}),
        )
        .await;
    }
    post(
        "/api/v1/azdev/run/finish",
        json!({"run_id": "9001", "status": "success", "end_time": "2026-11-22T10:00:00Z"}),
    )
    .await;
    let a = post(
        "/api/v1/azdev/approval",
        json!({"run_id": "9001", "deployment_target": "staging", "estimated_cost": 5}),
    )
    .await;
    let id = a["approval_id"].as_str().unwrap().to_string();
    // The test key requested it: two other people override it.
    let r = hub.override_approval(&id, "audit test").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "approved");
}

fn has(findings: &[ChainFinding], problem: &str, id_part: &str) -> bool {
    findings
        .iter()
        .any(|f| f.problem == problem && f.id.contains(id_part))
}

#[tokio::test]
async fn tampering_with_the_embedded_database_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start(Config::embedded(dir.path())).await;
    let db = dir.path().join("icahub.db");
    hub.keep(dir);
    some_records(&hub).await;
    let store = hub.app.store.clone();
    let clean = verify(store.as_ref(), &|_, _| {}).await.unwrap();
    assert!(clean.findings.is_empty(), "{:#?}", clean.findings);
    assert!(clean.entries > 20 && clean.records > 10, "{clean:?}");

    let c = rusqlite::Connection::open(&db).unwrap();
    let one = |sql: &str| -> String { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    // Edit a run (its status), delete an event, insert a document nobody wrote.
    let run_partition = one("SELECT partition FROM docs WHERE key = 'run' LIMIT 1");
    c.execute(
        "UPDATE docs SET value = replace(value, '\"success\"', '\"failed\"') WHERE partition = ?1 AND key = 'run'",
        [&run_partition],
    )
    .unwrap();
    let event_id = one("SELECT id FROM events ORDER BY id LIMIT 1");
    c.execute("DELETE FROM events WHERE id = ?1", [&event_id])
        .unwrap();
    c.execute(
        "INSERT INTO docs (partition, key, value, version) VALUES ('identities', 'id|mallory', '{\"name\":\"mallory\",\"roles\":[\"admin\"]}', 1)",
        [],
    )
    .unwrap();
    // Reorder two chain entries of the approvals registry; edit an entry of the apikeys chain.
    c.execute_batch(
        "UPDATE audit SET seq = -1 WHERE partition = 'approvals' AND seq = 1;
         UPDATE audit SET seq = 1 WHERE partition = 'approvals' AND seq = 2;
         UPDATE audit SET seq = 2 WHERE partition = 'approvals' AND seq = -1;
         UPDATE audit SET body = replace(body, 'tester', 'someone') WHERE partition = 'identities' AND seq = 1;",
    )
    .unwrap();
    // Cut the last entry off the run's chain (and nothing else).
    c.execute(
        "DELETE FROM audit WHERE partition = ?1 AND seq = (SELECT max(seq) FROM audit WHERE partition = ?1)",
        [&run_partition],
    )
    .unwrap();
    drop(c);

    let report = verify(store.as_ref(), &|_, _| {}).await.unwrap();
    let f = &report.findings;
    assert!(has(f, "edited", "doc:run"), "{f:#?}");
    assert!(has(f, "removed", &format!("event:{event_id}")), "{f:#?}");
    assert!(has(f, "inserted", "doc:id|mallory"), "{f:#?}");
    assert!(
        f.iter()
            .any(|x| x.partition == "approvals" && x.problem == "reordered"),
        "{f:#?}"
    );
    assert!(
        f.iter()
            .any(|x| x.partition == "identities" && x.problem == "edited" && x.id == "seq 1"),
        "{f:#?}"
    );
    assert!(has(f, "head_mismatch", ""), "{f:#?}");

    // The command says so too, and exits non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_icahub"))
        .args(["audit", "verify"])
        .env("ICAHUB_STORAGE", "embedded")
        .env("ICAHUB_DATA_DIR", db.parent().unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&event_id) && stdout.contains("doc:id|mallory"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tampering_with_azure_table_storage_is_found() {
    use azure_data_tables::prelude::*;
    let prefix = azurite::unique_prefix("audit");
    let mut config = Config::embedded("unused");
    config.storage = StorageConfig::Tables {
        connection_string: Secret::new(azurite::connection_string()),
        table_prefix: prefix.clone(),
    };
    let hub = TestHub::start(config).await;
    some_records(&hub).await;
    let store = hub.app.store.clone();
    let clean = verify(store.as_ref(), &|_, _| {}).await.unwrap();
    assert!(clean.findings.is_empty(), "{:#?}", clean.findings);

    let ts = icahub::storage::tables::TableStore::connect(&azurite::connection_string(), &prefix)
        .await
        .unwrap();
    let table = ts.streams_table();
    type E = serde_json::Map<String, serde_json::Value>;
    let rows: Vec<E> = {
        use futures::StreamExt;
        let mut pages = table.query().into_stream::<E>();
        let mut v = Vec::new();
        while let Some(p) = pages.next().await {
            v.extend(p.unwrap().entities);
        }
        v
    };
    let rk = |e: &E| e["RowKey"].as_str().unwrap().to_string();
    let pk = |e: &E| e["PartitionKey"].as_str().unwrap().to_string();
    // Edit the run document (its value).
    let mut run = rows.iter().find(|e| rk(e) == "doc|run").unwrap().clone();
    let edited = run["Value"]
        .as_str()
        .unwrap()
        .replace("\"success\"", "\"failed\"");
    run.insert("Value".into(), edited.into());
    run.retain(|k, _| !k.starts_with("odata") && k != "Timestamp");
    table
        .partition_key_client(pk(&run))
        .entity_client(rk(&run))
        .update(&run, IfMatchCondition::Any)
        .unwrap()
        .await
        .unwrap();
    // Delete an event.
    let event = rows.iter().find(|e| rk(e).starts_with("event|")).unwrap();
    let event_id = rk(event).trim_start_matches("event|").to_string();
    table
        .partition_key_client(pk(event))
        .entity_client(rk(event))
        .delete()
        .await
        .unwrap();
    // Insert a document nobody wrote.
    let mut forged = E::new();
    forged.insert("PartitionKey".into(), "identities".into());
    forged.insert("RowKey".into(), "doc|id|mallory".into());
    forged.insert("Kind".into(), "doc".into());
    forged.insert(
        "Value".into(),
        "{\"name\":\"mallory\",\"roles\":[\"admin\"]}".into(),
    );
    table
        .partition_key_client("identities")
        .entity_client("doc|id|mallory")
        .insert_or_replace(&forged)
        .unwrap()
        .await
        .unwrap();
    // Swap the bodies of the first two entries of the approvals registry's chain.
    let a1 = rows
        .iter()
        .find(|e| pk(e) == "approvals" && rk(e) == "audit|000000000001")
        .unwrap();
    let a2 = rows
        .iter()
        .find(|e| pk(e) == "approvals" && rk(e) == "audit|000000000002")
        .unwrap();
    for (target, source) in [(a1, a2), (a2, a1)] {
        let mut m = source.clone();
        m.insert("RowKey".into(), rk(target).into());
        m.insert("Seq".into(), target["Seq"].clone());
        m.retain(|k, _| !k.starts_with("odata") && k != "Timestamp");
        table
            .partition_key_client("approvals")
            .entity_client(rk(target))
            .update(&m, IfMatchCondition::Any)
            .unwrap()
            .await
            .unwrap();
    }

    let report = verify(store.as_ref(), &|_, _| {}).await.unwrap();
    let f = &report.findings;
    assert!(has(f, "edited", "doc:run"), "{f:#?}");
    assert!(has(f, "removed", &format!("event:{event_id}")), "{f:#?}");
    assert!(has(f, "inserted", "doc:id|mallory"), "{f:#?}");
    assert!(
        f.iter().any(|x| x.partition == "approvals"
            && matches!(x.problem.as_str(), "edited" | "chain_broken")),
        "{f:#?}"
    );
}

#[tokio::test]
async fn exports_carry_a_manifest_that_catches_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start(Config::embedded(dir.path())).await;
    let data = dir.path().to_path_buf();
    hub.keep(dir);
    some_records(&hub).await;
    let out = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_icahub"))
            .args(args)
            .env("ICAHUB_STORAGE", "embedded")
            .env("ICAHUB_DATA_DIR", &data)
            .output()
            .unwrap()
    };
    for format in ["ndjson", "json", "csv"] {
        let file = out.path().join(format!("trail.{format}"));
        let f = file.to_str().unwrap();
        let o = cli(&["audit", "export", "--format", format, "--out", f]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{f}.manifest.json")).unwrap()).unwrap();
        assert!(manifest["records"].as_u64().unwrap() > 20, "{manifest}");
        assert_eq!(manifest["sha256"].as_str().unwrap().len(), 64);
        assert!(
            manifest["chain_heads"]["approvals"]["seq"]
                .as_u64()
                .is_some(),
            "{manifest}"
        );
        let m = format!("{f}.manifest.json");
        let ok = cli(&["audit", "verify-export", f, &m]);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stdout)
        );
        // One changed character is caught.
        let text = std::fs::read_to_string(&file).unwrap().replacen(
            "payments-deploy",
            "payments-deplox",
            1,
        );
        std::fs::write(&file, text).unwrap();
        let bad = cli(&["audit", "verify-export", f, &m]);
        assert_eq!(bad.status.code(), Some(1), "{format}");
        let said = String::from_utf8_lossy(&bad.stdout);
        assert!(
            said.contains("sha256 differs") && said.contains("does not match its hash"),
            "{said}"
        );
    }
    // This year's archive, and its check.
    let year = chrono::Utc::now().format("%Y").to_string();
    let o = cli(&[
        "audit",
        "archive",
        "--year",
        &year,
        "--out-dir",
        out.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let archive = out.path().join(format!("icahub-audit-{year}.ndjson"));
    let a = archive.to_str().unwrap();
    let ok = cli(&["audit", "verify-export", a, &format!("{a}.manifest.json")]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let o = cli(&[
        "audit",
        "archive",
        "--year",
        "1999",
        "--out-dir",
        out.path().to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read_to_string(out.path().join("icahub-audit-1999.ndjson")).unwrap(),
        ""
    );
    // Filters: one pipeline's records only.
    let file = out.path().join("pipeline.ndjson");
    let f = file.to_str().unwrap();
    let o = cli(&[
        "audit",
        "export",
        "--pipeline",
        "payments-deploy",
        "--out",
        f,
    ]);
    assert!(o.status.success());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|e| e["body"]["pipeline_name"] == "payments-deploy"
                || e["body"]["start"]["pipeline_name"] == "payments-deploy"),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn auditors_query_the_trail_page_by_page() {
    let hub = TestHub::embedded().await;
    some_records(&hub).await;
    const Q: &str = "/api/v1/azdev/audit/query";
    let mut seen = Vec::new();
    let mut body = json!({"pipeline": "payments-deploy", "limit": 2});
    loop {
        let r = hub.post_json(Q, body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let entries = r.json["entries"].as_array().unwrap().clone();
        assert!(entries.len() <= 2);
        seen.extend(entries);
        match r.json["next_cursor"].as_str() {
            Some(c) => body["cursor"] = json!(c),
            None => break,
        }
    }
    // The run document (start, finish) and its two events: four records of that pipeline.
    assert!(seen.len() >= 4, "{seen:#?}");
    assert!(seen
        .iter()
        .all(|e| e["body"]["pipeline_name"] == "payments-deploy"
            || e["body"]["start"]["pipeline_name"] == "payments-deploy"));
    let keys: std::collections::HashSet<String> = seen
        .iter()
        .map(|e| format!("{}/{}", e["partition"], e["seq"]))
        .collect();
    assert_eq!(keys.len(), seen.len(), "pages do not repeat entries");

    // Events only, of one partition.
    let r = hub
        .post_json(Q, json!({"kind": "incident"}).to_string())
        .await;
    assert!(r.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["kind"] == "incident"));
    assert!(!r.json["entries"].as_array().unwrap().is_empty());

    // Only auditors (and admins); bad queries are named.
    let (key, _) =
        icahub::identity::issue_key(hub.app.store.as_ref(), "dev", "test", chrono::Utc::now())
            .await
            .unwrap();
    let r = reqwest::Client::new()
        .post(hub.url(Q))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    for (bad, field) in [
        (json!({"limit": 0}), "limit"),
        (json!({"from": "yesterday"}), "from"),
        (json!({"cursor": "xyz"}), "cursor"),
    ] {
        let r = hub.post_json(Q, bad.to_string()).await;
        assert_eq!(r.expect_error(400)["field"], field);
    }
}

#[tokio::test]
async fn checkpoints_catch_a_partition_deleted_whole_and_a_chain_cut_with_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start(Config::embedded(dir.path())).await;
    let db = dir.path().join("icahub.db");
    hub.keep(dir);
    some_records(&hub).await;
    let store = hub.app.store.clone();
    let routing = icahub::domain::routing::Routing::default();
    let key = icahub::audit::checkpoint(
        store.as_ref(),
        &routing,
        chrono::Duration::hours(1),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(key.is_some());
    // Within the hour: no second checkpoint.
    assert!(icahub::audit::checkpoint(
        store.as_ref(),
        &routing,
        chrono::Duration::hours(1),
        chrono::Utc::now()
    )
    .await
    .unwrap()
    .is_none());
    assert!(verify(store.as_ref(), &|_, _| {})
        .await
        .unwrap()
        .findings
        .is_empty());

    let c = rusqlite::Connection::open(&db).unwrap();
    let run: String = c
        .query_row(
            "SELECT partition FROM docs WHERE key = 'run' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // The security partition deleted whole, chain and head included.
    let approval_p: String = c
        .query_row(
            "SELECT partition FROM docs WHERE key = 'approval' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    for t in ["docs", "audit", "audit_heads"] {
        c.execute(
            &format!("DELETE FROM {t} WHERE partition = ?1"),
            [&approval_p],
        )
        .unwrap();
    }
    c.execute("DELETE FROM outbox WHERE stream = ?1", [&approval_p])
        .unwrap();
    // The run's last entry cut off, and the head moved back to match.
    c.execute_batch(&format!(
        "DELETE FROM audit WHERE partition = '{run}' AND seq = (SELECT max(seq) FROM audit WHERE partition = '{run}');
         UPDATE audit_heads SET seq = seq - 1, hash = (SELECT hash FROM audit WHERE partition = '{run}' ORDER BY seq DESC LIMIT 1) WHERE partition = '{run}';"
    ))
    .unwrap();
    drop(c);
    let f = verify(store.as_ref(), &|_, _| {}).await.unwrap().findings;
    assert!(
        f.iter()
            .any(|x| x.problem == "removed" && x.id == format!("partition {approval_p}")),
        "{f:#?}"
    );
    assert!(
        f.iter()
            .any(|x| x.problem == "checkpoint_mismatch" && x.partition == run),
        "{f:#?}"
    );
    assert!(
        !f.iter().any(|x| x.problem == "head_mismatch"),
        "the head was fixed up: {f:#?}"
    );
}
