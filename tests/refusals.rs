//! Refused requests cannot grow the permanent trail without bound (issue 11): 10,000 refusals
//! with the largest fields the hub takes (a 200 KB Entra `kid`, a 64 KB API key, a maximal
//! `webhook-id` over a body at `ICAHUB_MAX_BODY_BYTES`, 64 KB of wrong hook credentials) add
//! less than 1 MB to the embedded store, every one is counted in a per-minute summary with
//! bounded examples, nothing echoes a caller-sized value back, and valid requests are answered
//! all along.

mod support;

use base64::Engine;
use futures::StreamExt;
use icahub::config::Config;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fixture_json;
use support::hub::TestHub;
use warp::Filter;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const SECRET: &str = "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
const BODY_LIMIT: usize = 65_536;
const REFUSALS: usize = 10_000;

/// The tenant's discovery document and key set, served locally.
async fn idp() -> String {
    let jwks = fixture_json("entra/jwks.json");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let b = base.clone();
    let oidc = warp::path!(String / "v2.0" / ".well-known" / "openid-configuration").map(
        move |tenant: String| {
            warp::reply::json(&json!({
                "issuer": format!("{b}/{tenant}/v2.0"),
                "jwks_uri": format!("{b}/discovery/v2.0/keys"),
            }))
        },
    );
    let keys = warp::path!("discovery" / "v2.0" / "keys").map(move || warp::reply::json(&jwks));
    tokio::spawn(warp::serve(oidc.or(keys)).incoming(listener).run());
    base
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// The largest parts of the refused requests, made once (the flood itself is the test).
struct Attacks {
    token: String,
    key: String,
    body: Vec<u8>,
    basic: String,
}

impl Attacks {
    fn new() -> Attacks {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        // An RS256 token whose kid is 200 KB: unknown to the tenant.
        let head = b64(
            json!({"alg": "RS256", "typ": "JWT", "kid": "k".repeat(200_000)})
                .to_string()
                .as_bytes(),
        );
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("azdo:{}", "w".repeat(65_536)));
        Attacks {
            token: format!("Bearer {head}.{}.{}", b64(b"{}"), b64(&[7u8; 256])),
            key: format!("Bearer icak_{}", "x".repeat(65_536)),
            body: format!("{{\"pad\": \"{}\"}}", "p".repeat(BODY_LIMIT - 20)).into_bytes(),
            basic: format!("Basic {basic}"),
        }
    }

    /// The `i`th refused request: (path, headers, body).
    fn get(&self, i: usize, now: i64) -> (&'static str, Vec<(&'static str, String)>, Vec<u8>) {
        let alert = "/api/v1/azdev/alert";
        let small = b"{}".to_vec();
        match i % 4 {
            0 => (alert, vec![("authorization", self.token.clone())], small),
            // A 64 KB API key nobody issued.
            1 => (alert, vec![("authorization", self.key.clone())], small),
            // A signed request with the longest webhook-id and a body at the limit, signed
            // wrongly.
            2 => {
                let id = format!("{i}-{}", "m".repeat(256))[..256].to_string();
                let sig = format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode([i as u8; 32])
                );
                let headers = vec![
                    ("webhook-id", id),
                    ("webhook-timestamp", now.to_string()),
                    ("webhook-signature", sig),
                ];
                (alert, headers, self.body.clone())
            }
            // Wrong Azure DevOps hook credentials, 64 KB of them.
            _ => (
                "/api/v1/azdo/hooks",
                vec![("authorization", self.basic.clone())],
                small,
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_maximal_refusals_add_under_a_megabyte_and_valid_requests_are_answered() {
    let authority = idp().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let vars: Vec<(&str, String)> = vec![
        ("ICAHUB_STORAGE", "embedded".into()),
        ("ICAHUB_DATA_DIR", path.display().to_string()),
        ("ICAHUB_MAX_BODY_BYTES", BODY_LIMIT.to_string()),
        ("ICAHUB_ENTRA_TENANT_ID", TENANT.into()),
        ("ICAHUB_ENTRA_AUDIENCES", "api://icahub".into()),
        ("ICAHUB_ENTRA_AUTHORITY", authority),
        ("ICAHUB_WEBHOOK_SECRETS", format!("monitoring={SECRET}")),
        ("ICAHUB_AZDO_HOOK_USERNAME", "azdo".into()),
        ("ICAHUB_AZDO_HOOK_PASSWORD", "the-right-password".into()),
    ];
    let mut config = Config::from_lookup(
        |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()),
        Some(0),
    )
    .expect("config");
    config.dispatch_interval = None;
    let mut hub = TestHub::start(config).await;
    hub.keep(dir);
    let hub = Arc::new(hub);
    // Settle the store (the test key, its roles) before measuring.
    assert_eq!(hub.get("/api/v1/azdev/incidents").await.status, 200);
    icahub::refusals::flush_all(&hub.app).await;
    let before = dir_bytes(&path);

    // Valid requests all along the flood.
    let done = Arc::new(AtomicBool::new(false));
    let valid = {
        let (hub, done) = (hub.clone(), done.clone());
        tokio::spawn(async move {
            let (mut answered, mut slowest) = (0u32, Duration::ZERO);
            while !done.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = hub.get("/api/healthz").await;
                assert_eq!(r.status, 200, "{}", r.text);
                let r = hub.get("/api/v1/azdev/incidents").await;
                assert_eq!(r.status, 200, "{}", r.text);
                slowest = slowest.max(t.elapsed());
                answered += 1;
            }
            (answered, slowest)
        })
    };

    let client = reqwest::Client::new();
    let attacks = Arc::new(Attacks::new());
    let now = chrono::Utc::now().timestamp();
    let started = Instant::now();
    let statuses: Vec<(usize, u16, String)> = futures::stream::iter(0..REFUSALS)
        .map(|i| {
            let (client, base, attacks) = (client.clone(), hub.base.clone(), attacks.clone());
            async move {
                let (path, headers, body) = attacks.get(i, now);
                let mut req = client
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body(body);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let r = req.send().await.expect("request sent");
                let status = r.status().as_u16();
                (i, status, r.text().await.unwrap_or_default())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let flood = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let (answered, slowest) = valid.await.unwrap();

    for (i, status, text) in &statuses {
        assert_eq!(*status, 401, "request {i}: {text}");
        // No caller-sized value is echoed back.
        assert!(text.len() < 1024, "request {i} echoed {} bytes", text.len());
        let v: Value = serde_json::from_str(text).expect("a JSON error");
        assert!(v["error"]["code"].is_string(), "{text}");
    }
    assert!(answered >= 1, "no valid request answered during the flood");

    // Nothing was stored by the refusals but their summaries.
    assert_eq!(hub.app.store.count_events().await.unwrap(), 0);
    let summaries = support::refusal_summaries(&hub.app).await;
    let after = dir_bytes(&path);
    let added = after.saturating_sub(before);
    let total: u64 = summaries.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    let json_bytes: usize = summaries.iter().map(|s| s.to_string().len()).sum();
    eprintln!(
        "{REFUSALS} refusals in {flood:?}: {} summaries ({json_bytes} bytes of JSON), store grew \
         {added} bytes ({before} → {after}); {answered} valid request pairs answered meanwhile, \
         slowest {slowest:?}",
        summaries.len()
    );
    assert_eq!(total, REFUSALS as u64, "{summaries:?}");
    for kind in [
        "token_unknown_key",
        "unknown_key",
        "webhook_signature_mismatch",
        "azdo_hook_credentials",
    ] {
        assert!(
            summaries.iter().any(|s| s["kind"] == kind),
            "{kind} not summarized: {summaries:?}"
        );
    }
    for s in &summaries {
        let examples = s["examples"].as_array().unwrap();
        assert!(examples.len() <= icahub::refusals::EXAMPLES, "{s}");
        assert!(s.to_string().len() < 1024, "{s}");
    }
    // One summary per kind, group and minute, and only the minutes the flood lasted.
    let mut keys: Vec<String> = summaries
        .iter()
        .map(|s| format!("{} {} {}", s["kind"], s["group"], s["minute"]))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), summaries.len(), "{keys:?}");
    let minutes = flood.as_secs() / 60 + 2;
    assert!(summaries.len() as u64 <= 4 * minutes, "{keys:?}");
    assert!(added < 1_000_000, "the store grew {added} bytes");
}
