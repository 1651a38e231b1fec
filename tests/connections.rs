//! Connections cannot be held hostage (issue 11): with a cap of 4 connections and 1 s timeouts,
//! twice the cap in slow connections (half sending a partial request head, half nothing) do not
//! stop `GET /api/healthz` from being answered once the server drops them; every slow socket is
//! seen closed by the server (a read returns EOF), a body that never finishes gets a 408 JSON
//! error, and a keep-alive connection left idle is closed. No sleeps: the test waits for the
//! server's closes and answers; the outer timeouts only turn a hang into a failure.

mod support;

use icahub::config::{Config, ConnectionLimits};
use std::time::Duration;
use support::hub::TestHub;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CAP: usize = 4;
/// A hang becomes a failure after this (far above the 1 s timeouts under test).
const BOUND: Duration = Duration::from_secs(60);

async fn hub() -> TestHub {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.connections = ConnectionLimits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_connections: CAP,
    };
    let mut h = TestHub::start(config).await;
    h.keep(dir);
    h
}

fn addr(hub: &TestHub) -> String {
    hub.base.trim_start_matches("http://").to_string()
}

/// Everything the server sends until it closes the connection.
async fn until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut out))
        .await
        .expect("the server never closed the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_connections_over_the_cap_are_dropped_and_healthz_is_answered() {
    let hub = hub().await;
    let mut slow = Vec::new();
    for i in 0..2 * CAP {
        let mut s = TcpStream::connect(addr(&hub)).await.unwrap();
        if i % 2 == 0 {
            // A request head that never ends (slowloris).
            s.write_all(b"GET /api/healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
                .await
                .unwrap();
        }
        slow.push(s);
    }
    // A valid request, queued behind them: answered once they are dropped by their timeouts.
    let r = tokio::time::timeout(BOUND, hub.get("/api/healthz"))
        .await
        .expect("healthz was never answered");
    assert_eq!(r.status, 200, "{}", r.text);
    // Every slow connection was closed by the server, with no answer to a request never sent.
    for (i, s) in slow.iter_mut().enumerate() {
        let got = until_closed(s).await;
        assert!(
            !got.starts_with("HTTP/1.1 200"),
            "slow connection {i}: {got}"
        );
    }
    // And the hub still serves new connections.
    assert_eq!(hub.get("/api/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_gets_408_and_an_idle_keep_alive_connection_is_closed() {
    let hub = hub().await;
    let mut s = TcpStream::connect(addr(&hub)).await.unwrap();
    let head = format!(
        "POST /api/v1/azdev/alert HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         authorization: Bearer {}\r\ncontent-length: 1000\r\n\r\n{{\"data\": ",
        hub.key
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let got = until_closed(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    let body = got.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON error");
    assert_eq!(v["error"]["code"], "request_timeout", "{got}");
    assert_eq!(hub.app.store.count_events().await.unwrap(), 0);

    // One request answered on a keep-alive connection, then nothing: the server closes it.
    let mut s = TcpStream::connect(addr(&hub)).await.unwrap();
    s.write_all(b"GET /api/healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = until_closed(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}
