//! Mattermost approval buttons through the real server (manual clock): the hub posts the
//! approval request to a local Mattermost receiver, the test plays Mattermost and sends the
//! button callbacks (shaped like the documented samples) with the tokens taken from the captured
//! message. Covers the two-person approval, refusals by role and separation of duties, forged /
//! expired / replayed / misused tokens (refused and audited), the rejection dialog (open request,
//! field errors, rejection), unlinked users, and messages without buttons; and the attacks of
//! issue 11 ("Trust the gate"), each on both backends: a linked approver's user name with a
//! foreign user id, clickers the Mattermost server does not vouch for (unknown, deactivated, not
//! in the channel, no channel, server down), a click handing out tokens that were never posted,
//! and a flood of refused callbacks.

mod support;

use chrono::{Duration as Span, Utc};
use icahub::clock::ManualClock;
use icahub::config::Config;
use icahub::domain::action_token::{self, Action, Claims, TokenKeys};
use icahub::domain::identity::Role;
use icahub::storage::{DocCommit, DocWrite, Expect};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use support::hub::{Reply, TestHub};
use support::receiver::{Directory, MmDirectory, Receiver, Recorded};

const ACTIONS: &str = "/api/v1/mattermost/actions";
const PUBLIC_URL: &str = "https://icahub.example.net";
const SECRET: &str = "test-action-secret-0123456789abcdef";
const MM_TOKEN: &str = "mm-bot-token-SECRET";
const ALICE_ID: &str = "aliceuserid000000000000000";
const BOB_ID: &str = "bobuserid00000000000000000";
const CAROL_ID: &str = "caroluserid000000000000000";
const TESTER_ID: &str = "testeruserid00000000000000";
const MALLORY_ID: &str = "malloryuserid0000000000000";
/// The channel of the documented callback samples.
const CHANNEL: &str = "j6j53p28k6urx15fpcgsr20psq";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Embedded,
    Tables,
}

/// Which Mattermost server the hub is told about (`ICAHUB_MATTERMOST_URL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    None,
    /// The receiver, answering the API from its directory.
    Up,
    /// A port nobody listens on (connection refused).
    Closed,
}

struct Env {
    hub: TestHub,
    mm: Receiver,
    dir: Directory,
    clock: Arc<ManualClock>,
    /// The store's settings, for the CLI.
    store_env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

/// The settings of a fresh store on `backend` (in `dir` when embedded).
fn store_env(backend: Backend, dir: &std::path::Path) -> Vec<(String, String)> {
    match backend {
        Backend::Embedded => vec![
            ("ICAHUB_STORAGE".into(), "embedded".into()),
            ("ICAHUB_DATA_DIR".into(), dir.display().to_string()),
        ],
        Backend::Tables => vec![
            ("ICAHUB_STORAGE".into(), "tables".into()),
            (
                "ICAHUB_TABLES_CONNECTION_STRING".into(),
                support::azurite::connection_string(),
            ),
            (
                "ICAHUB_TABLE_PREFIX".into(),
                support::azurite::unique_prefix("mm"),
            ),
            ("ICAHUB_DATA_DIR".into(), dir.display().to_string()),
        ],
    }
}

/// The directory of the fake Mattermost server: everyone active and in [`CHANNEL`].
fn directory() -> Directory {
    let dir = MmDirectory::new(MM_TOKEN);
    {
        let mut d = dir.lock().unwrap();
        for (id, name) in [
            (ALICE_ID, "alice"),
            (BOB_ID, "bob"),
            (CAROL_ID, "carol"),
            (TESTER_ID, "tester"),
            (MALLORY_ID, "mallory"),
        ] {
            d.users.insert(id.into(), (name.into(), 0));
            d.members.insert((CHANNEL.into(), id.into()));
        }
    }
    dir
}

async fn setup(buttons: bool, dialog: bool) -> Env {
    let server = if dialog { Server::Up } else { Server::None };
    setup_with(Backend::Embedded, buttons, server).await
}

/// A hub whose Mattermost webhook is a local receiver, with buttons on when `buttons`, and these
/// people, linked by their Mattermost user ids: alice (technical approver), bob (business
/// approver), carol (no role), tester (every role, the requester). mallory is not linked.
async fn setup_with(backend: Backend, buttons: bool, server: Server) -> Env {
    let dir = directory();
    let mm = Receiver::mattermost_with(dir.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let store_env = store_env(backend, tmp.path());
    let mut env: HashMap<String, String> = store_env.iter().cloned().collect();
    env.insert(
        "ICAHUB_MATTERMOST_WEBHOOK_URL".into(),
        mm.url("/hooks/approvalhookkey1"),
    );
    if buttons {
        env.insert("ICAHUB_PUBLIC_URL".into(), PUBLIC_URL.into());
        env.insert(
            "ICAHUB_MATTERMOST_ACTION_SECRETS".into(),
            format!("{SECRET},an-older-secret-still-accepted-000000"),
        );
    }
    let url = match server {
        Server::None => None,
        Server::Up => Some(mm.base.clone()),
        Server::Closed => Some(format!("http://127.0.0.1:{}", support::hub::free_port())),
    };
    if let Some(url) = url {
        env.insert("ICAHUB_MATTERMOST_URL".into(), url);
        env.insert("ICAHUB_MATTERMOST_TOKEN".into(), MM_TOKEN.into());
    }
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let config = Config::from_lookup(|k| env.get(k).cloned(), Some(0)).unwrap();
    let sinks = icahub::sinks::Sinks::from_lookup(&|k| env.get(k).cloned()).unwrap();
    let hub = TestHub::start_with(config, sinks, clock.clone()).await;
    let store = hub.app.store.as_ref();
    let now = Utc::now();
    for (who, role) in [
        ("alice", Role::TechnicalApprover),
        ("bob", Role::BusinessApprover),
    ] {
        icahub::identity::set_role(store, who, role, true, "test", now)
            .await
            .unwrap();
    }
    for (who, id) in [
        ("alice", ALICE_ID),
        ("bob", BOB_ID),
        ("carol", CAROL_ID),
        ("tester", TESTER_ID),
    ] {
        assert!(
            icahub::identity::link_mattermost(store, who, id, Some(who), "test", now)
                .await
                .unwrap()
        );
    }
    Env {
        hub,
        mm,
        dir,
        clock,
        store_env,
        _dir: tmp,
    }
}

/// Request an approval through the API (as tester) and return its id.
async fn request(env: &Env, run: &str, target: &str) -> String {
    // The run is on the ledger first, as the pipeline's hook script puts it there.
    let started = env
        .hub
        .post_json(
            "/api/v1/azdev/run/start",
            json!({"pipeline_name": "payments", "run_id": run, "branch": "main",
                   "commit": "9f2c1e7", "triggered_by": "dave"})
            .to_string(),
        )
        .await;
    assert!(matches!(started.status, 200 | 201), "{}", started.text);
    let r = env
        .hub
        .post_json(
            "/api/v1/azdev/approval",
            json!({"run_id": run, "deployment_target": target, "estimated_cost": 1250.5,
                   "description": "Release 4.2 of the payments API",
                   "checklist": {"tests green": true, "rollback plan": true, "load test": false}})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json["approval_id"].as_str().unwrap().to_string()
}

/// The webhook posts whose text mentions `needle`, once at least one has arrived.
async fn posts(mm: &Receiver, needle: &str) -> Vec<Value> {
    let mentions = |r: &Recorded| {
        r.path.starts_with("/hooks/")
            && r.json()["text"]
                .as_str()
                .is_some_and(|t| t.contains(needle))
    };
    mm.wait_until(&format!("a Mattermost post mentioning {needle:?}"), |got| {
        got.iter().any(mentions)
    })
    .await
    .iter()
    .filter(|r| mentions(r))
    .map(Recorded::json)
    .collect()
}

/// The request message of approval `id`, and its buttons by action.
async fn buttons(env: &Env, id: &str) -> HashMap<String, Value> {
    // The request's headline ends with `· <id>`; wait for that very message.
    let post = posts(&env.mm, &format!("· {id}")).await;
    let post = post
        .into_iter()
        .find(|p| p["text"].as_str().unwrap().starts_with("Approval needed: "))
        .expect("the request message");
    let actions = post["attachments"][0]["actions"]
        .as_array()
        .unwrap()
        .clone();
    actions
        .into_iter()
        .map(|a| {
            (
                a["integration"]["context"]["action"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                a,
            )
        })
        .collect()
}

fn token_of(button: &Value) -> String {
    button["integration"]["context"]["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A callback shaped like the documented full one (with `user_name`), for this button's context.
fn click_as(user_id: &str, user_name: &str, context: &Value) -> Value {
    let mut cb = support::fixture_json("mattermost-action-callback-full-shape.json");
    cb["user_id"] = json!(user_id);
    cb["user_name"] = json!(user_name);
    cb["trigger_id"] = json!(format!("trigger-{user_name}-{}", uuid_like()));
    cb["context"] = context.clone();
    cb
}

/// A callback shaped like the documented minimal one (no `user_name`).
fn click_by_id(user_id: &str, context: &Value) -> Value {
    let mut cb = support::fixture_json("mattermost-action-callback.json");
    cb["user_id"] = json!(user_id);
    cb["context"] = context.clone();
    cb
}

fn uuid_like() -> String {
    format!("{:x}", Utc::now().timestamp_nanos_opt().unwrap_or(0))
}

/// POST a callback without an API key (Mattermost has none).
async fn callback(env: &Env, body: &Value) -> Reply {
    let r = reqwest::Client::new()
        .post(env.hub.url(ACTIONS))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    Reply::read(r).await
}

async fn get_approval(env: &Env, id: &str) -> Value {
    let r = env.hub.get(&format!("/api/v1/azdev/approval/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

/// Audit entries of a partition with this `action`.
async fn audits(env: &Env, partition: &str, action: &str) -> Vec<Value> {
    env.hub.audit_notes(partition, action).await
}

fn ephemeral(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["ephemeral_text"]
        .as_str()
        .unwrap_or_else(|| panic!("no ephemeral_text in {}", r.text))
        .to_string()
}

#[tokio::test]
async fn two_people_approve_with_the_buttons() {
    let env = setup(true, false).await;
    let id = request(&env, "4711", "production").await;
    let b = buttons(&env, &id).await;
    env.mm.assert_no_rejections();

    // The request: three buttons calling the public URL, each with a token; cost and checklist.
    assert_eq!(b.len(), 3, "{b:?}");
    for (action, name) in [
        ("approve_technical", "Approve (technical)"),
        ("approve_business", "Approve (business)"),
        ("reject", "Reject"),
    ] {
        assert_eq!(b[action]["name"], name);
        assert_eq!(
            b[action]["integration"]["url"],
            format!("{PUBLIC_URL}{ACTIONS}")
        );
        assert!(token_of(&b[action]).contains('.'));
    }
    let post = &posts(&env.mm, &id).await[0];
    let att = &post["attachments"][0];
    let fields = att["fields"].to_string();
    assert!(fields.contains("$1,250.50/month"), "{fields}");
    assert!(fields.contains("tester"), "{fields}");
    assert!(att["text"].as_str().unwrap().contains("- [x] tests green"));
    assert!(att["text"].as_str().unwrap().contains("- [ ] load test"));
    assert!(post.to_string().len() < 16383);

    // The requester may not approve; someone without the role may not either.
    let tech = b["approve_technical"]["integration"]["context"].clone();
    let text = ephemeral(&callback(&env, &click_as(TESTER_ID, "tester", &tech)).await);
    assert!(text.contains("requested this deployment"), "{text}");
    let text = ephemeral(&callback(&env, &click_as(CAROL_ID, "carol", &tech)).await);
    assert!(text.contains("technical_approver"), "{text}");
    assert_eq!(get_approval(&env, &id).await["status"], "pending");

    // alice gives the technical approval: the post keeps the two buttons still useful.
    let r = callback(&env, &click_as(ALICE_ID, "alice", &tech)).await;
    let text = ephemeral(&r);
    assert!(
        text.contains("technical approval") && text.contains("alice"),
        "{text}"
    );
    let update = &r.json["update"];
    assert!(update["message"].as_str().unwrap().contains(&id));
    let left: Vec<&str> = update["props"]["attachments"][0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["integration"]["context"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["approve_business", "reject"]);
    assert!(update["props"]["attachments"][0]["fields"]
        .to_string()
        .contains("approved by alice"));

    // bob, known to icahub by his user id only, clicks from a server that sends no user name.
    let biz = b["approve_business"]["integration"]["context"].clone();
    let r = callback(&env, &click_by_id(BOB_ID, &biz)).await;
    let text = ephemeral(&r);
    assert!(text.contains("Status: approved"), "{text}");
    let update = &r.json["update"];
    assert!(
        update["props"]["attachments"][0].get("actions").is_none(),
        "a final approval keeps no buttons: {update}"
    );
    assert!(update["message"].as_str().unwrap().contains("approved"));

    let a = get_approval(&env, &id).await;
    assert_eq!(a["status"], "approved");
    let sigs = a["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 2);
    assert!(sigs.iter().all(|s| s["via"] == "mattermost"));
    assert_eq!(sigs[0]["by"], "alice");
    assert_eq!(sigs[1]["by"], "bob");
    // The decision is posted too.
    posts(&env.mm, &format!("{id} approved")).await;

    // Reject on the decided approval: refused by the approval rules, and the stale buttons go.
    let rej = b["reject"]["integration"]["context"].clone();
    let r = callback(&env, &click_as(ALICE_ID, "alice", &rej)).await;
    let text = ephemeral(&r);
    assert!(text.contains("already approved"), "{text}");
    assert!(r.json["update"]["props"]["attachments"][0]
        .get("actions")
        .is_none());
    env.mm.assert_no_rejections();
}

#[tokio::test]
async fn forged_expired_replayed_and_misused_tokens_are_refused_and_audited() {
    let env = setup(true, false).await;
    let id = request(&env, "5001", "staging").await;
    let b = buttons(&env, &id).await;
    let partition = icahub::approvals::partition_of(&id).unwrap();
    // Refusals no authentic token vouches for go to the security partition, never the approvals'.
    let security = icahub::http::auth::SECURITY;

    // Forged: the signature changed.
    let mut ctx = b["approve_technical"]["integration"]["context"].clone();
    let token = token_of(&b["approve_technical"]);
    let (payload, sig) = token.split_once('.').unwrap();
    let flipped: String = sig
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 3 {
                if c == 'A' {
                    'B'
                } else {
                    'A'
                }
            } else {
                c
            }
        })
        .collect();
    ctx["token"] = json!(format!("{payload}.{flipped}"));
    let text = ephemeral(&callback(&env, &click_as(ALICE_ID, "alice", &ctx)).await);
    assert!(text.contains("not valid"), "{text}");
    // Forged: the technical token's claims with the business token's signature.
    let other = token_of(&b["approve_business"]);
    ctx["token"] = json!(format!("{payload}.{}", other.split_once('.').unwrap().1));
    let text = ephemeral(&callback(&env, &click_as(ALICE_ID, "alice", &ctx)).await);
    assert!(text.contains("not valid"), "{text}");
    // Unauthenticated (no authentic token): counted in the minute's summary, not one by one.
    let forged = mattermost_refusals(&env).await;
    assert_eq!(kinds_of(&forged), ["forged", "forged"], "{forged:?}");
    assert!(
        !forged[0].to_string().contains(&token),
        "the token is never stored"
    );
    let _ = security;
    assert_eq!(get_approval(&env, &id).await["status"], "pending");

    // The documented sample callbacks parse, and are refused for want of a real token.
    for sample in [
        "mattermost-action-callback.json",
        "mattermost-action-callback-token-context.json",
        "mattermost-action-callback-full-shape.json",
    ] {
        let text = ephemeral(&callback(&env, &support::fixture_json(sample)).await);
        assert!(text.contains("token"), "{sample}: {text}");
    }
    let refused = kinds_of(&mattermost_refusals(&env).await);
    assert_eq!(refused.len(), 5, "{refused:?}");
    assert!(audits(
        &env,
        icahub::approvals::REGISTRY,
        "mattermost.token_refused"
    )
    .await
    .is_empty());
    assert!(refused.iter().any(|k| k == "malformed"));
    assert!(refused.iter().any(|k| k == "missing"));

    // Replayed: the same button twice.
    let tech = b["approve_technical"]["integration"]["context"].clone();
    ephemeral(&callback(&env, &click_as(ALICE_ID, "alice", &tech)).await);
    assert_eq!(
        get_approval(&env, &id).await["status"],
        "technical_approved"
    );
    let text = ephemeral(&callback(&env, &click_as(ALICE_ID, "alice", &tech)).await);
    assert!(text.contains("already used"), "{text}");
    let replays = audits(&env, &partition, "approval.sign_refused").await;
    assert!(
        replays
            .iter()
            .any(|a| a["reason"].as_str().unwrap().contains("already used")),
        "{replays:?}"
    );

    // Misused: a button token presented as a dialog's state.
    let mut sub = support::fixture_json("mattermost-dialog-submission-template.json");
    sub["state"] = b["reject"]["integration"]["context"]["token"].clone();
    sub["user_id"] = json!(ALICE_ID);
    sub["submission"] = json!({"reason": "sneaky"});
    let r = callback(&env, &sub).await;
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .contains("does not belong"),
        "{}",
        r.text
    );

    // Expired: the clock past the approval's expiry.
    env.clock.advance(Span::hours(4) + Span::minutes(1));
    let biz = b["approve_business"]["integration"]["context"].clone();
    let text = ephemeral(&callback(&env, &click_by_id(BOB_ID, &biz)).await);
    assert!(text.contains("expired"), "{text}");
    // An authentic token's refusal is on the approval's own trail.
    let expired: Vec<Value> = audits(&env, &partition, "mattermost.token_refused")
        .await
        .into_iter()
        .filter(|a| a["reason"] == "expired")
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["approval_id"], id.as_str());
    assert_ne!(get_approval(&env, &id).await["status"], "approved");
}

#[tokio::test]
async fn reject_asks_for_a_reason_in_a_dialog() {
    let env = setup(true, true).await;
    let id = request(&env, "6001", "staging").await;
    let b = buttons(&env, &id).await;
    let rej = b["reject"]["integration"]["context"].clone();

    let mut cb = click_as(ALICE_ID, "alice", &rej);
    cb["trigger_id"] = json!("trigger-for-alice-42");
    let r = callback(&env, &cb).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({}));
    let open = env
        .mm
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v4/actions/dialogs/open")
        .expect("the dialog was opened");
    env.mm.assert_no_rejections();
    assert_eq!(
        open.header("authorization"),
        Some(format!("Bearer {MM_TOKEN}").as_str())
    );
    let open = open.json();
    assert_eq!(open["trigger_id"], "trigger-for-alice-42");
    assert_eq!(open["url"], format!("{PUBLIC_URL}{ACTIONS}"));
    let dialog = &open["dialog"];
    assert_eq!(dialog["callback_id"], id.as_str());
    assert!(dialog["title"].as_str().unwrap().chars().count() <= 24);
    assert_eq!(dialog["elements"][0]["name"], "reason");
    assert_eq!(dialog["elements"][0]["type"], "textarea");
    let state = dialog["state"].as_str().unwrap().to_string();
    assert_ne!(state, token_of(&b["reject"]), "the state is bound to alice");

    // The submission, shaped like the documented template.
    let mut sub = support::fixture_json("mattermost-dialog-submission-template.json");
    sub["callback_id"] = json!(id);
    sub["state"] = json!(state);
    sub["user_id"] = json!(ALICE_ID);
    sub["channel_id"] = json!(CHANNEL);
    sub["submission"] = json!({"reason": "   "});
    let r = callback(&env, &sub).await;
    assert_eq!(r.status, 200);
    assert!(r.json["errors"]["reason"].is_string(), "{}", r.text);

    // alice's dialog state is no good to anyone else.
    let mut stolen = sub.clone();
    stolen["user_id"] = json!(BOB_ID);
    stolen["submission"] = json!({"reason": "not mine to reject"});
    let r = callback(&env, &stolen).await;
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .contains("does not belong"),
        "{}",
        r.text
    );
    assert_eq!(get_approval(&env, &id).await["status"], "pending");

    sub["submission"] = json!({"reason": "the load test has not run"});
    let r = callback(&env, &sub).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json, json!({}), "{}", r.text);
    let a = get_approval(&env, &id).await;
    assert_eq!(a["status"], "rejected");
    assert!(a["reason"]
        .as_str()
        .unwrap()
        .contains("the load test has not run"));
    assert_eq!(a["signatures"][0]["by"], "alice");
    assert_eq!(a["signatures"][0]["via"], "mattermost");
    assert_eq!(a["signatures"][0]["decision"], "rejected");
    posts(&env.mm, &format!("{id} rejected")).await;

    // The same submission again: the token was spent.
    let r = callback(&env, &sub).await;
    assert!(r.json["error"].is_string(), "{}", r.text);
}

#[tokio::test]
async fn reject_without_a_dialog_explains_how() {
    let env = setup(true, false).await;
    let id = request(&env, "6002", "staging").await;
    let b = buttons(&env, &id).await;
    let rej = b["reject"]["integration"]["context"].clone();
    let text = ephemeral(&callback(&env, &click_as(ALICE_ID, "alice", &rej)).await);
    assert!(text.contains("ICAHUB_MATTERMOST_URL"), "{text}");
    assert!(
        text.contains(&format!("/api/v1/azdev/approval/{id}/sign")),
        "{text}"
    );
    assert_eq!(get_approval(&env, &id).await["status"], "pending");
}

#[tokio::test]
async fn unknown_users_are_told_how_to_get_linked() {
    let env = setup(true, false).await;
    let id = request(&env, "7001", "staging").await;
    let b = buttons(&env, &id).await;
    let tech = b["approve_technical"]["integration"]["context"].clone();
    for cb in [
        click_as(MALLORY_ID, "mallory", &tech),
        click_by_id(MALLORY_ID, &tech),
    ] {
        let text = ephemeral(&callback(&env, &cb).await);
        assert!(
            text.contains(&format!(
                "icahub roles link-mattermost <identity> --user-id {MALLORY_ID}"
            )),
            "{text}"
        );
    }
    assert_eq!(get_approval(&env, &id).await["status"], "pending");
    // Once linked, the same button works.
    icahub::identity::link_mattermost(
        env.hub.app.store.as_ref(),
        "alice",
        MALLORY_ID,
        None,
        "test",
        Utc::now(),
    )
    .await
    .unwrap();
    let text = ephemeral(&callback(&env, &click_by_id(MALLORY_ID, &tech)).await);
    assert!(text.contains("Recorded"), "{text}");
}

#[tokio::test]
async fn links_are_exclusive_replaceable_and_audited() {
    let env = setup(true, false).await;
    let store = env.hub.app.store.as_ref();
    let now = Utc::now();
    let link = |who: &'static str, id: &'static str| {
        icahub::identity::link_mattermost(store, who, id, None, "test", now)
    };
    let err = link("carol", ALICE_ID).await.unwrap_err();
    assert!(err.to_string().contains("already linked to alice"), "{err}");
    assert!(link("carol", "not-an-id").await.is_err());
    // Relinking the same is a no-op; a new id replaces the old one.
    assert!(!icahub::identity::link_mattermost(
        store,
        "alice",
        ALICE_ID,
        Some("alice"),
        "test",
        now
    )
    .await
    .unwrap());
    assert!(link("alice", MALLORY_ID).await.unwrap());
    let by = |id: &'static str| icahub::identity::by_mattermost(store, id);
    assert!(
        by(ALICE_ID).await.unwrap().is_none(),
        "the old id no longer maps"
    );
    let found = by(MALLORY_ID).await.unwrap().unwrap();
    assert_eq!(found.name, "alice");
    assert_eq!(found.roles, [Role::TechnicalApprover]);
    // The old id is free for someone else now.
    assert!(link("carol", ALICE_ID).await.unwrap());
    assert!(
        icahub::identity::unlink_mattermost(store, "carol", "test", now)
            .await
            .unwrap()
    );
    assert!(by(ALICE_ID).await.unwrap().is_none());
    assert!(
        by(CAROL_ID).await.unwrap().is_none(),
        "unlinking replaced links too"
    );
    let trail = audits(&env, icahub::identity::IDENTITIES, "mattermost.linked").await;
    assert!(trail.len() >= 6, "{trail:?}");
    assert_eq!(
        audits(&env, icahub::identity::IDENTITIES, "mattermost.unlinked")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn without_a_public_url_messages_have_no_buttons_and_say_so() {
    let env = setup(false, false).await;
    let id = request(&env, "8001", "staging").await;
    let post = &posts(&env.mm, &id).await[0];
    let att = &post["attachments"][0];
    assert!(att.get("actions").is_none(), "{post}");
    assert!(att["text"].as_str().unwrap().contains("ICAHUB_PUBLIC_URL"));
    assert!(att["text"]
        .as_str()
        .unwrap()
        .contains(&format!("/api/v1/azdev/approval/{id}/sign")));
    env.mm.assert_no_rejections();
    // A click reaching such a hub is refused (and audited), not a 500.
    let cb = click_as(ALICE_ID, "alice", &json!({"token": "x.y"}));
    let text = ephemeral(&callback(&env, &cb).await);
    assert!(text.contains("not configured"), "{text}");
}

#[tokio::test]
async fn bad_bodies_get_json_errors() {
    let env = setup(true, false).await;
    let client = reqwest::Client::new();
    for (ct, body, status) in [
        ("application/json", "[1, 2]", 400),
        ("application/json", "{\"user_id\": ", 400),
        ("application/json", "", 400),
        ("text/plain", "{}", 415),
    ] {
        let r = client
            .post(env.hub.url(ACTIONS))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        Reply::read(r).await.expect_error(status);
    }
    // An empty object is a callback without a token: refused, 200 for Mattermost's sake.
    let text = ephemeral(&callback(&env, &json!({})).await);
    assert!(text.contains("token"), "{text}");
}

#[tokio::test]
async fn tokens_signed_with_an_older_secret_still_work() {
    let env = setup(true, false).await;
    let id = request(&env, "9001", "staging").await;
    let a = get_approval(&env, &id).await;
    let expires = chrono::DateTime::parse_from_rfc3339(a["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    let older = TokenKeys::new(["an-older-secret-still-accepted-000000"]).unwrap();
    let token = older.sign(&Claims::button(
        &id,
        Action::ApproveTechnical,
        expires,
        action_token::nonce([9; 16]),
    ));
    let text =
        ephemeral(&callback(&env, &click_as(ALICE_ID, "alice", &json!({"token": token}))).await);
    assert!(text.contains("Recorded"), "{text}");
    // A secret the hub does not hold is refused.
    let stranger = TokenKeys::new(["a-secret-this-hub-has-never-seen-0000"]).unwrap();
    let token = stranger.sign(&Claims::button(
        &id,
        Action::ApproveBusiness,
        expires,
        action_token::nonce([8; 16]),
    ));
    let text = ephemeral(&callback(&env, &click_by_id(BOB_ID, &json!({"token": token}))).await);
    assert!(text.contains("not valid"), "{text}");
    assert_eq!(
        get_approval(&env, &id).await["status"],
        "technical_approved"
    );
}

#[tokio::test]
async fn the_api_rules_apply_above_the_finance_threshold() {
    let env = setup(true, false).await;
    let r = env
        .hub
        .post_json(
            "/api/v1/azdev/approval",
            json!({"run_id": "9101", "deployment_target": "staging", "estimated_cost": 7500,
                   "checklist": ["tests green"]})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    let b = buttons(&env, &id).await;
    // The finance channel hears of it too, without buttons.
    let finance = posts(&env.mm, "Finance review needed").await;
    assert!(finance[0]["attachments"][0].get("actions").is_none());
    let biz = b["approve_business"]["integration"]["context"].clone();
    let text = ephemeral(&callback(&env, &click_by_id(BOB_ID, &biz)).await);
    assert!(text.contains("finance"), "{text}");
    assert_eq!(get_approval(&env, &id).await["status"], "pending");
}

// ---------------------------------------------------------------------------------------------
// Issue 11, "Trust the gate": each attack performed, and refused, on both backends.

/// Run an async test case on both backends.
macro_rules! on_both_backends {
    ($case:ident) => {
        mod $case {
            #[tokio::test]
            async fn embedded() {
                super::$case(super::Backend::Embedded).await
            }
            #[tokio::test]
            async fn tables() {
                super::$case(super::Backend::Tables).await
            }
        }
    };
}

fn signatures(a: &Value) -> usize {
    a["signatures"].as_array().map_or(0, Vec::len)
}

/// 1. A callback with a linked approver's `user_name` and a foreign `user_id` is refused, as is
///    any callback whose only link is a name-only link of an earlier version.
async fn a_user_name_never_stands_for_a_user_id(backend: Backend) {
    let env = setup_with(backend, true, Server::None).await;
    let id = request(&env, "4601", "staging").await;
    let b = buttons(&env, &id).await;
    let tech = b["approve_technical"]["integration"]["context"].clone();
    // mallory (not linked) claims alice's name.
    let text = ephemeral(&callback(&env, &click_as(MALLORY_ID, "alice", &tech)).await);
    assert!(text.contains("not linked"), "{text}");
    assert!(text.contains(MALLORY_ID), "{text}");
    // A link by name from an earlier version, as it was stored then: grants nothing.
    let store = env.hub.app.store.as_ref();
    let now = Utc::now();
    let legacy = DocCommit {
        partition: icahub::identity::IDENTITIES.into(),
        writes: vec![
            DocWrite {
                key: "id|dave".into(),
                value: json!({"name": "dave", "roles": ["technical_approver"], "mattermost_user": "dave"}),
                expect: Expect::Absent,
            },
            DocWrite {
                key: "mm|name|dave".into(),
                value: json!({"identity": "dave", "linked_at": now, "by": "test"}),
                expect: Expect::Absent,
            },
        ],
        outbox: Vec::new(),
        record_id: "legacy".into(),
        now,
    };
    assert!(store.doc_commit(&legacy).await.unwrap());
    let text = ephemeral(&callback(&env, &click_as(MALLORY_ID, "dave", &tech)).await);
    assert!(text.contains("not linked"), "{text}");
    let a = get_approval(&env, &id).await;
    assert_eq!(a["status"], "pending");
    assert_eq!(signatures(&a), 0, "nothing signed: {a}");
    let partition = icahub::approvals::partition_of(&id).unwrap();
    let refusals = audits(&env, &partition, "mattermost.token_refused").await;
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals.iter().all(|r| r["reason"] == "unknown_user"));
    // alice's own id, with any name, works.
    let text = ephemeral(&callback(&env, &click_as(ALICE_ID, "whoever", &tech)).await);
    assert!(
        text.contains("Recorded") && text.contains("alice"),
        "{text}"
    );
}
on_both_backends!(a_user_name_never_stands_for_a_user_id);

async fn cli(args: &[&str], envs: &[(String, String)]) -> (bool, String) {
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_icahub"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("ICAHUB_LOG", "warn")
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// 1. `icahub roles link-mattermost NAME MM_USERNAME` resolves the name once through the API and
///    stores the id; without a server only `--user-id` works; name-only links are flagged.
async fn linking_by_name_stores_the_id_the_server_gives(backend: Backend) {
    let env = setup_with(backend, true, Server::None).await;
    env.dir
        .lock()
        .unwrap()
        .users
        .insert("erinuserid0000000000000000".into(), ("erin.s".into(), 0));
    let store = env.hub.app.store.as_ref();
    let with_server: Vec<(String, String)> = env
        .store_env
        .iter()
        .cloned()
        .chain([
            ("ICAHUB_MATTERMOST_URL".to_string(), env.mm.base.clone()),
            ("ICAHUB_MATTERMOST_TOKEN".to_string(), MM_TOKEN.to_string()),
        ])
        .collect();

    // No server: by name is refused, saying why and what to do instead.
    let (ok, out) = cli(
        &["roles", "link-mattermost", "erin", "erin.s"],
        &env.store_env,
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("ICAHUB_MATTERMOST_URL") && out.contains("--user-id"),
        "{out}"
    );
    assert!(icahub::identity::identity(store, "erin")
        .await
        .unwrap()
        .is_none());

    // With the server: the id it answers is what gets linked.
    let (ok, out) = cli(
        &["roles", "link-mattermost", "erin", "@Erin.S"],
        &with_server,
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("erinuserid0000000000000000"), "{out}");
    let lookup = env
        .mm
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v4/users/username/erin.s")
        .expect("the name was looked up");
    assert_eq!(
        lookup.header("authorization"),
        Some(format!("Bearer {MM_TOKEN}").as_str())
    );
    env.mm.assert_no_rejections();
    let rec = icahub::identity::by_mattermost(store, "erinuserid0000000000000000")
        .await
        .unwrap()
        .expect("linked by id");
    assert_eq!(rec.name, "erin");
    assert_eq!(rec.mattermost_username.as_deref(), Some("erin.s"));

    // Unknown names, a refused token: errors, nothing linked.
    let (ok, out) = cli(
        &["roles", "link-mattermost", "frank", "nobody"],
        &with_server,
    )
    .await;
    assert!(!ok && out.contains("no user named @nobody"), "{out}");
    let mut bad_token = with_server.clone();
    bad_token.last_mut().unwrap().1 = "stale-token".into();
    let (ok, out) = cli(&["roles", "link-mattermost", "frank", "erin.s"], &bad_token).await;
    assert!(!ok && out.contains("refused"), "{out}");
    assert!(
        !out.contains("stale-token"),
        "the token is never echoed: {out}"
    );
    assert!(icahub::identity::identity(store, "frank")
        .await
        .unwrap()
        .is_none());

    // By id without a server: linked as given.
    let (ok, out) = cli(
        &["roles", "link-mattermost", "frank", "--user-id", MALLORY_ID],
        &env.store_env,
    )
    .await;
    assert!(ok, "{out}");

    // A name-only link of an earlier version is flagged by `roles list`; re-linking replaces it.
    let now = Utc::now();
    let legacy = DocCommit {
        partition: icahub::identity::IDENTITIES.into(),
        writes: vec![DocWrite {
            key: "id|gina".into(),
            value: json!({"name": "gina", "roles": ["business_approver"], "mattermost_user": "erin.s"}),
            expect: Expect::Absent,
        }],
        outbox: Vec::new(),
        record_id: "legacy".into(),
        now,
    };
    assert!(store.doc_commit(&legacy).await.unwrap());
    let (ok, out) = cli(&["roles", "list"], &env.store_env).await;
    assert!(ok, "{out}");
    assert!(out.contains("NAME-ONLY LINK, GRANTS NOTHING"), "{out}");
    assert!(out.contains("re-link"), "{out}");
    let (ok, out) = cli(&["roles", "unlink-mattermost", "erin"], &env.store_env).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &["roles", "link-mattermost", "gina", "erin.s"],
        &with_server,
    )
    .await;
    assert!(ok, "{out}");
    let gina = icahub::identity::identity(store, "gina")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gina.mattermost_user, None);
    assert_eq!(
        gina.mattermost_user_id.as_deref(),
        Some("erinuserid0000000000000000")
    );
    let (_, out) = cli(&["roles", "list"], &env.store_env).await;
    assert!(!out.contains("NAME-ONLY"), "{out}");
}
on_both_backends!(linking_by_name_stores_the_id_the_server_gives);

/// Requests the hub made to the Mattermost REST API for the clicker's check.
fn api_checks(mm: &Receiver) -> usize {
    mm.requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/v4/users/") || r.path.starts_with("/api/v4/channels/"))
        .count()
}

/// 2. With a server configured, the clicker must exist, be active and be a member of the
///    callback's channel; a callback without a channel is refused.
async fn the_server_must_vouch_for_the_clicker(backend: Backend) {
    let env = setup_with(backend, true, Server::Up).await;
    let id = request(&env, "4701", "staging").await;
    let b = buttons(&env, &id).await;
    let tech = b["approve_technical"]["integration"]["context"].clone();
    let biz = b["approve_business"]["integration"]["context"].clone();
    {
        let mut d = env.dir.lock().unwrap();
        d.members
            .remove(&(CHANNEL.to_string(), ALICE_ID.to_string()));
        d.users.get_mut(BOB_ID).unwrap().1 = 1_700_000_000_000;
        d.users.remove(CAROL_ID);
    }
    let text = ephemeral(&callback(&env, &click_as(ALICE_ID, "alice", &tech)).await);
    assert!(text.contains("not a member of the channel"), "{text}");
    let text = ephemeral(&callback(&env, &click_by_id(BOB_ID, &biz)).await);
    assert!(text.contains("deactivated"), "{text}");
    let text = ephemeral(&callback(&env, &click_as(CAROL_ID, "carol", &tech)).await);
    assert!(text.contains("does not know the user"), "{text}");
    let mut no_channel = click_as(TESTER_ID, "tester", &tech);
    no_channel.as_object_mut().unwrap().remove("channel_id");
    let text = ephemeral(&callback(&env, &no_channel).await);
    assert!(text.contains("no channel id"), "{text}");
    // A dialog submission is checked the same way (alice is still out of the channel).
    let a = get_approval(&env, &id).await;
    let state = TokenKeys::new([SECRET]).unwrap().sign(&Claims {
        user_id: Some(ALICE_ID.into()),
        ..Claims::button(
            &id,
            Action::Reject,
            chrono::DateTime::parse_from_rfc3339(a["expires_at"].as_str().unwrap())
                .unwrap()
                .timestamp(),
            action_token::nonce([5; 16]),
        )
    });
    let mut sub = support::fixture_json("mattermost-dialog-submission-template.json");
    sub["state"] = json!(state);
    sub["user_id"] = json!(ALICE_ID);
    sub["channel_id"] = json!(CHANNEL);
    sub["submission"] = json!({"reason": "no"});
    let r = callback(&env, &sub).await;
    assert!(
        r.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a member")),
        "{}",
        r.text
    );
    let a = get_approval(&env, &id).await;
    assert_eq!(a["status"], "pending");
    assert_eq!(signatures(&a), 0, "nothing signed: {a}");
    let partition = icahub::approvals::partition_of(&id).unwrap();
    let reasons: HashSet<String> = audits(&env, &partition, "mattermost.token_refused")
        .await
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    for r in [
        "not_channel_member",
        "user_deactivated",
        "user_unknown",
        "no_channel",
    ] {
        assert!(reasons.contains(r), "{r} not audited: {reasons:?}");
    }
    env.mm.assert_no_rejections();
}
on_both_backends!(the_server_must_vouch_for_the_clicker);

/// 2. The answers are cached per user and channel for the TTL on the hub's clock; failures to
///    get an answer are refused and never cached.
async fn clicker_checks_are_cached_and_outages_refuse(backend: Backend) {
    let env = setup_with(backend, true, Server::Up).await;
    let id = request(&env, "4702", "staging").await;
    let b = buttons(&env, &id).await;
    let tech = b["approve_technical"]["integration"]["context"].clone();
    // carol has no role: her clicks pass the check and are refused by the rules.
    let carol = || click_as(CAROL_ID, "carol", &tech);
    let text = ephemeral(&callback(&env, &carol()).await);
    assert!(text.contains("technical_approver"), "{text}");
    let first = api_checks(&env.mm);
    assert_eq!(first, 2, "the user and the membership");
    ephemeral(&callback(&env, &carol()).await);
    assert_eq!(api_checks(&env.mm), first, "answered from the cache");
    // Deactivated: the cached answer stands until it expires, then the server is asked again.
    env.dir.lock().unwrap().users.get_mut(CAROL_ID).unwrap().1 = 1;
    env.clock.advance(Span::seconds(59));
    let text = ephemeral(&callback(&env, &carol()).await);
    assert!(text.contains("technical_approver"), "{text}");
    env.clock.advance(Span::seconds(1));
    let text = ephemeral(&callback(&env, &carol()).await);
    assert!(text.contains("deactivated"), "{text}");
    assert_eq!(api_checks(&env.mm), first + 2);

    // The server answers 5xx: refused, saying so, and not cached.
    env.mm.down(support::receiver::Reply::json(
        503,
        &json!({"id": "api.server.unavailable", "message": "unavailable", "status_code": 503}),
    ));
    let text = ephemeral(&callback(&env, &click_as(ALICE_ID, "alice", &tech)).await);
    assert!(text.contains("could not check your account"), "{text}");
    assert!(text.contains("nothing was signed"), "{text}");
    assert_eq!(get_approval(&env, &id).await["status"], "pending");
    env.mm.up();
    let text = ephemeral(&callback(&env, &click_as(ALICE_ID, "alice", &tech)).await);
    assert!(text.contains("Recorded"), "{text}");
    let partition = icahub::approvals::partition_of(&id).unwrap();
    assert!(audits(&env, &partition, "mattermost.token_refused")
        .await
        .iter()
        .any(|r| r["reason"] == "mattermost_unavailable"));
}
on_both_backends!(clicker_checks_are_cached_and_outages_refuse);

/// 2. A server that cannot be reached (connection refused): refused, never signed.
async fn an_unreachable_server_refuses_every_click(backend: Backend) {
    let env = setup_with(backend, true, Server::Closed).await;
    let id = request(&env, "4703", "staging").await;
    let b = buttons(&env, &id).await;
    let tech = b["approve_technical"]["integration"]["context"].clone();
    let text = ephemeral(&callback(&env, &click_as(ALICE_ID, "alice", &tech)).await);
    assert!(
        text.contains("could not check your account") && text.contains("cannot reach"),
        "{text}"
    );
    let a = get_approval(&env, &id).await;
    assert_eq!(a["status"], "pending");
    assert_eq!(signatures(&a), 0);
}
on_both_backends!(an_unreachable_server_refuses_every_click);

/// Every `token` string anywhere in `v`.
fn tokens_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("token", Value::String(t)) => out.push(t.clone()),
                    _ => tokens_in(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| tokens_in(x, out)),
        _ => {}
    }
}

/// Every token in every message posted to Mattermost.
fn posted_tokens(mm: &Receiver) -> HashSet<String> {
    let mut out = Vec::new();
    for r in mm
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/hooks/"))
    {
        tokens_in(&r.json(), &mut out);
    }
    out.into_iter().collect()
}

/// The update's buttons: action → token.
fn update_buttons(r: &Reply) -> HashMap<String, String> {
    r.json["update"]["props"]["attachments"][0]["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["integration"]["context"]["action"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                token_of(a),
            )
        })
        .collect()
}

/// 3. A click's update re-renders the remaining buttons with the very tokens posted, never new
///    ones; a token of an earlier version (no message group) gets an update without buttons.
async fn a_click_hands_out_only_tokens_that_were_posted(backend: Backend) {
    let env = setup_with(backend, true, Server::None).await;
    let id = request(&env, "4801", "staging").await;
    let b = buttons(&env, &id).await;
    let posted = posted_tokens(&env.mm);
    assert_eq!(posted.len(), 3, "{posted:?}");
    let tech = b["approve_technical"]["integration"]["context"].clone();
    let mut handed_out = Vec::new();

    let r = callback(&env, &click_as(ALICE_ID, "alice", &tech)).await;
    assert!(ephemeral(&r).contains("Recorded"));
    let left = update_buttons(&r);
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left["approve_business"], token_of(&b["approve_business"]));
    assert_eq!(left["reject"], token_of(&b["reject"]));
    tokens_in(&r.json, &mut handed_out);
    // The spent token, again (a replay), and a click refused by the rules.
    for cb in [
        click_as(ALICE_ID, "alice", &tech),
        click_as(
            CAROL_ID,
            "carol",
            &b["approve_business"]["integration"]["context"],
        ),
    ] {
        let r = callback(&env, &cb).await;
        ephemeral(&r);
        tokens_in(&r.json, &mut handed_out);
    }
    let r = callback(
        &env,
        &click_by_id(BOB_ID, &b["approve_business"]["integration"]["context"]),
    )
    .await;
    assert!(ephemeral(&r).contains("Status: approved"));
    assert!(update_buttons(&r).is_empty());
    tokens_in(&r.json, &mut handed_out);
    assert!(!handed_out.is_empty());
    for t in &handed_out {
        assert!(posted.contains(t), "a token that was never posted: {t}");
    }

    // A token of an earlier version: no group to re-derive from, so no buttons come back.
    let id2 = request(&env, "4802", "staging").await;
    buttons(&env, &id2).await;
    let a = get_approval(&env, &id2).await;
    let old = TokenKeys::new([SECRET]).unwrap().sign(&Claims::button(
        &id2,
        Action::ApproveTechnical,
        chrono::DateTime::parse_from_rfc3339(a["expires_at"].as_str().unwrap())
            .unwrap()
            .timestamp(),
        action_token::nonce([3; 16]),
    ));
    let r = callback(&env, &click_as(ALICE_ID, "alice", &json!({"token": old}))).await;
    assert!(ephemeral(&r).contains("Recorded"), "{}", r.text);
    assert!(update_buttons(&r).is_empty(), "{}", r.text);
    assert!(r.json["update"]["props"]["attachments"][0]["text"]
        .as_str()
        .unwrap()
        .contains("earlier icahub version"));
    let mut none = Vec::new();
    tokens_in(&r.json, &mut none);
    assert!(none.is_empty(), "{none:?}");
}
on_both_backends!(a_click_hands_out_only_tokens_that_were_posted);

/// The refusal summaries of Mattermost callbacks in the store (this minute's flushed first).
async fn mattermost_refusals(env: &Env) -> Vec<Value> {
    support::refusal_summaries(&env.hub.app)
        .await
        .into_iter()
        .filter(|s| s["group"] == "mattermost")
        .collect()
}

/// Each kind as often as it was counted.
fn kinds_of(summaries: &[Value]) -> Vec<String> {
    let mut kinds = Vec::new();
    for s in summaries {
        for _ in 0..s["count"].as_u64().unwrap_or(0) {
            kinds.push(s["kind"].as_str().unwrap_or("").to_string());
        }
    }
    kinds.sort();
    kinds
}

/// Every document of a partition, and their total serialized size.
async fn partition_size(env: &Env, partition: &str) -> (usize, usize) {
    let docs = env.hub.app.store.doc_list(partition, "").await.unwrap();
    let bytes = docs.iter().map(|d| d.value.to_string().len()).sum();
    (docs.len(), bytes)
}

/// 4. A flood of maximal-size unauthenticated callbacks adds nothing to the approvals
///    partitions, and a bounded amount (each entry's caller-supplied fields cut) elsewhere.
async fn a_flood_of_refused_callbacks_stays_small_and_out_of_the_approvals(backend: Backend) {
    const N: usize = 60;
    let env = setup_with(backend, true, Server::None).await;
    let id = request(&env, "4901", "staging").await;
    let b = buttons(&env, &id).await;
    let token = token_of(&b["approve_technical"]);
    let partition = icahub::approvals::partition_of(&id).unwrap();
    let security = icahub::http::auth::SECURITY;
    let registry = icahub::approvals::REGISTRY;
    let before = (
        partition_size(&env, registry).await,
        partition_size(&env, &partition).await,
        partition_size(&env, security).await,
    );
    let big = |c: char, i: usize| format!("{i}{}", c.to_string().repeat(4095));
    for i in 0..N {
        // A forged token claiming the approval, and caller-sized fields.
        let (payload, _) = token.split_once('.').unwrap();
        let mut cb = click_as(
            ALICE_ID,
            "alice",
            &json!({"token": format!("{payload}.{}", "A".repeat(43))}),
        );
        cb["user_id"] = json!(big('u', i));
        cb["user_name"] = json!(big('n', i));
        cb["channel_id"] = json!(big('c', i));
        cb["post_id"] = json!(big('p', i));
        let text = ephemeral(&callback(&env, &cb).await);
        assert!(text.contains("not valid"), "{text}");
    }
    assert_eq!(
        partition_size(&env, registry).await,
        before.0,
        "registry untouched"
    );
    assert_eq!(
        partition_size(&env, &partition).await,
        before.1,
        "approval untouched"
    );
    // Unauthenticated noise is counted, per kind and minute, in one summary record.
    let summaries = mattermost_refusals(&env).await;
    assert_eq!(kinds_of(&summaries).len(), N, "{summaries:?}");
    let (docs, bytes) = partition_size(&env, security).await;
    let (added_docs, added) = (docs - before.2 .0, bytes - before.2 .1);
    assert!(added_docs <= 2, "{added_docs} records for {N} refusals");
    assert!(
        added < 2_000,
        "{added} bytes for {N} refusals of ~20 KB each"
    );
    assert_eq!(get_approval(&env, &id).await["status"], "pending");
}
on_both_backends!(a_flood_of_refused_callbacks_stays_small_and_out_of_the_approvals);
