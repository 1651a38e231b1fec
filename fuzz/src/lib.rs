//! The fuzz targets' entry points: each takes the raw bytes of one kind of untrusted input and
//! feeds them through the hub's own parsing functions, the way the HTTP handler does (body bytes
//! → `decode_json` → parser; the check's headers as a header map; tokens and signatures through
//! the verify functions with a fixed secret or key). `fuzz_targets/<name>.rs` calls one of them;
//! `tests/fuzz_regressions.rs` includes this file on stable Rust and runs every stored crashing
//! input through the same functions.
//!
//! A panic anywhere is a bug in the hub. Besides not panicking, the entry points assert a few
//! promises the parsers make (a refusal is a 400, a parsed alert survives the store's JSON round
//! trip, a check's `AuthToken` is never echoed, a re-signed token verifies...). Each returns the
//! hub's refusal as `Err(text)` so the regression test can also check for a clean error.
//!
//! A new target: a function here, an entry in [`TARGETS`], a file in `fuzz_targets/`, a `[[bin]]`
//! in `Cargo.toml` and a few seeds in `corpus/<name>/`.
#![forbid(unsafe_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use icahub::domain::action_token::{self, TokenError, TokenKeys};
use icahub::domain::alert::NormalizedAlert;
use icahub::domain::approval::{self, Policy};
use icahub::domain::azdo::{self, Parsed};
use icahub::domain::check::{normalize_plan_url, PlanHosts};
use icahub::domain::run;
use icahub::entra::{self, EntraConfig};
use icahub::error::ApiError;
use icahub::functions_host::InvocationRequest;
use icahub::ingest::{self, RequestCtx};
use icahub::mattermost::Callback;
use icahub::sinks::azure_devops;
use icahub::sinks::signature::{self, SigningKey};
use sha2::Sha256;
use std::sync::OnceLock;
use std::time::Duration;
use warp::http::{HeaderMap, HeaderName, HeaderValue};

/// What an entry point made of its input: `Ok` when the hub accepts it, else its refusal.
pub type Outcome = Result<(), String>;
/// One target's entry point.
pub type Entry = fn(&[u8]) -> Outcome;

/// Every target by name, as `fuzz_targets/` and `tests/fixtures/fuzz/<name>/` name them.
pub const TARGETS: [(&str, Entry); 11] = [
    ("azure_monitor", azure_monitor),
    ("alertmanager", alertmanager),
    ("azdo_hooks", azdo_hooks),
    ("azdo_check", azdo_check),
    ("mattermost_callback", mattermost_callback),
    ("action_token", action_token),
    ("functions_host", functions_host),
    ("webhook_signature", webhook_signature),
    ("auth_header", auth_header),
    ("entra_token", entra_token),
    ("api_bodies", api_bodies),
];

/// The entry point of a target.
pub fn target(name: &str) -> Option<Entry> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The fixed "now" of every target (2026-11-22T10:00:00Z).
pub const NOW: i64 = 1_795_428_000;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).expect("a valid instant")
}

fn ctx() -> RequestCtx {
    RequestCtx {
        request_id: "fuzz".into(),
        invocation_id: None,
    }
}

/// A refusal must be a client error (400) with a JSON body that can be built.
fn refused(e: ApiError) -> Outcome {
    assert_eq!(e.status().as_u16(), 400, "a bad body is a 400: {e}");
    let _ = e.clone().into_response("fuzz");
    Err(e.to_string())
}

/// What the store does with a parsed alert: keep it (and its compact copy) as JSON and read it
/// back, keyed by its stream.
fn check_alert(a: &NormalizedAlert) {
    assert!(!a.fingerprint.is_empty() && !a.dedup_key.is_empty());
    assert!(!icahub::domain::incident::stream_key(a).is_empty());
    for a in [a.clone(), a.compact()] {
        let json = serde_json::to_string(&a).expect("an alert serializes");
        let back: NormalizedAlert = serde_json::from_str(&json).expect("an alert reads back");
        assert_eq!(back, a, "the stored alert reads back unchanged");
    }
}

/// `POST /api/v1/azdev/alert`: Azure Monitor action-group bodies, every schema.
pub fn azure_monitor(data: &[u8]) -> Outcome {
    let d = match ingest::azure_monitor_delivery(&ctx(), data, now()) {
        Ok(d) => d,
        Err(e) => return refused(e),
    };
    assert_eq!(d.alerts.len(), 1);
    check_alert(&d.alerts[0].alert);
    Ok(())
}

/// `POST /api/v1/alertmanager`: Alertmanager webhook bodies (version 4).
pub fn alertmanager(data: &[u8]) -> Outcome {
    let d = match ingest::alertmanager_delivery(&ctx(), data, now()) {
        Ok(d) => d,
        Err(e) => return refused(e),
    };
    for da in &d.alerts {
        check_alert(&da.alert);
        assert_eq!(da.raw_alert.is_some(), d.alerts.len() > 1);
    }
    Ok(())
}

/// `POST /api/v1/azdo/hooks`: Azure DevOps service-hook deliveries.
pub fn azdo_hooks(data: &[u8]) -> Outcome {
    let v = match ingest::decode_json(data) {
        Ok((v, _)) => v,
        Err(e) => return refused(e),
    };
    match azdo::parse(&v, now()) {
        Ok(Parsed::Record(hook)) => {
            let s = &hook.start;
            assert!(!hook.run_id.trim().is_empty() && hook.run_id.len() <= 256);
            assert_eq!(s.run_id, hook.run_id);
            for f in [&s.pipeline_name, &s.branch, &s.commit, &s.triggered_by] {
                assert!(!f.trim().is_empty(), "a start field is never empty");
            }
            assert!(hook.event_data.is_object());
            Ok(())
        }
        Ok(Parsed::Ignored { reason, .. }) => Err(reason),
        Err(e) => Err(format!("{}: {}", e.field, e.problem)),
    }
}

/// Headers then body, as in HTTP: `Name: value` lines up to the first empty line, then the body.
/// Lines that are not a valid header are dropped (hyper refuses them before the route runs).
pub fn split_request(data: &[u8]) -> (HeaderMap, &[u8]) {
    let mut headers = HeaderMap::new();
    let mut rest = data;
    loop {
        let (line, tail) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = tail;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return (headers, rest);
        }
        if let Some(i) = line.iter().position(|&b| b == b':') {
            let value = line[i + 1..].trim_ascii();
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(line[..i].trim_ascii()),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(n, v);
            }
        }
        if rest.is_empty() {
            return (headers, rest);
        }
    }
}

/// `POST /api/v1/azdo/check`: the Invoke Azure Function check's headers and request body.
pub fn azdo_check(data: &[u8]) -> Outcome {
    let (headers, body) = split_request(data);
    let hosts = PlanHosts::default();
    match icahub::http::azdo_check::parse_check(&headers, body, &hosts, &Policy::default()) {
        Ok((check, req)) => {
            assert!(check.plan_url.ends_with('/'));
            assert!(
                check.plan_url.starts_with("https://") || check.plan_url.starts_with("http://")
            );
            let stored = serde_json::to_value(&check).expect("the check serializes");
            let back: icahub::domain::check::CheckCallback =
                serde_json::from_value(stored).expect("the check reads back");
            assert!(back == check);
            assert!(!req.run_id.is_empty() && !req.deployment_target.is_empty());
            // An accepted check can be answered: the sink builds its callback from what is stored.
            let (url, host) = normalize_plan_url(&check.plan_url).expect("a stored PlanUrl");
            assert_eq!(url, check.plan_url, "the stored PlanUrl is normalized");
            assert!(hosts.allows(&host));
            let events =
                azure_devops::events_url(&check, azure_devops::DEFAULT_API_VERSION, &hosts)
                    .expect("an accepted check can be called back");
            // ... at the PlanUrl's own path (no segment resolved away as a `..`).
            let plan_segments = check.plan_url.split('/').filter(|s| !s.is_empty()).count() - 2;
            let segments = events.path_segments().map_or(0, Iterator::count);
            assert_eq!(
                segments,
                plan_segments + 8,
                "{events} from {}",
                check.plan_url
            );
            let bearer = format!("Bearer {}", check.auth_token);
            assert!(
                HeaderValue::from_str(&bearer).is_ok(),
                "the AuthToken is a header value"
            );
            Ok(())
        }
        Err(e) => {
            // The job's access token is never echoed (unless the caller put it elsewhere too).
            let token = headers
                .get("authtoken")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
                .unwrap_or_default();
            if token.len() >= 8 && e.to_string().contains(&token) {
                let elsewhere = headers
                    .iter()
                    .filter(|(n, _)| n.as_str() != "authtoken")
                    .any(|(_, v)| String::from_utf8_lossy(v.as_bytes()).contains(&token))
                    || String::from_utf8_lossy(body).contains(&token);
                assert!(elsewhere, "the AuthToken is echoed in an error: {e}");
            }
            refused(e)
        }
    }
}

const BUTTON_SECRETS: [&str; 2] = [
    "0123456789abcdef0123456789abcdef-fuzz-current",
    "fedcba9876543210fedcba9876543210-fuzz-older",
];

fn button_keys() -> TokenKeys {
    TokenKeys::new(BUTTON_SECRETS).expect("two secrets")
}

/// The token with its payload re-signed with the first secret (`action_token`'s format: HMAC-SHA256
/// over a purpose label and the payload's text), so the fuzzer reaches the claims parser too.
fn resign(token: &str) -> Option<String> {
    let (payload, _) = token.split_once('.')?;
    let mut mac = Hmac::<Sha256>::new_from_slice(BUTTON_SECRETS[0].as_bytes()).ok()?;
    mac.update(b"icahub.mattermost.action.v1.");
    mac.update(payload.as_bytes());
    Some(format!(
        "{payload}.{}",
        B64URL.encode(mac.finalize().into_bytes())
    ))
}

/// A button token or a dialog state, as it arrives; `Ok` only for an authentic, unexpired token.
fn verify_token(keys: &TokenKeys, token: &str) -> Outcome {
    let _ = action_token::unverified_approval_id(token);
    assert_eq!(action_token::fingerprint(token).len(), 16);
    match keys.verify(token, NOW) {
        Ok(c) => {
            assert!(c.expires > NOW);
            assert_eq!(keys.verify(&keys.sign(&c), NOW), Ok(c.clone()));
            let _ = c.token_id();
            Ok(())
        }
        Err(TokenError::Expired(c)) => {
            assert!(c.expires <= NOW);
            Err("expired".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A token with a valid signature over whatever payload it carries: never refused as forged.
fn verify_resigned(keys: &TokenKeys, token: &str) {
    if let Some(t) = resign(token) {
        if t.len() <= action_token::MAX_TOKEN_CHARS && !t.starts_with('.') {
            assert_ne!(keys.verify(&t, NOW), Err(TokenError::BadSignature), "{t}");
        }
        let _ = verify_token(keys, &t);
    }
}

/// `POST /api/v1/mattermost/actions`: a button callback or dialog submission, read as the route
/// reads it, then its token verified.
pub fn mattermost_callback(data: &[u8]) -> Outcome {
    let v = match ingest::decode_json(data) {
        Ok((v, _)) => v,
        Err(e) => return refused(e),
    };
    let cb = Callback::parse(&v);
    if let Some(reason) = &cb.reason {
        let _ = reason.trim().chars().count() > icahub::mattermost::MAX_REASON_CHARS;
    }
    let Some(token) = cb.token.as_deref() else {
        return Err("no token".into());
    };
    assert!(!token.is_empty() && token.chars().count() <= 2 * action_token::MAX_TOKEN_CHARS);
    let keys = button_keys();
    verify_resigned(&keys, token);
    verify_token(&keys, token)
}

/// A raw button token (`context.token`, or a dialog's `state`), as text.
pub fn action_token(data: &[u8]) -> Outcome {
    let token = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    let keys = button_keys();
    verify_resigned(&keys, token);
    verify_token(&keys, token)
}

/// `POST /dispatch`: the Functions host's timer envelope, read as `http/timer.rs` reads it.
pub fn functions_host(data: &[u8]) -> Outcome {
    let env = InvocationRequest::from_body(data).map_err(|e| e.to_string())?;
    let _ = env.timer().map(|t| t.is_past_due);
    let _ = env.method_name();
    Ok(())
}

/// The spec's test secret (standard-webhooks `libraries/rust/src/lib.rs`).
const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// Standard Webhooks: lines `secret`, `webhook-id`, `webhook-timestamp`, `webhook-signature`,
/// then the body. The secret line goes through the `whsec_` parser and, when it parses, joins the
/// fixed key.
pub fn webhook_signature(data: &[u8]) -> Outcome {
    let mut parts = data.splitn(5, |&b| b == b'\n');
    let mut line = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (secret, id, ts, sigs) = (line(), line(), line(), line());
    let body = parts.next().unwrap_or_default();
    let mut keys = vec![SigningKey::parse(WEBHOOK_SECRET).expect("the spec's secret")];
    keys.extend(SigningKey::parse(&secret).ok());
    let tol = signature::DEFAULT_TOLERANCE;
    let signed = signature::sign(&keys, &id, NOW, body);
    assert_eq!(
        signature::verify(&keys, &id, &NOW.to_string(), &signed, body, NOW, tol),
        Ok(()),
        "what we sign verifies"
    );
    let r = signature::verify(&keys, &id, &ts, &sigs, body, NOW, tol);
    if r.is_ok() {
        let t: i64 = ts
            .trim()
            .parse()
            .expect("a verified timestamp is an integer");
        assert!(t.abs_diff(NOW) <= tol.as_secs());
    }
    let _ = signature::verify(&keys, &id, &ts, &sigs, body, NOW, Duration::MAX);
    r.map_err(|e| e.to_string())
}

/// An `Authorization` header value, through every reader of it: API keys (Bearer or Basic
/// password), the service hooks' basic credentials, and an Entra token's header.
pub fn auth_header(data: &[u8]) -> Outcome {
    let h = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    let _ = icahub::http::auth::presented_key(h);
    let _ = icahub::http::azdo::basic_credentials(h);
    let _ = icahub::http::azdo::api_key(h);
    match icahub::http::auth::bearer_jwt(h) {
        Some(token) => {
            assert_eq!(token.split('.').count(), 3);
            entra::check_header(token)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        None => Err("not a JWT".into()),
    }
}

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn entra_config() -> &'static EntraConfig {
    static C: OnceLock<EntraConfig> = OnceLock::new();
    C.get_or_init(|| {
        EntraConfig::from_lookup(&|k| match k {
            "ICAHUB_ENTRA_TENANT_ID" => Some(TENANT.into()),
            "ICAHUB_ENTRA_AUDIENCES" => {
                Some("api://icahub,00000000-aaaa-bbbb-cccc-000000000001".into())
            }
            "ICAHUB_ENTRA_ROLE_MAP" => Some(r#"{"Deployers": ["devops"]}"#.into()),
            _ => None,
        })
        .expect("a valid configuration")
        .expect("configured")
    })
}

fn entra_keys() -> &'static (jsonwebtoken::EncodingKey, jsonwebtoken::DecodingKey) {
    static K: OnceLock<(jsonwebtoken::EncodingKey, jsonwebtoken::DecodingKey)> = OnceLock::new();
    K.get_or_init(|| {
        let private = include_bytes!("../../tests/fixtures/entra/key1.pem");
        let public = include_bytes!("../../tests/fixtures/entra/key1.pub.pem");
        (
            jsonwebtoken::EncodingKey::from_rsa_pem(private).expect("the test key"),
            jsonwebtoken::DecodingKey::from_rsa_pem(public).expect("the test key"),
        )
    })
}

/// An Entra ID bearer token, checked as `EntraVerifier::verify` does once it has the key for the
/// token's `kid` (the tests' `key1`). An input starting with `~` is `<header JSON>\n<claims
/// JSON>`, signed here with that key, so the fuzzer reaches the claim checks.
pub fn entra_token(data: &[u8]) -> Outcome {
    let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    let token = match text.strip_prefix('~') {
        Some(rest) => {
            let (header, claims) = rest.split_once('\n').unwrap_or((rest, ""));
            let message = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
            let sig = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &entra_keys().0,
                jsonwebtoken::Algorithm::RS256,
            )
            .expect("RS256 signs");
            format!("{message}.{sig}")
        }
        None => text.to_string(),
    };
    // As `EntraVerifier::verify`: the header first (RS256 and a `kid`, which picks the key).
    entra::check_header(&token).map_err(|e| e.to_string())?;
    let issuer = "https://login.microsoftonline.com/{tenantid}/v2.0";
    let caller = entra_config()
        .validate(&token, &entra_keys().1, issuer)
        .map_err(|e| e.to_string())?;
    assert!(!caller.roles.is_empty() && !caller.name.is_empty());
    Ok(())
}

/// The pipelines' API bodies: run start, event and finish, approval request and signature. Each
/// input goes through all five parsers (it is one JSON body; which route it was sent to does not
/// change how it is decoded).
pub fn api_bodies(data: &[u8]) -> Outcome {
    let v = match ingest::decode_json(data) {
        Ok((v, _)) => v,
        Err(e) => return refused(e),
    };
    let mut accepted = false;
    if let Ok(s) = run::parse_start(&v) {
        assert!(!s.run_id.is_empty() && s.run_id.len() <= 1024);
        accepted = true;
    }
    if let Ok(e) = run::parse_event(&v) {
        assert!(e.event_data.is_object());
        let _ = run::chain("", &e.event_type, &e.event_data);
        accepted = true;
    }
    if let Ok(f) = run::parse_finish(&v) {
        let _ = f.end_time.to_rfc3339();
        accepted = true;
    }
    if let Ok(r) = approval::parse_request(&v, &Policy::default()) {
        assert!(r.estimated_cost.is_none_or(|c| c.is_finite() && c >= 0.0));
        let json = serde_json::to_string(&r).expect("a request serializes");
        let back: approval::ApprovalRequest = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back.run_id, r.run_id);
        accepted = true;
    }
    if let Ok(s) = approval::parse_sign(&v) {
        assert!(s.decision == approval::Decision::Approved || s.comments.is_some());
        accepted = true;
    }
    if accepted {
        Ok(())
    } else {
        Err("no parser accepts it".into())
    }
}
