//! `icahub doctor`, run as the operator runs it: a healthy set-up passes without posting
//! anything to a sink; each broken piece is named in plain words, with a non-zero exit.

mod support;

use serde_json::Value;
use std::process::Command;
use support::receiver::{Receiver, MATTERMOST_TOKEN};

const PD_KEY: &str = "R0123456789abcdefghijklmnopqrstu";

fn doctor(envs: &[(&str, String)]) -> (bool, Vec<Value>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_icahub"));
    cmd.args(["doctor", "--json", "--timeout", "3"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("ICAHUB_LOG", "off");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let findings: Vec<Value> = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.success(), findings, stdout)
}

fn level<'a>(findings: &'a [Value], check: &str) -> Vec<&'a str> {
    findings
        .iter()
        .filter(|f| f["check"] == check)
        .map(|f| f["level"].as_str().unwrap())
        .collect()
}

fn message<'a>(findings: &'a [Value], check: &str) -> &'a str {
    findings
        .iter()
        .find(|f| f["check"] == check)
        .and_then(|f| f["message"].as_str())
        .unwrap_or_else(|| panic!("no {check} finding in {findings:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_setup_passes_and_nothing_is_posted() {
    let dir = tempfile::tempdir().unwrap();
    // The store exists (doctor never creates one).
    drop(icahub::storage::sqlite::SqliteStore::open(dir.path()).unwrap());
    let mm = Receiver::mattermost().await;
    let pd = Receiver::pagerduty().await;
    let cp = Receiver::control_plane(Some("cp-token"), vec![]).await;
    let envs = vec![
        ("ICAHUB_DATA_DIR", dir.path().display().to_string()),
        (
            "ICAHUB_MATTERMOST_WEBHOOK_URL",
            mm.url("/hooks/abc123secret"),
        ),
        ("ICAHUB_MATTERMOST_URL", mm.base.clone()),
        ("ICAHUB_MATTERMOST_TOKEN", MATTERMOST_TOKEN.into()),
        ("ICAHUB_PAGERDUTY_ROUTING_KEY", PD_KEY.into()),
        ("ICAHUB_PAGERDUTY_EVENTS_URL", pd.url("/v2/enqueue")),
        ("ICAHUB_CONTROL_PLANE_URL", cp.base.clone()),
        ("ICAHUB_CONTROL_PLANE_TOKEN", "cp-token".into()),
    ];
    let (ok, f, out) = tokio::task::spawn_blocking(move || doctor(&envs))
        .await
        .unwrap();
    assert!(ok, "{out}");
    assert_eq!(level(&f, "config"), ["ok"]);
    assert_eq!(level(&f, "storage"), ["ok"]);
    assert_eq!(level(&f, "mattermost:default"), ["ok"]);
    assert_eq!(level(&f, "mattermost:api"), ["ok"]);
    assert!(message(&f, "mattermost:api").contains("@icahub-bot"));
    assert_eq!(level(&f, "pagerduty"), ["ok"]);
    assert_eq!(level(&f, "control_plane"), ["ok"]);
    // Reachability only: no message, no event, no ledger record.
    for r in [&mm, &pd, &cp] {
        assert!(
            r.requests().iter().all(|q| q.method == "GET"),
            "doctor sent something: {:?}",
            r.requests()
                .iter()
                .map(|q| (&q.method, &q.path))
                .collect::<Vec<_>>()
        );
    }
    assert!(!mm.requests().is_empty() && !pd.requests().is_empty() && !cp.requests().is_empty());
    assert!(
        !out.contains("abc123secret"),
        "the webhook URL is a secret: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_problem_is_named_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mm = Receiver::mattermost().await;
    let cp = Receiver::control_plane(Some("right-token"), vec![]).await;
    let dead = format!("http://127.0.0.1:{}", support::hub::free_port());
    let envs = vec![
        ("ICAHUB_DATA_DIR", dir.path().display().to_string()),
        (
            "ICAHUB_MATTERMOST_WEBHOOK_URL",
            format!("{dead}/hooks/abc123secret"),
        ),
        ("ICAHUB_MATTERMOST_URL", mm.base.clone()),
        ("ICAHUB_MATTERMOST_TOKEN", "stale-token".into()),
        ("ICAHUB_CONTROL_PLANE_URL", cp.base.clone()),
        ("ICAHUB_CONTROL_PLANE_TOKEN", "wrong-token".into()),
        (
            "ICAHUB_PAGERDUTY_ROUTING_KEY",
            "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/pd/)".into(),
        ),
        ("ICAHUB_PAGERDUTY_EVENTS_URL", format!("{dead}/v2/enqueue")),
    ];
    let (ok, f, out) = tokio::task::spawn_blocking(move || doctor(&envs))
        .await
        .unwrap();
    assert!(!ok, "{out}");
    assert_eq!(level(&f, "key_vault"), ["fail"]);
    assert!(message(&f, "key_vault").contains("ICAHUB_PAGERDUTY_ROUTING_KEY"));
    assert!(message(&f, "key_vault").contains("Key Vault Secrets User"));
    // The unresolved reference is also not a valid key: the sink configuration says so.
    assert_eq!(level(&f, "sinks"), ["fail"]);
    assert!(message(&f, "sinks").contains("32 letters and digits"));
    assert_eq!(level(&f, "mattermost:default"), ["fail"]);
    assert!(message(&f, "mattermost:default").contains("cannot connect"));
    assert_eq!(level(&f, "mattermost:api"), ["fail"]);
    assert!(message(&f, "mattermost:api").contains("refused ICAHUB_MATTERMOST_TOKEN"));
    assert_eq!(level(&f, "control_plane"), ["fail"]);
    assert!(message(&f, "control_plane").contains("ICAHUB_CONTROL_PLANE_TOKEN"));
    assert!(
        !out.contains("abc123secret")
            && !out.contains("wrong-token")
            && !out.contains("stale-token")
    );
    // No store in that directory: said so, and none was created.
    assert_eq!(level(&f, "storage"), ["fail"]);
    assert!(
        message(&f, "storage").contains("no embedded store"),
        "{out}"
    );
    assert!(!dir.path().join("icahub.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_storage_and_bad_settings_are_reported() {
    let dead = support::hub::free_port();
    let envs = vec![
        (
            "ICAHUB_TABLES_CONNECTION_STRING",
            format!(
                "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};TableEndpoint=http://127.0.0.1:{dead}/devstoreaccount1;",
                support::azurite::ACCOUNT_KEY
            ),
        ),
    ];
    let (ok, f, out) = tokio::task::spawn_blocking(move || doctor(&envs))
        .await
        .unwrap();
    assert!(!ok, "{out}");
    assert_eq!(level(&f, "config"), ["ok"]);
    assert_eq!(level(&f, "storage"), ["fail"], "{out}");
    assert!(!out.contains(support::azurite::ACCOUNT_KEY));

    let envs = vec![("ICAHUB_MAX_BODY_BYTES", "lots".to_string())];
    let (ok, f, out) = tokio::task::spawn_blocking(move || doctor(&envs))
        .await
        .unwrap();
    assert!(!ok, "{out}");
    assert_eq!(level(&f, "config"), ["fail"]);
    assert!(
        message(&f, "config").contains("ICAHUB_MAX_BODY_BYTES"),
        "{out}"
    );
    assert_eq!(level(&f, "storage"), ["warn"]);
    assert_eq!(
        level(&f, "sinks"),
        ["warn"],
        "nothing configured is worth a warning"
    );
}
