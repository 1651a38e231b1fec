//! host.json and functions/ agree with the router: every route a function.json declares exists,
//! with its methods, and every HTTP function qualifies for request forwarding.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use support::hub::TestHub;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(p: PathBuf) -> Value {
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn host_json_starts_the_binary_with_forwarding() {
    let host = read_json(root().join("host.json"));
    assert_eq!(host["version"], "2.0");
    let ch = &host["customHandler"];
    assert_eq!(ch["description"]["defaultExecutablePath"], "icahub");
    assert_eq!(ch["description"]["arguments"], serde_json::json!(["serve"]));
    assert_eq!(ch["enableForwardingHttpRequest"], true);
    assert_eq!(host["extensions"]["http"]["routePrefix"], "api");
}

/// (function name, method, path with parameters filled in)
fn declared_routes() -> Vec<(String, String, String)> {
    let host = read_json(root().join("host.json"));
    let prefix = host["extensions"]["http"]["routePrefix"]
        .as_str()
        .unwrap_or("api")
        .to_string();
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(root().join("functions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "functions/ has no function folders");
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let f = read_json(dir.join("function.json"));
        let bindings = f["bindings"].as_array().expect("bindings array");
        let triggers: Vec<&Value> = bindings
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

#[tokio::test]
async fn every_declared_route_exists_in_the_router() {
    let hub = TestHub::embedded().await;
    let routes = declared_routes();
    assert!(routes.len() >= 5, "{routes:?}");
    for (name, method, path) in routes {
        let r = hub
            .client
            .request(method.parse().unwrap(), hub.url(&path))
            .header("content-type", "application/json")
            .body(if path.starts_with("/api/") {
                "{}".to_string()
            } else {
                String::from_utf8(support::fixture("functions-host-timer-invocation.json")).unwrap()
            })
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_ne!(
            body["error"]["code"], "no_route",
            "{name}: {method} {path} has no route"
        );
        assert_ne!(status, 405, "{name}: {method} {path} not allowed");
        assert!(status < 500, "{name}: {method} {path} answered {status}");
        if !path.starts_with("/api/") {
            assert_eq!(status, 200, "{name}: the timer answer must be a 2xx");
            assert!(body["Logs"].is_array(), "{name}: host response envelope");
        }
    }
}
