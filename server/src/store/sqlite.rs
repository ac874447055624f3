//! The embedded default store: one SQLite file, no other service needed.
//!
//! Every operation runs in an immediate transaction on a blocking thread, so the rules of
//! `rules.rs` see and change one consistent state even with several server processes on
//! one file.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::rules::{acquirable, checkpoint_allowed, released};
use super::{Checkpoint, GroupKey, HeldLease, Lease, LeaseStore, SessionRecord, ShardInfo, StoreError, StoreResult};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS leases (
    app TEXT NOT NULL,
    stream TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    owner TEXT,
    epoch INTEGER NOT NULL DEFAULT 0,
    expires_at_ms INTEGER NOT NULL DEFAULT 0,
    checkpoint TEXT NOT NULL DEFAULT '',
    sub_sequence INTEGER NOT NULL DEFAULT 0,
    parents TEXT NOT NULL DEFAULT '',
    closed INTEGER NOT NULL DEFAULT 0,
    handoff_to TEXT,
    PRIMARY KEY (app, stream, shard_id)
);
CREATE TABLE IF NOT EXISTS sessions (
    app TEXT NOT NULL,
    stream TEXT NOT NULL,
    session_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    client_name TEXT NOT NULL DEFAULT '',
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (app, stream, session_id)
);
";

const LEASE_COLUMNS: &str =
    "shard_id, owner, epoch, expires_at_ms, checkpoint, sub_sequence, parents, closed, handoff_to";

/// A lease store in one SQLite file.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub async fn open(path: &str) -> StoreResult<Self> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || -> StoreResult<Connection> {
            let conn = Connection::open(&path).map_err(|e| StoreError::Backend(format!("cannot open {path}: {e}")))?;
            conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
            conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
            conn.pragma_update(None, "synchronous", "NORMAL").map_err(backend)?;
            conn.execute_batch(SCHEMA).map_err(backend)?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    async fn in_tx<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let out = f(&tx)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A lease row with its checkpoint still in stored form (text, sub-sequence).
type RawLease = (Lease, String, i64);

fn lease_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawLease> {
    let parents: String = row.get(6)?;
    Ok((
        Lease {
            shard_id: row.get(0)?,
            owner: row.get(1)?,
            epoch: row.get::<_, i64>(2)? as u64,
            expires_at_ms: row.get(3)?,
            checkpoint: Checkpoint::None,
            parent_shard_ids: split_parents(&parents),
            closed: row.get::<_, i64>(7)? != 0,
            handoff_to: row.get(8)?,
        },
        row.get(4)?,
        row.get(5)?,
    ))
}

fn split_parents(text: &str) -> Vec<String> {
    text.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn finish_lease((mut lease, text, sub): RawLease) -> StoreResult<Lease> {
    lease.checkpoint = Checkpoint::from_stored(&text, sub as u64)?;
    Ok(lease)
}

fn read_lease(tx: &Transaction<'_>, group: &GroupKey, shard_id: &str) -> StoreResult<Lease> {
    let row = tx
        .query_row(
            &format!("SELECT {LEASE_COLUMNS} FROM leases WHERE app = ?1 AND stream = ?2 AND shard_id = ?3"),
            params![group.app, group.stream, shard_id],
            lease_from_row,
        )
        .optional()
        .map_err(backend)?;
    match row {
        Some(row) => finish_lease(row),
        None => Err(StoreError::NotFound {
            app: group.app.clone(),
            stream: group.stream.clone(),
            shard_id: shard_id.to_owned(),
        }),
    }
}

fn write_lease(tx: &Transaction<'_>, group: &GroupKey, lease: &Lease) -> StoreResult<()> {
    tx.execute(
        "UPDATE leases SET owner = ?4, epoch = ?5, expires_at_ms = ?6, checkpoint = ?7,
             sub_sequence = ?8, handoff_to = ?9
         WHERE app = ?1 AND stream = ?2 AND shard_id = ?3",
        params![
            group.app,
            group.stream,
            lease.shard_id,
            lease.owner,
            lease.epoch as i64,
            lease.expires_at_ms,
            lease.checkpoint.as_text(),
            lease.checkpoint.sub_sequence() as i64,
            lease.handoff_to,
        ],
    )
    .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn sync_shards(&self, group: &GroupKey, shards: &[ShardInfo]) -> StoreResult<()> {
        let group = group.clone();
        let shards = shards.to_vec();
        self.in_tx(move |tx| {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO leases (app, stream, shard_id, parents, closed) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (app, stream, shard_id) DO UPDATE SET
                         parents = excluded.parents, closed = MAX(closed, excluded.closed)",
                )
                .map_err(backend)?;
            for s in &shards {
                stmt.execute(params![
                    group.app,
                    group.stream,
                    s.shard_id,
                    s.parent_shard_ids.join(","),
                    s.closed as i64
                ])
                .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn list_leases(&self, group: &GroupKey) -> StoreResult<Vec<Lease>> {
        let group = group.clone();
        self.in_tx(move |tx| {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {LEASE_COLUMNS} FROM leases WHERE app = ?1 AND stream = ?2 ORDER BY shard_id"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![group.app, group.stream], lease_from_row)
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            rows.into_iter().map(finish_lease).collect()
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
        let (group, shard_id, owner) = (group.clone(), shard_id.to_owned(), owner.to_owned());
        self.in_tx(move |tx| {
            let mut lease = read_lease(tx, &group, &shard_id)?;
            if !acquirable(&lease, expected_epoch, now_ms) {
                return Ok(None);
            }
            lease.owner = Some(owner);
            lease.epoch += 1;
            lease.expires_at_ms = expires_at_ms;
            lease.handoff_to = None;
            write_lease(tx, &group, &lease)?;
            Ok(Some(lease))
        })
        .await
    }

    async fn renew(&self, group: &GroupKey, held: &[HeldLease], expires_at_ms: i64) -> StoreResult<Vec<String>> {
        let group = group.clone();
        let held = held.to_vec();
        self.in_tx(move |tx| {
            let mut stmt = tx
                .prepare(
                    "UPDATE leases SET expires_at_ms = ?6
                     WHERE app = ?1 AND stream = ?2 AND shard_id = ?3 AND owner = ?4 AND epoch = ?5",
                )
                .map_err(backend)?;
            let mut lost = Vec::new();
            for h in &held {
                let n = stmt
                    .execute(params![group.app, group.stream, h.shard_id, h.owner, h.epoch as i64, expires_at_ms])
                    .map_err(backend)?;
                if n == 0 {
                    lost.push(h.shard_id.clone());
                }
            }
            Ok(lost)
        })
        .await
    }

    async fn release(
        &self,
        group: &GroupKey,
        shard_id: &str,
        owner: &str,
        epoch: u64,
        expires_at_ms: i64,
    ) -> StoreResult<Option<Lease>> {
        let (group, shard_id, owner) = (group.clone(), shard_id.to_owned(), owner.to_owned());
        self.in_tx(move |tx| {
            let lease = read_lease(tx, &group, &shard_id)?;
            let Some(next) = released(&lease, &owner, epoch, expires_at_ms) else {
                return Ok(None);
            };
            write_lease(tx, &group, &next)?;
            Ok(Some(next))
        })
        .await
    }

    async fn request_handoff(&self, group: &GroupKey, shard_id: &str, epoch: u64, to: &str) -> StoreResult<bool> {
        let (group, shard_id, to) = (group.clone(), shard_id.to_owned(), to.to_owned());
        self.in_tx(move |tx| {
            let n = tx
                .execute(
                    "UPDATE leases SET handoff_to = ?5
                     WHERE app = ?1 AND stream = ?2 AND shard_id = ?3 AND epoch = ?4 AND owner IS NOT NULL",
                    params![group.app, group.stream, shard_id, epoch as i64, to],
                )
                .map_err(backend)?;
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
        let (group, shard_id, owner, checkpoint) =
            (group.clone(), shard_id.to_owned(), owner.to_owned(), checkpoint.clone());
        self.in_tx(move |tx| {
            let mut lease = read_lease(tx, &group, &shard_id)?;
            checkpoint_allowed(&group, &lease, &owner, epoch, &checkpoint)?;
            lease.checkpoint = checkpoint;
            write_lease(tx, &group, &lease)
        })
        .await
    }

    async fn put_session(&self, group: &GroupKey, session: &SessionRecord) -> StoreResult<()> {
        let (group, s) = (group.clone(), session.clone());
        self.in_tx(move |tx| {
            tx.execute(
                "INSERT INTO sessions (app, stream, session_id, instance_id, client_name, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (app, stream, session_id) DO UPDATE SET
                     instance_id = excluded.instance_id, client_name = excluded.client_name,
                     expires_at_ms = excluded.expires_at_ms",
                params![group.app, group.stream, s.session_id, s.instance_id, s.client_name, s.expires_at_ms],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn renew_sessions(&self, group: &GroupKey, session_ids: &[String], expires_at_ms: i64) -> StoreResult<()> {
        let (group, ids) = (group.clone(), session_ids.to_vec());
        self.in_tx(move |tx| {
            let mut stmt = tx
                .prepare("UPDATE sessions SET expires_at_ms = ?4 WHERE app = ?1 AND stream = ?2 AND session_id = ?3")
                .map_err(backend)?;
            for id in &ids {
                stmt.execute(params![group.app, group.stream, id, expires_at_ms]).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn drop_session(&self, group: &GroupKey, session_id: &str) -> StoreResult<()> {
        let (group, id) = (group.clone(), session_id.to_owned());
        self.in_tx(move |tx| {
            tx.execute(
                "DELETE FROM sessions WHERE app = ?1 AND stream = ?2 AND session_id = ?3",
                params![group.app, group.stream, id],
            )
            .map_err(backend)?;
            tx.execute(
                "UPDATE leases SET owner = NULL, epoch = epoch + 1, expires_at_ms = 0, handoff_to = NULL
                 WHERE app = ?1 AND stream = ?2 AND owner = ?3",
                params![group.app, group.stream, id],
            )
            .map_err(backend)?;
            tx.execute(
                "UPDATE leases SET handoff_to = NULL WHERE app = ?1 AND stream = ?2 AND handoff_to = ?3",
                params![group.app, group.stream, id],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list_sessions(&self, group: &GroupKey, now_ms: i64) -> StoreResult<Vec<SessionRecord>> {
        let group = group.clone();
        self.in_tx(move |tx| {
            let mut stmt = tx
                .prepare(
                    "SELECT session_id, instance_id, client_name, expires_at_ms FROM sessions
                     WHERE app = ?1 AND stream = ?2 AND expires_at_ms > ?3 ORDER BY session_id",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![group.app, group.stream, now_ms], |r| {
                    Ok(SessionRecord {
                        session_id: r.get(0)?,
                        instance_id: r.get(1)?,
                        client_name: r.get(2)?,
                        expires_at_ms: r.get(3)?,
                    })
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok(rows)
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.in_tx(|tx| tx.query_row("SELECT 1", [], |_| Ok(())).map_err(backend)).await
    }
}
