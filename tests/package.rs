//! `icahub package`: the zip holds host.json, every function folder at its root, and the binary
//! (executable); unpacked, the binary starts the way the Functions host starts it (working
//! directory = the app root, the arguments host.json gives, FUNCTIONS_CUSTOMHANDLER_PORT, Table
//! Storage) and answers the readiness probe and every route a function.json declares.

mod support;

use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::hub::free_port;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One package per test binary: zipping the 200 MB debug binary takes a while.
fn shared_package() -> &'static Path {
    static PKG: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, zip) = PKG.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let zip = package_into(dir.path());
        (dir, zip)
    });
    zip
}

fn package_into(dir: &Path) -> PathBuf {
    let out = dir.join("dist/icahub.zip");
    let o = Command::new(env!("CARGO_BIN_EXE_icahub"))
        .args(["package", "--out"])
        .arg(&out)
        .arg("--root")
        .arg(root())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "package failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("wrote"), "{stdout}");
    out
}

fn function_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("functions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// Unpack like the platform does, keeping the unix modes stored in the zip.
fn unpack(zip_path: &Path, into: &Path) -> Vec<(String, u32)> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(zip_path).unwrap()).unwrap();
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mode = f.unix_mode().unwrap_or(0);
        let dest = into.join(&name);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        std::fs::write(&dest, &data).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode & 0o777)).unwrap();
        }
        entries.push((name, mode));
    }
    entries
}

#[test]
fn the_zip_has_the_layout_the_functions_host_expects() {
    let tmp = tempfile::tempdir().unwrap();
    let zip = shared_package();
    let unpacked = tmp.path().join("app");
    let entries = unpack(zip, &unpacked);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();

    assert!(names.contains(&"host.json"), "{names:?}");
    for f in function_names() {
        let entry = format!("{f}/function.json");
        assert!(
            names.contains(&entry.as_str()),
            "{entry} missing: {names:?}"
        );
        assert_eq!(
            std::fs::read(unpacked.join(&entry)).unwrap(),
            std::fs::read(root().join("functions").join(&entry)).unwrap(),
            "{entry} is not the repository's"
        );
    }
    // Nothing nested under functions/, nothing else at the root but the binary.
    assert!(
        names.iter().all(|n| !n.starts_with("functions/")),
        "{names:?}"
    );
    let host: Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("host.json")).unwrap()).unwrap();
    let exe = host["customHandler"]["description"]["defaultExecutablePath"]
        .as_str()
        .unwrap();
    let (_, mode) = entries.iter().find(|(n, _)| n == exe).expect("the binary");
    assert_eq!(
        mode & 0o111,
        0o111,
        "the binary must be executable: {mode:o}"
    );
    assert_eq!(names.len(), 1 + function_names().len() + 1, "{names:?}");
    let bin = std::fs::read(unpacked.join(exe)).unwrap();
    assert_eq!(&bin[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([bin[18], bin[19]]), 0x3e, "x86_64");
}

#[test]
fn packaging_refuses_what_the_host_could_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("not-elf");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_icahub"))
        .args(["package", "--out"])
        .arg(tmp.path().join("x.zip"))
        .arg("--root")
        .arg(root())
        .arg("--binary")
        .arg(&script)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not an ELF"), "{err}");
    assert!(!tmp.path().join("x.zip").exists());

    let o = Command::new(env!("CARGO_BIN_EXE_icahub"))
        .args(["package", "--out"])
        .arg(tmp.path().join("y.zip"))
        .arg("--root")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no host.json"), "{err}");
}

#[tokio::test]
async fn the_packaged_binary_starts_as_the_host_starts_it_and_serves_every_function() {
    let tmp = tempfile::tempdir().unwrap();
    let zip = shared_package();
    let app_root = tmp.path().join("wwwroot");
    unpack(zip, &app_root);
    let host: Value =
        serde_json::from_slice(&std::fs::read(app_root.join("host.json")).unwrap()).unwrap();
    let desc = &host["customHandler"]["description"];
    let exe = app_root.join(desc["defaultExecutablePath"].as_str().unwrap());
    let args: Vec<String> = desc["arguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();

    let port = free_port();
    let mut child = Command::new(&exe)
        .args(&args)
        .current_dir(&app_root)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("FUNCTIONS_APP_ROOT_PATH", &app_root)
        .env("AzureWebJobsStorage", support::azurite::connection_string())
        .env(
            "ICAHUB_TABLE_PREFIX",
            support::azurite::unique_prefix("pkg"),
        )
        .env("ICAHUB_LOG", "warn")
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    // The host allows 60 s; a healthy start takes milliseconds.
    let mut exited = None;
    support::wait::until("the packaged binary to answer the readiness probe", || {
        exited = exited.or_else(|| child.try_wait().ok().flatten());
        let gone = exited.is_some();
        let probe = client.get(format!("{base}/")).send();
        async move { gone || probe.await.is_ok() }
    })
    .await;
    if let Some(status) = exited {
        panic!("the packaged binary exited: {status}");
    }
    let r = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    for (name, method, path) in support::declared_routes(&app_root, &app_root) {
        let body = if path.starts_with("/api/") {
            "{}".to_string()
        } else {
            String::from_utf8(support::fixture("functions-host-timer-invocation.json")).unwrap()
        };
        let r = client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_ne!(
            v["error"]["code"], "no_route",
            "{name}: {method} {path}: {text}"
        );
        assert_ne!(status, 405, "{name}: {method} {path}");
        assert!(
            status < 500,
            "{name}: {method} {path} answered {status}: {text}"
        );
    }
    let r = client
        .get(format!("{base}/api/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "readyz on Azurite");
    let _ = child.kill();
    let _ = child.wait();
}
