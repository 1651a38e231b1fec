//! Every input the fuzz targets (`fuzz/`, `scripts/fuzz.sh`) ever crashed on, kept under
//! `tests/fixtures/fuzz/<target>/`, run again through the same entry points (`fuzz/src/lib.rs`,
//! included here) on stable Rust: none may panic. Inputs the hub must refuse are also checked for
//! a clean refusal.

#[path = "../fuzz/src/lib.rs"]
mod entries;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz")
}

/// (target, file name) of every stored input, sorted.
fn stored_inputs() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(fixtures()).expect("tests/fixtures/fuzz") {
        let dir = dir.expect("a directory entry").path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        for f in std::fs::read_dir(&dir).expect("a target's inputs") {
            let f = f.expect("a directory entry").path();
            if f.is_file() && f.file_name().is_some_and(|n| n != "README.md") {
                out.push((name.clone(), f));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn no_stored_input_panics() {
    let inputs = stored_inputs();
    let mut panics = Vec::new();
    for (target, path) in &inputs {
        let f = entries::target(target)
            .unwrap_or_else(|| panic!("tests/fixtures/fuzz/{target}: no fuzz target of that name"));
        let data = std::fs::read(path).expect("the stored input");
        if catch_unwind(AssertUnwindSafe(|| f(&data))).is_err() {
            panics.push(path.display().to_string());
        }
    }
    assert!(panics.is_empty(), "these inputs panic: {panics:#?}");
}

#[test]
fn every_target_has_a_fuzz_binary_and_seeds() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in entries::TARGETS {
        assert!(
            fuzz.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{name}.rs"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "[[bin]] {name}"
        );
        let seeds = std::fs::read_dir(fuzz.join("corpus").join(name))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("seed-"))
                    .count()
            })
            .unwrap_or(0);
        assert!(seeds > 0, "fuzz/corpus/{name}/seed-*");
    }
}

#[test]
fn the_seeds_run_clean() {
    // The seeds are real payloads: the targets accept them (or refuse them as the hub does),
    // without a panic, so a broken harness shows up here rather than as a fuzzing "crash".
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, f) in entries::TARGETS {
        for e in std::fs::read_dir(corpus.join(name)).expect("seeds") {
            let p = e.expect("a directory entry").path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            {
                let data = std::fs::read(&p).expect("a seed");
                let _ = catch_unwind(AssertUnwindSafe(|| f(&data)))
                    .unwrap_or_else(|_| panic!("{} panics", p.display()));
            }
        }
    }
}

fn run(target: &str, file: &str) -> entries::Outcome {
    let f = entries::target(target).expect("a known target");
    let data = std::fs::read(fixtures().join(target).join(file)).expect("the stored input");
    f(&data)
}

#[test]
fn a_check_that_could_never_be_called_back_is_refused_naming_plan_url() {
    // Accepted (200) before, then every TaskCompleted failed to build its URL, so the pipeline
    // waited for the check's timeout; `%2e%2e` sent the callback to another path of the host.
    for file in [
        "plan-url-port-out-of-range",
        "plan-url-bracket-in-host",
        "plan-url-bad-punycode-label",
        "plan-url-encoded-dot-dot",
    ] {
        let e = run("azdo_check", file).expect_err(file);
        assert!(e.starts_with("PlanUrl "), "{file}: {e}");
        assert!(
            !e.contains("eyJ0eXAi"),
            "{file}: the AuthToken is never echoed"
        );
    }
}

#[test]
fn thousands_of_signature_entries_cost_one_body_hash_per_key() {
    // 4,000 bogus `v1,` entries and a 64 KiB body: the body was hashed once per entry and key
    // (a libFuzzer timeout at the 512 KiB body limit); now once per key.
    let started = std::time::Instant::now();
    let e = run("webhook_signature", "timeout-thousands-of-v1-entries").expect_err("no match");
    assert_eq!(e, "no signature matches");
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_signed_token_without_kid_is_refused() {
    // The target once checked the claims whatever the header said, and asserted that a token
    // whose claims pass had a usable header: this one (RS256, signed with the tenant's key, `kid`
    // mutated into `cty`) does not. The hub refuses it before any key is chosen.
    let e = run("entra_token", "crash-signed-token-without-kid").expect_err("refused");
    assert!(e.contains("no kid"), "{e}");
}
