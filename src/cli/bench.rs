//! `icahub bench`: a load generator for a running hub, and a start-up timer for `icahub serve`.
//!
//! Load: N connections each post realistic Azure Monitor (or Alertmanager) alerts back to back
//! for a fixed time; every alert is distinct (its own alertId), so each 202 is a durable write.
//! Prints accepted/s, latency percentiles and errors by status.

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Payload {
    /// Azure Monitor common-schema metric alerts (80% fired, 20% resolved).
    Azure,
    /// Alertmanager webhooks with one firing alert each.
    Alertmanager,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  icahub bench --url http://127.0.0.1:7071 --concurrency 16 --duration 10\n  \
icahub bench --startup   (time from spawning `icahub serve` to its first 202, embedded store)"
)]
pub struct BenchArgs {
    /// Base URL of the hub.
    #[arg(long, default_value = "http://127.0.0.1:7071")]
    pub url: String,
    /// Concurrent connections, each sending one request at a time.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds, not counted.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Distinct alert rules/resources to spread alerts over (incident streams).
    #[arg(long, default_value_t = 2000)]
    pub streams: usize,
    #[arg(long, value_enum, default_value_t = Payload::Azure)]
    pub payload: Payload,
    /// Instead of load: time `icahub serve` from spawn to its first 202, this many times.
    #[arg(long)]
    pub startup: bool,
    /// Instead of load: spawn a hub wired to a local Mattermost receiver, post alerts at `--rate`
    /// per second, and measure from each 202 to the arrival of its Mattermost message.
    #[arg(long)]
    pub e2e: bool,
    /// Alerts per second for `--e2e`.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    #[arg(long, default_value_t = 10)]
    pub startup_runs: usize,
    /// Instead of alerts: spawn a hub on the configured storage and push this many pipeline runs
    /// (start, three events, finish) through `--concurrency` clients, then approvals (see
    /// `--approvals`); prints p50/p95/p99 per request kind and checks nothing was lost.
    #[arg(long, value_name = "RUNS")]
    pub pipelines: Option<usize>,
    /// Instead of load: fill a fresh embedded store with this many audited records, then time
    /// `icahub audit export` and `icahub audit verify` on it and report their peak memory.
    #[arg(long, value_name = "RECORDS")]
    pub audit_records: Option<usize>,
    /// With `--pipelines`: how many of the runs also ask for an approval that two approvers sign.
    #[arg(long, default_value_t = 500)]
    pub approvals: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// API key to send (the hub requires one unless ICAHUB_AUTH=off).
    #[arg(long, env = "ICAHUB_BENCH_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

/// A realistic common-schema metric alert, distinct per `n`.
pub fn azure_alert(n: u64, streams: usize, fired: bool) -> Value {
    let s = n as usize % streams.max(1);
    json!({
      "schemaId": "azureMonitorCommonAlertSchema",
      "data": {
        "essentials": {
          "alertId": format!("/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/providers/Microsoft.AlertsManagement/alerts/{}", uuid::Uuid::new_v4()),
          "alertRule": format!("cpu-high-{s}"),
          "severity": format!("Sev{}", s % 5),
          "signalType": "Metric",
          "monitorCondition": if fired { "Fired" } else { "Resolved" },
          "monitoringService": "Platform",
          "alertTargetIDs": [format!("/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/bench-rg/providers/microsoft.compute/virtualmachines/vm-{s}")],
          "configurationItems": [format!("vm-{s}")],
          "originAlertId": format!("bench_{n}"),
          "firedDateTime": "2026-11-22T10:00:00.123Z",
          "description": "CPU above 90% for 5 minutes",
          "essentialsVersion": "1.0",
          "alertContextVersion": "1.0"
        },
        "alertContext": {
          "properties": null,
          "conditionType": "SingleResourceMultipleMetricCriteria",
          "condition": {
            "windowSize": "PT5M",
            "allOf": [{
              "metricName": "Percentage CPU",
              "metricNamespace": "Microsoft.Compute/virtualMachines",
              "operator": "GreaterThan",
              "threshold": "90",
              "timeAggregation": "Average",
              "dimensions": [{"name": "ResourceId", "value": format!("vm-{s}")}],
              "metricValue": 97.5
            }],
            "windowStartTime": "2026-11-22T09:55:00.000Z",
            "windowEndTime": "2026-11-22T10:00:00.000Z"
          }
        },
        "customProperties": {"team": "platform", "bench": "true"}
      }
    })
}

/// [`azure_alert`] as text with markers, filled in by substitution.
struct Template(String);

impl Template {
    const ID: &'static str = "00000000-feed-feed-feed-000000000000";

    fn new() -> Self {
        let mut v = azure_alert(0, 1, true);
        let e = &mut v["data"]["essentials"];
        e["alertId"] = json!(format!(
            "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/providers/Microsoft.AlertsManagement/alerts/{}",
            Self::ID
        ));
        e["alertRule"] = json!("cpu-high-@S@");
        e["severity"] = json!("Sev@V@");
        e["monitorCondition"] = json!("@C@");
        e["alertTargetIDs"] = json!(["/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/bench-rg/providers/microsoft.compute/virtualmachines/vm-@S@"]);
        e["configurationItems"] = json!(["vm-@S@"]);
        Template(v.to_string())
    }

    fn fill(&self, n: u64, streams: usize, fired: bool) -> Vec<u8> {
        let s = n as usize % streams.max(1);
        self.0
            .replace(Self::ID, &uuid::Uuid::new_v4().to_string())
            .replace("@S@", &s.to_string())
            .replace("@V@", &(s % 5).to_string())
            .replace("@C@", if fired { "Fired" } else { "Resolved" })
            .into_bytes()
    }
}

fn alertmanager_alert(n: u64, streams: usize) -> Value {
    let s = n as usize % streams.max(1);
    json!({
      "receiver": "icahub", "status": "firing",
      "alerts": [{
        "status": "firing",
        "labels": {"alertname": "InstanceDown", "instance": format!("node{s}:9100"), "job": "node", "severity": "critical"},
        "annotations": {"summary": format!("Instance node{s}:9100 down")},
        "startsAt": format!("2026-11-22T10:00:{:02}.{:09}Z", n % 60, n),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up+%3D%3D+0&g0.tab=1",
        "fingerprint": format!("{:016x}", n)
      }],
      "groupLabels": {"alertname": "InstanceDown"},
      "commonLabels": {"alertname": "InstanceDown", "job": "node"},
      "commonAnnotations": {},
      "externalURL": "http://alertmanager:9093",
      "version": "4",
      "groupKey": "{}:{alertname=\"InstanceDown\"}",
      "truncatedAlerts": 0
    })
}

struct WorkerResult {
    latencies_us: Vec<u64>,
    statuses: BTreeMap<String, u64>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.startup {
        return startup(args).await;
    }
    if args.e2e {
        return e2e(args).await;
    }
    if let Some(n) = args.audit_records {
        return super::bench_audit::run(args, n).await;
    }
    if let Some(runs) = args.pipelines {
        return super::bench_pipelines::run(args, runs).await;
    }
    let base = args.url.trim_end_matches('/').to_string();
    let target = match args.payload {
        Payload::Azure => format!("{base}/api/v1/azdev/alert"),
        Payload::Alertmanager => format!("{base}/api/v1/alertmanager"),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = &args.key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {k}").parse()?,
        );
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    // Fail fast with a clear message when nothing listens there.
    client
        .get(format!("{base}/"))
        .send()
        .await
        .with_context(|| format!("no hub answers at {base} (start one with `icahub serve`)"))?;

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let template = Arc::new(Template::new());
    for w in 0..args.concurrency {
        let (client, target, measuring, stop) = (
            client.clone(),
            target.clone(),
            measuring.clone(),
            stop.clone(),
        );
        let azure_template = template.clone();
        let (payload, streams) = (args.payload, args.streams);
        handles.push(tokio::spawn(async move {
            let mut res = WorkerResult {
                latencies_us: Vec::with_capacity(100_000),
                statuses: BTreeMap::new(),
            };
            let mut n = (w as u64) << 40;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Bodies come from a template by string substitution: the load generator shares
                // the machine with the hub, so it should spend as little CPU as it can.
                let body = match payload {
                    Payload::Azure => azure_template.fill(n, streams, n % 5 != 0),
                    Payload::Alertmanager => {
                        serde_json::to_vec(&alertmanager_alert(n, streams)).unwrap_or_default()
                    }
                };
                let t = Instant::now();
                let status = match client
                    .post(&target)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => {
                        let s = r.status().as_u16().to_string();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(e) if e.is_timeout() => "timeout".to_string(),
                    Err(_) => "connection error".to_string(),
                };
                if measuring.load(Ordering::Relaxed) {
                    res.latencies_us.push(t.elapsed().as_micros() as u64);
                    *res.statuses.entry(status).or_default() += 1;
                }
            }
            res
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.duration);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end - Instant::now())).await;
        if !args.json {
            eprint!(
                "\r  measuring... {:.0}/{:.0} s",
                started.elapsed().as_secs_f64(),
                args.duration
            );
        }
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if !args.json {
        eprintln!();
    }

    let mut lat = Vec::new();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for h in handles {
        let r = h.await?;
        lat.extend(r.latencies_us);
        for (k, v) in r.statuses {
            *statuses.entry(k).or_default() += v;
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (lat.len() - 1) as f64).round() as usize;
        lat[i] as f64 / 1000.0
    };
    let accepted = statuses.get("202").copied().unwrap_or(0);
    let sent: u64 = statuses.values().sum();
    let errors = sent - accepted;
    let result = json!({
        "target": target,
        "concurrency": args.concurrency,
        "seconds": elapsed,
        "sent": sent,
        "accepted": accepted,
        "errors": errors,
        "statuses": statuses,
        "accepted_per_s": accepted as f64 / elapsed,
        "latency_ms": {"p50": pct(50.0), "p90": pct(90.0), "p99": pct(99.0), "max": pct(100.0)},
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "target {target}\nconcurrency {}  measured {elapsed:.1} s after {:.1} s warm-up",
            args.concurrency, args.warmup
        );
        println!("sent {sent}  accepted (202) {accepted}  errors {errors}  by status {statuses:?}");
        println!("accepted/s {:.0}", accepted as f64 / elapsed);
        println!(
            "latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            pct(50.0),
            pct(90.0),
            pct(99.0),
            pct(100.0)
        );
    }
    Ok(())
}

/// Spawn `icahub serve` on a free port with a fresh embedded store (or whatever storage the
/// environment configures), and time spawn → first 202 on the alert route.
async fn startup(args: BenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    for run in 0..args.startup_runs {
        let dir = tempfile_dir(run)?;
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}/api/v1/azdev/alert");
        let body = serde_json::to_vec(&azure_alert(run as u64, 10, true))?;
        let t = Instant::now();
        let mut child = tokio::process::Command::new(&exe)
            .args(["serve", "--port", &port.to_string()])
            .env("ICAHUB_DATA_DIR", &dir)
            .env("ICAHUB_LOG", "warn")
            // A throwaway local hub: measuring start-up, not authentication.
            .env("ICAHUB_AUTH", "off")
            .kill_on_drop(true)
            .spawn()
            .context("spawning icahub serve")?;
        let elapsed = loop {
            if t.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("icahub serve did not answer 202 within 30 s");
            }
            if let Ok(r) = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
            {
                if r.status().as_u16() == 202 {
                    break t.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        };
        let _ = child.kill().await;
        let _ = std::fs::remove_dir_all(&dir);
        times.push(elapsed.as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let max = times[times.len() - 1];
    if args.json {
        println!(
            "{}",
            json!({"runs": times.len(), "start_to_first_202_ms": {"median": median, "max": max, "all": times}})
        );
    } else {
        println!(
            "start to first 202 over {} runs: median {median:.1} ms, max {max:.1} ms",
            times.len()
        );
    }
    Ok(())
}

fn tempfile_dir(run: usize) -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("icahub-bench-startup-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// End-to-end latency: 202 → the Mattermost message at a local receiver. Each alert opens its
/// own incident (its own rule), so each produces exactly one message naming its incident id.
async fn e2e(args: BenchArgs) -> anyhow::Result<()> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use warp::Filter;

    type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let rx = arrivals.clone();
    let receiver = warp::post()
        .and(warp::body::bytes())
        .map(move |body: bytes::Bytes| {
            let at = Instant::now();
            let text = String::from_utf8_lossy(&body);
            if let Some(i) = text.find("INC-") {
                let id: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if let Ok(mut m) = rx.lock() {
                    m.entry(id).or_insert(at);
                }
            }
            "ok"
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hooks/bench", listener.local_addr()?);
    tokio::spawn(warp::serve(receiver).incoming(listener).run());

    let exe = std::env::current_exe()?;
    let dir = tempfile_dir(9999)?;
    let port = free_port()?;
    let mut child = tokio::process::Command::new(&exe)
        .args(["serve", "--port", &port.to_string()])
        .env("ICAHUB_DATA_DIR", &dir)
        .env("ICAHUB_STORAGE", "embedded")
        .env("ICAHUB_MATTERMOST_WEBHOOK_URL", &hook)
        .env_remove("ICAHUB_CONTROL_PLANE_URL")
        .env_remove("ICAHUB_PAGERDUTY_ROUTING_KEY")
        .env("ICAHUB_LOG", "warn")
        // A throwaway local hub: measuring fan-out, not authentication.
        .env("ICAHUB_AUTH", "off")
        .kill_on_drop(true)
        .spawn()
        .context("spawning icahub serve")?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let t0 = Instant::now();
    while client.get(format!("{base}/")).send().await.is_err() {
        if t0.elapsed() > Duration::from_secs(20) {
            anyhow::bail!("the hub did not start");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let total = (args.rate as f64 * args.duration) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let acked: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..total {
        // Open-loop pacing: send at the scheduled time whatever the previous answers did.
        let due = start + interval.mul_f64(n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let (client, url, acked, errors) = (
            client.clone(),
            format!("{base}/api/v1/azdev/alert"),
            acked.clone(),
            errors.clone(),
        );
        let mut body = azure_alert(n, usize::MAX, true);
        body["data"]["essentials"]["alertRule"] = json!(format!("e2e-{n}"));
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 202 => {
                    let at = Instant::now();
                    let v: Value = r.json().await.unwrap_or_default();
                    if let Some(id) = v["events"][0]["incident_id"].as_str() {
                        if let Ok(mut m) = acked.lock() {
                            m.insert(id.to_string(), at);
                        }
                    }
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let sent_in = start.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    // Let the last messages arrive.
    let settle = Instant::now();
    loop {
        let (a, r) = (
            acked.lock().map(|m| m.len()).unwrap_or(0),
            arrivals.lock().map(|m| m.len()).unwrap_or(0),
        );
        if r >= a || settle.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);

    let acked = acked.lock().map(|m| m.clone()).unwrap_or_default();
    let arrivals = arrivals.lock().map(|m| m.clone()).unwrap_or_default();
    let mut lat: Vec<f64> = acked
        .iter()
        .filter_map(|(id, t202)| {
            arrivals
                .get(id)
                .map(|a| a.saturating_duration_since(*t202).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((p / 100.0) * (lat.len() - 1) as f64).round() as usize]
        }
    };
    let result = json!({
        "rate_per_s": args.rate,
        "sent": total,
        "send_seconds": sent_in.as_secs_f64(),
        "accepted": acked.len(),
        "errors": errors.load(Ordering::Relaxed),
        "arrived": lat.len(),
        "latency_202_to_mattermost_ms": {"p50": pct(50.0), "p90": pct(90.0), "p99": pct(99.0), "max": pct(100.0)},
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "e2e: {total} alerts at {}/s (sent in {:.1} s), accepted {}, errors {}, arrived at Mattermost {}",
            args.rate,
            sent_in.as_secs_f64(),
            acked.len(),
            errors.load(Ordering::Relaxed),
            lat.len()
        );
        println!(
            "202 → Mattermost ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            pct(50.0),
            pct(90.0),
            pct(99.0),
            pct(100.0)
        );
    }
    Ok(())
}
