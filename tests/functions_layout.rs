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

#[tokio::test]
async fn every_declared_route_exists_in_the_router() {
    let hub = TestHub::embedded().await;
    let routes = support::declared_routes(&root(), &root().join("functions"));
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
