//! The Azure DevOps check's job token (`AuthToken`) stays out of the audit trail, its exports,
//! the outbox and backups, on both backends: a check creates an approval, the approval is
//! decided, the callback reaches a local Azure DevOps with the right token, and the token
//! string is then nowhere in `audit/query`, `icahub audit export`, `icahub backup` (taken while
//! the token is held and after), the chain entries, the documents or the outbox; the secret is
//! gone once the callback is delivered, and `icahub audit verify` passes. Also: a store written
//! the way earlier versions wrote it (the token inline in the approval) is redacted by
//! `icahub audit redact-tokens`, by appending, and its exports mask the old entries.

mod support;

use chrono::Utc;
use icahub::clock::ManualClock;
use icahub::config::Config;
use icahub::domain::identity::Role;
use icahub::domain::routing::Sink;
use icahub::sinks::Sinks;
use icahub::storage::{OutboxFilter, OutboxStatus, Store};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use support::hub::{Reply as HubReply, TestHub};
use support::receiver::Receiver;

const CHECK: &str = "/api/v1/azdo/check?code=aGVsbG8tZnVuY3Rpb24ta2V5&";
/// A job access token; its signature part is distinctive enough to find anywhere.
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJuYW1laWQiOiJidWlsZHNlcnZpY2UifQ.TG9uZ0xpdmVkSm9iVG9rZW5fbmV2ZXJfY2hhaW5lZA";
const PROJECT_ID: &str = "7c2a3b5e-1f4d-4c8a-9b6e-2d1f0a3c4b5d";
const PLAN_ID: &str = "0a6b1c2d-3e4f-4a6b-9c8d-9e0f1a2b3c4d";
const TASK_ID: &str = "61153303-347e-5f06-a6a1-ce2102bd68eb";
const JOB_ID: &str = "3a7e60dc-c5b0-5009-86eb-0f217c12e2ea";
/// The time budget given to a drain (it returns as soon as nothing is due).
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Embedded,
    Tables,
}

struct World {
    hub: TestHub,
    ado: Receiver,
    /// The storage settings, for the CLI commands run against the same store.
    env: Vec<(&'static str, String)>,
    pipeline: String,
    alice: String,
    bob: String,
    dir: tempfile::TempDir,
}

async fn world(backend: Backend) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ado = Receiver::azure_devops(TOKEN).await;
    let mut env: Vec<(&'static str, String)> = match backend {
        Backend::Embedded => vec![
            ("ICAHUB_STORAGE", "embedded".into()),
            ("ICAHUB_DATA_DIR", dir.path().display().to_string()),
        ],
        Backend::Tables => vec![
            ("ICAHUB_STORAGE", "tables".into()),
            (
                "ICAHUB_TABLES_CONNECTION_STRING",
                support::azurite::connection_string(),
            ),
            (
                "ICAHUB_TABLE_PREFIX",
                support::azurite::unique_prefix("tok"),
            ),
        ],
    };
    let org = format!(
        "{}/fabrikamfiber",
        ado.base
            .split_once("://")
            .map_or(ado.base.as_str(), |(_, r)| r)
    );
    let mut hub_env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    hub_env.insert("ICAHUB_AZDO_PLAN_HOSTS".into(), "127.0.0.1".into());
    hub_env.insert("ICAHUB_AZDO_ORGANIZATIONS".into(), org);
    let config = Config::from_lookup(|k| hub_env.get(k).cloned(), Some(0)).expect("config");
    let sinks = Sinks::from_lookup(&|k| hub_env.get(k).cloned()).expect("sinks");
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let hub = TestHub::start_with(config, sinks, clock).await;
    let pipeline = hub.person("azdo-pipeline", &[Role::Devops]).await;
    let alice = hub.person("alice", &[Role::TechnicalApprover]).await;
    let bob = hub.person("bob", &[Role::BusinessApprover]).await;
    env.push(("ICAHUB_LOG", "warn".into()));
    World {
        hub,
        ado,
        env,
        pipeline,
        alice,
        bob,
        dir,
    }
}

fn headers(w: &World) -> Vec<(&'static str, String)> {
    vec![
        ("PlanUrl", format!("{}/fabrikamfiber/", w.ado.base)),
        ("ProjectId", PROJECT_ID.into()),
        ("HubName", "build".into()),
        ("PlanId", PLAN_ID.into()),
        ("JobId", JOB_ID.into()),
        ("TimelineId", PLAN_ID.into()),
        ("TaskInstanceId", TASK_ID.into()),
        ("AuthToken", TOKEN.into()),
        ("BuildId", "4711".into()),
    ]
}

async fn post_check(w: &World) -> HubReply {
    let body = json!({"deployment_target": "staging", "estimated_cost": 120,
                      "checklist": ["tests green"]});
    let mut r = reqwest::Client::new()
        .post(w.hub.url(CHECK))
        .header("authorization", format!("Bearer {}", w.pipeline))
        .body(body.to_string());
    for (k, v) in headers(w) {
        r = r.header(k, v);
    }
    HubReply::read(r.send().await.unwrap()).await
}

async fn sign(w: &World, key: &str, id: &str, kind: &str) {
    let r = reqwest::Client::new()
        .post(w.hub.url(&format!("/api/v1/azdev/approval/{id}/sign")))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(json!({"approval_type": kind, "decision": "approved"}).to_string())
        .send()
        .await
        .unwrap();
    let r = HubReply::read(r).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

fn cli(w: &World, args: &[&str]) -> (bool, String) {
    support::cli(args, &w.env)
}

/// The token, or its signature part alone, in `haystack` (bytes: backups are binary).
fn leaks(haystack: &[u8]) -> bool {
    let sig = TOKEN.rsplit('.').next().unwrap().as_bytes();
    haystack.windows(sig.len()).any(|w| w == sig)
}

/// Every chain entry of the store, page by page.
async fn chain(store: &dyn Store) -> Vec<icahub::audit::AuditEntry> {
    let mut out: Vec<icahub::audit::AuditEntry> = Vec::new();
    loop {
        let after = out.last().map(|e| (e.partition.clone(), e.seq));
        let page = store
            .audit_page(after.as_ref().map(|(p, s)| (p.as_str(), *s)), 500)
            .await
            .unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Every entry `POST audit/query` returns, all pages, as text.
async fn audit_query(w: &World) -> String {
    let mut body = json!({"limit": 1000});
    let mut all = String::new();
    loop {
        let r = w
            .hub
            .post_json("/api/v1/azdev/audit/query", body.to_string())
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        all.push_str(&r.text);
        match r.json["next_cursor"].as_str() {
            Some(c) => body["cursor"] = json!(c),
            None => return all,
        }
    }
}

fn backup(w: &World, name: &str) -> Vec<u8> {
    let out = w.dir.path().join(name);
    let (ok, text) = cli(w, &["backup", "--out", &out.display().to_string()]);
    assert!(ok, "{text}");
    std::fs::read(&out).unwrap()
}

fn export(w: &World, name: &str) -> Vec<u8> {
    let out = w.dir.path().join(name);
    let (ok, text) = cli(w, &["audit", "export", "--out", &out.display().to_string()]);
    assert!(ok, "{text}");
    std::fs::read(&out).unwrap()
}

fn verify(w: &World) {
    let (ok, text) = cli(w, &["audit", "verify"]);
    assert!(ok, "audit verify: {text}");
    assert!(text.contains("OK"), "{text}");
}

async fn rows(w: &World, status: OutboxStatus) -> Vec<icahub::storage::OutboxRow> {
    w.hub
        .app
        .store
        .outbox_list(&OutboxFilter {
            status: Some(status),
            sink: Some(Sink::AzureDevops),
            limit: 100,
        })
        .await
        .unwrap()
}

async fn the_token_is_nowhere(backend: Backend) {
    let w = world(backend).await;
    let store = w.hub.app.store.clone();
    let r = post_check(&w).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    let key = icahub::domain::check::secret_key(&id, TASK_ID);

    // Held apart: in the secret store, and the approval keeps only its SHA-256 and the key.
    assert_eq!(
        store.secret_get(&key).await.unwrap().as_deref(),
        Some(TOKEN)
    );
    let (a, _) = icahub::approvals::load(store.as_ref(), &id)
        .await
        .unwrap()
        .unwrap();
    let check = a.check.clone().unwrap();
    assert!(check.get("auth_token").is_none(), "{check}");
    assert_eq!(
        check["auth_token_sha256"],
        icahub::domain::check::token_sha256(TOKEN)
    );
    assert_eq!(check["auth_token_secret"], key.as_str());
    // A backup taken while the token is held does not hold it.
    assert!(!leaks(&backup(&w, "while-open.bak")), "backup while open");

    sign(&w, &w.alice, &id, "technical").await;
    sign(&w, &w.bob, &id, "business").await;
    // The callback arrives (fast path), with the job's token, as Azure DevOps checks it.
    w.hub.idle().await;
    w.ado.assert_no_rejections();
    let got = w.ado.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    // Settled, then the secret is forgotten.
    assert_eq!(rows(&w, OutboxStatus::Delivered).await.len(), 1);
    assert!(store.secret_get(&key).await.unwrap().is_none());
    assert_eq!(
        w.hub.app.dispatcher.drain(DEADLINE).await.unwrap().total(),
        0
    );

    // Nowhere: the outbox row, the chain, the documents, the query, the export, the backup.
    let row = &rows(&w, OutboxStatus::Delivered).await[0];
    assert!(
        !leaks(row.payload.to_string().as_bytes()),
        "{}",
        row.payload
    );
    assert_eq!(row.payload["check"]["auth_token_secret"], key.as_str());
    let entries = chain(store.as_ref()).await;
    assert!(entries.iter().any(|e| e.body.get("check").is_some()));
    assert!(!leaks(serde_json::to_string(&entries).unwrap().as_bytes()));
    let partition = icahub::approvals::partition_of(&id).unwrap();
    let docs = store.doc_list(&partition, "").await.unwrap();
    assert!(docs.len() > 1);
    for d in &docs {
        assert!(!leaks(d.value.to_string().as_bytes()), "doc {}", d.key);
    }
    let q = audit_query(&w).await;
    assert!(
        q.contains("auth_token_sha256"),
        "the query saw the approval"
    );
    assert!(!leaks(q.as_bytes()), "audit/query");
    let x = export(&w, "trail.ndjson");
    assert!(!x.is_empty());
    assert!(!leaks(&x), "audit export");
    assert!(!leaks(&backup(&w, "after.bak")), "backup after");
    verify(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_job_token_is_nowhere_but_the_callback_embedded() {
    the_token_is_nowhere(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_job_token_is_nowhere_but_the_callback_tables() {
    the_token_is_nowhere(Backend::Tables).await;
}

/// A store written the way versions before the secret store wrote it: the approval's document
/// (and so its chain entry) holds the token inline.
async fn write_the_old_way(w: &World, id: &str) {
    let store = w.hub.app.store.as_ref();
    let key = icahub::domain::check::secret_key(id, TASK_ID);
    assert!(store.secret_delete(&key).await.unwrap());
    let p = icahub::approvals::partition_of(id).unwrap();
    let doc = store.doc_get(&p, "approval").await.unwrap().unwrap();
    let mut v = doc.value.clone();
    let c = v["check"].as_object_mut().unwrap();
    c.remove("auth_token_sha256");
    c.remove("auth_token_secret");
    c.insert("auth_token".into(), json!(TOKEN));
    let commit = icahub::storage::DocCommit {
        partition: p.clone(),
        writes: vec![icahub::storage::DocWrite {
            key: "approval".into(),
            value: v,
            expect: icahub::storage::Expect::Version(doc.version),
        }],
        outbox: Vec::new(),
        record_id: id.into(),
        now: Utc::now(),
    };
    assert!(store.doc_commit(&commit).await.unwrap());
    let entries = chain(store).await;
    assert!(leaks(serde_json::to_string(&entries).unwrap().as_bytes()));
}

async fn old_tokens_are_redacted(backend: Backend) {
    let w = world(backend).await;
    let store = w.hub.app.store.clone();
    let r = post_check(&w).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    write_the_old_way(&w, &id).await;
    verify(&w);

    // Before redaction: exports and the query already mask the chained token, and say so.
    let x = export(&w, "before.ndjson");
    assert!(!leaks(&x), "audit export masks old entries");
    let text = String::from_utf8_lossy(&x).to_string();
    assert!(text.contains("\"redacted\""), "{text}");
    let before = w.dir.path().join("before.ndjson");
    let manifest = w.dir.path().join("before.ndjson.manifest.json");
    let (ok, out) = cli(
        &w,
        &[
            "audit",
            "verify-export",
            &before.display().to_string(),
            &manifest.display().to_string(),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("masked on export"), "{out}");
    let q = audit_query(&w).await;
    assert!(
        !leaks(q.as_bytes()) && q.contains("\"redacted\""),
        "audit/query"
    );

    // The command explains itself; a dry run writes nothing.
    let (ok, help) = cli(&w, &["audit", "redact-tokens", "--help"]);
    assert!(
        ok && help.contains("APPENDING") && help.contains("--dry-run"),
        "{help}"
    );
    let (ok, out) = cli(&w, &["audit", "redact-tokens", "--dry-run"]);
    assert!(ok && out.contains("would redact 1"), "{out}");
    let p = icahub::approvals::partition_of(&id).unwrap();
    let doc = store.doc_get(&p, "approval").await.unwrap().unwrap();
    assert_eq!(doc.value["check"]["auth_token"], TOKEN, "a dry run wrote");

    // Redaction appends: a new version without the token, a note, the token moved to the
    // secret store (the approval is still open); the earlier entry stays, and verify passes.
    let (ok, out) = cli(&w, &["audit", "redact-tokens"]);
    assert!(ok && out.contains("redacted 1 (1 still open"), "{out}");
    let doc = store.doc_get(&p, "approval").await.unwrap().unwrap();
    assert!(!leaks(doc.value.to_string().as_bytes()), "{}", doc.value);
    let sha = icahub::domain::check::token_sha256(TOKEN);
    assert_eq!(doc.value["check"]["auth_token_sha256"], sha.as_str());
    let key = icahub::domain::check::secret_key(&id, TASK_ID);
    assert_eq!(doc.value["check"]["auth_token_secret"], key.as_str());
    assert_eq!(
        store.secret_get(&key).await.unwrap().as_deref(),
        Some(TOKEN)
    );
    let notes: Vec<Value> = store
        .doc_list(&p, "audit|")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.value)
        .filter(|v| v["action"] == "audit.redacted")
        .collect();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0]["approval_id"], id.as_str());
    assert_eq!(notes[0]["field"], "check.auth_token");
    assert_eq!(notes[0]["sha256"], sha.as_str());
    assert!(!leaks(notes[0].to_string().as_bytes()));
    let entries = chain(store.as_ref()).await;
    assert!(
        leaks(serde_json::to_string(&entries).unwrap().as_bytes()),
        "the older entry is kept as stored (never rewritten)"
    );
    verify(&w);
    let (ok, out) = cli(&w, &["audit", "redact-tokens"]);
    assert!(ok && out.contains("redacted 0"), "again: {out}");

    // The callback still goes out with the token, which is then forgotten.
    sign(&w, &w.alice, &id, "technical").await;
    sign(&w, &w.bob, &id, "business").await;
    w.hub.idle().await;
    w.ado.assert_no_rejections();
    assert_eq!(
        w.ado.requests()[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert!(store.secret_get(&key).await.unwrap().is_none());
    assert!(!leaks(&export(&w, "after.ndjson")), "audit export");
    assert!(!leaks(audit_query(&w).await.as_bytes()), "audit/query");
    verify(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_chained_by_earlier_versions_are_redacted_by_appending_embedded() {
    old_tokens_are_redacted(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_chained_by_earlier_versions_are_redacted_by_appending_tables() {
    old_tokens_are_redacted(Backend::Tables).await;
}
