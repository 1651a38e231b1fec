//! `icahub serve` as a process: refuses the embedded store under the Functions host with a clear
//! message, uses the host's port, and stops cleanly on SIGTERM.

mod support;

use std::process::Command;
use support::hub::{free_port, ChildHub};

#[test]
fn embedded_store_under_the_functions_host_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_icahub"))
        .arg("serve")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", free_port().to_string())
        .env("ICAHUB_DATA_DIR", dir.path())
        .env_remove("AzureWebJobsStorage")
        .env_remove("ICAHUB_TABLES_CONNECTION_STRING")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Table Storage"), "{err}");
    assert!(err.contains("AzureWebJobsStorage"), "{err}");
}

#[tokio::test]
async fn the_host_port_is_used_and_sigterm_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cs = support::azurite::connection_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_icahub"))
        .args(["serve", "--port", "1"]) // the host's port must win over --port
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("AzureWebJobsStorage", cs)
        .env(
            "ICAHUB_TABLE_PREFIX",
            support::azurite::unique_prefix("host"),
        )
        .env("ICAHUB_DATA_DIR", dir.path())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    support::wait::answers(&format!("http://127.0.0.1:{port}/")).await;
    let h: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/api/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["storage"], "azure_tables");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = None;
    assert!(
        support::wait::until_blocking("the hub to stop", support::wait::HANG_GUARD, || {
            exit = child.try_wait().unwrap();
            exit.is_some()
        }),
        "did not stop on SIGTERM"
    );
    let s = exit.expect("exited");
    assert!(s.success(), "exit status after SIGTERM: {s}");
}

#[tokio::test]
async fn embedded_hub_starts_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let hub = ChildHub::spawn(&[("ICAHUB_DATA_DIR", dir.path().display().to_string())]).await;
    let r = reqwest::get(hub.url("/api/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(dir.path().join("icahub.db").exists());
}
