//! The Azure Table Storage backend of [`Store`]: [`TableStore`].
//!
//! Two tables. `<prefix>streams` holds everything about incident streams, one partition per
//! stream (PartitionKey = [`stream_key`]), with rows `head` (incident and outbox sequence
//! numbers, the open incident), `event|<event_id>`, `dedup|<sha256 of dedup key>`,
//! `incident|<incident_id>` and `outbox|<seq, 12 digits>`; every row has a `Kind` column.
//! `<prefix>requests` holds the raw bodies of requests that carried several alerts
//! (PartitionKey = `YYYYMMDD` of receipt, RowKey = request id), and the secrets
//! ([`crate::storage::SecretStore::secret_put`]) in its partition [`SECRETS_PARTITION`] (`secrets`, RowKey = the
//! secret's key, `Kind = secret`, the value in `Value`, the time stored in `CreatedAt`).
//!
//! Why there: that table holds nothing chained (the audit trail lives in `streams` only, and
//! `audit_partitions`/`audit_state` read only `streams`), so a secret can never be taken for a
//! record written behind the hub's back; `icahub backup` already reads that table on its own and
//! skips the partition with a server-side filter; and no new table means nothing new to create,
//! provision in `infra/` or grant to the hub's identity, and the no-create open of `backup` and
//! `doctor` works against stores made by older versions. A date partition (`YYYYMMDD`) can never
//! be `secrets`.
//!
//! Each new alert is one entity-group transaction on its stream's partition: event, dedup
//! marker, head (inserted, or updated with `If-Match` on the ETag read), incident and outbox
//! rows. A concurrent writer on the same stream (another task or another hub instance) makes
//! the transaction fail with 409/412; the alert is then re-read and re-planned, so no update is
//! lost and an incident is never opened twice.
//!
//! Cross-partition reads (`incidents`, `raw_request`, `count_events`) scan the table with a
//! server-side filter; fine for operator use, not for hot paths.
//!
//! Raw bodies and long texts are stored as Edm.Binary chunks of 64 KiB (at most 896 KiB per
//! value, see `rows`); larger bodies are refused with [`StoreError::Config`], so the ingress
//! body limit must stay below that.
//!
//! Outbox rows are dispatched in place: leases and outcomes are whole-entity replaces with
//! `If-Match` on the row's ETag (carried in `OutboxRow::version`); see `outbox`. Finding due rows
//! across all streams and listing the outbox scan the table with a server-side filter.
//!
//! Documents (`doc_get`, `doc_list`, `doc_commit`) share the `streams` table and partition with
//! their outbox rows, as `doc|<key>` rows versioned by ETag, so that one entity-group
//! transaction writes both; see `docs`.
//!
//! Files: this one (connecting, reads, the [`Store`] impl), `ingest` (the write loop),
//! `outbox` (dispatch: due, lease, settle, list, redrive), `docs` (documents), `rows` (entity
//! layout and codecs), `connection` (connection strings, HTTP policy, errors).

pub mod backup;
mod connection;
pub mod credential;
mod docs;
mod ingest;
mod outbox;
mod rows;

use crate::domain::incident::{stream_key, stream_of_id, Incident};
use crate::domain::routing::Routing;
use crate::storage::{
    AuditStore, Delivery, Doc, DocCommit, DocStore, EventOutcome, IncidentFilter, IncidentStore,
    OutboxFilter, OutboxRow, OutboxStore, RawRequest, Result, SecretStore, Settle, Store,
    StoreError, StoredEvent, SECRETS_PARTITION,
};
use async_trait::async_trait;
use azure_core::{Etag, StatusCode};
use azure_data_tables::prelude::TableClient;
use chrono::{DateTime, Utc};
use connection::{map_err, status_of};
use futures::StreamExt;
use rows::{lit, valid_key, Entity};
use std::collections::BTreeMap;

/// `table_prefix` must be alphanumeric and start with a letter (or be empty).
fn check_prefix(table_prefix: &str) -> Result<()> {
    if !table_prefix.chars().all(|c| c.is_ascii_alphanumeric())
        || table_prefix.starts_with(|c: char| c.is_ascii_digit())
        || table_prefix.len() > 55
    {
        return Err(StoreError::Config(format!(
            "table prefix {table_prefix:?} must be at most 55 ASCII letters and digits, \
             starting with a letter"
        )));
    }
    Ok(())
}

/// Azure Table Storage implementation of [`Store`]. Cheap to clone; safe to share.
#[derive(Debug, Clone)]
pub struct TableStore {
    streams: TableClient,
    requests: TableClient,
    location: String,
}

impl TableStore {
    /// The `<prefix>streams` table itself, for operators' tooling and the audit tests that
    /// tamper with rows behind the hub's back. Writing through it bypasses every check.
    pub fn streams_table(&self) -> TableClient {
        self.streams.clone()
    }

    /// Connect and create the tables `<prefix>streams` and `<prefix>requests` if missing.
    ///
    /// `table_prefix` must be alphanumeric and start with a letter (or be empty). Errors with
    /// [`StoreError::Config`] for a bad connection string or rejected credentials, and
    /// [`StoreError::Unavailable`] when the service cannot be reached.
    pub async fn connect(connection_string: &str, table_prefix: &str) -> Result<TableStore> {
        check_prefix(table_prefix)?;
        let endpoint = connection::parse(connection_string)?;
        TableStore::open_with(endpoint, table_prefix, true).await
    }

    /// The hub's tables as `storage` configures them: a connection string (key or SAS), or
    /// tokens from the managed identity (`ICAHUB_TABLES_ENDPOINT`, `ICAHUB_TABLES_CLIENT_ID`;
    /// the identity needs "Storage Table Data Contributor") or the Azure CLI user
    /// (`ICAHUB_TABLES_CREDENTIAL=azure_cli`). With `create` the tables are created if missing;
    /// without, a missing table is an error: for commands that only read (backup, doctor), where
    /// a mistyped prefix must not make two new empty tables and a read-only role is enough.
    pub async fn from_settings(
        storage: &crate::storage::Settings,
        create: bool,
    ) -> Result<TableStore> {
        use crate::storage::Settings;
        let (endpoint, prefix) = match storage {
            Settings::Embedded { .. } => {
                return Err(StoreError::Config(
                    "the embedded store is configured".into(),
                ))
            }
            Settings::Tables {
                connection_string,
                table_prefix,
            } => (connection::parse(connection_string.expose())?, table_prefix),
            Settings::TablesIdentity {
                endpoint,
                client_id,
                azure_cli,
                table_prefix,
            } => {
                let credential = if *azure_cli {
                    credential::ManagedIdentityCredential::azure_cli()
                } else {
                    credential::ManagedIdentityCredential::from_lookup(
                        &|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()),
                        client_id.clone(),
                    )
                };
                (
                    connection::token_endpoint(endpoint, std::sync::Arc::new(credential))?,
                    table_prefix,
                )
            }
        };
        check_prefix(prefix)?;
        TableStore::open_with(endpoint, prefix, create).await
    }

    async fn open_with(
        endpoint: connection::Endpoint,
        table_prefix: &str,
        create: bool,
    ) -> Result<TableStore> {
        let service = connection::client(&endpoint)?;
        let streams = service.table_client(format!("{table_prefix}streams"));
        let requests = service.table_client(format!("{table_prefix}requests"));
        for table in [&streams, &requests] {
            if create {
                create_table(table).await?;
            } else {
                let mut pages = table.query().top(1).into_stream::<rows::Entity>();
                match pages.next().await {
                    Some(Err(e)) if status_of(&e) == Some(StatusCode::NotFound) => {
                        return Err(StoreError::Config(format!(
                            "table {} does not exist at {}: check ICAHUB_TABLE_PREFIX and the \
                             account",
                            table.table_name(),
                            endpoint.url
                        )))
                    }
                    Some(Err(e)) => return Err(map_err("read", e)),
                    _ => {}
                }
            }
        }
        Ok(TableStore {
            location: format!(
                "{} (tables {}, {})",
                endpoint.url,
                streams.table_name(),
                requests.table_name()
            ),
            streams,
            requests,
        })
    }

    /// Point read; `None` on 404.
    pub(super) async fn get(
        &self,
        table: &TableClient,
        pk: &str,
        rk: &str,
    ) -> Result<Option<(Entity, Etag)>> {
        let res = table
            .partition_key_client(pk.replace('\'', "''"))
            .entity_client(rk.replace('\'', "''"))
            .get::<Entity>()
            .await;
        match res {
            Ok(r) => Ok(Some((r.entity, r.etag))),
            Err(e) if status_of(&e) == Some(StatusCode::NotFound) => Ok(None),
            Err(e) => Err(map_err("read", e)),
        }
    }

    /// All entities matching `filter`, following continuation tokens.
    async fn query(&self, table: &TableClient, filter: String) -> Result<Vec<Entity>> {
        let mut pages = table.query().filter(filter).into_stream::<Entity>();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            out.extend(page.map_err(|e| map_err("query", e))?.entities);
        }
        Ok(out)
    }

    /// Rows of one stream whose RowKey starts with `<prefix>|`, in RowKey order.
    async fn stream_rows(&self, stream: &str, prefix: &str) -> Result<Vec<Entity>> {
        if !valid_key(stream) {
            return Ok(Vec::new());
        }
        // '}' follows '|' in ASCII: the range is exactly the keys starting with "<prefix>|".
        let filter = format!(
            "PartitionKey eq {} and RowKey ge '{prefix}|' and RowKey lt '{prefix}}}'",
            lit(stream)
        );
        self.query(&self.streams, filter).await
    }
}

async fn create_table(table: &TableClient) -> Result<()> {
    match table.create().await {
        Ok(_) => Ok(()),
        Err(e) if status_of(&e) == Some(StatusCode::Conflict) => Ok(()),
        Err(e) if matches!(status_of(&e).map(u16::from), Some(401 | 403)) => {
            Err(StoreError::Config(format!(
                "Table Storage refused the credentials while creating table {} ({})",
                table.table_name(),
                u16::from(status_of(&e).expect("matched"))
            )))
        }
        Err(e) => Err(map_err(&format!("create table {}", table.table_name()), e)),
    }
}

#[async_trait]
impl Store for TableStore {
    fn backend(&self) -> &'static str {
        "azure_tables"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn ping(&self) -> Result<()> {
        let mut pages = self
            .streams
            .query()
            .filter("PartitionKey eq 'ping' and RowKey eq 'ping'")
            .top(1)
            .into_stream::<Entity>();
        match pages.next().await {
            Some(Err(e)) => Err(map_err("ping", e)),
            _ => Ok(()),
        }
    }

    async fn backup(
        &self,
        to: &std::path::Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<crate::storage::BackupWritten> {
        let n = self.backup_to_file(to, progress).await?;
        Ok(crate::storage::BackupWritten { entities: Some(n) })
    }
}

#[async_trait]
impl IncidentStore for TableStore {
    async fn ingest(&self, delivery: &Delivery, routing: &Routing) -> Result<Vec<EventOutcome>> {
        // Streams are independent partitions: run them concurrently, each in delivery order.
        let mut by_stream: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, da) in delivery.alerts.iter().enumerate() {
            by_stream.entry(stream_key(&da.alert)).or_default().push(i);
        }
        let per_stream = by_stream.into_values().map(|idxs| async move {
            let mut out = Vec::with_capacity(idxs.len());
            for i in idxs {
                let da = &delivery.alerts[i];
                out.push((i, self.ingest_alert(delivery, da, routing).await?));
            }
            Ok::<_, StoreError>(out)
        });
        let mut outcomes: Vec<(usize, EventOutcome)> = futures::future::try_join_all(per_stream)
            .await?
            .into_iter()
            .flatten()
            .collect();
        outcomes.sort_by_key(|(i, _)| *i);
        let outcomes: Vec<EventOutcome> = outcomes.into_iter().map(|(_, o)| o).collect();

        if crate::storage::plan::keeps_raw_request(delivery, &outcomes) {
            if !valid_key(&delivery.request_id) {
                return Err(StoreError::Corrupt(format!(
                    "request id {:?} cannot be a RowKey",
                    delivery.request_id
                )));
            }
            let req = RawRequest {
                request_id: delivery.request_id.clone(),
                source: delivery.source,
                received_at: delivery.received_at,
                body: delivery.raw_body.clone(),
            };
            let entity = rows::request_entity(&req)?;
            let day = delivery.received_at.format("%Y%m%d").to_string();
            self.requests
                .partition_key_client(day)
                .entity_client(req.request_id.replace('\'', "''"))
                .insert_or_replace(&entity)
                .map_err(|e| map_err("store request", e))?
                .await
                .map_err(|e| map_err("store request", e))?;
        }
        Ok(outcomes)
    }

    async fn incident(&self, id: &str) -> Result<Option<Incident>> {
        let Some(stream) = stream_of_id(id).filter(|_| valid_key(id) && id.starts_with("INC-"))
        else {
            return Ok(None);
        };
        match self
            .get(&self.streams, stream, &rows::incident_key(id))
            .await?
        {
            Some((m, _)) => rows::incident_of(&m).map(Some),
            None => Ok(None),
        }
    }

    /// Scans the incident rows of all streams (filtered server-side on `Kind`, status,
    /// severity and opening time), then sorts newest first and keeps `limit` (like SQL `LIMIT`).
    async fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>> {
        let mut q = "Kind eq 'incident'".to_string();
        if let Some(s) = filter.status {
            q.push_str(&format!(" and Status eq {}", lit(s.as_str())));
        }
        if let Some(s) = filter.severity {
            q.push_str(&format!(" and Severity eq {}", lit(s.as_str())));
        }
        if let Some(t) = filter.since {
            q.push_str(&format!(" and OpenedAt ge {}", lit(&rows::ts(t))));
        }
        let mut out = self
            .query(&self.streams, q)
            .await?
            .iter()
            .map(rows::incident_of)
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| b.opened_at.cmp(&a.opened_at).then_with(|| b.id.cmp(&a.id)));
        out.truncate(filter.limit);
        Ok(out)
    }

    async fn event(&self, id: &str) -> Result<Option<StoredEvent>> {
        let Some(stream) = stream_of_id(id).filter(|_| valid_key(id) && id.starts_with("EVT-"))
        else {
            return Ok(None);
        };
        match self
            .get(&self.streams, stream, &rows::event_key(id))
            .await?
        {
            Some((m, _)) => rows::event_of(&m).map(Some),
            None => Ok(None),
        }
    }

    async fn stream_events(&self, stream: &str) -> Result<Vec<StoredEvent>> {
        let mut out = self
            .stream_rows(stream, "event")
            .await?
            .iter()
            .map(rows::event_of)
            .collect::<Result<Vec<_>>>()?;
        // RowKey order is event-id order, which is time order; make receipt time win.
        out.sort_by_key(|e| e.received_at);
        Ok(out)
    }

    /// Looks the request id up across all days (a RowKey filter: scans the requests table).
    async fn raw_request(&self, request_id: &str) -> Result<Option<RawRequest>> {
        if !valid_key(request_id) {
            return Ok(None);
        }
        let rows = self
            .query(
                &self.requests,
                format!(
                    "RowKey eq {} and PartitionKey ne {}",
                    lit(request_id),
                    lit(SECRETS_PARTITION)
                ),
            )
            .await?;
        rows.first().map(rows::request_of).transpose()
    }

    async fn stream_outbox(&self, stream: &str) -> Result<Vec<OutboxRow>> {
        let mut out = self
            .stream_rows(stream, "outbox")
            .await?
            .iter()
            .map(rows::outbox_of)
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|o| o.seq);
        Ok(out)
    }

    /// Scans all event rows (only their keys are transferred).
    async fn count_events(&self) -> Result<u64> {
        let mut pages = self
            .streams
            .query()
            .filter("Kind eq 'event'")
            .select("PartitionKey,RowKey")
            .into_stream::<Entity>();
        let mut n = 0u64;
        while let Some(page) = pages.next().await {
            n += page.map_err(|e| map_err("count events", e))?.entities.len() as u64;
        }
        Ok(n)
    }
}

#[async_trait]
impl OutboxStore for TableStore {
    async fn outbox_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        stream: Option<&str>,
    ) -> Result<Vec<OutboxRow>> {
        self.due(now, limit, stream).await
    }

    async fn outbox_lease(
        &self,
        row: &OutboxRow,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<OutboxRow>> {
        self.lease(row, owner, now, until).await
    }

    async fn outbox_settle(&self, leased: &OutboxRow, settle: &Settle) -> Result<bool> {
        self.settle(leased, settle).await
    }

    async fn outbox_get(&self, stream: &str, seq: u64) -> Result<Option<OutboxRow>> {
        self.outbox_row(stream, seq).await
    }

    async fn outbox_list(&self, filter: &OutboxFilter) -> Result<Vec<OutboxRow>> {
        self.list(filter).await
    }

    async fn outbox_stats(
        &self,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<&'static str, crate::storage::OutboxStats>> {
        self.stats(now).await
    }

    async fn outbox_redrive(&self, stream: &str, seq: u64, now: DateTime<Utc>) -> Result<bool> {
        self.redrive(stream, seq, now).await
    }
}

#[async_trait]
impl DocStore for TableStore {
    async fn doc_get(&self, partition: &str, key: &str) -> Result<Option<Doc>> {
        self.doc_read(partition, key).await
    }

    async fn doc_list(&self, partition: &str, prefix: &str) -> Result<Vec<Doc>> {
        self.doc_range(partition, prefix).await
    }

    async fn doc_commit(&self, commit: &DocCommit) -> Result<bool> {
        self.doc_write(commit).await
    }
}

#[async_trait]
impl AuditStore for TableStore {
    async fn audit_partitions(&self) -> Result<Vec<String>> {
        // Every row's PartitionKey (a full scan, the price of finding records no chain knows).
        let mut pages = self
            .streams
            .query()
            .select(azure_data_tables::Select::new("PartitionKey"))
            .into_stream::<Entity>();
        let mut out = std::collections::BTreeSet::new();
        while let Some(page) = pages.next().await {
            for e in page.map_err(|e| map_err("query", e))?.entities {
                if let Some(p) = e.get("PartitionKey").and_then(serde_json::Value::as_str) {
                    out.insert(p.to_string());
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn audit_heads(&self) -> Result<Vec<(String, u64, String)>> {
        let rows = self
            .query(&self.streams, format!("RowKey eq {}", lit(rows::HEAD)))
            .await?;
        let mut out = Vec::new();
        for m in &rows {
            if let Some((seq, hash)) = rows::audit_head_of(m)? {
                out.push((rows::get_str(m, "PartitionKey")?, seq, hash));
            }
        }
        out.sort();
        Ok(out)
    }

    async fn audit_state(
        &self,
        partition: &str,
    ) -> Result<crate::domain::audit_chain::PartitionState> {
        use crate::domain::audit_chain::{event_body, incident_body, kind};
        let mut st = crate::domain::audit_chain::PartitionState::default();
        if !valid_key(partition) {
            return Ok(st);
        }
        let rows = self
            .query(&self.streams, format!("PartitionKey eq {}", lit(partition)))
            .await?;
        for m in &rows {
            let rk = m
                .get("RowKey")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            let unreadable = |e: StoreError| serde_json::json!({"unreadable": e.to_string()});
            if rk == rows::HEAD {
                st.head = rows::audit_head_of(m)?;
            } else if rk.starts_with("audit|") {
                st.entries.push(rows::audit_of(m)?);
            } else if let Some(key) = rk.strip_prefix(rows::DOC_PREFIX) {
                let body = match rows::doc_of(m) {
                    Ok((_, v)) => v,
                    Err(e) => unreadable(e),
                };
                st.records.insert((kind::DOC.into(), key.to_string()), body);
            } else if let Some(id) = rk.strip_prefix("event|") {
                let body = rows::event_of(m)
                    .map(|e| event_body(&e))
                    .unwrap_or_else(unreadable);
                st.records
                    .insert((kind::EVENT.into(), id.to_string()), body);
            } else if let Some(id) = rk.strip_prefix("incident|") {
                let body = rows::incident_of(m)
                    .map(|i| incident_body(&i))
                    .unwrap_or_else(unreadable);
                st.records
                    .insert((kind::INCIDENT.into(), id.to_string()), body);
            }
        }
        Ok(st)
    }

    async fn audit_page(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<crate::domain::audit_chain::AuditEntry>> {
        let range = "RowKey ge 'audit|' and RowKey lt 'audit}'";
        let filter = match after {
            None => range.to_string(),
            Some((p, seq)) => format!(
                "{range} and (PartitionKey gt {pk} or (PartitionKey eq {pk} and RowKey gt {rk}))",
                pk = lit(p),
                rk = lit(&rows::audit_key(seq))
            ),
        };
        let mut pages = self.streams.query().filter(filter).into_stream::<Entity>();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            for m in page.map_err(|e| map_err("query", e))?.entities {
                out.push(rows::audit_of(&m)?);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl SecretStore for TableStore {
    async fn secret_put(&self, key: &str, value: &str, now: DateTime<Utc>) -> Result<()> {
        crate::storage::check_secret_key(key)?;
        let mut m = rows::new_entity(SECRETS_PARTITION, key, "secret");
        rows::put_str(&mut m, "Value", value);
        rows::put_str(&mut m, "CreatedAt", &rows::ts(now));
        self.requests
            .partition_key_client(SECRETS_PARTITION)
            .entity_client(key.replace('\'', "''"))
            .insert_or_replace(&m)
            .map_err(|e| map_err("store secret", e))?
            .await
            .map_err(|e| map_err("store secret", e))?;
        Ok(())
    }

    async fn secret_get(&self, key: &str) -> Result<Option<String>> {
        if !crate::storage::valid_secret_key(key) {
            return Ok(None);
        }
        match self.get(&self.requests, SECRETS_PARTITION, key).await? {
            Some((m, _)) => rows::get_str(&m, "Value").map(Some),
            None => Ok(None),
        }
    }

    async fn secret_delete(&self, key: &str) -> Result<bool> {
        if !crate::storage::valid_secret_key(key) {
            return Ok(false);
        }
        let res = self
            .requests
            .partition_key_client(SECRETS_PARTITION)
            .entity_client(key.replace('\'', "''"))
            .delete()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(StatusCode::NotFound) => Ok(false),
            Err(e) => Err(map_err("delete secret", e)),
        }
    }
}
