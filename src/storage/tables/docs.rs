//! Documents on [`TableStore`]: point reads, prefix listing and atomic commits.
//!
//! A document lives in the `streams` table, in the partition named by the commit
//! (`DocCommit::partition`, which is also the stream of its outbox rows), under RowKey
//! `doc|<key>` with `Kind` = `doc` and its JSON in `Value` (chunked when long). Its version is
//! the entity's ETag.
//!
//! A commit is one entity-group transaction on that partition: `Expect::Absent` is an Insert
//! (409 if the document exists), `Expect::Version` an Update with `If-Match` on the ETag (412 if
//! it changed, 404 if it is gone). Outbox rows are numbered from the partition's `head` row
//! (`OutboxSeq`, as ingest does) and inserted in the same transaction, which also moves the head
//! on: a Merge of `OutboxSeq` with `If-Match` on the head's ETag (its other properties stay as
//! they are), or an Insert when the partition has no head yet. Any 409/412/404 means nothing was
//! written (the transaction is atomic) and the commit reports `false`; that includes a head
//! changed by a concurrent outbox commit, after which the caller re-reads and retries.

use super::connection::{map_err, status_of};
use super::rows::{self, lit, valid_key, Entity, HEAD, ODATA_ETAG};
use super::TableStore;
use crate::storage::{valid_partition, Doc, DocCommit, Expect, Result, StoreError};
use azure_core::{Etag, StatusCode};
use azure_data_tables::prelude::IfMatchCondition;
use std::collections::HashSet;

/// Operations per entity-group transaction allowed by Table Storage.
const MAX_OPERATIONS: usize = 100;
/// Payload of one entity-group transaction allowed by Table Storage (4 MiB), less room for the
/// multipart framing and per-operation headers (counted separately, see `OPERATION_OVERHEAD`).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024 - 16 * 1024;
/// A generous estimate of one operation's framing and headers in the batch body, in bytes.
const OPERATION_OVERHEAD: usize = 1024;
/// Tries of one commit while only the partition's head row changes under it.
const HEAD_ATTEMPTS: usize = 30;

impl TableStore {
    pub(super) async fn doc_read(&self, partition: &str, key: &str) -> Result<Option<Doc>> {
        let rk = rows::doc_key(key);
        // Nothing can be stored under a name a commit would refuse.
        if !valid_partition(partition) || !valid_key(&rk) {
            return Ok(None);
        }
        match self.get(&self.streams, partition, &rk).await? {
            Some((m, etag)) => {
                let (key, value) = rows::doc_of(&m)?;
                Ok(Some(Doc {
                    key,
                    value,
                    version: etag.to_string(),
                }))
            }
            None => Ok(None),
        }
    }

    /// A RowKey range query on the partition, then sorted by key (code point order, like the
    /// embedded store's binary collation).
    pub(super) async fn doc_range(&self, partition: &str, prefix: &str) -> Result<Vec<Doc>> {
        let lower = rows::doc_key(prefix);
        // No stored key can start with a prefix that is not itself usable in a RowKey.
        if !valid_partition(partition) || !valid_key(&lower) {
            return Ok(Vec::new());
        }
        let upper = successor(&lower).expect("\"doc|\" has a successor");
        let filter = format!(
            "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
            lit(partition),
            lit(&lower),
            lit(&upper)
        );
        let mut docs = Vec::new();
        for m in self.query(&self.streams, filter).await? {
            // The range may be wider than the prefix when its last characters could not be
            // incremented (see `successor`): keep exactly the prefix.
            if !rows::get_str(&m, "RowKey")?.starts_with(&lower) {
                continue;
            }
            let (key, value) = rows::doc_of(&m)?;
            // Queries ask for full metadata: every entity carries its ETag.
            let version = rows::get_str(&m, ODATA_ETAG)?;
            docs.push(Doc {
                key,
                value,
                version,
            });
        }
        docs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(docs)
    }

    pub(super) async fn doc_write(&self, commit: &DocCommit) -> Result<bool> {
        let p = &commit.partition;
        if !valid_partition(p) {
            return Err(StoreError::Corrupt(format!(
                "unusable partition name {p:?} (letters and digits, at most 63)"
            )));
        }
        // Each document write also appends an audit entry; the head row always moves on.
        let head_ops = usize::from(!commit.outbox.is_empty() || !commit.writes.is_empty());
        let ops = 2 * commit.writes.len() + commit.outbox.len() + head_ops;
        if ops > MAX_OPERATIONS {
            return Err(StoreError::Corrupt(format!(
                "commit on partition {p}: {} documents and {} outbox rows need {ops} operations; \
                 Table Storage commits at most {MAX_OPERATIONS} atomically",
                commit.writes.len(),
                commit.outbox.len(),
            )));
        }
        if ops == 0 {
            return Ok(true);
        }

        // Documents, checked before anything is read or sent.
        if commit
            .writes
            .iter()
            .any(|w| matches!(&w.expect, Expect::Version(v) if !is_etag(v)))
        {
            // No document is at that version. Not sent: `*` or an empty If-Match would match
            // any version, and other malformed tags get 400.
            return Ok(false);
        }
        let mut seen = HashSet::new();
        let mut docs = Vec::with_capacity(commit.writes.len());
        for w in &commit.writes {
            let rk = rows::doc_key(&w.key);
            if !valid_key(&rk) {
                return Err(StoreError::Corrupt(format!(
                    "document key {:?} cannot be stored in Table Storage (no / \\ # ? or control \
                     characters, under 1 KiB)",
                    w.key
                )));
            }
            if !seen.insert(w.key.as_str()) {
                return Err(StoreError::Corrupt(format!(
                    "document key {:?} is written twice in one commit",
                    w.key
                )));
            }
            let json = w.value.to_string();
            if json.len() > rows::MAX_TEXT_BYTES {
                return Err(StoreError::Corrupt(format!(
                    "document {:?} is {} bytes of JSON; Table Storage stores at most {} per document",
                    w.key,
                    json.len(),
                    rows::MAX_TEXT_BYTES
                )));
            }
            docs.push((w, rk, rows::doc_entity(p, &w.key, &json)?));
        }

        // A conflict on the head row alone (another commit to this partition moved its outbox
        // or audit chain on) is not the caller's expectation failing: read the head again and
        // retry here. Only a failure with the head unchanged reports `false`.
        for attempt in 0..HEAD_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(
                    2 + (uuid::Uuid::new_v4().as_u128() % 20) as u64,
                ))
                .await;
            }
            let head_read = self.get(&self.streams, p, HEAD).await?;
            let etag_used = head_read.as_ref().map(|(_, e)| e.clone());
            match self.doc_attempt(commit, &docs, head_read, ops).await? {
                Some(done) => return Ok(done),
                None => {
                    let now = self.get(&self.streams, p, HEAD).await?.map(|(_, e)| e);
                    if now == etag_used {
                        return Ok(false);
                    }
                }
            }
        }
        Err(StoreError::Contention(format!(
            "partition {p}: the head row kept changing under {HEAD_ATTEMPTS} attempts"
        )))
    }

    /// One try: `Some(true)` committed, `None` a 409/412/404 (nothing written).
    async fn doc_attempt(
        &self,
        commit: &DocCommit,
        docs: &[(&crate::storage::DocWrite, String, Entity)],
        head_read: Option<(Entity, Etag)>,
        ops: usize,
    ) -> Result<Option<bool>> {
        let p = &commit.partition;
        let (seq0, audit_head, etag) = match &head_read {
            Some((m, etag)) => (
                rows::get_u64(m, "OutboxSeq")?,
                rows::audit_head_of(m)?,
                Some(etag.clone()),
            ),
            None => (0, None, None),
        };
        // Outbox rows, numbered from the head as read, and one chain entry per document written,
        // in commit order; the head moves on in the same transaction.
        let w = crate::storage::plan::plan_doc_commit(commit, audit_head.clone(), seq0);
        let outbox = w
            .outbox
            .iter()
            .map(rows::outbox_entity)
            .collect::<Result<Vec<_>>>()?;
        let last = seq0 + commit.outbox.len() as u64;
        let audit = w
            .audit
            .iter()
            .map(|(e, text)| rows::audit_entity(e, text))
            .collect::<Result<Vec<_>>>()?;
        let prev = w.audit_head().or(audit_head);
        let mut head = match etag {
            // Merged, not replaced: the incident sequence and open incident stay as they are.
            Some(_) => {
                let mut m = rows::new_entity(p, HEAD, "head");
                rows::put_i64(&mut m, "OutboxSeq", last);
                m
            }
            None => rows::head_entity(p, 0, last, None)?,
        };
        if let Some((seq, hash)) = &prev {
            rows::put_audit_head(&mut head, *seq, hash);
        }

        let size: usize = docs
            .iter()
            .map(|(_, _, e)| e)
            .chain(outbox.iter())
            .chain(audit.iter())
            .chain(std::iter::once(&head))
            .map(|e| serde_json::to_string(e).map_or(0, |s| s.len()) + OPERATION_OVERHEAD)
            .sum();
        if size > MAX_BATCH_BYTES {
            return Err(StoreError::Corrupt(format!(
                "commit on partition {p} is about {size} bytes; Table Storage commits at most \
                 4 MiB atomically"
            )));
        }

        let build = |e: azure_core::Error| map_err("build transaction", e);
        // Partition names are letters and digits: nothing to escape in the URL.
        let mut tx = self.streams.partition_key_client(p.as_str()).transaction();
        for (w, rk, entity) in docs {
            tx = match &w.expect {
                Expect::Absent => tx.insert(entity.clone()),
                Expect::Version(v) => tx.update(
                    rk.replace('\'', "''"),
                    entity.clone(),
                    Some(IfMatchCondition::Etag(Etag::from(v.as_str()))),
                ),
            }
            .map_err(build)?;
        }
        for entity in outbox {
            tx = tx.insert(entity).map_err(build)?;
        }
        for entity in audit {
            tx = tx.insert(entity).map_err(build)?;
        }
        tx = match etag {
            Some(etag) => tx.merge(HEAD, head, Some(IfMatchCondition::Etag(etag))),
            None => tx.insert(head),
        }
        .map_err(build)?;

        let resp = match tx.await {
            Ok(resp) => resp,
            Err(e) if expectation_failed(status_of(&e)) => return Ok(None),
            Err(e) => return Err(map_err("document commit", e)),
        };
        // A failed entity-group transaction still answers 202: the failure is in the
        // per-operation responses (usually only the failing one is listed).
        let statuses: Vec<StatusCode> = resp
            .operation_responses
            .iter()
            .map(|r| r.status_code)
            .collect();
        if statuses.iter().any(|s| expectation_failed(Some(*s))) {
            return Ok(None);
        }
        if statuses.len() == ops && statuses.iter().all(|s| s.is_success()) {
            return Ok(Some(true));
        }
        Err(StoreError::Unavailable(format!(
            "document commit on partition {p}: Table Storage answered {:?} for {ops} operations",
            statuses.iter().map(|s| u16::from(*s)).collect::<Vec<_>>()
        )))
    }
}

/// 409 (created concurrently), 412 (changed since read), 404 (gone since read).
fn expectation_failed(status: Option<StatusCode>) -> bool {
    matches!(
        status,
        Some(StatusCode::Conflict | StatusCode::PreconditionFailed | StatusCode::NotFound)
    )
}

/// Whether `v` has the shape of the ETags Table Storage gives entities: a weak entity tag,
/// `W/"..."` (e.g. `W/"datetime'2024-01-01T00%3A00%3A00.1234567Z'"`).
fn is_etag(v: &str) -> bool {
    v.strip_prefix("W/\"")
        .and_then(|rest| rest.strip_suffix('"'))
        .is_some_and(|tag| !tag.is_empty() && !tag.contains('"'))
}

/// The smallest string greater than every string starting with `s`, in both code point order
/// and UTF-16 code unit order (Table Storage compares keys by the latter): the last character
/// that can be incremented within the BMP is, and what follows it is dropped. The new
/// character avoids surrogates and control characters (harmless but odd in a filter), which can
/// make the range wider than the prefix; callers filter the results. `None` if nothing can be
/// incremented.
fn successor(s: &str) -> Option<String> {
    let mut chars: Vec<char> = s.chars().collect();
    while let Some(c) = chars.pop() {
        let next = (c as u32 + 1..=0xFFFF)
            .filter_map(char::from_u32)
            .find(|n| !n.is_control());
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{is_etag, successor};

    #[test]
    fn only_weak_entity_tags_are_versions() {
        assert!(is_etag("W/\"datetime'2026-11-22T04%3A16%3A11.5214033Z'\""));
        for bad in ["", "*", "1", "\"1\"", "W/\"\"", "W/\"a\"b\"", "W/x"] {
            assert!(!is_etag(bad), "{bad:?}");
        }
    }

    #[test]
    fn successors_bound_every_extension() {
        assert_eq!(successor("doc|").as_deref(), Some("doc}"));
        assert_eq!(successor("doc|b|").as_deref(), Some("doc|b}"));
        assert_eq!(successor("doc|a~").as_deref(), Some("doc|a\u{a0}"));
        assert_eq!(successor("doc|a\u{d7ff}").as_deref(), Some("doc|a\u{e000}"));
        assert_eq!(successor("doc|a\u{ffff}").as_deref(), Some("doc|b"));
        assert_eq!(successor("doc|a\u{1f600}").as_deref(), Some("doc|b"));
        assert_eq!(successor("\u{ffff}\u{10ffff}"), None);
        let utf16 = |s: &str| s.encode_utf16().collect::<Vec<u16>>();
        for p in ["doc|x", "doc|\u{d7ff}", "doc|\u{fffe}", "doc|\u{1f600}z"] {
            let up = successor(p).unwrap();
            for ext in ["", "\u{10ffff}", "\u{ffff}", "\u{fffd}zz"] {
                let k = format!("{p}{ext}");
                assert!(k < up, "{k:?} < {up:?}");
                assert!(utf16(&k) < utf16(&up), "utf-16 {k:?} < {up:?}");
            }
        }
    }
}
