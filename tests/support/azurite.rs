//! Test support: one Azurite Table service per test binary, started on a free port with
//! in-memory persistence, and the connection string and unique table prefixes to use with it.
//!
//! The binary is `<repo>/node_modules/.bin/azurite-table` (installed by `npm ci`), else
//! `$AZURITE_TABLE`, else `azurite-table` on `PATH`. If none exists the calling test fails:
//! the Table Storage tests must never be skipped silently.
//!
//! Azurite is stopped when the test process exits: it runs under a small `sh` wrapper that
//! kills it once its stdin (a pipe held by this process) closes, because a `static` is never
//! dropped. A value made with [`Azurite::start`] also kills it on drop.
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The Azurite shared by all tests of this binary (started on first use).
pub fn shared() -> &'static Azurite {
    static AZURITE: OnceLock<Azurite> = OnceLock::new();
    AZURITE.get_or_init(Azurite::start)
}

/// Connection string for the shared Azurite (account key + explicit TableEndpoint).
pub fn connection_string() -> String {
    shared().connection_string()
}

/// A table prefix unique within this process and across runs: letters and digits only.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(20)
        .collect();
    format!("t{clean}{}x", N.fetch_add(1, Ordering::Relaxed))
}

fn find_binary() -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node_modules/.bin/azurite-table");
    if local.exists() {
        return local;
    }
    if let Some(p) = std::env::var_os("AZURITE_TABLE").map(PathBuf::from) {
        if p.exists() {
            return p;
        }
        panic!("AZURITE_TABLE={} does not exist", p.display());
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("azurite-table");
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "azurite-table not found: run `npm ci` in {} (it installs Azurite into node_modules), \
         or set AZURITE_TABLE to the azurite-table binary",
        env!("CARGO_MANIFEST_DIR")
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free local port")
        .port()
}

impl Azurite {
    /// Start a fresh Azurite and wait until it accepts connections (panics if it cannot).
    pub fn start() -> Azurite {
        let bin = find_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = dir.path().join("azurite.log");
        let args = [
            "--tableHost".to_string(),
            "127.0.0.1".into(),
            "--tablePort".into(),
            port.to_string(),
            "--inMemoryPersistence".into(),
            "--skipApiVersionCheck".into(),
            "--disableTelemetry".into(),
            "--silent".into(),
            "--loose".into(),
        ];
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = if cfg!(unix) {
            // Kill Azurite when our end of the wrapper's stdin closes (this process exits);
            // the wrapper itself exits with Azurite, so a failed start is seen at once.
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(concat!(
                    r#"exec 3<&0; "$@" </dev/null & pid=$!; "#,
                    r#"(cat <&3 >/dev/null; kill $pid 2>/dev/null) & wait $pid"#
                ))
                .arg("sh")
                .arg(&bin)
                .args(&args);
            c
        } else {
            let mut c = Command::new(&bin);
            c.args(&args);
            c
        };
        let mut child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut exited = None;
        let up = super::wait::until_blocking("Azurite to listen", super::wait::HANG_GUARD, || {
            exited = child.try_wait().ok().flatten();
            exited.is_some() || TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up || exited.is_some() {
            let mut text = String::new();
            let _ = std::fs::File::open(&log).map(|mut f| f.read_to_string(&mut text));
            let _ = child.kill();
            panic!(
                "Azurite ({}) did not start on port {port} (exit: {exited:?}); output:\n{text}",
                bin.display()
            );
        }
        Azurite {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};\
             TableEndpoint=http://127.0.0.1:{}/devstoreaccount1;",
            self.port
        )
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        // Closing stdin makes the wrapper kill Azurite; kill the wrapper too in any case.
        drop(self.child.stdin.take());
        let child = &mut self.child;
        if super::wait::until_blocking("Azurite to exit", Duration::from_secs(5), || {
            matches!(child.try_wait(), Ok(Some(_)))
        }) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
