//! scripts/azdev_ica_hook.sh against a running hub: start, events, finish; then with the hub
//! stopped the records are spooled (the step still succeeds) and replayed in order once it is back.

mod support;

use std::process::Command;
use support::hub::ChildHub;

fn script(
    hub_url: &str,
    key: &str,
    spool: &std::path::Path,
    args: &[&str],
) -> (bool, String, String) {
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/azdev_ica_hook.sh"
        ))
        .args(args)
        .env("ICAHUB_URL", hub_url)
        .env("ICAHUB_API_KEY", key)
        .env("ICAHUB_SPOOL_DIR", spool)
        .env("ICAHUB_RETRIES", "2")
        .env("ICAHUB_TIMEOUT", "3")
        .env("BUILD_DEFINITIONNAME", "web-deploy")
        .env("BUILD_BUILDID", "4711")
        .env("BUILD_SOURCEBRANCH", "refs/heads/main")
        .env("BUILD_SOURCEVERSION", "a1b2c3d")
        .env("BUILD_REQUESTEDFOREMAIL", "dev@contoso.com")
        .output()
        .expect("bash runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hook_script_records_a_run_and_spools_while_the_hub_is_down() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let env = |auth: &str| {
        vec![
            ("ICAHUB_STORAGE", "embedded".to_string()),
            ("ICAHUB_DATA_DIR", data.path().display().to_string()),
            ("ICAHUB_AUTH", auth.to_string()),
        ]
    };
    // A key with the devops role, made with the CLI.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_icahub"))
            .args(args)
            .env("ICAHUB_DATA_DIR", data.path())
            .env("ICAHUB_STORAGE", "embedded")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let key = cli(&["keys", "issue", "--identity", "pipeline-web"]);
    cli(&["roles", "grant", "pipeline-web", "devops"]);

    let mut hub = ChildHub::spawn(&env("required")).await;
    let url = hub.url("");
    let (ok, out, err) = script(&url, &key, spool.path(), &["start"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("record_id"), "{out}");
    let (ok, _, err) = script(
        &url,
        &key,
        spool.path(),
        &[
            "event",
            "--type",
            "build",
            "--data",
            "{\"stage\": \"Build\"}",
        ],
    );
    assert!(ok, "{err}");
    // A wrong key: refused (4xx), the step fails, nothing spooled.
    let (ok, _, _) = script(&url, "icak_wrong", spool.path(), &["event", "--type", "x"]);
    assert!(!ok);
    assert_eq!(
        std::fs::read_dir(spool.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );

    // The hub goes away: records are spooled, the steps still succeed.
    hub.kill9();
    let (ok, _, err) = script(&url, &key, spool.path(), &["event", "--type", "deploy"]);
    assert!(ok, "{err}");
    assert!(err.contains("spooled"), "{err}");
    let (ok, _, _) = script(
        &url,
        &key,
        spool.path(),
        &[
            "finish",
            "--status",
            "success",
            "--end-time",
            "2026-11-22T12:00:00Z",
        ],
    );
    assert!(ok);
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 2);

    // Back on the same port and data: replay sends them in order, and the spool empties.
    let port = hub.port;
    drop(hub);
    let hub = ChildHub::spawn_on(port, &env("required")).await;
    let (ok, _, err) = script(&url, &key, spool.path(), &["replay"]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
    let run: serde_json::Value = reqwest::Client::new()
        .get(hub.url("/api/v1/azdev/run/4711"))
        .header("authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["pipeline_name"], "web-deploy");
    assert_eq!(run["status"], "success");
    let types: Vec<&str> = run["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["build", "deploy"],
        "spooled records kept their order"
    );
    assert_eq!(run["events"][0]["event_data"]["stage"], "Build");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hook_script_asks_for_an_approval_and_waits_for_the_decision() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_icahub"))
            .args(args)
            .env("ICAHUB_DATA_DIR", data.path())
            .env("ICAHUB_STORAGE", "embedded")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let key = cli(&["keys", "issue", "--identity", "pipeline-web"]);
    cli(&["roles", "grant", "pipeline-web", "devops"]);
    let alice = cli(&["keys", "issue", "--identity", "alice"]);
    cli(&["roles", "grant", "alice", "technical_approver"]);
    let bob = cli(&["keys", "issue", "--identity", "bob"]);
    cli(&["roles", "grant", "bob", "business_approver"]);
    let env = vec![
        ("ICAHUB_STORAGE", "embedded".to_string()),
        ("ICAHUB_DATA_DIR", data.path().display().to_string()),
        ("ICAHUB_AUTH", "required".to_string()),
    ];
    let mut hub = ChildHub::spawn(&env).await;
    let url = hub.url("");
    assert!(script(&url, &key, spool.path(), &["start"]).0);

    // Production without a cost: refused by the hub, the step fails.
    let (ok, _, err) = script(
        &url,
        &key,
        spool.path(),
        &["approval", "--target", "production"],
    );
    assert!(!ok && err.contains("estimated_cost"), "{err}");

    let (ok, out, err) = script(
        &url,
        &key,
        spool.path(),
        &[
            "approval",
            "--target",
            "production",
            "--cost",
            "250",
            "--checklist",
            "[\"tests green\"]",
        ],
    );
    assert!(ok, "{out}{err}");
    let answer: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let id = answer["approval_id"].as_str().unwrap().to_string();
    assert_eq!(answer["status"], "pending");

    // poll waits while it is pending, and exits 0 once both halves are signed.
    let mut poll = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/azdev_ica_hook.sh"
        ))
        .args([
            "poll",
            "--approval-id",
            &id,
            "--interval",
            "1",
            "--max-wait",
            "60",
        ])
        .env("ICAHUB_URL", &url)
        .env("ICAHUB_API_KEY", &key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Sign only once the script has seen the approval pending: read its stderr as it comes.
    let stderr = std::io::BufReader::new(poll.stderr.take().expect("piped stderr"));
    let (seen_pending, pending) = tokio::sync::oneshot::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen_pending = Some(seen_pending);
        let mut text = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("is pending") {
                if let Some(tx) = seen_pending.take() {
                    let _ = tx.send(());
                }
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    support::wait::guarded("the script to report the approval pending", pending)
        .await
        .expect("the script said the approval is pending before it exited");
    let sign = |who: &str, t: &str, decision: &str| {
        let (url, who, id) = (
            hub.url(&format!("/api/v1/azdev/approval/{id}/sign")),
            who.to_string(),
            id.clone(),
        );
        let body =
            serde_json::json!({"approval_type": t, "decision": decision, "comments": "checked"});
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("authorization", format!("Bearer {who}"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{id}: {}", r.text().await.unwrap());
        }
    };
    sign(&alice, "technical", "approved").await;
    sign(&bob, "business", "approved").await;
    let (status, err) = tokio::task::spawn_blocking(move || {
        let status = poll.wait().unwrap();
        (status, reader.join().unwrap())
    })
    .await
    .unwrap();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("is pending") && err.contains("approved"),
        "{err}"
    );

    // A rejected request: poll exits 1 with the reason.
    let (ok, out, _) = script(
        &url,
        &key,
        spool.path(),
        &["approval", "--target", "staging"],
    );
    assert!(ok);
    let answer: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let id2 = answer["approval_id"].as_str().unwrap().to_string();
    let r = reqwest::Client::new()
        .post(hub.url(&format!("/api/v1/azdev/approval/{id2}/sign")))
        .header("authorization", format!("Bearer {bob}"))
        .header("content-type", "application/json")
        .body(r#"{"approval_type":"business","decision":"rejected","comments":"change freeze"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (ok, _, err) = script(
        &url,
        &key,
        spool.path(),
        &["poll", "--approval-id", &id2, "--interval", "1"],
    );
    assert!(
        !ok && err.contains("rejected") && err.contains("change freeze"),
        "{err}"
    );

    // The hub is gone: an approval cannot be asked for, and nothing is spooled for it.
    hub.kill9();
    let (ok, _, err) = script(&url, &key, spool.path(), &["approval", "--target", "dev"]);
    assert!(!ok && err.contains("cannot be reached"), "{err}");
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
}
