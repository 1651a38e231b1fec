//! Local HTTP receivers standing in for Mattermost, PagerDuty, the ICA control plane and Azure
//! DevOps (the check callback). Each records every request and checks it the way the real service
//! does (PROTOCOLS.md §4, §5.1, §6; the control plane verifies its bearer token and Standard
//! Webhooks signature). A request the
//! real service would refuse gets the real service's error answer and is listed in
//! [`Receiver::rejections`]; an accepted one gets the next scripted [`Reply`], or the service's
//! success answer when the script is empty.

use bytes::Bytes;
use icahub::sinks::signature::{self, SigningKey};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The raw query string, `""` when there is none.
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// An answer to give.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply::new(status, body.to_string()).header("content-type", "application/json")
    }
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The personal access token the fake Mattermost accepts on `GET /api/v4/users/me`.
pub const MATTERMOST_TOKEN: &str = "mmtoken1234567890abcdefgh";

/// `Ok(success answer)` or `Err((reason, error answer))`.
type Check = dyn Fn(&Recorded) -> Result<Reply, (String, Reply)> + Send + Sync;

struct State {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Reply>>,
    /// While set, every accepted request gets this answer (an outage).
    down: Mutex<Option<Reply>>,
    /// Time taken before answering (a slow service).
    delay: Mutex<std::time::Duration>,
    rejections: Mutex<Vec<String>>,
    /// How many requests have been recorded; [`Receiver::wait_until`] waits on its changes.
    seen: tokio::sync::watch::Sender<usize>,
    check: Box<Check>,
}

pub struct Receiver {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Receiver {
    async fn start(check: Box<Check>) -> Receiver {
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            down: Mutex::new(None),
            delay: Mutex::new(std::time::Duration::ZERO),
            rejections: Mutex::new(Vec::new()),
            seen: tokio::sync::watch::channel(0).0,
            check,
        });
        let st = state.clone();
        let route = warp::method()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(
                move |method: Method,
                      path: warp::path::FullPath,
                      query: String,
                      headers: HeaderMap,
                      body| {
                    let st = st.clone();
                    async move {
                        let delay = *st.delay.lock().unwrap();
                        if !delay.is_zero() {
                            // Simulates a slow service on purpose (`Receiver::slow`): this is
                            // the peer taking its time, not a test waiting for work.
                            tokio::time::sleep(delay).await;
                        }
                        handle(
                            &st,
                            Recorded {
                                method: method.to_string(),
                                path: path.as_str().to_string(),
                                query,
                                headers,
                                body,
                            },
                        )
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async {
                    let _ = rx.await;
                })
                .run(),
        );
        Receiver {
            base,
            state,
            shutdown: Some(tx),
        }
    }

    /// Mattermost incoming webhooks at `/hooks/<key>`, and `POST /api/v4/actions/dialogs/open`
    /// (interactive dialogs, PROTOCOLS.md §5.3).
    pub async fn mattermost() -> Receiver {
        Receiver::start(Box::new(|r: &Recorded| check_mattermost(r, None))).await
    }

    /// Like [`Receiver::mattermost`], and the REST API's user and channel-member reads answered
    /// from `dir` as Mattermost answers them: `Authorization: Bearer <dir.token>` required on
    /// every `/api/v4` call (401 otherwise), 404 Mattermost errors for unknown users and
    /// non-members. Change `dir` while the test runs (deactivate, remove from a channel).
    pub async fn mattermost_with(dir: Directory) -> Receiver {
        Receiver::start(Box::new(move |r: &Recorded| {
            check_mattermost(r, Some(&dir))
        }))
        .await
    }

    /// PagerDuty Events API v2 at `/v2/enqueue`.
    pub async fn pagerduty() -> Receiver {
        Receiver::start(Box::new(check_pagerduty)).await
    }

    /// The control plane: requires `Bearer <token>` when `token` is set, and a valid Standard
    /// Webhooks signature by one of `keys` when `keys` is not empty.
    pub async fn control_plane(token: Option<&str>, keys: Vec<SigningKey>) -> Receiver {
        let token = token.map(str::to_string);
        Receiver::start(Box::new(move |r: &Recorded| {
            check_control_plane(r, token.as_deref(), &keys)
        }))
        .await
    }

    /// Azure DevOps' plan events API (the check callback): `POST
    /// /{org}/{project}/_apis/distributedtask/hubs/{hub}/plans/{plan}/events?api-version=
    /// 2.0-preview.1` with `Bearer <token>` and a `TaskCompleted` body shaped like the sample.
    pub async fn azure_devops(token: &str) -> Receiver {
        let token = token.to_string();
        Receiver::start(Box::new(move |r: &Recorded| check_azure_devops(r, &token))).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Answer the next accepted requests with these, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Answer every accepted request with `reply` until [`Receiver::up`].
    pub fn down(&self, reply: Reply) {
        *self.state.down.lock().unwrap() = Some(reply);
    }

    pub fn up(&self) {
        *self.state.down.lock().unwrap() = None;
    }

    /// Take this long to answer each request.
    pub fn slow(&self, delay: std::time::Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Resolve once the requests received so far satisfy `cond` (looked at now and after each
    /// new request, never on a timer), and return them. Panics if that takes longer than the
    /// hang guard ([`super::wait::HANG_GUARD`]).
    pub async fn wait_until(
        &self,
        what: &str,
        cond: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        // Subscribe before looking, so a request arriving in between is not missed.
        let mut seen = self.state.seen.subscribe();
        super::wait::guarded(what, async {
            loop {
                let got = self.requests();
                if cond(&got) {
                    return got;
                }
                // The sender lives in `self.state`: it cannot be dropped while we wait.
                let _ = seen.changed().await;
            }
        })
        .await
    }

    /// Resolve once at least `n` requests have been received; return them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        self.wait_until(&format!("{n} request(s) at {}", self.base), |r| {
            r.len() >= n
        })
        .await
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("at least one request")
    }

    /// Why requests were refused, in order.
    pub fn rejections(&self) -> Vec<String> {
        self.state.rejections.lock().unwrap().clone()
    }

    pub fn assert_no_rejections(&self) {
        let r = self.rejections();
        assert!(r.is_empty(), "the receiver refused requests: {r:?}");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn handle(state: &State, req: Recorded) -> Response {
    let verdict = (state.check)(&req);
    let reply = match verdict {
        Err((reason, reply)) => {
            state.rejections.lock().unwrap().push(reason);
            reply
        }
        Ok(success) => match state.down.lock().unwrap().clone() {
            Some(outage) => outage,
            None => state.script.lock().unwrap().pop_front().unwrap_or(success),
        },
    };
    // Recorded after its rejection (if any), so a waiter that sees it sees why too.
    state.requests.lock().unwrap().push(req);
    state.seen.send_modify(|n| *n += 1);
    let mut resp = Response::new(reply.body.into());
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in reply.headers {
        resp.headers_mut().append(
            warp::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    resp
}

fn is_json(r: &Recorded) -> bool {
    r.header("content-type")
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"))
}

// ---------------------------------------------------------------------------------------------
// Mattermost

fn mm_error(reason: &str, id: &str, message: &str) -> Result<Reply, (String, Reply)> {
    Err((
        reason.to_string(),
        Reply::json(
            400,
            &json!({"id": id, "message": message, "detailed_error": "", "request_id": "r", "status_code": 400}),
        ),
    ))
}

/// `POST /api/v4/actions/dialogs/open` as Mattermost checks it (`OpenDialogRequest.IsValid`
/// and the dialog element rules): a trigger id, a URL, a dialog with a title of at most 24
/// characters, valid elements.
fn check_dialog_open(r: &Recorded, dir: Option<&Directory>) -> Result<Reply, (String, Reply)> {
    let bad = |why: &str| {
        mm_error(
            why,
            "interactive_message.decode_trigger_id.signature_decode_failed",
            why,
        )
    };
    if r.method != "POST" {
        return Err(("dialogs/open: not POST".into(), Reply::new(405, "")));
    }
    let token_ok = match dir {
        Some(d) => {
            r.header("authorization")
                == Some(format!("Bearer {}", d.lock().unwrap().token).as_str())
        }
        None => r
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7),
    };
    if !token_ok {
        return Err((
            "dialogs/open without a bearer token".into(),
            Reply::json(
                401,
                &json!({"id": "api.context.session_expired.app_error", "status_code": 401}),
            ),
        ));
    }
    let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(&r.body) else {
        return bad("dialogs/open body is not a JSON object");
    };
    fn string(v: Option<&Value>) -> Option<&str> {
        v.and_then(Value::as_str).filter(|s| !s.is_empty())
    }
    if string(b.get("trigger_id")).is_none() {
        return bad("dialogs/open without trigger_id");
    }
    if !string(b.get("url")).is_some_and(|u| u.starts_with("http://") || u.starts_with("https://"))
    {
        return bad("dialogs/open without an http(s) url");
    }
    let Some(d) = b.get("dialog").and_then(Value::as_object) else {
        return bad("dialogs/open without a dialog");
    };
    match string(d.get("title")) {
        Some(t) if t.chars().count() <= 24 => {}
        _ => return bad("dialog title missing or longer than 24 characters"),
    }
    let elements = d.get("elements").and_then(Value::as_array);
    for e in elements.into_iter().flatten() {
        let name_ok = string(e.get("name")).is_some();
        let display_ok = string(e.get("display_name")).is_some_and(|n| n.chars().count() <= 24);
        let ty = e.get("type").and_then(Value::as_str).unwrap_or("");
        let max_ok = e
            .get("max_length")
            .is_none_or(|m| m.as_u64().is_some_and(|m| m <= 3000));
        if !name_ok
            || !display_ok
            || !["text", "textarea", "select", "bool", "radio"].contains(&ty)
            || !max_ok
        {
            return bad("invalid dialog element");
        }
    }
    if d.get("state").is_some_and(|s| !s.is_string()) {
        return bad("dialog state is not a string");
    }
    Ok(Reply::json(200, &json!({"status": "OK"})))
}

/// `attachments[].actions[]` as Mattermost validates them (PROTOCOLS.md §5.2).
fn check_actions(a: &serde_json::Map<String, Value>) -> Result<(), String> {
    for act in a
        .get("actions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(act) = act.as_object() else {
            return Err("action is not an object".into());
        };
        if act
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err("action without a name".into());
        }
        if let Some(id) = act.get("id") {
            if !id
                .as_str()
                .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_alphanumeric()))
            {
                return Err("action id must be letters and digits".into());
            }
        }
        if let Some(t) = act.get("type") {
            if !matches!(t.as_str(), Some("button" | "select")) {
                return Err("action type must be button or select".into());
            }
        }
        if let Some(style) = act.get("style").and_then(Value::as_str) {
            let named = ["default", "primary", "success", "good", "warning", "danger"];
            if !named.contains(&style) && !style.starts_with('#') {
                return Err("action style is not a known style or colour".into());
            }
        }
        let url = act
            .get("integration")
            .and_then(|i| i.get("url"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !(url.starts_with("http://")
            || url.starts_with("https://")
            || url.starts_with("/plugins/"))
        {
            return Err("action integration url must be http(s) or /plugins/".into());
        }
        if act
            .get("integration")
            .and_then(|i| i.get("context"))
            .is_some_and(|c| !c.is_object())
        {
            return Err("action integration context is not an object".into());
        }
    }
    Ok(())
}

/// The users and channel memberships a fake Mattermost server knows, and the token its API
/// accepts.
#[derive(Debug, Default)]
pub struct MmDirectory {
    pub token: String,
    /// user id → (user name, delete_at)
    pub users: std::collections::HashMap<String, (String, i64)>,
    /// (channel id, user id)
    pub members: std::collections::HashSet<(String, String)>,
}

pub type Directory = Arc<Mutex<MmDirectory>>;

impl MmDirectory {
    pub fn new(token: &str) -> Directory {
        Arc::new(Mutex::new(MmDirectory {
            token: token.into(),
            ..Default::default()
        }))
    }
}

fn mm_not_found(id: &str, message: &str) -> Reply {
    Reply::json(
        404,
        &json!({"id": id, "message": message, "detailed_error": "", "request_id": "r", "status_code": 404}),
    )
}

fn user_json(id: &str, name: &str, delete_at: i64) -> Value {
    json!({"id": id, "username": name, "delete_at": delete_at, "create_at": 1_700_000_000_000i64,
           "update_at": 1_700_000_000_000i64, "email": format!("{name}@example.com"),
           "nickname": "", "first_name": "", "last_name": "", "roles": "system_user", "locale": "en"})
}

/// The REST API reads, as Mattermost answers them (api4 `getUser`, `getUserByUsername`,
/// `getChannelMember`): session check first, then 404 for what does not exist.
fn check_mm_api(r: &Recorded, dir: &Directory) -> Option<Result<Reply, (String, Reply)>> {
    let rest = r.path.strip_prefix("/api/v4/")?;
    if rest == "actions/dialogs/open" || rest == "system/ping" {
        return None;
    }
    let d = dir.lock().unwrap();
    if r.header("authorization") != Some(format!("Bearer {}", d.token).as_str()) {
        return Some(Err((
            format!("{} without the API token", r.path),
            Reply::json(
                401,
                &json!({"id": "api.context.session_expired.app_error",
                        "message": "Invalid or expired session, please login again.",
                        "detailed_error": "", "request_id": "r", "status_code": 401}),
            ),
        )));
    }
    if r.method != "GET" {
        return Some(Err((
            format!("{} {}", r.method, r.path),
            Reply::new(405, ""),
        )));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let missing_user =
        || mm_not_found("app.user.missing_account.const", "Unable to find the user.");
    Some(Ok(match parts.as_slice() {
        ["users", "me"] => Reply::json(
            200,
            &user_json("icahubbotuserid00000000000", "icahub-bot", 0),
        ),
        ["users", "username", name] => match d.users.iter().find(|(_, (n, _))| n == name) {
            Some((id, (n, del))) => Reply::json(200, &user_json(id, n, *del)),
            None => missing_user(),
        },
        ["users", id] => match d.users.get(*id) {
            Some((n, del)) => Reply::json(200, &user_json(id, n, *del)),
            None => missing_user(),
        },
        ["channels", channel, "members", user] => {
            if d.members.contains(&(channel.to_string(), user.to_string())) {
                Reply::json(
                    200,
                    &json!({"channel_id": channel, "user_id": user, "roles": "channel_user",
                            "last_viewed_at": 0, "msg_count": 0, "mention_count": 0}),
                )
            } else {
                mm_not_found(
                    "app.channel.get_member.missing.app_error",
                    "No channel member found for that user ID and channel ID.",
                )
            }
        }
        _ => {
            return Some(Err((
                format!("unknown API path {}", r.path),
                mm_not_found(
                    "api.context.404.app_error",
                    "Sorry, we could not find the page.",
                ),
            )))
        }
    }))
}

fn check_mattermost(r: &Recorded, dir: Option<&Directory>) -> Result<Reply, (String, Reply)> {
    if let Some(verdict) = dir.and_then(|d| check_mm_api(r, d)) {
        return verdict;
    }
    if r.path == "/api/v4/actions/dialogs/open" {
        return check_dialog_open(r, dir);
    }
    // Read-only calls `icahub doctor` makes (they post nothing).
    if r.method == "GET" && r.path == "/api/v4/system/ping" {
        return Ok(Reply::json(200, &serde_json::json!({"status": "OK"})));
    }
    if r.method == "GET" && r.path == "/api/v4/users/me" {
        return match r.header("authorization") {
            Some(a) if a == format!("Bearer {MATTERMOST_TOKEN}") => Ok(Reply::json(
                200,
                &serde_json::json!({"id": "icahubbotuserid00000000000", "username": "icahub-bot", "delete_at": 0}),
            )),
            _ => Err((
                "users/me without the token".into(),
                Reply::json(
                    401,
                    &serde_json::json!({"id": "api.context.session_expired.app_error",
                        "message": "Invalid or expired session, please login again.",
                        "status_code": 401}),
                ),
            )),
        };
    }
    let key = r.path.strip_prefix("/hooks/").unwrap_or("");
    if r.method != "POST" || key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err((
            format!("{} {}: not a webhook", r.method, r.path),
            Reply::new(404, "404 page not found"),
        ));
    }
    if !is_json(r) {
        return mm_error(
            "no JSON content type",
            "web.incoming_webhook.parse.app_error",
            "Unable to parse incoming data.",
        );
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&r.body) else {
        return mm_error(
            "body is not a JSON object",
            "web.incoming_webhook.parse.app_error",
            "Unable to parse incoming data.",
        );
    };
    let text = body.get("text").and_then(Value::as_str).unwrap_or("");
    let attachments = body.get("attachments").and_then(Value::as_array);
    if text.is_empty() && attachments.is_none_or(|a| a.is_empty()) {
        return mm_error(
            "neither text nor attachments",
            "web.incoming_webhook.text.app_error",
            "No text specified.",
        );
    }
    for k in ["channel", "username", "icon_url", "icon_emoji", "text"] {
        if body.get(k).is_some_and(|v| !v.is_string()) {
            return mm_error(
                &format!("{k} is not a string"),
                "web.incoming_webhook.parse.app_error",
                "Unable to parse incoming data.",
            );
        }
    }
    if let Some(t) = body.get("type").and_then(Value::as_str) {
        if !t.starts_with("custom_") {
            return mm_error(
                "type must start with custom_",
                "api.incoming_webhook.invalid_type.app_error",
                "Invalid type.",
            );
        }
    }
    for a in attachments.into_iter().flatten() {
        let Some(a) = a.as_object() else {
            return mm_error(
                "attachment is not an object",
                "web.incoming_webhook.parse.app_error",
                "Unable to parse incoming data.",
            );
        };
        // Mattermost ignores `ts`; sending it means we expect something that will not happen.
        if a.contains_key("ts") {
            return mm_error(
                "attachment has ts, which Mattermost does not support",
                "test.unsupported_field",
                "ts is not supported",
            );
        }
        if let Err(why) = check_actions(a) {
            return mm_error(
                &why,
                "model.post.is_valid.action.app_error",
                "Invalid action.",
            );
        }
        for f in a
            .get("fields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !f.get("title").is_some_and(Value::is_string) {
                return mm_error(
                    "field without a string title",
                    "web.incoming_webhook.parse.app_error",
                    "Unable to parse incoming data.",
                );
            }
        }
    }
    Ok(Reply::new(200, "ok").header("content-type", "text/plain"))
}

// ---------------------------------------------------------------------------------------------
// PagerDuty

fn pd_invalid(errors: Vec<String>) -> Result<Reply, (String, Reply)> {
    Err((
        errors.join("; "),
        Reply::json(
            400,
            &json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
        ),
    ))
}

fn check_pagerduty(r: &Recorded) -> Result<Reply, (String, Reply)> {
    if r.method != "POST" || r.path != "/v2/enqueue" {
        return Err((
            format!("{} {}: not the events endpoint", r.method, r.path),
            Reply::new(404, ""),
        ));
    }
    let Ok(Value::Object(ev)) = serde_json::from_slice::<Value>(&r.body) else {
        return Err((
            "JSON parse error".into(),
            Reply::json(
                400,
                &json!({"status": "Unrecognized object", "message": "Event object format is unrecognized", "errors": ["JSON parse error"]}),
            ),
        ));
    };
    let mut errors = Vec::new();
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    match s(&Value::Object(ev.clone()), "routing_key") {
        Some(k) if k.chars().count() == 32 => {}
        Some(_) => {
            errors.push("Length of 'routing_key' is incorrect (should be 32 characters)".into())
        }
        None => errors.push("'routing_key' is missing or blank".into()),
    }
    let action = ev.get("event_action").and_then(Value::as_str).unwrap_or("");
    if !matches!(action, "trigger" | "acknowledge" | "resolve") {
        errors.push(
            "'event_action' is invalid (must be one of trigger, acknowledge, resolve)".into(),
        );
    }
    let dedup = ev.get("dedup_key").and_then(Value::as_str);
    if dedup.is_some_and(|d| d.chars().count() > 255) {
        errors.push("Length of 'dedup_key' is too long (maximum is 255 characters)".into());
    }
    if matches!(action, "acknowledge" | "resolve") && dedup.is_none_or(str::is_empty) {
        errors.push("'dedup_key' is missing or blank".into());
    }
    if action == "trigger" {
        match ev.get("payload") {
            Some(p @ Value::Object(_)) => {
                match s(p, "summary") {
                    Some(x) if !x.is_empty() && x.chars().count() <= 1024 => {}
                    Some(x) if !x.is_empty() => errors.push(
                        "Length of 'payload.summary' is too long (maximum is 1024 characters)"
                            .into(),
                    ),
                    _ => errors.push("'payload.summary' is missing or blank".into()),
                }
                if s(p, "source").is_none_or(|x| x.is_empty()) {
                    errors.push("'payload.source' is missing or blank".into());
                }
                match s(p, "severity").as_deref() {
                    Some("critical" | "error" | "warning" | "info") => {}
                    _ => errors.push(
                        "'payload.severity' is invalid (must be one of critical, error, warning, info)"
                            .into(),
                    ),
                }
                if p.get("custom_details").is_some_and(|c| !c.is_object()) {
                    errors.push("'payload.custom_details' must be an object".into());
                }
            }
            _ => errors.push("'payload' is missing or not an object".into()),
        }
    } else if ev.contains_key("client_url") {
        errors.push("'client_url' is only allowed on trigger events".into());
    }
    if !errors.is_empty() {
        return pd_invalid(errors);
    }
    let dedup = dedup
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    Ok(Reply::json(
        202,
        &json!({"status": "success", "message": "Event processed", "dedup_key": dedup}),
    ))
}

// ---------------------------------------------------------------------------------------------
// Control plane

fn check_control_plane(
    r: &Recorded,
    token: Option<&str>,
    keys: &[SigningKey],
) -> Result<Reply, (String, Reply)> {
    let refuse = |status: u16, reason: &str| {
        Err((
            reason.to_string(),
            Reply::json(status, &json!({"error": reason})),
        ))
    };
    if !r.path.contains("/api/v1/azdev/") {
        return refuse(404, "no such route");
    }
    // Authentication first, then the method (as the API's middleware does).
    if let Some(t) = token {
        if r.header("authorization") != Some(&format!("Bearer {t}")) {
            return refuse(401, "bad bearer token");
        }
    }
    if r.method != "POST" {
        return Err((
            format!("{} is not allowed", r.method),
            Reply::json(405, &json!({"error": "method not allowed"})),
        ));
    }
    if !is_json(r) {
        return refuse(415, "content type must be application/json");
    }
    let Some(idem) = r.header("idempotency-key").filter(|k| !k.is_empty()) else {
        return refuse(400, "Idempotency-Key is required");
    };
    if !keys.is_empty() {
        let (Some(id), Some(ts), Some(sig)) = (
            r.header("webhook-id"),
            r.header("webhook-timestamp"),
            r.header("webhook-signature"),
        ) else {
            return refuse(401, "missing webhook-* headers");
        };
        if id != idem {
            return refuse(400, "webhook-id differs from Idempotency-Key");
        }
        let now = chrono::Utc::now().timestamp();
        if let Err(e) = signature::verify(
            keys,
            id,
            ts,
            sig,
            &r.body,
            now,
            signature::DEFAULT_TOLERANCE,
        ) {
            return refuse(401, &format!("signature: {e}"));
        }
    }
    if serde_json::from_slice::<Value>(&r.body).is_err() {
        return refuse(400, "body is not JSON");
    }
    Ok(Reply::json(202, &json!({"accepted": true})))
}

// ---------------------------------------------------------------------------------------------
// Azure DevOps (plan events: the check callback)

fn check_azure_devops(r: &Recorded, token: &str) -> Result<Reply, (String, Reply)> {
    let refuse = |status: u16, reason: String| {
        Err((
            reason.clone(),
            Reply::json(
                status,
                &json!({"$id": "1", "innerException": null, "message": reason, "typeKey": "TestRefusal"}),
            ),
        ))
    };
    if r.method != "POST" {
        return refuse(405, format!("{} is not POST", r.method));
    }
    if r.path.contains("//") {
        return refuse(404, format!("{}: double slash in the path", r.path));
    }
    let segs: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    let shape = segs.len() == 9
        && segs[2] == "_apis"
        && segs[3] == "distributedtask"
        && segs[4] == "hubs"
        && segs[6] == "plans"
        && segs[8] == "events";
    if !shape {
        return refuse(404, format!("{}: not a plan events path", r.path));
    }
    if r.query != "api-version=2.0-preview.1" {
        return refuse(400, format!("query {:?}: wrong api-version", r.query));
    }
    if r.header("authorization") != Some(&format!("Bearer {token}")) {
        return refuse(401, "bad bearer token".into());
    }
    if !is_json(r) {
        return refuse(415, "content type must be application/json".into());
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&r.body) else {
        return refuse(400, "body is not a JSON object".into());
    };
    let sample =
        serde_json::from_slice::<Value>(&super::fixture("ado-check-taskcompleted-event.json"))
            .expect("sample");
    let mut want: Vec<&String> = sample.as_object().unwrap().keys().collect();
    let mut got: Vec<&String> = body.keys().collect();
    want.sort();
    got.sort();
    if want != got {
        return refuse(400, format!("body fields {got:?}, expected {want:?}"));
    }
    if body["name"] != "TaskCompleted" {
        return refuse(400, format!("name {}", body["name"]));
    }
    if !matches!(body["result"].as_str(), Some("succeeded" | "failed")) {
        return refuse(400, format!("result {}", body["result"]));
    }
    if !body["taskId"].is_string() || !body["jobId"].is_string() {
        return refuse(400, "taskId and jobId must be strings".into());
    }
    Ok(Reply::new(204, ""))
}
