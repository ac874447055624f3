//! PostgreSQL store: `postgres://…` / `postgresql://…`.
//!
//! Tables `kb_leases_v2`, `kb_sessions_v2` and `kb_lease_generations_v2` live in the schema
//! named by the URL's optional `schema=…` query parameter (default `public`) and are created
//! on open. Every call is one statement, except a lease write: one transaction that takes
//! the group's next generation (queueing the group's writers on that row) and stamps the
//! rows it writes with it, which makes the changed-since read exact. No lease rule lives
//! here: writes are compare-and-set on the row's `version` (the contract of
//! [`LeaseStore`]). A few connections are kept for reads and writes, and one more for
//! session renewals and pings; one that died is reopened on the next call.
//!
//! TLS: `sslmode=require` connects over TLS (rustls) and verifies the server certificate
//! against the system roots, or against the PEM file named by `sslrootcert=PATH`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard, Semaphore, SemaphorePermit};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    take_query_param, watch_stream, Checkpoint, GroupKey, Lease, LeaseStore, LeaseWrite, SessionRecord, StoreError,
    StoreResult, Versioned,
};
use crate::redact::redact_url;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS kb_leases_v2 (
    app TEXT NOT NULL,
    stream TEXT NOT NULL,
    shard_id TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    owner TEXT,
    epoch BIGINT NOT NULL,
    checkpoint TEXT NOT NULL,
    sub_sequence BIGINT NOT NULL,
    parents TEXT[] NOT NULL,
    closed BOOLEAN NOT NULL,
    handoff_to TEXT,
    PRIMARY KEY (app, stream, shard_id)
);
CREATE TABLE IF NOT EXISTS kb_sessions_v2 (
    app TEXT NOT NULL,
    stream TEXT NOT NULL,
    session_id TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    heartbeat BIGINT NOT NULL,
    instance_id TEXT NOT NULL,
    client_name TEXT NOT NULL,
    PRIMARY KEY (app, stream, session_id)
);
CREATE TABLE IF NOT EXISTS kb_lease_generations_v2 (
    app TEXT NOT NULL,
    stream TEXT NOT NULL,
    generation BIGINT NOT NULL,
    PRIMARY KEY (app, stream)
);
"#;

/// Upgrades tables created before the changed-since read (`changed` stays 0 there: such
/// leases are only in whole reads until written again).
const SCHEMA_CHANGED: &str = r#"
ALTER TABLE kb_leases_v2 ADD COLUMN IF NOT EXISTS changed BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS kb_leases_v2_changed ON kb_leases_v2 (app, stream, changed);
"#;

/// First statement of a batch write's transaction: the group's next generation. Its row
/// lock orders the group's writers, so generation `g` is visible only after every write
/// stamped below `g` committed: what the changed-since read relies on.
const NEXT_GENERATION: &str = r#"
INSERT INTO kb_lease_generations_v2 (app, stream, generation) VALUES ($1, $2, 1)
ON CONFLICT (app, stream) DO UPDATE SET generation = kb_lease_generations_v2.generation + 1
RETURNING generation
"#;

/// One statement for a batch of lease writes, stamped with generation `$12`. Mirrors the
/// compare-and-set of `LeaseStore::write_leases`: a write with no expected version inserts
/// only if the row is absent, any other updates only at that version. The transaction is
/// rolled back when nothing was stored, so the generation moves only on a stored write.
const WRITE_LEASES: &str = r#"
WITH w AS (
    SELECT * FROM unnest($3::text[], $4::bigint[], $5::text[], $6::bigint[], $7::text[], $8::bigint[],
                         $9::text[], $10::bool[], $11::text[])
        AS w(shard_id, expected, owner, epoch, checkpoint, sub_sequence, parents, closed, handoff_to)
), inserted AS (
    INSERT INTO kb_leases_v2 (app, stream, shard_id, version, owner, epoch, checkpoint, sub_sequence, parents,
                              closed, handoff_to, changed)
    SELECT $1, $2, w.shard_id, 1, w.owner, w.epoch, w.checkpoint, w.sub_sequence,
           string_to_array(w.parents, ','), w.closed, w.handoff_to, $12
    FROM w WHERE w.expected IS NULL
    ON CONFLICT DO NOTHING
    RETURNING shard_id, version
), updated AS (
    UPDATE kb_leases_v2 l SET version = l.version + 1, owner = w.owner, epoch = w.epoch,
        checkpoint = w.checkpoint, sub_sequence = w.sub_sequence, parents = string_to_array(w.parents, ','),
        closed = w.closed, handoff_to = w.handoff_to, changed = $12
    FROM w
    WHERE l.app = $1 AND l.stream = $2 AND l.shard_id = w.shard_id AND l.version = w.expected
    RETURNING l.shard_id, l.version
)
SELECT shard_id, version FROM inserted UNION ALL SELECT shard_id, version FROM updated
"#;

/// `LeaseStore::read_leases_since` in one statement (one snapshot): the generation (last
/// column, on every row) and the leases stamped after `$3`; every lease when `$3` is 0 or
/// ahead of the generation; none when the generation is `$3` (one row of NULL lease columns).
const READ_LEASES_SINCE: &str = r#"
SELECT l.version, l.shard_id, l.owner, l.epoch, l.checkpoint, l.sub_sequence, l.parents, l.closed, l.handoff_to,
       g.generation
FROM (SELECT COALESCE(MAX(generation), 0) AS generation FROM kb_lease_generations_v2
      WHERE app = $1 AND stream = $2) g
LEFT JOIN kb_leases_v2 l ON l.app = $1 AND l.stream = $2 AND g.generation <> $3
    AND ($3 = 0 OR g.generation < $3 OR l.changed > $3)
ORDER BY l.shard_id
"#;

/// The LISTEN/NOTIFY channel of `watch` and `notify`; the payload names schema and group.
const CHANGES_CHANNEL: &str = "kb_v2_changes";

/// Connections kept open per store for reads and lease writes (renewals have their own).
const POOL_SIZE: usize = 4;
/// Bound on one operation (including a reconnect).
const OP_TIMEOUT: Duration = Duration::from_secs(15);
/// Session settings: bounded statements, no lock kept by a stalled transaction, and a
/// plan per execution: the generic plan of `WRITE_LEASES` guesses a few rows for the
/// arrays and joins 10,000 leases by a nested loop (66 s measured, 0.15 s planned anew).
const SESSION_SETTINGS: &str = "SET statement_timeout = '10s'; SET idle_in_transaction_session_timeout = '20s'; \
                                SET plan_cache_mode = force_custom_plan;";

/// A lease store in a PostgreSQL database.
pub struct PostgresStore {
    config: Config,
    /// Quoted schema name, if not the default.
    schema: Option<String>,
    shown_url: String,
    /// The TLS connector with `sslmode=require`.
    tls: Option<MakeRustlsConnect>,
    slots: Vec<Mutex<Option<Connection>>>,
    /// One permit per slot: a caller waits for whichever connection is free first.
    free: Semaphore,
    /// The connection of [`Lane::Renewals`].
    renewals: Mutex<Option<Connection>>,
    next: AtomicUsize,
}

/// Which connections an operation runs on.
#[derive(Clone, Copy)]
enum Lane {
    /// The shared pool: reads and lease writes.
    Pool,
    /// A connection of its own for session renewals and pings. A 10,000-lease write, or one
    /// waiting for another instance's row locks, would otherwise hold up the beats behind
    /// it until the other instances judge this one's sessions dead (seen at 10,000 shards).
    Renewals,
}

/// A connection lent to one operation.
struct Lent<'a> {
    conn: MappedMutexGuard<'a, Connection>,
    _permit: Option<SemaphorePermit<'a>>,
}

/// A pooled connection and the statements prepared on it (each statement is parsed once
/// per connection, so a call is one round trip).
struct Connection {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Connection {
    /// `sql` prepared on this connection (parsed once per connection).
    async fn prepared(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
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
    // The driver's Display of a server error is only "db error": name what the server said.
    let text = match e.as_db_error() {
        Some(db) => format!("postgres: {} {}: {}", db.severity(), db.code().code(), db.message()),
        None => format!("postgres: {e}"),
    };
    if unavailable {
        StoreError::Unavailable(text)
    } else {
        StoreError::Backend(text)
    }
}

/// Drives a `watch` connection, forwarding the notifications with `payload` to `tx` until
/// the connection ends or nobody listens any more.
async fn forward_notifications<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    payload: String,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(Ok(message)) = messages.next().await {
        if let tokio_postgres::AsyncMessage::Notification(n) = message {
            if n.payload() == payload && tx.send(()).is_err() {
                break;
            }
        }
    }
}

/// A new connection that LISTENs for the changes of one group; its notifications with
/// `payload` go to the returned receiver while the returned client is kept.
async fn listen(
    config: Config,
    tls: Option<MakeRustlsConnect>,
    payload: String,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<()>), tokio_postgres::Error> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = match tls {
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            tokio::spawn(forward_notifications(connection, payload, tx));
            client
        }
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(forward_notifications(connection, payload, tx));
            client
        }
    };
    client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}")).await?;
    Ok((client, rx))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn lease_from_row(row: &Row) -> StoreResult<Versioned<Lease>> {
    let value = Lease {
        shard_id: row.get(1),
        owner: row.get(2),
        epoch: row.get::<_, i64>(3) as u64,
        checkpoint: Checkpoint::from_stored(row.get(4), row.get::<_, i64>(5) as u64)?,
        parent_shard_ids: row.get(6),
        closed: row.get(7),
        handoff_to: row.get(8),
    };
    Ok(Versioned { version: row.get::<_, i64>(0) as u64, value })
}

fn session_from_row(row: &Row) -> Versioned<SessionRecord> {
    Versioned {
        version: row.get::<_, i64>(0) as u64,
        value: SessionRecord {
            session_id: row.get(1),
            instance_id: row.get(2),
            client_name: row.get(3),
            heartbeat: row.get::<_, i64>(4) as u64,
        },
    }
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
            free: Semaphore::new(POOL_SIZE),
            renewals: Mutex::new(None),
            next: AtomicUsize::new(0),
        };
        let create_schema = store.schema.as_ref().map(|s| format!("CREATE SCHEMA IF NOT EXISTS {s};"));
        store
            .timed(async {
                let mut c = store.client(Lane::Pool).await?;
                let tx = c.conn.client.transaction().await?;
                // Serializes concurrent first starts: CREATE … IF NOT EXISTS can race.
                tx.execute("SELECT pg_advisory_xact_lock(4242674242)", &[]).await?;
                tx.batch_execute(&format!("{}{SCHEMA}{SCHEMA_CHANGED}", create_schema.as_deref().unwrap_or_default()))
                    .await?;
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

    /// A live connection for one operation: on [`Lane::Pool`] whichever pooled one is free
    /// first; reopened if it died.
    async fn client(&self, lane: Lane) -> StoreResult<Lent<'_>> {
        let (mut slot, permit) = match lane {
            Lane::Renewals => (self.renewals.lock().await, None),
            Lane::Pool => {
                let permit = self.free.acquire().await.map_err(|_| StoreError::Unavailable("store closed".into()))?;
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                // A permit means at least one slot is unlocked (slots are only locked here).
                let slot = (0..POOL_SIZE)
                    .find_map(|i| self.slots[(start + i) % POOL_SIZE].try_lock().ok())
                    .expect("a permit per free slot");
                (slot, Some(permit))
            }
        };
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            *slot = Some(Connection { client: self.connect().await?, statements: HashMap::new() });
        }
        Ok(Lent { conn: MutexGuard::map(slot, |c| c.as_mut().expect("connected above")), _permit: permit })
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

    /// The notification payload for `group` (schema included: channels are per database).
    fn change_payload(&self, group: &GroupKey) -> String {
        let schema = self.schema.as_deref().unwrap_or("public");
        format!("{schema}:{}:{}:{}", group.app.len(), group.app, group.stream)
    }

    /// Runs one statement (prepared once per connection) on the pool and returns its rows.
    async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<Row>> {
        self.query_on(Lane::Pool, sql, params).await
    }

    /// Runs one statement (prepared once per connection) on `lane` and returns its rows.
    async fn query_on(
        &self,
        lane: Lane,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<Row>> {
        self.timed(async {
            let mut lent = self.client(lane).await?;
            let conn = &mut *lent.conn;
            let statement = conn.prepared(sql).await?;
            Ok(conn.client.query(&statement, params).await?)
        })
        .await
    }
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn read_leases(&self, group: &GroupKey) -> StoreResult<Vec<Versioned<Lease>>> {
        let sql = concat!(
            "SELECT version, shard_id, owner, epoch, checkpoint, sub_sequence, parents, closed, handoff_to",
            " FROM kb_leases_v2 WHERE app = $1 AND stream = $2 ORDER BY shard_id"
        );
        self.query(sql, &[&group.app, &group.stream]).await?.iter().map(lease_from_row).collect()
    }

    async fn read_lease(&self, group: &GroupKey, shard_id: &str) -> StoreResult<Option<Versioned<Lease>>> {
        let sql = concat!(
            "SELECT version, shard_id, owner, epoch, checkpoint, sub_sequence, parents, closed, handoff_to",
            " FROM kb_leases_v2 WHERE app = $1 AND stream = $2 AND shard_id = $3"
        );
        self.query(sql, &[&group.app, &group.stream, &shard_id]).await?.first().map(lease_from_row).transpose()
    }

    async fn write_leases(&self, group: &GroupKey, writes: &[LeaseWrite]) -> StoreResult<Vec<Option<u64>>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let ls = || writes.iter().map(|w| &w.lease);
        let shards: Vec<&str> = ls().map(|l| l.shard_id.as_str()).collect();
        let expected: Vec<Option<i64>> = writes.iter().map(|w| w.expected.map(|v| v as i64)).collect();
        let owners: Vec<Option<&str>> = ls().map(|l| l.owner.as_deref()).collect();
        let epochs: Vec<i64> = ls().map(|l| l.epoch as i64).collect();
        let checkpoints: Vec<&str> = ls().map(|l| l.checkpoint.as_text()).collect();
        let subs: Vec<i64> = ls().map(|l| l.checkpoint.sub_sequence() as i64).collect();
        let parents: Vec<String> = ls().map(|l| l.parent_shard_ids.join(",")).collect();
        let closed: Vec<bool> = ls().map(|l| l.closed).collect();
        let handoffs: Vec<Option<&str>> = ls().map(|l| l.handoff_to.as_deref()).collect();
        let rows = self
            .timed(async {
                let mut lent = self.client(Lane::Pool).await?;
                let conn = &mut *lent.conn;
                let (next, write) = (conn.prepared(NEXT_GENERATION).await?, conn.prepared(WRITE_LEASES).await?);
                let tx = conn.client.transaction().await?;
                let generation: i64 = tx.query_one(&next, &[&group.app, &group.stream]).await?.get(0);
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
                    &group.app,
                    &group.stream,
                    &shards,
                    &expected,
                    &owners,
                    &epochs,
                    &checkpoints,
                    &subs,
                    &parents,
                    &closed,
                    &handoffs,
                    &generation,
                ];
                let rows = tx.query(&write, &params).await?;
                if rows.is_empty() {
                    tx.rollback().await?;
                } else {
                    tx.commit().await?;
                }
                Ok(rows)
            })
            .await?;
        let stored: std::collections::HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(shards.iter().map(|s| stored.get(*s).map(|v| *v as u64)).collect())
    }

    async fn read_leases_since(&self, group: &GroupKey, since: u64) -> StoreResult<(u64, Vec<Versioned<Lease>>)> {
        let rows = self.query(READ_LEASES_SINCE, &[&group.app, &group.stream, &(since as i64)]).await?;
        let generation = rows.first().map_or(0, |r| r.get::<_, i64>(9) as u64);
        let leases = rows
            .iter()
            .filter(|r| r.get::<_, Option<&str>>(1).is_some())
            .map(lease_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((generation, leases))
    }

    async fn lease_generation(&self, group: &GroupKey) -> StoreResult<u64> {
        let sql = "SELECT generation FROM kb_lease_generations_v2 WHERE app = $1 AND stream = $2";
        Ok(self.query(sql, &[&group.app, &group.stream]).await?.first().map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    async fn read_sessions(&self, group: &GroupKey) -> StoreResult<Vec<Versioned<SessionRecord>>> {
        let sql = "SELECT version, session_id, instance_id, client_name, heartbeat FROM kb_sessions_v2
                   WHERE app = $1 AND stream = $2 ORDER BY session_id";
        Ok(self.query(sql, &[&group.app, &group.stream]).await?.iter().map(session_from_row).collect())
    }

    async fn write_session(
        &self,
        group: &GroupKey,
        session: &SessionRecord,
        expected: Option<u64>,
    ) -> StoreResult<Option<u64>> {
        // Mirrors the compare-and-set of `LeaseStore::write_session`.
        let s = session;
        let hb = s.heartbeat as i64;
        let rows = match expected {
            None => {
                let sql = "INSERT INTO kb_sessions_v2 (app, stream, session_id, version, heartbeat, instance_id,
                               client_name)
                           VALUES ($1, $2, $3, 1, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING version";
                self.query(sql, &[&group.app, &group.stream, &s.session_id, &hb, &s.instance_id, &s.client_name])
                    .await?
            }
            Some(v) => {
                let sql = "UPDATE kb_sessions_v2 SET version = version + 1, heartbeat = $4, instance_id = $5,
                               client_name = $6
                           WHERE app = $1 AND stream = $2 AND session_id = $3 AND version = $7 RETURNING version";
                let v = v as i64;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
                    [&group.app, &group.stream, &s.session_id, &hb, &s.instance_id, &s.client_name, &v];
                self.query(sql, &params).await?
            }
        };
        Ok(rows.first().map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn beat_sessions(&self, group: &GroupKey, session_ids: &[String]) -> StoreResult<Vec<String>> {
        if session_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = "UPDATE kb_sessions_v2 SET version = version + 1, heartbeat = heartbeat + 1
                   WHERE app = $1 AND stream = $2 AND session_id = ANY($3) RETURNING session_id";
        let rows = self.query_on(Lane::Renewals, sql, &[&group.app, &group.stream, &session_ids]).await?;
        let beaten: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(session_ids.iter().filter(|id| !beaten.contains(*id)).cloned().collect())
    }

    async fn delete_session(&self, group: &GroupKey, session_id: &str, expected: Option<u64>) -> StoreResult<bool> {
        // Mirrors the conditional delete of `LeaseStore::delete_session`.
        let sql = "DELETE FROM kb_sessions_v2 WHERE app = $1 AND stream = $2 AND session_id = $3
                       AND ($4::bigint IS NULL OR version = $4) RETURNING 1";
        let expected = expected.map(|v| v as i64);
        Ok(!self.query(sql, &[&group.app, &group.stream, &session_id, &expected]).await?.is_empty())
    }

    /// LISTENs on its own connection. Yields once when listening (changes before it may
    /// have been missed), then on every `notify` of the group; ends when the connection is
    /// lost (callers keep polling meanwhile).
    fn watch(&self, group: &GroupKey) -> Option<BoxStream<'static, ()>> {
        let listening = listen(self.config.clone(), self.tls.clone(), self.change_payload(group));
        let subscribe = async move {
            let (client, rx) = listening.await?;
            Ok::<_, tokio_postgres::Error>(tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |()| {
                // The client lives as long as the stream: dropping it ends the LISTEN.
                let _ = &client;
            }))
        };
        Some(watch_stream(format!("postgres {}", self.shown_url), subscribe))
    }

    async fn notify(&self, group: &GroupKey) -> StoreResult<()> {
        let payload = self.change_payload(group);
        self.query("SELECT pg_notify($1, $2)", &[&CHANGES_CHANNEL, &payload]).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        self.timed(async { Ok(self.client(Lane::Renewals).await?.conn.client.batch_execute("SELECT 1").await?) }).await
    }
}
