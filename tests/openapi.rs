//! api/icahub-openapi.yaml and the router agree: every documented operation exists (not "no
//! route", not 405), every status the hub answers to a plain call and to a refused body is
//! documented, and every Azure Function's route is documented. (scripts/schemathesis.sh checks
//! far more, against generated requests.)

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use support::hub::TestHub;

fn doc() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/api/icahub-openapi.yaml"
    ))
    .expect("the OpenAPI document");
    serde_yaml_ng::from_str(&text).expect("the OpenAPI document is YAML")
}

/// Fill `{param}` segments with a value that names nothing.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if s.starts_with('{') {
                "INC-0000000000000000-1"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn operations(d: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in d["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let d = doc();
    assert_eq!(d["openapi"], "3.1.0");
    let hub = TestHub::embedded().await;
    for (method, path) in operations(&d) {
        let r = hub
            .client
            .request(method.parse().unwrap(), hub.url(&concrete(&path)))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_ne!(v["error"]["code"], "no_route", "{method} {path}");
        assert_ne!(status, 405, "{method} {path}");
        assert!(status < 500, "{method} {path}: {status}");
        // Every status the hub answered is documented for that operation.
        let documented = &d["paths"][&path][method.to_lowercase()]["responses"];
        assert!(
            documented.get(status.to_string()).is_some(),
            "{method} {path} answered {status}, which the document does not list"
        );
    }
}

/// A body the hub refuses before reading it (no JSON content type, too large) is 415 or 413 on
/// every operation that takes one, and the document lists the status it answered.
#[tokio::test]
async fn refused_bodies_answer_documented_statuses() {
    let d = doc();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = icahub::config::Config::embedded(dir.path());
    cfg.max_body_bytes = 1024;
    let mut hub = TestHub::start(cfg).await;
    hub.keep(dir);
    // /dispatch (the host's timer) has its own limit, 1 MiB.
    let big = vec![b' '; icahub::http::timer::MAX_ENVELOPE_BYTES + 1];
    for (method, path) in operations(&d) {
        let op = &d["paths"][&path][method.to_lowercase()];
        if op.get("requestBody").is_none() {
            continue;
        }
        let documented = &op["responses"];
        let mut cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
            ("over the limit", Some("application/json"), big.clone()),
            ("text/plain", Some("text/plain"), b"{}".to_vec()),
        ];
        if op["requestBody"]["required"] == true {
            cases.push(("no content type", None, b"{}".to_vec()));
        }
        for (what, ct, body) in cases {
            let mut req = hub
                .client
                .request(method.parse().unwrap(), hub.url(&concrete(&path)))
                .body(body);
            if let Some(ct) = ct {
                req = req.header("content-type", ct);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert!(status < 500, "{method} {path}, {what}: {status} {v}");
            if status >= 400 {
                assert_eq!(v["error"]["status"], status, "{method} {path}, {what}: {v}");
            }
            assert!(
                documented.get(status.to_string()).is_some(),
                "{method} {path} answered {status} to a body {what}, which the document does not list"
            );
        }
    }
}

#[test]
fn every_function_route_is_documented() {
    let ops = operations(&doc());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("functions");
    for entry in std::fs::read_dir(root).unwrap() {
        let dir = entry.unwrap().path();
        let f: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("function.json")).unwrap())
                .unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let t = &f["bindings"][0];
        if t["type"] == "timerTrigger" {
            assert!(
                ops.contains(&("POST".into(), format!("/{name}"))),
                "timer {name}"
            );
            continue;
        }
        let path = format!("/api/{}", t["route"].as_str().unwrap());
        for m in t["methods"].as_array().unwrap() {
            let m = m.as_str().unwrap().to_uppercase();
            assert!(
                ops.contains(&(m.clone(), path.clone())),
                "{name}: {m} {path} is not in the OpenAPI document"
            );
        }
    }
}

/// The access log's route templates (`http::access::ROUTES`, also the HTTP metrics' `route`
/// label) are the document's paths, which the tests above hold to the router: each documented
/// path, filled in, is labelled by its own template; no template is undocumented; and every
/// Azure Function's route has a template.
#[test]
fn access_log_templates_are_the_documented_routes() {
    use icahub::http::access::{route_of, ROUTES, UNMATCHED};
    let d = doc();
    let documented: BTreeSet<&str> = d["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    let templates: BTreeSet<&str> = ROUTES.iter().copied().collect();
    assert_eq!(
        templates.len(),
        ROUTES.len(),
        "a template is listed twice in access.rs"
    );
    assert_eq!(
        documented, templates,
        "access.rs ROUTES and the OpenAPI paths differ"
    );
    for path in &documented {
        assert_eq!(route_of(&concrete(path)), *path, "{path}");
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, method, path) in support::declared_routes(root, &root.join("functions")) {
        let template = route_of(&path);
        assert_ne!(template, UNMATCHED, "function {name}: {method} {path}");
        assert!(documented.contains(template), "function {name}: {template}");
    }
}

/// What the router answered is labelled by the template of the route that answered it: after a
/// call to every documented operation, the HTTP metrics have a series for each documented path
/// and none for `unmatched`.
#[tokio::test]
async fn the_router_answers_are_labelled_by_their_templates() {
    let d = doc();
    let hub = TestHub::embedded().await;
    for (method, path) in operations(&d) {
        hub.client
            .request(method.parse().unwrap(), hub.url(&concrete(&path)))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
    }
    let metrics = hub
        .client
        .get(hub.url("/api/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (method, path) in operations(&d) {
        let label = format!("method=\"{method}\",route=\"{path}\"");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("icahub_http_requests_total{") && l.contains(&label)),
            "no request series labelled {label}:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("route=\"unmatched\""),
        "a documented operation was labelled unmatched:\n{metrics}"
    );
}
