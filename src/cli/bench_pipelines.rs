//! `icahub bench --pipelines N`: the run ledger and approvals under load. Spawns `icahub serve`
//! on the storage the environment configures (point it at Azurite or Azure with
//! `ICAHUB_STORAGE=tables` and a connection string), makes three identities with keys (pipeline,
//! technical and business approver) directly in that store, then:
//!
//! 1. pushes N pipeline runs (start, three events, finish) through `--concurrency` clients in a
//!    burst, and reads every run back to check nothing was lost;
//! 2. asks for one approval per run (up to `--approvals`), then signs each technical and
//!    business half with the same concurrency.
//!
//! It prints p50/p95/p99 per request kind, throughput and what was lost (should be nothing).

use super::bench::BenchArgs;
use crate::domain::identity::Role;
use anyhow::Context;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Samples {
    by_kind: Mutex<BTreeMap<&'static str, Vec<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Samples {
    fn record(&self, kind: &'static str, us: u64) {
        if let Ok(mut m) = self.by_kind.lock() {
            m.entry(kind).or_default().push(us);
        }
    }
    fn error(&self, what: String) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(what).or_default() += 1;
        }
    }
    fn summary(&self) -> Value {
        let mut out = serde_json::Map::new();
        if let Ok(mut m) = self.by_kind.lock() {
            for (kind, v) in m.iter_mut() {
                v.sort_unstable();
                let pct = |p: f64| {
                    let i = ((p / 100.0) * (v.len().saturating_sub(1)) as f64).round() as usize;
                    v.get(i).copied().unwrap_or(0) as f64 / 1000.0
                };
                out.insert(
                    kind.to_string(),
                    json!({"count": v.len(), "p50_ms": pct(50.0), "p95_ms": pct(95.0),
                           "p99_ms": pct(99.0), "max_ms": pct(100.0)}),
                );
            }
        }
        Value::Object(out)
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    samples: Arc<Samples>,
}

impl Client {
    /// One request; 2xx answers are timed under `kind`, anything else is counted as an error.
    async fn call(
        &self,
        kind: &'static str,
        key: &str,
        path: &str,
        body: Option<Value>,
    ) -> Option<Value> {
        let url = format!("{}{path}", self.base);
        let req = match &body {
            Some(b) => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(b.to_string()),
            None => self.http.get(url),
        };
        let t = Instant::now();
        match req.bearer_auth(key).send().await {
            Ok(r) if r.status().is_success() => {
                let v = r.json::<Value>().await.ok();
                self.samples.record(kind, t.elapsed().as_micros() as u64);
                v
            }
            Ok(r) => {
                self.samples
                    .error(format!("{kind} {}", r.status().as_u16()));
                None
            }
            Err(e) => {
                self.samples.error(format!(
                    "{kind} {}",
                    if e.is_timeout() {
                        "timeout"
                    } else {
                        "connection error"
                    }
                ));
                None
            }
        }
    }
}

/// Run `job(i)` for i in 0..n on `concurrency` workers, showing progress.
async fn fan_out<F, Fut>(label: &str, n: usize, concurrency: usize, quiet: bool, job: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, done, job) = (next.clone(), done.clone(), job.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                job(i).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let all = futures::future::join_all(workers);
    tokio::pin!(all);
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if !quiet {
                    eprint!("\r  {label}: {}/{n}", done.load(Ordering::Relaxed));
                }
            }
        }
    }
    if !quiet {
        eprintln!("\r  {label}: {n}/{n}");
    }
}

pub async fn run(args: BenchArgs, runs: usize) -> anyhow::Result<()> {
    let config = crate::config::Config::from_env(None)?;
    let backend = match &config.storage {
        crate::config::StorageConfig::Embedded { dir } => format!("embedded ({})", dir.display()),
        crate::config::StorageConfig::Tables { table_prefix, .. }
        | crate::config::StorageConfig::TablesIdentity { table_prefix, .. } => {
            format!("azure_tables (prefix {table_prefix})")
        }
    };
    // Identities and keys, made directly in the store the hub will use.
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let store = crate::startup::open_store(&config).await?;
    let now = chrono::Utc::now();
    let mut keys = Vec::new();
    for (name, role) in [
        (format!("bench-pipeline-{tag}"), Role::Devops),
        (format!("bench-tech-{tag}"), Role::TechnicalApprover),
        (format!("bench-biz-{tag}"), Role::BusinessApprover),
    ] {
        let (key, _) = crate::identity::issue_key(store.as_ref(), &name, "bench", now).await?;
        crate::identity::set_role(store.as_ref(), &name, role, true, "bench", now).await?;
        keys.push(key);
    }
    drop(store);
    let (pipeline, tech, biz) = (keys[0].clone(), keys[1].clone(), keys[2].clone());

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--port", &port.to_string()])
        .env("ICAHUB_LOG", "warn")
        .env("ICAHUB_DISPATCH_INTERVAL_SECS", "0")
        .kill_on_drop(true)
        .spawn()
        .context("spawning icahub serve")?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let t0 = Instant::now();
    while http.get(format!("{base}/")).send().await.is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the hub did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let samples = Arc::new(Samples::default());
    let client = Arc::new(Client {
        http,
        base,
        samples: samples.clone(),
    });
    let quiet = args.json;
    let c = args.concurrency;
    if !quiet {
        eprintln!("backend {backend}; {runs} runs, {c} clients");
    }

    // 1. The burst: start, three events, finish per run.
    let run_id = {
        let tag = tag.to_string();
        move |i: usize| format!("bench-{tag}-{i}")
    };
    let started = Instant::now();
    {
        let (client, pipeline, run_id) = (client.clone(), pipeline.clone(), run_id.clone());
        fan_out("runs", runs, c, quiet, move |i| {
            let (client, key, id) = (client.clone(), pipeline.clone(), run_id(i));
            async move {
                let start = json!({"pipeline_name": format!("bench-pipeline-{}", i % 20), "run_id": id,
                                   "branch": "refs/heads/main", "commit": "9f2c1e7", "triggered_by": "bench@contoso.com"});
                if client
                    .call("run/start", &key, "/api/v1/azdev/run/start", Some(start))
                    .await
                    .is_none()
                {
                    return;
                }
                for t in ["build", "test", "deploy"] {
                    let e = json!({"run_id": id, "event_type": t, "event_data": {"step": t}});
                    client
                        .call("run/event", &key, "/api/v1/azdev/run/event", Some(e))
                        .await;
                }
                let f = json!({"run_id": id, "status": "success", "end_time": "2026-11-22T12:00:00Z"});
                client
                    .call("run/finish", &key, "/api/v1/azdev/run/finish", Some(f))
                    .await;
            }
        })
        .await;
    }
    let burst_secs = started.elapsed().as_secs_f64();

    // Read every run back: finished, with its three events.
    let lost = Arc::new(AtomicUsize::new(0));
    {
        let (client, pipeline, run_id, lost) = (
            client.clone(),
            pipeline.clone(),
            run_id.clone(),
            lost.clone(),
        );
        fan_out("verify", runs, c, quiet, move |i| {
            let (client, key, id, lost) =
                (client.clone(), pipeline.clone(), run_id(i), lost.clone());
            async move {
                let v = client
                    .call("run/get", &key, &format!("/api/v1/azdev/run/{id}"), None)
                    .await;
                let ok = v.is_some_and(|v| {
                    v["status"] == "success" && v["events"].as_array().is_some_and(|e| e.len() == 3)
                });
                if !ok {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    }

    // 2. Approvals: one per run (up to --approvals), then both halves signed.
    let n_appr = args.approvals.min(runs);
    let ids: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; n_appr]));
    {
        let (client, pipeline, run_id, ids) = (
            client.clone(),
            pipeline.clone(),
            run_id.clone(),
            ids.clone(),
        );
        fan_out("approval requests", n_appr, c, quiet, move |i| {
            let (client, key, id, ids) = (client.clone(), pipeline.clone(), run_id(i), ids.clone());
            async move {
                let body = json!({"run_id": id, "deployment_target": format!("bench-env-{i}"),
                                  "estimated_cost": 10, "checklist": ["bench"]});
                if let Some(v) = client
                    .call(
                        "approval/create",
                        &key,
                        "/api/v1/azdev/approval",
                        Some(body),
                    )
                    .await
                {
                    if let (Some(a), Ok(mut ids)) = (v["approval_id"].as_str(), ids.lock()) {
                        ids[i] = Some(a.to_string());
                    }
                }
            }
        })
        .await;
    }
    let ids: Arc<Vec<Option<String>>> = Arc::new(ids.lock().map(|v| v.clone()).unwrap_or_default());
    for (half, key) in [("technical", tech.clone()), ("business", biz.clone())] {
        let (client, ids) = (client.clone(), ids.clone());
        fan_out(&format!("{half} signatures"), n_appr, c, quiet, move |i| {
            let (client, key, ids) = (client.clone(), key.clone(), ids.clone());
            async move {
                if let Some(id) = &ids[i] {
                    let body =
                        json!({"approval_type": half, "decision": "approved", "comments": "bench"});
                    client
                        .call(
                            "approval/sign",
                            &key,
                            &format!("/api/v1/azdev/approval/{id}/sign"),
                            Some(body),
                        )
                        .await;
                }
            }
        })
        .await;
    }
    let approved = Arc::new(AtomicUsize::new(0));
    {
        let (client, ids, approved, key) = (
            client.clone(),
            ids.clone(),
            approved.clone(),
            pipeline.clone(),
        );
        fan_out("verify approvals", n_appr, c, quiet, move |i| {
            let (client, ids, approved, key) =
                (client.clone(), ids.clone(), approved.clone(), key.clone());
            async move {
                if let Some(id) = &ids[i] {
                    if let Some(v) = client
                        .call(
                            "approval/get",
                            &key,
                            &format!("/api/v1/azdev/approval/{id}"),
                            None,
                        )
                        .await
                    {
                        if v["status"] == "approved" {
                            approved.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
        .await;
    }
    let _ = child.kill().await;

    let errors = samples.errors.lock().map(|m| m.clone()).unwrap_or_default();
    let result = json!({
        "backend": backend,
        "concurrency": c,
        "runs": runs,
        "burst_seconds": burst_secs,
        "runs_per_s": runs as f64 / burst_secs,
        "requests_per_s": (runs * 5) as f64 / burst_secs,
        "runs_lost": lost.load(Ordering::Relaxed),
        "approvals": n_appr,
        "approvals_approved": approved.load(Ordering::Relaxed),
        "errors": errors,
        "latency": samples.summary(),
    });
    if args.json {
        println!("{result}");
    } else {
        println!("backend {backend}, {c} concurrent clients");
        println!(
            "{runs} runs (start, 3 events, finish) in {burst_secs:.1} s: {:.0} runs/s, {:.0} requests/s; lost {}",
            runs as f64 / burst_secs,
            (runs * 5) as f64 / burst_secs,
            lost.load(Ordering::Relaxed)
        );
        println!(
            "{n_appr} approvals requested and signed twice; approved at the end: {}",
            approved.load(Ordering::Relaxed)
        );
        println!("errors: {errors:?}");
        println!(
            "{:<18} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "request", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"
        );
        if let Some(m) = result["latency"].as_object() {
            for (k, v) in m {
                println!(
                    "{k:<18} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                    v["count"],
                    v["p50_ms"].as_f64().unwrap_or(0.0),
                    v["p95_ms"].as_f64().unwrap_or(0.0),
                    v["p99_ms"].as_f64().unwrap_or(0.0),
                    v["max_ms"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    if lost.load(Ordering::Relaxed) > 0 {
        anyhow::bail!(
            "{} runs were not found complete after the burst",
            lost.load(Ordering::Relaxed)
        );
    }
    Ok(())
}
