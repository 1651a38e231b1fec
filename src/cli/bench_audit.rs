//! `icahub bench --audit-records N`: fill a fresh embedded store with N audited records, then
//! time `icahub audit export` and `icahub audit verify` on it as separate processes, with their
//! peak memory (VmHWM from /proc, sampled while they run).

use super::bench::BenchArgs;
use crate::storage::{DocCommit, DocWrite, Expect};
use anyhow::Context;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records per partition: a realistic spread (runs and approvals are small partitions).
const PER_PARTITION: usize = 1000;

pub async fn run(args: BenchArgs, n: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "icahub-bench-audit-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let config = crate::config::Config::embedded(&dir);
    let store = crate::startup::open_store(&config).await?;
    eprintln!(
        "filling {} with {n} records ({PER_PARTITION} per partition)...",
        dir.display()
    );
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (store, next) = (store.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, crate::storage::StoreError>(());
                }
                let now = chrono::Utc::now();
                let event_type = ["build", "test", "deploy"][i % 3];
                let value = json!({
                    "run_id": format!("bench-{}", i / PER_PARTITION), "seq": i % PER_PARTITION,
                    "event_type": event_type, "pipeline_name": format!("pipeline-{}", i % 50),
                    "event_data": {"stage": "prod", "duration_ms": i % 9000, "agent": "ubuntu-latest"},
                    "by": "bench@contoso.com", "received_at": now,
                    "chain_hash": "4f9a1c3e5b7d9f0a2c4e6b8d0f1a3c5e7b9d1f3a5c7e9b0d2f4a6c8e0b1d3f5a",
                });
                let c = DocCommit {
                    partition: format!("bench{}", i / PER_PARTITION),
                    writes: vec![DocWrite { key: format!("event|{:08}", i % PER_PARTITION), value, expect: Expect::Absent }],
                    outbox: Vec::new(),
                    record_id: format!("bench-{i}"),
                    now,
                };
                store.doc_commit(&c).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    drop(store);
    let fill = started.elapsed().as_secs_f64();
    eprintln!("filled in {fill:.1} s ({:.0} records/s)", n as f64 / fill);

    let exe = std::env::current_exe()?;
    let out = dir.join("trail.ndjson");
    let measure = |args: Vec<String>| {
        let exe = exe.clone();
        let dir = dir.clone();
        async move {
            let t = Instant::now();
            let mut child = tokio::process::Command::new(&exe)
                .args(&args)
                .env("ICAHUB_STORAGE", "embedded")
                .env("ICAHUB_DATA_DIR", &dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("spawning icahub")?;
            let pid = child.id().unwrap_or(0);
            let mut peak_kb = 0u64;
            let status = loop {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(v) = s.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
                        peak_kb = peak_kb
                            .max(v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0));
                    }
                }
                if let Some(st) = child.try_wait()? {
                    break st;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            anyhow::ensure!(
                status.success(),
                "icahub {} failed: {status}",
                args.join(" ")
            );
            Ok::<_, anyhow::Error>((t.elapsed().as_secs_f64(), peak_kb as f64 / 1024.0))
        }
    };
    let (export_s, export_mb) = measure(vec![
        "audit".into(),
        "export".into(),
        "--out".into(),
        out.display().to_string(),
    ])
    .await?;
    let size_mb = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let (verify_s, verify_mb) = measure(vec!["audit".into(), "verify".into()]).await?;
    let result = json!({
        "records": n, "fill_seconds": fill,
        "export_seconds": export_s, "export_peak_mb": export_mb, "export_file_mb": size_mb,
        "verify_seconds": verify_s, "verify_peak_mb": verify_mb,
        "data_dir": dir,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{n} records in {} partitions of {PER_PARTITION} (embedded store)",
            n.div_ceil(PER_PARTITION)
        );
        println!("audit export (ndjson): {export_s:.1} s, peak memory {export_mb:.0} MB, file {size_mb:.0} MB");
        println!("audit verify:          {verify_s:.1} s, peak memory {verify_mb:.0} MB");
        println!(
            "(data left in {} for a second look; delete it when done)",
            dir.display()
        );
    }
    Ok(())
}
