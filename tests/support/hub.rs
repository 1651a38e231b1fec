//! The hub under test: in-process (`TestHub`) or as a child process (`ChildHub`).

use icahub::config::Config;
use icahub::startup::{bind, serve, App};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub struct TestHub {
    pub base: String,
    pub app: Arc<App>,
    /// Sends the test key with every request.
    pub client: reqwest::Client,
    /// An API key of "tester", who holds every role.
    pub key: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestHub {
    /// The hub on a fresh embedded store in a temporary directory.
    pub async fn embedded() -> TestHub {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = Config::embedded(dir.path());
        let mut hub = TestHub::start(cfg).await;
        hub._dir = Some(dir);
        hub
    }

    pub async fn start(config: Config) -> TestHub {
        let sinks = icahub::sinks::Sinks::from_lookup(&|_| None).expect("no sinks");
        TestHub::start_with(config, sinks, Arc::new(icahub::clock::SystemClock)).await
    }

    /// The hub with these sinks and this clock.
    pub async fn start_with(
        config: Config,
        sinks: icahub::sinks::Sinks,
        clock: Arc<dyn icahub::clock::Clock>,
    ) -> TestHub {
        let listener = bind("127.0.0.1", 0).await.expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = App::build_with(config, sinks, clock)
            .await
            .expect("app builds");
        // A key for "tester", holding every role, sent with every request of `client`.
        let now = chrono::Utc::now();
        let (key, _) = icahub::identity::issue_key(app.store.as_ref(), "tester", "test", now)
            .await
            .expect("issue key");
        for role in icahub::domain::identity::Role::ALL {
            icahub::identity::set_role(app.store.as_ref(), "tester", role, true, "test", now)
                .await
                .expect("grant role");
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(app.clone(), listener, async {
            let _ = rx.await;
        }));
        TestHub {
            base,
            app,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(headers)
                .build()
                .unwrap(),
            key,
            shutdown: Some(tx),
            task: Some(task),
            _dir: None,
        }
    }

    /// Keep `dir` (the store's directory) alive as long as the hub.
    #[allow(dead_code)]
    pub fn keep(&mut self, dir: tempfile::TempDir) {
        self._dir = Some(dir);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Resolves once the dispatcher's fast path has done what it would do: no delivery a
    /// request kicked is queued or in flight ([`icahub::dispatcher::Dispatcher::idle`]). Await
    /// this, not a sleep, before looking at what the receivers got or at the outbox.
    pub async fn idle(&self) {
        super::wait::guarded(
            "the dispatcher's fast path to go idle",
            self.app.dispatcher.idle(),
        )
        .await;
    }

    /// POST a JSON body as bytes, exactly as given.
    pub async fn post_json(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        Reply::read(r).await
    }

    /// A person with an API key and these roles (issued straight into the store).
    pub async fn person(&self, name: &str, roles: &[icahub::domain::identity::Role]) -> String {
        let now = chrono::Utc::now();
        let store = self.app.store.as_ref();
        let (key, _) = icahub::identity::issue_key(store, name, "test", now)
            .await
            .expect("issue key");
        for r in roles {
            icahub::identity::set_role(store, name, *r, true, "test", now)
                .await
                .expect("grant role");
        }
        key
    }

    /// The audit notes of `partition` whose `action` is this.
    pub async fn audit_notes(&self, partition: &str, action: &str) -> Vec<serde_json::Value> {
        self.app
            .store
            .doc_list(partition, "audit|")
            .await
            .expect("audit notes")
            .into_iter()
            .map(|d| d.value)
            .filter(|v| v["action"] == action)
            .collect()
    }

    /// POST a JSON body with another caller's key.
    pub async fn post_as(&self, key: &str, path: &str, body: &serde_json::Value) -> Reply {
        let r = reqwest::Client::new()
            .post(self.url(path))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(body.to_string())
            .send()
            .await
            .expect("request sent");
        Reply::read(r).await
    }

    /// An emergency override, both signatures: an admin asks, an override approver confirms
    /// (two identities made for it, neither the requester).
    pub async fn override_approval(&self, id: &str, reason: &str) -> Reply {
        use icahub::domain::identity::Role;
        let admin = self.person("override-admin", &[Role::Admin]).await;
        let second = self
            .person("override-confirmer", &[Role::OverrideApprover])
            .await;
        let path = format!("/api/v1/azdev/approval/{id}/override");
        let body = serde_json::json!({ "reason": reason });
        let first = self.post_as(&admin, &path, &body).await;
        if first.status != 200 {
            return first;
        }
        self.post_as(&second, &path, &body).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent");
        Reply::read(r).await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// A response read whole: status, headers and JSON body (Null when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: serde_json::Value,
    pub text: String,
}

impl Reply {
    pub async fn read(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Reply {
            status,
            headers,
            json,
            text,
        }
    }

    /// Assert a JSON error with this status; returns the error object.
    pub fn expect_error(&self, status: u16) -> &serde_json::Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        let err = &self.json["error"];
        assert_eq!(err["status"], status, "body: {}", self.text);
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        err
    }
}

/// `icahub serve` as a child process, for crash and start-up tests.
pub struct ChildHub {
    pub child: std::process::Child,
    pub port: u16,
}

impl ChildHub {
    /// Spawn the real binary with these extra environment variables and wait until `/` answers.
    pub async fn spawn(envs: &[(&str, String)]) -> ChildHub {
        ChildHub::spawn_on(free_port(), envs).await
    }

    /// Like [`ChildHub::spawn`], on a given port (to restart a hub where its clients expect it).
    pub async fn spawn_on(port: u16, envs: &[(&str, String)]) -> ChildHub {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_icahub"));
        cmd.args(["serve", "--port", &port.to_string()])
            .env("ICAHUB_LOG", "warn")
            // Crash and start-up tests are not about authentication.
            .env("ICAHUB_AUTH", "off")
            .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
            .env_remove("AzureWebJobsStorage")
            .env_remove("ICAHUB_TABLES_CONNECTION_STRING");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn icahub");
        let mut hub = ChildHub { child, port };
        let (client, url) = (reqwest::Client::new(), hub.url("/"));
        let mut exited = None;
        super::wait::until(&format!("icahub serve to answer on port {port}"), || {
            exited = exited.or_else(|| hub.child.try_wait().ok().flatten());
            let gone = exited.is_some();
            let answer = client.get(&url).send();
            async move { gone || answer.await.is_ok() }
        })
        .await;
        if let Some(status) = exited {
            panic!("icahub serve exited before answering on port {port}: {status}");
        }
        hub
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn kill9(&mut self) {
        // SIGKILL: no graceful shutdown, no flushing.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
