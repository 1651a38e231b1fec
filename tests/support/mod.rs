//! Shared test support: start the real hub (in-process on port 0, or as a child process), and
//! read fixtures. Included by test files with `mod support;`.
#![allow(dead_code)]

pub mod azurite;
pub mod hub;
pub mod receiver;
pub mod wait;

use std::path::PathBuf;

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fixture's bytes, exactly as stored.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

pub fn fixture_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn read_json(p: PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every route the app declares (`root`/host.json and `functions`/<name>/function.json: the
/// repository's functions/, or the package root), as
/// (function name, method, path with parameters filled in); timer functions as the
/// `POST /<name>` the host sends their envelopes to. Asserts each function qualifies for
/// request forwarding.
pub fn declared_routes(
    root: &std::path::Path,
    functions: &std::path::Path,
) -> Vec<(String, String, String)> {
    let host = read_json(root.join("host.json"));
    let prefix = host["extensions"]["http"]["routePrefix"]
        .as_str()
        .unwrap_or("api")
        .to_string();
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(functions)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "functions/ has no function folders");
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let f = read_json(dir.join("function.json"));
        let bindings = f["bindings"].as_array().expect("bindings array");
        let triggers: Vec<&serde_json::Value> = bindings
            .iter()
            .filter(|b| b["type"].as_str().is_some_and(|t| t.ends_with("Trigger")))
            .collect();
        assert_eq!(triggers.len(), 1, "{name}: exactly one trigger");
        let t = triggers[0];
        if t["type"] == "timerTrigger" {
            // Timer functions arrive as Data/Metadata envelopes on POST /<name> (no /api).
            assert!(t["schedule"].as_str().is_some(), "{name}: schedule");
            out.push((name.clone(), "POST".into(), format!("/{name}")));
            continue;
        }
        assert_eq!(t["type"], "httpTrigger", "{name}: unexpected trigger");
        // Forwarding needs exactly one httpTrigger in and one http out (PROTOCOLS.md 1.2).
        assert_eq!(bindings.len(), 2, "{name}: only the http in/out bindings");
        assert!(bindings
            .iter()
            .any(|b| b["type"] == "http" && b["direction"] == "out"));
        let route = t["route"].as_str().unwrap_or(&name).to_string();
        // Route parameters get a well-formed value that names nothing.
        let path = format!("/{prefix}/{route}")
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    "INC-0000000000000000-1"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for m in t["methods"].as_array().expect("methods listed") {
            out.push((
                name.clone(),
                m.as_str().unwrap().to_uppercase(),
                path.clone(),
            ));
        }
    }
    out
}

/// Write the refusals counted so far ([`icahub::refusals::flush_all`]) and read every summary on
/// the security audit trail, one `(kind, group, count, examples)` note per kind, group and minute.
pub async fn refusal_summaries(app: &icahub::startup::App) -> Vec<serde_json::Value> {
    icahub::refusals::flush_all(app).await;
    app.store
        .doc_list(icahub::http::auth::SECURITY, "audit|")
        .await
        .expect("security audit entries")
        .into_iter()
        .map(|d| d.value)
        .filter(|v| v["action"] == "auth.refused.summary")
        .collect()
}

/// Each refused kind as often as it was counted (from [`refusal_summaries`]).
pub async fn refused_kinds(app: &icahub::startup::App) -> Vec<String> {
    let mut kinds = Vec::new();
    for s in refusal_summaries(app).await {
        for _ in 0..s["count"].as_u64().unwrap_or(0) {
            kinds.push(s["kind"].as_str().unwrap_or("").to_string());
        }
    }
    kinds
}

/// Run the `icahub` binary with only these settings (and `PATH`): (success, stdout + stderr).
pub fn cli(args: &[&str], envs: &[(&str, String)]) -> (bool, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_icahub"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("ICAHUB_LOG", "warn")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run icahub");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}
