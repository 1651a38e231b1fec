//! The strict JSON parser (duplicate keys refused, `icahub::domain::json::parse_strict`) beside
//! serde_json's own parser into a `Value`, on the bodies the hub parses most: a 2 KB Azure
//! Monitor metric alert and a sample Alertmanager webhook. Prints, per body, the median time per
//! parse of each over alternating rounds and their ratio (this machine is noisy: compare the
//! ratio, not the times). Run with `cargo bench --bench json`.

use std::hint::black_box;
use std::time::Instant;

const ROUNDS: usize = 9;

fn time(iters: usize, f: &dyn Fn()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this once as a smoke test.
    let iters = if std::env::args().any(|a| a == "--bench") {
        20_000
    } else {
        1
    };
    let alert = icahub::cli::bench::azure_alert(1, 1, true).to_string();
    let am = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/alertmanager-webhook-v4.json"
    ))
    .expect("the Alertmanager fixture");
    println!(
        "{:<22} {:>7} {:>14} {:>14} {:>7}",
        "body", "bytes", "serde_json ns", "strict ns", "ratio"
    );
    for (name, body) in [("azure metric alert", &alert), ("alertmanager", &am)] {
        let (mut plain, mut strict) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            plain.push(time(iters, &|| {
                black_box(serde_json::from_str::<serde_json::Value>(black_box(body)).unwrap());
            }));
            strict.push(time(iters, &|| {
                black_box(icahub::domain::json::parse_strict(black_box(body)).unwrap());
            }));
        }
        let (p, s) = (median(plain), median(strict));
        println!(
            "{name:<22} {:>7} {p:>14.0} {s:>14.0} {:>7.2}",
            body.len(),
            s / p
        );
    }
}
