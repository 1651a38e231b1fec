//! Waiting for things the tests cannot be told about: another process listening on a port,
//! exiting, or writing a file. Work inside the test's own process is awaited, never polled:
//! [`super::hub::TestHub::idle`] for the dispatcher's fast path, [`super::receiver::Receiver::wait_until`]
//! for a request to arrive.
//!
//! The bounds are hang guards, not expectations: a healthy run takes a small fraction of them,
//! and a busy machine only makes the wait longer.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a test waits for any one event before it fails as hung.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// How often a condition outside this process is looked at again. There is no notification
/// for "a child process now listens" or "a file now holds this line", so these are polled.
const POLL: Duration = Duration::from_millis(20);

/// Resolve once `cond` holds; panic naming `what` after [`HANG_GUARD`].
pub async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !cond().await {
        assert!(
            started.elapsed() < HANG_GUARD,
            "timed out after {HANG_GUARD:?} waiting for {what}"
        );
        // Polling an event outside this process (see POLL), not waiting for time to pass.
        tokio::time::sleep(POLL).await;
    }
}

/// [`until`] for code that is not async (a `Drop`, a helper started before the runtime).
pub fn until_blocking(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while !cond() {
        if started.elapsed() >= bound {
            eprintln!("gave up after {bound:?} waiting for {what}");
            return false;
        }
        // Polling an event outside this process (see POLL), not waiting for time to pass.
        std::thread::sleep(POLL);
    }
    true
}

/// Resolve once something answers HTTP on `url` (a child process has started listening).
pub async fn answers(url: &str) {
    let client = reqwest::Client::new();
    until(&format!("an answer on {url}"), || {
        let r = client.get(url).send();
        async move { r.await.is_ok() }
    })
    .await;
}

/// Await `f`, panicking naming `what` if it takes longer than [`HANG_GUARD`].
pub async fn guarded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {HANG_GUARD:?} waiting for {what}"))
}
