//! `sqlite://PATH`: the embedded default store, one SQLite file, no other service needed.
//!
//! Every call runs in one immediate transaction on a blocking thread, so several server
//! processes can share one file. No lease rule lives here: writes are compare-and-set on
//! the row's `version` (the contract of [`LeaseStore::write_leases`]).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{Checkpoint, GroupKey, Lease, LeaseStore, LeaseWrite, SessionRecord, StoreError, StoreResult, Versioned};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS leases_v2 (
    app TEXT NOT NULL,
    stream TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    owner TEXT,
    epoch INTEGER NOT NULL,
    checkpoint TEXT NOT NULL,
    sub_sequence INTEGER NOT NULL,
    parents TEXT NOT NULL,
    closed INTEGER NOT NULL,
    handoff_to TEXT,
    PRIMARY KEY (app, stream, shard_id)
);
CREATE TABLE IF NOT EXISTS sessions_v2 (
    app TEXT NOT NULL,
    stream TEXT NOT NULL,
    session_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    heartbeat INTEGER NOT NULL,
    instance_id TEXT NOT NULL,
    client_name TEXT NOT NULL,
    PRIMARY KEY (app, stream, session_id)
);
CREATE TABLE IF NOT EXISTS lease_generations_v2 (
    app TEXT NOT NULL,
    stream TEXT NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (app, stream)
);
";

const LEASE_COLUMNS: &str = "version, shard_id, owner, epoch, checkpoint, sub_sequence, parents, closed, handoff_to";
const SESSION_COLUMNS: &str = "version, session_id, instance_id, client_name, heartbeat";

/// A lease store in one SQLite file.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

/// A lease row with its checkpoint still in stored form (text, sub-sequence).
type RawLease = (Versioned<Lease>, String, i64);

fn lease_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawLease> {
    let parents: String = row.get(6)?;
    let lease = Lease {
        shard_id: row.get(1)?,
        owner: row.get(2)?,
        epoch: row.get::<_, i64>(3)? as u64,
        checkpoint: Checkpoint::None,
        parent_shard_ids: parents.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        closed: row.get::<_, i64>(7)? != 0,
        handoff_to: row.get(8)?,
    };
    Ok((Versioned { version: row.get::<_, i64>(0)? as u64, value: lease }, row.get(4)?, row.get(5)?))
}

fn finish_lease((mut lease, text, sub): RawLease) -> StoreResult<Versioned<Lease>> {
    lease.value.checkpoint = Checkpoint::from_stored(&text, sub as u64)?;
    Ok(lease)
}

fn session_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Versioned<SessionRecord>> {
    Ok(Versioned {
        version: row.get::<_, i64>(0)? as u64,
        value: SessionRecord {
            session_id: row.get(1)?,
            instance_id: row.get(2)?,
            client_name: row.get(3)?,
            heartbeat: row.get::<_, i64>(4)? as u64,
        },
    })
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

    async fn in_tx<T, F>(&self, group: &GroupKey, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &GroupKey) -> StoreResult<T> + Send + 'static,
    {
        let (conn, group) = (self.conn.clone(), group.clone());
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let out = f(&tx, &group)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn read_leases(&self, group: &GroupKey) -> StoreResult<Vec<Versioned<Lease>>> {
        self.in_tx(group, |tx, g| {
            let sql = format!("SELECT {LEASE_COLUMNS} FROM leases_v2 WHERE app = ?1 AND stream = ?2 ORDER BY shard_id");
            let mut stmt = tx.prepare(&sql).map_err(backend)?;
            let rows = stmt.query_map(params![g.app, g.stream], lease_from_row).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)?.into_iter().map(finish_lease).collect()
        })
        .await
    }

    async fn read_lease(&self, group: &GroupKey, shard_id: &str) -> StoreResult<Option<Versioned<Lease>>> {
        let shard_id = shard_id.to_owned();
        self.in_tx(group, move |tx, g| {
            let sql = format!("SELECT {LEASE_COLUMNS} FROM leases_v2 WHERE app = ?1 AND stream = ?2 AND shard_id = ?3");
            let row = tx.query_row(&sql, params![g.app, g.stream, shard_id], lease_from_row).optional();
            row.map_err(backend)?.map(finish_lease).transpose()
        })
        .await
    }

    async fn write_leases(&self, group: &GroupKey, writes: &[LeaseWrite]) -> StoreResult<Vec<Option<u64>>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let writes = writes.to_vec();
        self.in_tx(group, move |tx, g| {
            // The compare-and-set of `LeaseStore::write_leases`: create only if absent,
            // replace only at the expected version.
            let mut insert = tx
                .prepare(
                    "INSERT INTO leases_v2 (app, stream, shard_id, version, owner, epoch, checkpoint, sub_sequence,
                         parents, closed, handoff_to)
                     VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
                )
                .map_err(backend)?;
            let mut update = tx
                .prepare(
                    "UPDATE leases_v2 SET version = version + 1, owner = ?4, epoch = ?5, checkpoint = ?6,
                         sub_sequence = ?7, parents = ?8, closed = ?9, handoff_to = ?10
                     WHERE app = ?1 AND stream = ?2 AND shard_id = ?3 AND version = ?11",
                )
                .map_err(backend)?;
            let mut out = Vec::with_capacity(writes.len());
            for w in &writes {
                let l = &w.lease;
                let (epoch, sub) = (l.epoch as i64, l.checkpoint.sub_sequence() as i64);
                let (parents, closed) = (l.parent_shard_ids.join(","), l.closed as i64);
                let (text, handoff) = (l.checkpoint.as_text(), &l.handoff_to);
                let (app, stream, shard, owner) = (&g.app, &g.stream, &l.shard_id, &l.owner);
                let n = match w.expected {
                    None => {
                        insert.execute(params![app, stream, shard, owner, epoch, text, sub, parents, closed, handoff])
                    }
                    Some(v) => update.execute(params![
                        app, stream, shard, owner, epoch, text, sub, parents, closed, handoff, v as i64
                    ]),
                }
                .map_err(backend)?;
                out.push((n == 1).then(|| w.expected.map_or(1, |v| v + 1)));
            }
            if out.iter().any(Option::is_some) {
                tx.execute(
                    "INSERT INTO lease_generations_v2 (app, stream, generation) VALUES (?1, ?2, 1)
                     ON CONFLICT (app, stream) DO UPDATE SET generation = generation + 1",
                    params![g.app, g.stream],
                )
                .map_err(backend)?;
            }
            Ok(out)
        })
        .await
    }

    async fn lease_generation(&self, group: &GroupKey) -> StoreResult<u64> {
        self.in_tx(group, |tx, g| {
            let sql = "SELECT generation FROM lease_generations_v2 WHERE app = ?1 AND stream = ?2";
            let n: Option<i64> =
                tx.query_row(sql, params![g.app, g.stream], |r| r.get(0)).optional().map_err(backend)?;
            Ok(n.unwrap_or(0) as u64)
        })
        .await
    }

    async fn read_sessions(&self, group: &GroupKey) -> StoreResult<Vec<Versioned<SessionRecord>>> {
        self.in_tx(group, |tx, g| {
            let sql =
                format!("SELECT {SESSION_COLUMNS} FROM sessions_v2 WHERE app = ?1 AND stream = ?2 ORDER BY session_id");
            let mut stmt = tx.prepare(&sql).map_err(backend)?;
            let rows = stmt.query_map(params![g.app, g.stream], session_from_row).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn write_session(
        &self,
        group: &GroupKey,
        session: &SessionRecord,
        expected: Option<u64>,
    ) -> StoreResult<Option<u64>> {
        let s = session.clone();
        self.in_tx(group, move |tx, g| {
            // The compare-and-set of `LeaseStore::write_session`.
            let hb = s.heartbeat as i64;
            let n = match expected {
                None => tx.execute(
                    "INSERT INTO sessions_v2 (app, stream, session_id, version, heartbeat, instance_id, client_name)
                     VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                    params![g.app, g.stream, s.session_id, hb, s.instance_id, s.client_name],
                ),
                Some(v) => tx.execute(
                    "UPDATE sessions_v2 SET version = version + 1, heartbeat = ?4, instance_id = ?5, client_name = ?6
                     WHERE app = ?1 AND stream = ?2 AND session_id = ?3 AND version = ?7",
                    params![g.app, g.stream, s.session_id, hb, s.instance_id, s.client_name, v as i64],
                ),
            }
            .map_err(backend)?;
            Ok((n == 1).then(|| expected.map_or(1, |v| v + 1)))
        })
        .await
    }

    async fn beat_sessions(&self, group: &GroupKey, session_ids: &[String]) -> StoreResult<Vec<String>> {
        let ids = session_ids.to_vec();
        self.in_tx(group, move |tx, g| {
            let mut stmt = tx
                .prepare(
                    "UPDATE sessions_v2 SET version = version + 1, heartbeat = heartbeat + 1
                     WHERE app = ?1 AND stream = ?2 AND session_id = ?3",
                )
                .map_err(backend)?;
            let mut missing = Vec::new();
            for id in ids {
                if stmt.execute(params![g.app, g.stream, id]).map_err(backend)? == 0 {
                    missing.push(id);
                }
            }
            Ok(missing)
        })
        .await
    }

    async fn delete_session(&self, group: &GroupKey, session_id: &str, expected: Option<u64>) -> StoreResult<bool> {
        let id = session_id.to_owned();
        self.in_tx(group, move |tx, g| {
            let n = tx
                .execute(
                    "DELETE FROM sessions_v2 WHERE app = ?1 AND stream = ?2 AND session_id = ?3
                         AND (?4 IS NULL OR version = ?4)",
                    params![g.app, g.stream, id, expected.map(|v| v as i64)],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        let g = GroupKey::new("", "");
        self.in_tx(&g, |tx, _| tx.query_row("SELECT 1", [], |_| Ok(())).map_err(backend)).await
    }
}
