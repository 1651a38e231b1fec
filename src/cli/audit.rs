//! `icahub audit verify|export|verify-export`: check the store's hash chains, export the trail
//! with a manifest, and check an export against its manifest. See `docs/audit.md`.

use crate::audit::{AuditEntry, ExportFilter};
use crate::config::Config;
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Ndjson,
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Read the whole store and check every partition's hash chain and every record against it.
    /// Exit status 1 when anything was edited, removed, inserted or reordered.
    Verify {
        /// Report only problems with entries written at or after this time (chains are still
        /// read, and checked, from their start).
        #[arg(long, value_parser = parse_time)]
        from: Option<DateTime<Utc>>,
        /// Report only problems with entries written before this time.
        #[arg(long, value_parser = parse_time)]
        to: Option<DateTime<Utc>>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the trail (chain entries, oldest first within each partition) to a file, with a
    /// manifest beside it (`<FILE>.manifest.json`): record count, chain heads, SHA-256.
    Export {
        /// Entries written at or after this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_parser = parse_time)]
        from: Option<DateTime<Utc>>,
        /// Entries written before this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_parser = parse_time)]
        to: Option<DateTime<Utc>>,
        #[arg(long, value_enum, default_value_t = Format::Ndjson)]
        format: Format,
        /// Only records with this status (approval, run or incident status).
        #[arg(long)]
        status: Option<String>,
        /// Only approvals this person signed (or overrode).
        #[arg(long)]
        approver: Option<String>,
        /// Only run events of this type, or audit notes with this action.
        #[arg(long)]
        event_type: Option<String>,
        /// Only runs and run events of this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// Where to write the export.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Check an export against its manifest: its SHA-256, its record count, and that every entry
    /// still matches its own hash.
    VerifyExport { file: PathBuf, manifest: PathBuf },
    /// Write a checkpoint now: every chain's head, recorded on the `auditcp` chain and sent to
    /// the control plane (the timer does this every ICAHUB_AUDIT_CHECKPOINT_SECS).
    Checkpoint,
    /// Take the Azure DevOps job tokens (`AuthToken`) that versions before the secret store kept
    /// in approvals out of the current documents, by appending (see `--help`).
    #[command(
        long_about = "Take the Azure DevOps job tokens (AuthToken) that icahub versions \
before the secret store kept inside approval documents out of them, by APPENDING: for every \
approval whose current document holds its check's token, a new version of the document with the \
token's SHA-256 instead (auth_token_sha256), and an audit note {\"action\": \"audit.redacted\", \
\"approval_id\", \"field\": \"check.auth_token\", \"sha256\"}, in one commit. An approval still \
open keeps its token in the secret store, so its callback still reaches Azure DevOps.\n\n\
The chain is never rewritten: earlier chain entries keep their bodies (their hashes are over \
them), so `icahub audit verify` still passes; `audit query`, `audit export` and `audit archive` \
mask the tokens in those entries and mark them `redacted` (docs/audit.md). The report also \
counts them, and the Azure DevOps outbox rows (not chained) that carry a token inline.\n\n\
Run once after upgrading; running it again finds nothing to do. Safe while the hub runs. \
--dry-run only reports."
    )]
    RedactTokens {
        /// Report what would be redacted; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write one calendar year's trail as `icahub-audit-<YEAR>.ndjson` plus its manifest, ready
    /// for immutable (WORM) blob storage.
    Archive {
        #[arg(long)]
        year: i32,
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        .map_err(|_| format!("{s:?} is not an RFC 3339 time or a YYYY-MM-DD date"))
}

/// A progress bar on a terminal (hidden otherwise).
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    pb
}

/// A counter with its rate, for work whose total is not known up front: `template` is an
/// indicatif template such as `"{spinner} exporting: {pos} entries read ({per_sec})"`.
pub(crate) fn counter(template: &str) -> ProgressBar {
    let pb = bar(0, "");
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb
}

/// The SHA-256 of a file, in hex, read in 1 MiB blocks.
pub(crate) fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify { from, to, json } => {
            let config = Config::from_env(None)?;
            let store = crate::startup::open_store(&config).await?;
            let pb = bar(0, "verifying partitions");
            let report = crate::audit::verify_window(store.as_ref(), from, to, &|done, total| {
                pb.set_length(total as u64);
                pb.set_position(done as u64);
            })
            .await?;
            pb.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} partitions, {} chain entries, {} records checked",
                    report.partitions, report.entries, report.records
                );
                if report.findings.is_empty() {
                    println!("OK: every chain links up and every record matches its last entry");
                }
                for f in &report.findings {
                    println!("{:<13} {} {}: {}", f.problem, f.partition, f.id, f.detail);
                }
            }
            if !report.findings.is_empty() {
                eprintln!("audit verify: {} problem(s) found", report.findings.len());
                std::process::exit(1);
            }
            Ok(())
        }
        AuditCommand::Export {
            from,
            to,
            format,
            status,
            approver,
            event_type,
            pipeline,
            out,
        } => {
            let config = Config::from_env(None)?;
            let store = crate::startup::open_store(&config).await?;
            let filter = ExportFilter {
                from,
                to,
                status,
                approver,
                event_type,
                pipeline,
            };
            let manifest = export(store.as_ref(), &filter, format, &out).await?;
            eprintln!(
                "wrote {} records to {} (manifest {})",
                manifest["records"],
                out.display(),
                manifest_path(&out).display()
            );
            Ok(())
        }
        AuditCommand::Checkpoint => {
            let config = Config::from_env(None)?;
            let store = crate::startup::open_store(&config).await?;
            match crate::audit::checkpoint(
                store.as_ref(),
                &config.routing,
                chrono::Duration::zero(),
                Utc::now(),
            )
            .await?
            {
                Some(key) => println!("wrote checkpoint {key}"),
                None => bail!("another checkpoint was written at the same moment; try again"),
            }
            Ok(())
        }
        AuditCommand::Archive { year, out_dir } => {
            let start = |y: i32| {
                chrono::NaiveDate::from_ymd_opt(y, 1, 1)
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|t| t.and_utc())
            };
            let (Some(from), Some(to)) = (start(year), start(year + 1)) else {
                bail!("{year} is not a usable year");
            };
            let config = Config::from_env(None)?;
            let store = crate::startup::open_store(&config).await?;
            std::fs::create_dir_all(&out_dir)?;
            let out = out_dir.join(format!("icahub-audit-{year}.ndjson"));
            let filter = ExportFilter {
                from: Some(from),
                to: Some(to),
                ..Default::default()
            };
            let manifest = export(store.as_ref(), &filter, Format::Ndjson, &out).await?;
            println!(
                "archived {} records of {year} to {} (manifest {}, sha256 {})",
                manifest["records"],
                out.display(),
                manifest_path(&out).display(),
                manifest["sha256"].as_str().unwrap_or("")
            );
            println!(
                "Upload both to a container with a time-based retention (immutability) policy, e.g.\n  \
                 az storage blob upload-batch --account-name <account> -d audit-archive -s {} --pattern 'icahub-audit-{year}*'",
                out_dir.display()
            );
            Ok(())
        }
        AuditCommand::RedactTokens { dry_run, json } => {
            let config = Config::from_env(None)?;
            let store = crate::startup::open_store(&config).await?;
            let r = crate::approvals::redact_tokens(store.as_ref(), dry_run, Utc::now()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let verb = if dry_run { "would redact" } else { "redacted" };
            println!(
                "{} approvals read; {verb} {} ({} still open, token {} the secret store)",
                r.approvals,
                r.redacted.len(),
                r.moved_to_secret.len(),
                if dry_run { "to move to" } else { "moved to" }
            );
            for id in &r.redacted {
                println!("  {id}");
            }
            println!(
                "{} earlier chain entries hold a token: kept as stored (the chain is never rewritten), masked in query, export and archive",
                r.chain_entries_with_token
            );
            if r.outbox_rows_with_token > 0 {
                println!(
                    "{} Azure DevOps outbox rows (not chained) carry a token inline, as written before this version; they are kept (and in backups) until the store is replaced; the tokens expire 48 hours after their check started",
                    r.outbox_rows_with_token
                );
            }
            Ok(())
        }
        AuditCommand::VerifyExport { file, manifest } => {
            let problems = verify_export(&file, &manifest)?;
            if problems.is_empty() {
                println!("OK: {} matches its manifest", file.display());
                let m: Value = serde_json::from_slice(&std::fs::read(&manifest)?)?;
                if let Some(n) = m["redacted"].as_u64().filter(|n| *n > 0) {
                    println!(
                        "{n} entries carry a job token masked on export (`redacted`): their own hashes are over the original bodies and cannot be recomputed from this file; `icahub audit verify` checks them on the store"
                    );
                }
                Ok(())
            } else {
                for p in &problems {
                    println!("{p}");
                }
                std::process::exit(1);
            }
        }
    }
}

pub fn manifest_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

const CSV_HEADER: [&str; 9] = [
    "partition",
    "seq",
    "kind",
    "key",
    "at",
    "prev",
    "hash",
    "body",
    "redacted",
];

/// Write the export and its manifest; returns the manifest. Reads the trail page by page, so
/// memory stays flat whatever its size.
pub async fn export(
    store: &dyn crate::storage::Store,
    filter: &ExportFilter,
    format: Format,
    out: &Path,
) -> anyhow::Result<Value> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
    };
    if format == Format::Csv {
        w.write_all(&csv_line(&CSV_HEADER)?)?;
    }
    if format == Format::Json {
        w.write_all(b"[\n")?;
    }
    // The total is not known up front: a counter with its rate, not a bar.
    let pb = counter("{spinner} exporting: {pos} entries read ({per_sec})");
    let mut heads: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut count: u64 = 0;
    let mut redacted: u64 = 0;
    let mut after: Option<(String, u64)> = None;
    loop {
        let page = store
            .audit_page(after.as_ref().map(|(p, s)| (p.as_str(), *s)), 5000)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.partition.clone(), last.seq));
        for e in &page {
            if !filter.matches(e) {
                continue;
            }
            heads.insert(e.partition.clone(), (e.seq, e.hash.clone()));
            // Tokens an earlier version chained are masked, and the entry marked redacted.
            let shown = crate::audit::for_output(e);
            if shown.get("redacted").is_some() {
                redacted += 1;
            }
            match format {
                Format::Ndjson => {
                    serde_json::to_writer(&mut w, &shown)?;
                    w.write_all(b"\n")?;
                }
                Format::Json => {
                    if count > 0 {
                        w.write_all(b",\n")?;
                    }
                    serde_json::to_writer(&mut w, &shown)?;
                }
                Format::Csv => {
                    w.write_all(&csv_line(&[
                        e.partition.as_str(),
                        &e.seq.to_string(),
                        &e.kind,
                        &e.key,
                        &e.at,
                        &e.prev,
                        &e.hash,
                        &shown["body"].to_string(),
                        &shown
                            .get("redacted")
                            .map(Value::to_string)
                            .unwrap_or_default(),
                    ])?)?;
                }
            }
            count += 1;
        }
        pb.inc(page.len() as u64);
    }
    if format == Format::Json {
        w.write_all(b"\n]\n")?;
    }
    w.inner.flush()?;
    pb.finish_and_clear();
    let sha = hex::encode(w.hash.finalize());
    let manifest = json!({
        "format": match format { Format::Ndjson => "ndjson", Format::Json => "json", Format::Csv => "csv" },
        "file": out.file_name().map(|f| f.to_string_lossy().to_string()),
        "records": count,
        "redacted": redacted,
        "sha256": sha,
        "created_at": Utc::now(),
        "backend": store.backend(),
        "filter": {
            "from": filter.from, "to": filter.to, "status": filter.status,
            "approver": filter.approver, "event_type": filter.event_type, "pipeline": filter.pipeline,
        },
        "chain_heads": heads.into_iter().map(|(p, (seq, hash))| (p, json!({"seq": seq, "hash": hash}))).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(manifest_path(out), serde_json::to_vec_pretty(&manifest)?)?;
    Ok(manifest)
}

/// One CSV record (RFC 4180 quoting), with its line end.
fn csv_line(fields: &[&str]) -> anyhow::Result<Vec<u8>> {
    let mut c = csv::WriterBuilder::new().from_writer(Vec::new());
    c.write_record(fields)?;
    c.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Problems with an export (empty: it matches its manifest).
pub fn verify_export(file: &Path, manifest: &Path) -> anyhow::Result<Vec<String>> {
    let m: Value = serde_json::from_slice(
        &std::fs::read(manifest).with_context(|| format!("reading {}", manifest.display()))?,
    )
    .context("the manifest is not JSON")?;
    let mut problems = Vec::new();
    let sha = sha256_file(file)?;
    if m["sha256"].as_str() != Some(sha.as_str()) {
        problems.push(format!(
            "sha256 differs: the file is {sha}, the manifest says {}",
            m["sha256"]
        ));
    }
    let mut count = 0u64;
    let mut redacted = 0u64;
    let mut check = |e: AuditEntry, masked: bool| {
        count += 1;
        if masked {
            // Its token was masked on export: its own hash is over the original body, which
            // the file does not hold (`redacted.body_sha256` names it).
            redacted += 1;
            return;
        }
        if !e.hash_ok() {
            problems.push(format!(
                "entry {} seq {} does not match its hash",
                e.partition, e.seq
            ));
        }
    };
    match m["format"].as_str() {
        Some("ndjson") => {
            for line in BufReader::new(std::fs::File::open(file)?).lines() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&line).context("an ndjson line is not JSON")?;
                let masked = v.get("redacted").is_some();
                check(
                    serde_json::from_value(v).context("an ndjson line is not an entry")?,
                    masked,
                );
            }
        }
        Some("json") => {
            let all: Vec<Value> =
                serde_json::from_reader(BufReader::new(std::fs::File::open(file)?))
                    .context("the export is not a JSON array of entries")?;
            for v in all {
                let masked = v.get("redacted").is_some();
                check(
                    serde_json::from_value(v).context("an element is not an entry")?,
                    masked,
                );
            }
        }
        Some("csv") => {
            let mut r = csv::Reader::from_path(file)?;
            for rec in r.records() {
                let rec = rec?;
                let get = |i: usize| rec.get(i).unwrap_or("").to_string();
                let masked = !get(8).is_empty();
                check(
                    AuditEntry {
                        partition: get(0),
                        seq: get(1).parse().unwrap_or(0),
                        kind: get(2),
                        key: get(3),
                        at: get(4),
                        prev: get(5),
                        hash: get(6),
                        body: serde_json::from_str(&get(7)).unwrap_or(Value::Null),
                    },
                    masked,
                );
            }
        }
        other => bail!("the manifest names no known format ({other:?})"),
    }
    if m["records"].as_u64() != Some(count) {
        problems.push(format!(
            "record count differs: the file has {count}, the manifest says {}",
            m["records"]
        ));
    }
    // An export made before redaction existed has no count: none of its entries are masked.
    let said = m["redacted"].as_u64().unwrap_or(0);
    if said != redacted {
        problems.push(format!(
            "redacted entries differ: the file has {redacted}, the manifest says {said}"
        ));
    }
    Ok(problems)
}
