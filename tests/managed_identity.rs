//! Table Storage with a managed identity (no account key): the hub gets a token for
//! `https://storage.azure.com/` from the platform's identity endpoint (App Service / Functions
//! protocol: `IDENTITY_ENDPOINT`, `X-IDENTITY-HEADER`, `api-version=2019-08-01`, `client_id` of
//! the user-assigned identity), caches it, and sends it as `Authorization: Bearer` to the table
//! service. Azurite only takes tokens over HTTPS with its own certificate, so the table service
//! here is a local stand-in that refuses, as Table Storage does (403 AuthorizationFailure),
//! anything but the identity's token; the data path itself is the key-based one Azurite tests.

mod support;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use warp::http::{HeaderMap, StatusCode};
use warp::Filter;

const CLIENT_ID: &str = "5b0d3f4e-9a61-4c1e-8f0a-2d7c6b1e9f30";
const HEADER_SECRET: &str = "identity-header-secret-42";
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake.token";

#[derive(Default)]
struct Seen {
    token_requests: Vec<(HashMap<String, String>, Option<String>)>,
    table_requests: Vec<(String, String, Option<String>)>,
}

async fn serve(route: warp::filters::BoxedFilter<(warp::reply::Response,)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(warp::serve(route).incoming(listener).run());
    base
}

fn reply(status: u16, body: Value) -> warp::reply::Response {
    let mut r = warp::reply::Response::new(body.to_string().into());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    // What every Table Storage answer carries (the SDK reads them).
    h.insert(
        "x-ms-request-id",
        uuid::Uuid::new_v4().to_string().parse().unwrap(),
    );
    h.insert("x-ms-version", "2019-02-02".parse().unwrap());
    h.insert(
        "server",
        "Windows-Azure-Table/1.0 Microsoft-HTTPAPI/2.0"
            .parse()
            .unwrap(),
    );
    h.insert(
        "date",
        chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string()
            .parse()
            .unwrap(),
    );
    r
}

/// The identity endpoint and the table service, both recording what they saw.
async fn fakes() -> (String, String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let identity = warp::get()
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("x-identity-header"))
        .map(move |q: HashMap<String, String>, h: Option<String>| {
            s.lock()
                .unwrap()
                .token_requests
                .push((q.clone(), h.clone()));
            let ok = h.as_deref() == Some(HEADER_SECRET)
                && q.get("api-version").map(String::as_str) == Some("2019-08-01")
                && q.get("resource").map(String::as_str) == Some("https://storage.azure.com/");
            if !ok {
                return reply(400, json!({"error": "invalid_request"}));
            }
            if q.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
                // What App Service answers for an identity not assigned to the app.
                return reply(
                    400,
                    json!({"statusCode": 400,
                    "message": "Unable to load the proper Managed Identity."}),
                );
            }
            let expires = chrono::Utc::now().timestamp() + 3600;
            reply(
                200,
                json!({"access_token": TOKEN, "expires_on": expires.to_string(),
                "resource": "https://storage.azure.com/", "token_type": "Bearer",
                "client_id": CLIENT_ID}),
            )
        })
        .boxed();
    let s = seen.clone();
    let tables = warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .map(
            move |m: warp::http::Method, p: warp::path::FullPath, h: HeaderMap| {
                let auth = h
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                s.lock().unwrap().table_requests.push((
                    m.to_string(),
                    p.as_str().to_string(),
                    auth.clone(),
                ));
                if auth.as_deref() != Some(&format!("Bearer {TOKEN}"))
                    || h.get("x-ms-version").is_none()
                {
                    return reply(
                        403,
                        json!({"odata.error": {"code": "AuthorizationFailure",
                    "message": {"lang": "en-US", "value": "This request is not authorized."}}}),
                    );
                }
                match m.as_str() {
                    "POST" => reply(
                        409,
                        json!({"odata.error": {"code": "TableAlreadyExists",
                    "message": {"lang": "en-US", "value": "The table specified already exists."}}}),
                    ),
                    _ => reply(
                        200,
                        json!({"odata.metadata":
                    "https://acct.table.core.windows.net/$metadata#icahubstreams", "value": []}),
                    ),
                }
            },
        )
        .boxed();
    (serve(identity).await, serve(tables).await, seen)
}

fn doctor(envs: Vec<(&'static str, String)>) -> (bool, Vec<Value>) {
    let o = Command::new(env!("CARGO_BIN_EXE_icahub"))
        .args(["doctor", "--json", "--timeout", "5"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("ICAHUB_LOG", "off")
        .envs(envs)
        .output()
        .unwrap();
    let f: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.success(), f)
}

fn storage_finding(f: &[Value]) -> &Value {
    f.iter()
        .find(|x| x["check"] == "storage")
        .expect("storage finding")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_reaches_table_storage_with_the_user_assigned_identity() {
    let (identity, tables, seen) = fakes().await;
    let envs = vec![
        (
            "ICAHUB_TABLES_ENDPOINT",
            format!("{tables}/devstoreaccount1"),
        ),
        ("ICAHUB_TABLES_CLIENT_ID", CLIENT_ID.to_string()),
        ("IDENTITY_ENDPOINT", format!("{identity}/msi/token")),
        ("IDENTITY_HEADER", HEADER_SECRET.to_string()),
    ];
    let (ok, f) = tokio::task::spawn_blocking(move || doctor(envs))
        .await
        .unwrap();
    let st = storage_finding(&f);
    assert!(ok, "{f:#?}");
    assert_eq!(st["level"], "ok");
    assert!(st["message"].as_str().unwrap().contains("icahubstreams"));
    let config = f.iter().find(|x| x["check"] == "config").unwrap();
    assert!(
        config["message"].as_str().unwrap().contains(CLIENT_ID),
        "{config}"
    );

    let seen = seen.lock().unwrap();
    // Two tables created (they exist: 409), a ping, the dead-letter read: one token for all.
    assert!(seen.table_requests.len() >= 3, "{:?}", seen.table_requests);
    assert_eq!(seen.token_requests.len(), 1, "the token is cached");
    let (q, h) = &seen.token_requests[0];
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(h.as_deref(), Some(HEADER_SECRET));
    for (m, p, auth) in &seen.table_requests {
        assert_eq!(
            auth.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{m} {p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_not_assigned_to_the_app_is_named() {
    let (identity, tables, seen) = fakes().await;
    let other = "0f9e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f";
    let envs = vec![
        (
            "ICAHUB_TABLES_ENDPOINT",
            format!("{tables}/devstoreaccount1"),
        ),
        ("ICAHUB_TABLES_CLIENT_ID", other.to_string()),
        ("IDENTITY_ENDPOINT", format!("{identity}/msi/token")),
        ("IDENTITY_HEADER", HEADER_SECRET.to_string()),
    ];
    let (ok, f) = tokio::task::spawn_blocking(move || doctor(envs))
        .await
        .unwrap();
    assert!(!ok);
    let st = storage_finding(&f);
    assert_eq!(st["level"], "fail");
    let msg = st["message"].as_str().unwrap();
    assert!(msg.contains(other) && msg.contains("assigned"), "{msg}");
    assert!(!msg.contains(HEADER_SECRET));
    // No table request went out without a token.
    assert!(seen.lock().unwrap().table_requests.is_empty());
}

#[test]
fn settings_that_cannot_work_are_refused_at_start() {
    for (envs, needle) in [
        (
            vec![("ICAHUB_TABLES_CLIENT_ID", CLIENT_ID)],
            "ICAHUB_TABLES_ENDPOINT",
        ),
        (
            vec![
                (
                    "ICAHUB_TABLES_ENDPOINT",
                    "https://acct.table.core.windows.net",
                ),
                ("ICAHUB_TABLES_CLIENT_ID", "not-a-guid"),
            ],
            "GUID",
        ),
        (
            vec![
                (
                    "ICAHUB_TABLES_ENDPOINT",
                    "https://acct.table.core.windows.net",
                ),
                (
                    "ICAHUB_TABLES_CONNECTION_STRING",
                    "UseDevelopmentStorage=true",
                ),
            ],
            "not both",
        ),
        (
            vec![("ICAHUB_TABLES_ENDPOINT", "acct.table.core.windows.net")],
            "table service URL",
        ),
        (
            // The token would travel in clear text.
            vec![(
                "ICAHUB_TABLES_ENDPOINT",
                "http://acct.table.core.windows.net",
            )],
            "only to localhost",
        ),
        (
            // A SAS pasted into the endpoint: refused, and never echoed.
            vec![(
                "ICAHUB_TABLES_ENDPOINT",
                "https://acct.table.core.windows.net/?sv=2022-11-02&sig=SECRETSIG123",
            )],
            "no query",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_icahub"))
            .arg("serve")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env(
                "FUNCTIONS_CUSTOMHANDLER_PORT",
                support::hub::free_port().to_string(),
            )
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{envs:?}: {err}");
        assert!(!err.contains("SECRETSIG123"), "{err}");
    }
}

/// A stand-in `az` on PATH: prints a token for the storage resource, or fails like a CLI
/// nobody signed in to.
fn fake_az(dir: &std::path::Path, signed_in: bool) {
    let script = if signed_in {
        format!(
            "#!/bin/sh\n[ \"$1 $2 $3 $4\" = \"account get-access-token --resource https://storage.azure.com/\" ] || {{ echo \"unexpected: $*\" >&2; exit 2; }}\n\
             echo '{{\"accessToken\": \"{TOKEN}\", \"expires_on\": {}, \"tokenType\": \"Bearer\"}}'\n",
            chrono::Utc::now().timestamp() + 3600
        )
    } else {
        "#!/bin/sh\necho \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1\n"
            .to_string()
    };
    let p = dir.join("az");
    std::fs::write(&p, script).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_reach_the_tables_as_the_azure_cli_user() {
    let (_identity, tables, seen) = fakes().await;
    let bin = tempfile::tempdir().unwrap();
    fake_az(bin.path(), true);
    let envs = vec![
        (
            "ICAHUB_TABLES_ENDPOINT",
            format!("{tables}/devstoreaccount1"),
        ),
        ("ICAHUB_TABLES_CREDENTIAL", "azure_cli".to_string()),
        ("PATH", format!("{}:/usr/bin:/bin", bin.path().display())),
    ];
    let (ok, f) = tokio::task::spawn_blocking(move || doctor(envs))
        .await
        .unwrap();
    assert!(ok, "{f:#?}");
    assert!(storage_finding(&f)["message"]
        .as_str()
        .unwrap()
        .contains("icahubstreams"));
    {
        let seen = seen.lock().unwrap();
        assert!(
            seen.token_requests.is_empty(),
            "no managed identity involved"
        );
        assert!(!seen.table_requests.is_empty());
        for (_, _, auth) in &seen.table_requests {
            assert_eq!(auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
        }
    }

    fake_az(bin.path(), false);
    let envs = vec![
        (
            "ICAHUB_TABLES_ENDPOINT",
            format!("{tables}/devstoreaccount1"),
        ),
        ("ICAHUB_TABLES_CREDENTIAL", "azure_cli".to_string()),
        ("PATH", format!("{}:/usr/bin:/bin", bin.path().display())),
    ];
    let (ok, f) = tokio::task::spawn_blocking(move || doctor(envs))
        .await
        .unwrap();
    assert!(!ok);
    let msg = storage_finding(&f)["message"].as_str().unwrap();
    assert!(msg.contains("az login"), "{msg}");
}
