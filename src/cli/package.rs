//! `icahub package --out dist/icahub.zip`: the zip the Functions host runs, laid out as it
//! expects (docs/protocols.md §1.1, §1.8): `host.json` at the root, every `functions/<name>/` folder at
//! the root beside it (`<name>/function.json`), and the binary `host.json` names, executable.
//!
//! `scripts/package.sh` builds the release binary first and calls this with it.

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
#[command(after_help = "Example (what scripts/package.sh runs):\n  \
    cargo build --release --locked\n  \
    target/release/icahub package --out dist/icahub.zip\n\n\
Deploy the zip with `az functionapp deployment source config-zip` (docs/deploy.md).")]
pub struct PackageArgs {
    /// Where to write the zip (its folder is created; an existing file is replaced).
    #[arg(long, default_value = "dist/icahub.zip")]
    pub out: PathBuf,
    /// The Linux x86_64 binary to package [default: this icahub executable].
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// The repository root that holds host.json and functions/.
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
}

/// What went into a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageReport {
    /// Entry names in the zip, in order.
    pub entries: Vec<String>,
    /// The functions packaged (folder names).
    pub functions: Vec<String>,
    /// The newest glibc symbol version the binary needs, when it links glibc (`2.34`).
    pub glibc: Option<String>,
    pub bytes: u64,
}

pub async fn run(args: PackageArgs) -> anyhow::Result<()> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding this executable")?,
    };
    let report = build(&args.root, &binary, &args.out)?;
    for e in &report.entries {
        println!("  {e}");
    }
    println!(
        "wrote {} ({} functions, {:.1} MB{})",
        args.out.display(),
        report.functions.len(),
        report.bytes as f64 / 1e6,
        report
            .glibc
            .as_deref()
            .map(|g| format!("; the binary needs glibc {g} or newer"))
            .unwrap_or_default()
    );
    Ok(())
}

fn read_json(p: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()))
}

/// Check that `bytes` is a 64-bit little-endian x86_64 ELF executable (what Azure Functions on
/// Linux runs).
pub fn check_elf(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return Err("is not an ELF executable (build it on or for Linux)".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("is not a 64-bit little-endian ELF".into());
    }
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    if machine != 0x3e {
        return Err(format!(
            "is built for ELF machine {machine:#x}, not x86_64 (0x3e): Azure Functions on Linux runs x86_64"
        ));
    }
    Ok(())
}

/// The newest `GLIBC_2.x` symbol version named in the binary.
fn newest_glibc(bytes: &[u8]) -> Option<String> {
    let needle = b"GLIBC_2.";
    let mut best: Option<(u32, u32)> = None;
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(needle.len()).position(|w| w == needle) {
        let start = i + pos + needle.len();
        let digits: Vec<u8> = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .copied()
            .collect();
        let text = String::from_utf8_lossy(&digits);
        let mut parts = text.split('.').filter(|p| !p.is_empty());
        if let Some(Ok(minor)) = parts.next().map(str::parse::<u32>) {
            let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            if best.is_none_or(|b| (minor, patch) > b) {
                best = Some((minor, patch));
            }
        }
        i = start;
    }
    best.map(|(m, p)| {
        if p == 0 {
            format!("2.{m}")
        } else {
            format!("2.{m}.{p}")
        }
    })
}

/// Write the package. Refuses (before writing anything) a root without host.json or functions,
/// a function folder without a valid function.json, and a binary that is not Linux x86_64.
pub fn build(root: &Path, binary: &Path, out: &Path) -> anyhow::Result<PackageReport> {
    let host_path = root.join("host.json");
    if !host_path.is_file() {
        bail!(
            "{} has no host.json: run from the repository root or pass --root",
            root.display()
        );
    }
    let host = read_json(&host_path)?;
    let exe_name = host["customHandler"]["description"]["defaultExecutablePath"]
        .as_str()
        .filter(|s| !s.is_empty() && !s.contains('/') && !s.contains('\\'))
        .context("host.json: customHandler.description.defaultExecutablePath must name the binary (a file name)")?
        .to_string();

    let fdir = root.join("functions");
    let mut functions: Vec<String> = std::fs::read_dir(&fdir)
        .with_context(|| format!("reading {}", fdir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    functions.sort();
    if functions.is_empty() {
        bail!("{} holds no function folders", fdir.display());
    }
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for name in &functions {
        if name == &exe_name || name == "host.json" {
            bail!("function folder {name:?} would clash with {exe_name:?} or host.json at the zip root");
        }
        let p = fdir.join(name).join("function.json");
        let v = read_json(&p)?;
        if !v["bindings"].is_array() {
            bail!("{}: no \"bindings\" array", p.display());
        }
        files.push((
            format!("{name}/function.json"),
            std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
        ));
    }

    let bin = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    check_elf(&bin).map_err(|e| anyhow::anyhow!("{} {e}", binary.display()))?;
    let glibc = newest_glibc(&bin);

    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = out.with_extension("zip.partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut zip = zip::ZipWriter::new(file);
    let opts = |mode: u32| {
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode)
    };
    let mut entries = Vec::new();
    let mut add = |zip: &mut zip::ZipWriter<std::fs::File>,
                   name: &str,
                   data: &[u8],
                   mode: u32|
     -> anyhow::Result<()> {
        zip.start_file(name, opts(mode))
            .with_context(|| format!("adding {name}"))?;
        zip.write_all(data)
            .with_context(|| format!("writing {name}"))?;
        entries.push(name.to_string());
        Ok(())
    };
    add(
        &mut zip,
        "host.json",
        &std::fs::read(&host_path).context("reading host.json")?,
        0o644,
    )?;
    for (name, data) in &files {
        add(&mut zip, name, data, 0o644)?;
    }
    add(&mut zip, &exe_name, &bin, 0o755)?;
    let file = zip.finish().context("finishing the zip")?;
    file.sync_all().ok();
    drop(file);
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(PackageReport {
        entries,
        functions,
        glibc,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_checks() {
        assert!(check_elf(b"#!/bin/sh\necho hi\n").is_err());
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 0xb7; // aarch64
        assert!(check_elf(&elf).unwrap_err().contains("not x86_64"));
        elf[18] = 0x3e;
        assert!(check_elf(&elf).is_ok());
    }

    #[test]
    fn glibc_version_is_the_newest_named() {
        let bin = b"..GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0GLIBC_PRIVATE\0";
        assert_eq!(newest_glibc(bin).as_deref(), Some("2.34"));
        assert_eq!(newest_glibc(b"static").as_deref(), None);
    }
}
