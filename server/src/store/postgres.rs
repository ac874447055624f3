//! PostgreSQL lease store.
//!
//! Tables `kb_leases` and `kb_sessions` live in the schema named by the URL's optional
//! `schema=…` query parameter (default `public`) and are created on open. Changes that
//! depend on a lease's state lock its row (`SELECT … FOR UPDATE`) and apply the rules of
//! `rules.rs`; the others are single statements. A few connections are kept; one that died
//! is reopened on the next call.
//!
//! TLS: `sslmode=require` connects over TLS (rustls) and verifies the server certificate
//! against the system roots, or against the PEM file named by `sslrootcert=PATH`.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls, Row, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::rules::{acquirable, checkpoint_allowed, released};
use super::{
    take_query_param, Checkpoint, GroupKey, HeldLease, Lease, LeaseStore, SessionRecord, ShardInfo, StoreError,
    StoreResult, SESSION_RECORD_RETENTION_MS,
};
use crate::redact::redact_url;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS kb_leases (
    app TEXT NOT NULL,
    stream TEXT NOT NULL,
    shard_id TEXT COLLATE "C" NOT NULL,
    owner TEXT,
    epoch BIGINT NOT NULL DEFAULT 0,
    expires_at_ms BIGINT NOT NULL DEFAULT 0,
    checkpoint TEXT NOT NULL DEFAULT '',
    sub_sequence BIGINT NOT NULL DEFAULT 0,
    parents TEXT[] NOT NULL DEFAULT '{}',
    closed BOOLEAN NOT NULL DEFAULT FALSE,
    handoff_to TEXT,
    PRIMARY KEY (app, stream, shard_id)
);
CREATE TABLE IF NOT EXISTS kb_sessions (
    app TEXT NOT NULL,
    stream TEXT NOT NULL,
    session_id TEXT COLLATE "C" NOT NULL,
    instance_id TEXT NOT NULL,
    client_name TEXT NOT NULL DEFAULT '',
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (app, stream, session_id)
);
"#;

const LEASE_COLUMNS: &str =
    "shard_id, owner, epoch, expires_at_ms, checkpoint, sub_sequence, parents, closed, handoff_to";

/// Connections kept open per store.
const POOL_SIZE: usize = 4;
/// Bound on one operation (including a reconnect).
const OP_TIMEOUT: Duration = Duration::from_secs(15);
/// Session settings: bounded statements, and no lock kept by a stalled transaction.
const SESSION_SETTINGS: &str = "SET statement_timeout = '10s'; SET idle_in_transaction_session_timeout = '20s';";

/// A lease store in a PostgreSQL database.
pub struct PostgresStore {
    config: Config,
    /// Quoted schema name, if not the default.
    schema: Option<String>,
    shown_url: String,
    /// The TLS connector with `sslmode=require`.
    tls: Option<MakeRustlsConnect>,
    slots: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
}

/// Failure inside an operation: a driver error (classified later) or a store error.
enum Fail {
    Pg(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

type OpResult<T> = Result<T, Fail>;

fn pg_error(e: &tokio_postgres::Error) -> StoreError {
    // Connection, resources, timeouts and shutdown, deadlock or serialization: worth a retry.
    let unavailable = match e.code() {
        Some(code) => ["08", "53", "57", "40"].iter().any(|class| code.code().starts_with(class)),
        None => e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    };
    if unavailable {
        StoreError::Unavailable(format!("postgres: {e}"))
    } else {
        StoreError::Backend(format!("postgres: {e}"))
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn lease_from_row(row: &Row) -> StoreResult<Lease> {
    Ok(Lease {
        shard_id: row.get(0),
        owner: row.get(1),
        epoch: row.get::<_, i64>(2) as u64,
        expires_at_ms: row.get(3),
        checkpoint: Checkpoint::from_stored(row.get(4), row.get::<_, i64>(5) as u64)?,
        parent_shard_ids: row.get(6),
        closed: row.get(7),
        handoff_to: row.get(8),
    })
}

/// Reads and locks a lease for the rest of the transaction.
async fn read_lease(tx: &Transaction<'_>, group: &GroupKey, shard_id: &str) -> OpResult<Lease> {
    let sql =
        format!("SELECT {LEASE_COLUMNS} FROM kb_leases WHERE app = $1 AND stream = $2 AND shard_id = $3 FOR UPDATE");
    match tx.query_opt(&sql, &[&group.app, &group.stream, &shard_id]).await? {
        Some(row) => Ok(lease_from_row(&row)?),
        None => Err(StoreError::NotFound {
            app: group.app.clone(),
            stream: group.stream.clone(),
            shard_id: shard_id.to_owned(),
        }
        .into()),
    }
}

async fn write_lease(tx: &Transaction<'_>, group: &GroupKey, lease: &Lease) -> OpResult<()> {
    tx.execute(
        "UPDATE kb_leases SET owner = $4, epoch = $5, expires_at_ms = $6, checkpoint = $7,
             sub_sequence = $8, handoff_to = $9
         WHERE app = $1 AND stream = $2 AND shard_id = $3",
        &[
            &group.app,
            &group.stream,
            &lease.shard_id,
            &lease.owner,
            &(lease.epoch as i64),
            &lease.expires_at_ms,
            &lease.checkpoint.as_text(),
            &(lease.checkpoint.sub_sequence() as i64),
            &lease.handoff_to,
        ],
    )
    .await?;
    Ok(())
}

/// rustls settings for `sslmode=require`: the system roots, or the certificates of the
/// PEM file `root_cert`.
fn tls_config(root_cert: Option<&str>) -> StoreResult<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |m: String| StoreError::Backend(format!("postgres TLS: {m}"));
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(format!("sslrootcert {path}: {e}")))? {
                roots
                    .add(cert.map_err(|e| bad(format!("sslrootcert {path}: {e}")))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
        }
        None => {
            let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err(bad("no system root certificates found; name a CA file with sslrootcert=PATH".into()));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl PostgresStore {
    /// Connects to `postgres://…` / `postgresql://…` and creates the tables if needed. An
    /// optional query parameter `schema=…` selects (and creates) the schema.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let (url, schema) = take_query_param(url, "schema");
        let (url, root_cert) = take_query_param(&url, "sslrootcert");
        let shown_url = redact_url(&url);
        let mut config: Config =
            url.parse().map_err(|e| StoreError::Backend(format!("bad postgres URL {shown_url}: {e}")))?;
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(MakeRustlsConnect::new(tls_config(root_cert.as_deref())?)),
            _ if root_cert.is_some() => {
                return Err(StoreError::Backend(format!(
                    "postgres store {shown_url}: sslrootcert needs sslmode=require"
                )))
            }
            _ => None,
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("kinesis-butler");
        let store = Self {
            config,
            schema: schema.filter(|s| !s.is_empty()).map(|s| quote_ident(&s)),
            shown_url,
            tls,
            slots: (0..POOL_SIZE).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        };
        let create_schema = store.schema.as_ref().map(|s| format!("CREATE SCHEMA IF NOT EXISTS {s};"));
        store
            .timed(async {
                let mut c = store.client().await?;
                let tx = c.transaction().await?;
                // Serializes concurrent first starts: CREATE … IF NOT EXISTS can race.
                tx.execute("SELECT pg_advisory_xact_lock(4242674241)", &[]).await?;
                tx.batch_execute(&format!("{}{SCHEMA}", create_schema.as_deref().unwrap_or_default())).await?;
                Ok(tx.commit().await?)
            })
            .await?;
        Ok(store)
    }

    async fn connect(&self) -> StoreResult<Client> {
        let on_err = |e: tokio_postgres::Error| {
            // The driver's message alone hides the cause ("error performing TLS handshake").
            let mut msg = format!("cannot connect to {}: {e}", self.shown_url);
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                msg.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            if e.as_db_error().is_some() {
                StoreError::Backend(msg)
            } else {
                StoreError::Unavailable(msg)
            }
        };
        let closed = |e: tokio_postgres::Error| tracing::warn!("postgres lease store connection closed: {e}");
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await.map_err(on_err)?;
                tokio::spawn(async move { connection.await.unwrap_or_else(closed) });
                client
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(on_err)?;
                tokio::spawn(async move { connection.await.unwrap_or_else(closed) });
                client
            }
        };
        let search_path = self.schema.as_ref().map(|s| format!("SET search_path TO {s};"));
        client
            .batch_execute(&format!("{SESSION_SETTINGS}{}", search_path.unwrap_or_default()))
            .await
            .map_err(on_err)?;
        Ok(client)
    }

    /// A live connection for one operation: an idle pooled one if any, else the next one
    /// to be free; reopened if it died.
    async fn client(&self) -> StoreResult<MappedMutexGuard<'_, Client>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let idle = (0..POOL_SIZE).find_map(|i| self.slots[(start + i) % POOL_SIZE].try_lock().ok());
        let mut slot = match idle {
            Some(slot) => slot,
            None => self.slots[start % POOL_SIZE].lock().await,
        };
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.connect().await?);
        }
        Ok(MutexGuard::map(slot, |c| c.as_mut().expect("connected above")))
    }

    /// Runs one operation with a time bound.
    async fn timed<T>(&self, op: impl Future<Output = OpResult<T>>) -> StoreResult<T> {
        match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Fail::Pg(e))) => Err(pg_error(&e)),
            Ok(Err(Fail::Store(e))) => Err(e),
            Err(_) => Err(StoreError::Unavailable(format!(
                "postgres {} did not answer within {OP_TIMEOUT:?}",
                self.shown_url
            ))),
        }
    }
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn sync_shards(&self, group: &GroupKey, shards: &[ShardInfo]) -> StoreResult<()> {
        // One row per shard id: an upsert may not touch a row twice.
        let unique: BTreeMap<&str, &ShardInfo> = shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();
        let ids: Vec<&str> = unique.keys().copied().collect();
        let parents: Vec<String> = unique.values().map(|s| s.parent_shard_ids.join(",")).collect();
        let closed: Vec<bool> = unique.values().map(|s| s.closed).collect();
        self.timed(async {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO kb_leases (app, stream, shard_id, parents, closed)
                 SELECT $1, $2, s.id, string_to_array(s.parents, ','), s.closed
                 FROM unnest($3::text[], $4::text[], $5::bool[]) AS s(id, parents, closed)
                 ON CONFLICT (app, stream, shard_id) DO UPDATE SET
                     parents = EXCLUDED.parents, closed = kb_leases.closed OR EXCLUDED.closed",
                &[&group.app, &group.stream, &ids, &parents, &closed],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn list_leases(&self, group: &GroupKey) -> StoreResult<Vec<Lease>> {
        let sql = format!("SELECT {LEASE_COLUMNS} FROM kb_leases WHERE app = $1 AND stream = $2 ORDER BY shard_id");
        self.timed(async {
            let c = self.client().await?;
            let rows = c.query(&sql, &[&group.app, &group.stream]).await?;
            Ok(rows.iter().map(lease_from_row).collect::<StoreResult<_>>()?)
        })
        .await
    }

    async fn acquire(
        &self,
        group: &GroupKey,
        shard_id: &str,
        expected_epoch: u64,
        owner: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> StoreResult<Option<Lease>> {
        self.timed(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let mut lease = read_lease(&tx, group, shard_id).await?;
            if !acquirable(&lease, expected_epoch, now_ms) {
                return Ok(None);
            }
            lease.owner = Some(owner.to_owned());
            lease.epoch += 1;
            lease.expires_at_ms = expires_at_ms;
            lease.handoff_to = None;
            write_lease(&tx, group, &lease).await?;
            tx.commit().await?;
            Ok(Some(lease))
        })
        .await
    }

    async fn renew(&self, group: &GroupKey, held: &[HeldLease], expires_at_ms: i64) -> StoreResult<Vec<String>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let shards: Vec<&str> = held.iter().map(|h| h.shard_id.as_str()).collect();
        let owners: Vec<&str> = held.iter().map(|h| h.owner.as_str()).collect();
        let epochs: Vec<i64> = held.iter().map(|h| h.epoch as i64).collect();
        let renewed: HashSet<String> = self
            .timed(async {
                let c = self.client().await?;
                let rows = c
                    .query(
                        "UPDATE kb_leases l SET expires_at_ms = $3
                         FROM unnest($4::text[], $5::text[], $6::bigint[]) AS h(shard_id, owner, epoch)
                         WHERE l.app = $1 AND l.stream = $2 AND l.shard_id = h.shard_id
                           AND l.owner = h.owner AND l.epoch = h.epoch
                         RETURNING l.shard_id",
                        &[&group.app, &group.stream, &expires_at_ms, &shards, &owners, &epochs],
                    )
                    .await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
            .await?;
        Ok(held.iter().filter(|h| !renewed.contains(&h.shard_id)).map(|h| h.shard_id.clone()).collect())
    }

    async fn release(
        &self,
        group: &GroupKey,
        shard_id: &str,
        owner: &str,
        epoch: u64,
        expires_at_ms: i64,
    ) -> StoreResult<Option<Lease>> {
        self.timed(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let lease = read_lease(&tx, group, shard_id).await?;
            let Some(next) = released(&lease, owner, epoch, expires_at_ms) else {
                return Ok(None);
            };
            write_lease(&tx, group, &next).await?;
            tx.commit().await?;
            Ok(Some(next))
        })
        .await
    }

    async fn request_handoff(&self, group: &GroupKey, shard_id: &str, epoch: u64, to: &str) -> StoreResult<bool> {
        self.timed(async {
            let c = self.client().await?;
            let n = c
                .execute(
                    "UPDATE kb_leases SET handoff_to = $5
                     WHERE app = $1 AND stream = $2 AND shard_id = $3 AND epoch = $4 AND owner IS NOT NULL",
                    &[&group.app, &group.stream, &shard_id, &(epoch as i64), &to],
                )
                .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn checkpoint(
        &self,
        group: &GroupKey,
        shard_id: &str,
        owner: &str,
        epoch: u64,
        checkpoint: &Checkpoint,
    ) -> StoreResult<()> {
        self.timed(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let mut lease = read_lease(&tx, group, shard_id).await?;
            checkpoint_allowed(group, &lease, owner, epoch, checkpoint)?;
            lease.checkpoint = checkpoint.clone();
            write_lease(&tx, group, &lease).await?;
            Ok(tx.commit().await?)
        })
        .await
    }

    async fn put_session(&self, group: &GroupKey, session: &SessionRecord) -> StoreResult<()> {
        let s = session;
        self.timed(async {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO kb_sessions (app, stream, session_id, instance_id, client_name, expires_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (app, stream, session_id) DO UPDATE SET
                     instance_id = EXCLUDED.instance_id, client_name = EXCLUDED.client_name,
                     expires_at_ms = EXCLUDED.expires_at_ms",
                &[&group.app, &group.stream, &s.session_id, &s.instance_id, &s.client_name, &s.expires_at_ms],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn renew_sessions(&self, group: &GroupKey, session_ids: &[String], expires_at_ms: i64) -> StoreResult<()> {
        if session_ids.is_empty() {
            return Ok(());
        }
        self.timed(async {
            let c = self.client().await?;
            c.execute(
                "UPDATE kb_sessions SET expires_at_ms = $4 WHERE app = $1 AND stream = $2 AND session_id = ANY($3)",
                &[&group.app, &group.stream, &session_ids, &expires_at_ms],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn drop_session(&self, group: &GroupKey, session_id: &str) -> StoreResult<()> {
        self.timed(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&group.app, &group.stream, &session_id];
            tx.execute("DELETE FROM kb_sessions WHERE app = $1 AND stream = $2 AND session_id = $3", &params).await?;
            tx.execute(
                "UPDATE kb_leases SET owner = NULL, epoch = epoch + 1, expires_at_ms = 0, handoff_to = NULL
                 WHERE app = $1 AND stream = $2 AND owner = $3",
                &params,
            )
            .await?;
            tx.execute(
                "UPDATE kb_leases SET handoff_to = NULL WHERE app = $1 AND stream = $2 AND handoff_to = $3",
                &params,
            )
            .await?;
            Ok(tx.commit().await?)
        })
        .await
    }

    async fn list_sessions(&self, group: &GroupKey, now_ms: i64) -> StoreResult<Vec<SessionRecord>> {
        self.timed(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "WITH stale AS (DELETE FROM kb_sessions WHERE app = $1 AND stream = $2 AND expires_at_ms < $4)
                     SELECT session_id, instance_id, client_name, expires_at_ms FROM kb_sessions
                     WHERE app = $1 AND stream = $2 AND expires_at_ms > $3 ORDER BY session_id",
                    &[&group.app, &group.stream, &now_ms, &now_ms.saturating_sub(SESSION_RECORD_RETENTION_MS)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| SessionRecord {
                    session_id: r.get(0),
                    instance_id: r.get(1),
                    client_name: r.get(2),
                    expires_at_ms: r.get(3),
                })
                .collect())
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.timed(async { Ok(self.client().await?.batch_execute("SELECT 1").await?) }).await
    }
}
