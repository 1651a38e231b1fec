//! Microsoft Entra ID tokens against a local OpenID configuration and JWKS server, with tokens
//! the test mints from throwaway RSA keys (tests/fixtures/entra): a pipeline's managed identity
//! and the Azure Monitor secure webhook are let in; expired, not yet valid, wrong audience, wrong
//! issuer, wrong tenant, `alg: none`, HS256 signed with the public key, an unknown `kid` and a
//! token without an icahub role are each refused with 401 or 403 and a JSON error, and audited.

mod support;

use base64::Engine;
use icahub::config::Config;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::hub::{Reply, TestHub};
use support::{fixture, fixture_json};
use warp::Filter;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const AUDIENCE: &str = "api://icahub";
const AZNS_APP: &str = "461e8683-5575-4561-ac7f-899cc907d62a";

struct Idp {
    base: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

/// The tenant's discovery document and key set; starts with key1 only.
async fn idp() -> Idp {
    let all = fixture_json("entra/jwks.json");
    let jwks = Arc::new(Mutex::new(json!({"keys": [all["keys"][0].clone()]})));
    let fetches = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (b, j, f) = (base.clone(), jwks.clone(), fetches.clone());
    let oidc = warp::path!(String / "v2.0" / ".well-known" / "openid-configuration").map(
        move |tenant: String| {
            warp::reply::json(&json!({
                "issuer": format!("{b}/{tenant}/v2.0"),
                "jwks_uri": format!("{b}/discovery/v2.0/keys"),
            }))
        },
    );
    let keys = warp::path!("discovery" / "v2.0" / "keys").map(move || {
        f.fetch_add(1, Ordering::SeqCst);
        warp::reply::json(&*j.lock().unwrap())
    });
    tokio::spawn(warp::serve(oidc.or(keys)).incoming(listener).run());
    Idp {
        base,
        jwks,
        fetches,
    }
}

async fn hub(idp: &Idp) -> TestHub {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    let authority = idp.base.clone();
    let mut entra = icahub::entra::EntraConfig::from_lookup(&|k| match k {
        "ICAHUB_ENTRA_TENANT_ID" => Some(TENANT.into()),
        "ICAHUB_ENTRA_AUDIENCES" => {
            Some(format!("{AUDIENCE},00000000-aaaa-bbbb-cccc-000000000001"))
        }
        "ICAHUB_ENTRA_AUTHORITY" => Some(authority.clone()),
        _ => None,
    })
    .unwrap()
    .unwrap();
    // Refetch on every unknown kid, so the rotation below needs no 30 s wait.
    entra.refresh_floor = std::time::Duration::ZERO;
    config.entra = Some(entra);
    let mut h = TestHub::start(config).await;
    h.keep(dir);
    h
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(idp: &Idp) -> Value {
    json!({
        "aud": AUDIENCE, "iss": format!("{}/{TENANT}/v2.0", idp.base), "tid": TENANT,
        "iat": now() - 10, "nbf": now() - 10, "exp": now() + 600,
        "azp": "5b1d0a3c-pipeline", "oid": "0f0e0d0c-0000-0000-0000-000000000001",
        "roles": ["devops"],
    })
}

fn sign(kid: &str, claims: &Value) -> String {
    let pem = fixture(&format!("entra/{kid}.pem"));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

async fn post(hub: &TestHub, token: &str, path: &str, body: Vec<u8>) -> Reply {
    let r = reqwest::Client::new()
        .post(hub.url(path))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .send()
        .await
        .unwrap();
    Reply::read(r).await
}

fn run_start(run: &str) -> Vec<u8> {
    json!({"pipeline_name": "web", "run_id": run, "branch": "main", "commit": "abc",
           "triggered_by": "dev@contoso.com"})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_are_let_in_and_every_bad_one_is_refused_and_audited() {
    let idp = idp().await;
    let hub = hub(&idp).await;
    const START: &str = "/api/v1/azdev/run/start";

    // A pipeline's workload identity with the devops app role.
    let ok = post(&hub, &sign("key1", &claims(&idp)), START, run_start("e1")).await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    let run = hub.get("/api/v1/azdev/run/e1").await;
    assert_eq!(run.json["started_by"], "app:5b1d0a3c-pipeline");
    // v1 issuer form and the client id as audience are accepted too.
    let mut v1 = claims(&idp);
    v1["iss"] = json!(format!("https://sts.windows.net/{TENANT}/"));
    v1["aud"] = json!("00000000-aaaa-bbbb-cccc-000000000001");
    assert_eq!(
        post(&hub, &sign("key1", &v1), START, run_start("e2"))
            .await
            .status,
        201
    );

    // The Azure Monitor secure webhook: its app role maps to alert_sender.
    let mut azns = claims(&idp);
    azns["azp"] = json!(AZNS_APP);
    azns["roles"] = json!(["ActionGroupsSecureWebhook"]);
    let alert = post(
        &hub,
        &sign("key1", &azns),
        "/api/v1/azdev/alert",
        fixture("azmon-common-metric-static-fired.json"),
    )
    .await;
    assert_eq!(alert.status, 202, "{}", alert.text);
    // ...but it cannot write the run ledger.
    post(&hub, &sign("key1", &azns), START, run_start("e3"))
        .await
        .expect_error(403);

    let refused = |status: u16, token: String, what: &'static str| {
        let hub = &hub;
        async move {
            let r = post(hub, &token, START, run_start("never")).await;
            let e = r.expect_error(status);
            eprintln!("{what}: {}", e["message"]);
            e["message"].as_str().unwrap().to_string()
        }
    };
    let with = |k: &str, v: Value| {
        let mut c = claims(&idp);
        c[k] = v;
        c
    };
    let m = refused(
        401,
        sign("key1", &with("exp", json!(now() - 3600))),
        "expired",
    )
    .await;
    assert!(m.contains("expired"), "{m}");
    let m = refused(401, sign("key1", &with("nbf", json!(now() + 3600))), "nbf").await;
    assert!(m.contains("not valid yet"), "{m}");
    let m = refused(401, sign("key1", &with("aud", json!("api://other"))), "aud").await;
    assert!(m.contains("audience"), "{m}");
    let m = refused(
        401,
        sign(
            "key1",
            &with("iss", json!("https://login.microsoftonline.com/evil/v2.0")),
        ),
        "iss",
    )
    .await;
    assert!(m.contains("issuer"), "{m}");
    let m = refused(
        401,
        sign(
            "key1",
            &with("tid", json!("00000000-0000-0000-0000-000000000000")),
        ),
        "tid",
    )
    .await;
    assert!(m.contains("tenant"), "{m}");
    // Within the skew: a token that expired 30 s ago still works.
    assert_eq!(
        post(
            &hub,
            &sign("key1", &with("exp", json!(now() - 30))),
            START,
            run_start("e4")
        )
        .await
        .status,
        201
    );

    // alg none: header and claims, no signature.
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "key1"})),
        b64(&claims(&idp))
    );
    let m = refused(401, none, "alg none").await;
    assert!(m.contains("algorithm none is not allowed"), "{m}");
    // HS256 "signed" with the tenant's public key as the HMAC secret.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("key1".into());
    let forged = jsonwebtoken::encode(
        &hs,
        &claims(&idp),
        &EncodingKey::from_secret(&fixture("entra/key1.pub.pem")),
    )
    .unwrap();
    let m = refused(401, forged, "HS256 with the public key").await;
    assert!(m.contains("RS256"), "{m}");
    // A valid signature over changed claims.
    let good = sign("key1", &claims(&idp));
    let parts: Vec<&str> = good.split('.').collect();
    let mut admin = claims(&idp);
    admin["roles"] = json!(["admin"]);
    refused(
        401,
        format!("{}.{}.{}", parts[0], b64(&admin), parts[2]),
        "tampered",
    )
    .await;

    // Unknown kid: refused after a refetch; once the tenant publishes the key, accepted.
    let before = idp.fetches.load(Ordering::SeqCst);
    let m = refused(401, sign("key2", &claims(&idp)), "unknown kid").await;
    assert!(m.contains("key2"), "{m}");
    assert!(
        idp.fetches.load(Ordering::SeqCst) > before,
        "an unknown kid refetches the keys"
    );
    idp.jwks.lock().unwrap()["keys"] = fixture_json("entra/jwks.json")["keys"].clone();
    assert_eq!(
        post(&hub, &sign("key2", &claims(&idp)), START, run_start("e5"))
            .await
            .status,
        201
    );

    // Signed and valid, but no app role that maps to icahub: 403.
    let m = refused(
        403,
        sign("key1", &with("roles", json!(["Contributor"]))),
        "no role",
    )
    .await;
    assert!(m.contains("no icahub role"), "{m}");

    // Every refusal is counted on the security audit trail (summaries per kind and minute).
    let kinds = support::refused_kinds(&hub.app).await;
    for k in [
        "token_invalid",
        "token_algorithm",
        "token_unknown_key",
        "token_no_role",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} not audited: {kinds:?}");
    }
    assert!(kinds.len() >= 10, "{kinds:?}");
}

#[tokio::test]
async fn tokens_are_refused_when_entra_is_not_configured() {
    let hub = TestHub::embedded().await;
    let idp = idp().await;
    let r = post(
        &hub,
        &sign("key1", &claims(&idp)),
        "/api/v1/azdev/run/start",
        run_start("x"),
    )
    .await;
    assert!(r.expect_error(401)["message"]
        .as_str()
        .unwrap()
        .contains("ICAHUB_ENTRA_TENANT_ID"));
}
