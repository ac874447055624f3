//! Lease storage, issue 15: versioned records, every lease rule once in Rust.
//!
//! A backend ([`LeaseStore`]) keeps, per app and stream ([`GroupKey`]), one [`Lease`] per
//! shard and one [`SessionRecord`] per session, each at a version that every write bumps.
//! It offers only reads and versioned compare-and-set writes; the lease rules are the pure
//! functions of [`rules`], applied by the one driver [`Leases`] (read → rule → CAS, retried
//! on a conflict). Liveness is judged per session by observed change of its heartbeat on the
//! observer's own monotonic clock (`coordination::liveness`); no wall clock is stored or compared.
//!
//! Backends: [`memory`] (the in-memory reference), [`sqlite`] (the embedded default),
//! [`redis`] (standalone and Cluster), [`postgres`] and [`dynamodb`]. [`open`] picks one by URL.
//!
//! # Why liveness by observation
//! It is the only scheme every backend supports (DynamoDB has no server clock), it needs no
//! clock agreement at all (design rule 8), and fencing stays in the store's
//! compare-and-set on the lease epoch (rule 2): a session that is wrongly judged dead loses
//! its lease through an acquire that bumps the epoch, and its next checkpoint is refused.
//!
//! # Cost of a round (rule 9)
//! An idle group's round is O(1) calls whatever its number of shards: `beat_sessions`
//! (one call for all of the group's local sessions), `read_sessions`, `lease_generation`,
//! and `read_leases` only when the generation moved. On Redis these are one script (an
//! `HMGET` and an `HSET` inside), one `HGETALL` and one `GET`; on PostgreSQL three
//! statements. With 10,000 shards and a one-second round that is well under 0.01 commands
//! per shard per second.
//!
//! # The DynamoDB backend
//! One table, partition key = the group (`<len(app)>:<app>:<stream>`), sort key = `L#<shard>`
//! for a lease, `S#<session>` for a session, `G` for the generation item; a `version`
//! number attribute on each. `write_leases` is a conditional `PutItem` per write
//! (`attribute_not_exists(pk)` or `version = :expected`, with `version = :expected + 1`)
//! followed by an `UpdateItem ADD generation 1` if any succeeded — independent writes, so
//! no transactions are needed (dynalite has none); a batch costs one request per lease
//! written, which only happens on changes. `read_leases` / `read_sessions` are one `Query`
//! on the partition (paged by `LastEvaluatedKey`, `begins_with(sk, "L#")`);
//! `lease_generation` is a `GetItem`. `beat_sessions` is one conditional `UpdateItem`
//! (`ADD heartbeat 1, version 1` if `attribute_exists`) per local session: O(sessions),
//! not O(shards). `delete_session` is a conditional `DeleteItem`. `watch` returns `None`
//! (DynamoDB Streams are not in dynalite; callers poll). Liveness needs nothing more: no
//! clock is stored.

mod combiner;
pub mod dynamodb;
pub mod leases;
pub mod memory;
pub mod postgres;
pub mod redis;
pub mod rules;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::seqnum::SequenceNumber;

pub use leases::Leases;
pub use memory::MemoryStore;

/// The text stored for a shard that was processed to its end.
pub const SHARD_END: &str = "SHARD_END";

/// One app reading one stream: the scope of leases, sessions and balancing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// Application (consumer group).
    pub app: String,
    /// Stream name.
    pub stream: String,
}

impl GroupKey {
    /// A key for `app` reading `stream`.
    pub fn new(app: impl Into<String>, stream: impl Into<String>) -> Self {
        Self { app: app.into(), stream: stream.into() }
    }
}

/// A shard as the stream lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// Shard id.
    pub shard_id: String,
    /// Parent and adjacent parent, for shards made by a split or merge.
    pub parent_shard_ids: Vec<String>,
    /// The shard was closed by resharding (it has an ending sequence number).
    pub closed: bool,
}

/// How far an app got in a shard.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Checkpoint {
    /// Nothing processed yet: read from the session's start position.
    #[default]
    None,
    /// Processed up to and including this record (and user record inside it).
    At {
        /// Sequence number of the last processed record.
        sequence: SequenceNumber,
        /// Sub-sequence of the last processed user record of an aggregate.
        sub_sequence: u64,
    },
    /// The closed shard was processed to its end.
    ShardEnd,
}

impl Checkpoint {
    /// The stored text: empty, a sequence number, or `SHARD_END`.
    pub fn as_text(&self) -> &str {
        match self {
            Checkpoint::None => "",
            Checkpoint::At { sequence, .. } => sequence.as_str(),
            Checkpoint::ShardEnd => SHARD_END,
        }
    }

    /// The sub-sequence number (0 unless `At`).
    pub fn sub_sequence(&self) -> u64 {
        match self {
            Checkpoint::At { sub_sequence, .. } => *sub_sequence,
            _ => 0,
        }
    }

    /// Rebuilds a checkpoint from its stored text and sub-sequence.
    pub fn from_stored(text: &str, sub_sequence: u64) -> Result<Self, StoreError> {
        match text {
            "" => Ok(Checkpoint::None),
            SHARD_END => Ok(Checkpoint::ShardEnd),
            t => SequenceNumber::parse(t)
                .map(|sequence| Checkpoint::At { sequence, sub_sequence })
                .map_err(|e| StoreError::Backend(format!("corrupt stored checkpoint: {e}"))),
        }
    }

    /// Whether moving from `self` to `next` would go backwards.
    pub fn is_regressed_by(&self, next: &Checkpoint) -> bool {
        match (self, next) {
            (Checkpoint::None, _) => false,
            (_, Checkpoint::None) => true,
            (Checkpoint::ShardEnd, Checkpoint::ShardEnd) => false,
            (Checkpoint::ShardEnd, _) => true,
            (Checkpoint::At { .. }, Checkpoint::ShardEnd) => false,
            (Checkpoint::At { sequence: a, sub_sequence: sa }, Checkpoint::At { sequence: b, sub_sequence: sb }) => {
                (b, sb) < (a, sa)
            }
        }
    }
}

/// A record with the version the store holds it at (bumped by every write; 1 when created).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// Store version of the record.
    pub version: u64,
    /// The record.
    pub value: T,
}

/// The right of one session to read one shard for one app. It is held while its owner is
/// alive (judged by `coordination::liveness`); there is no expiry time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Shard id.
    pub shard_id: String,
    /// Session holding the lease, if any.
    pub owner: Option<String>,
    /// Fencing token, bumped on every change of owner.
    pub epoch: u64,
    /// Stored progress.
    pub checkpoint: Checkpoint,
    /// Parent shards (split or merge).
    pub parent_shard_ids: Vec<String>,
    /// The shard is closed by resharding.
    pub closed: bool,
    /// A session that asked for this lease in a graceful handoff.
    pub handoff_to: Option<String>,
}

impl Lease {
    /// The lease of a newly listed shard: free, epoch 0, no checkpoint.
    pub fn new(shard: &ShardInfo) -> Lease {
        Lease {
            shard_id: shard.shard_id.clone(),
            owner: None,
            epoch: 0,
            checkpoint: Checkpoint::None,
            parent_shard_ids: shard.parent_shard_ids.clone(),
            closed: shard.closed,
            handoff_to: None,
        }
    }

    /// Whether the shard was processed to its end.
    pub fn is_finished(&self) -> bool {
        self.checkpoint == Checkpoint::ShardEnd
    }
}

/// A session as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id.
    pub session_id: String,
    /// Server instance keeping it alive.
    pub instance_id: String,
    /// The client's self-given name.
    pub client_name: String,
    /// Bumped by the session's instance every round; observers judge liveness by its change.
    pub heartbeat: u64,
}

/// One conditional write of a lease: stored only if the lease's current version is
/// `expected` (`None` = the lease must not exist yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseWrite {
    /// The lease as it should be stored.
    pub lease: Lease,
    /// The version the caller read it at, or `None` to create it.
    pub expected: Option<u64>,
}

/// Store failures.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// No lease exists for the shard.
    #[error("no lease for shard {shard_id} of stream {stream} (app {app})")]
    NotFound {
        /// App.
        app: String,
        /// Stream.
        stream: String,
        /// Shard.
        shard_id: String,
    },
    /// The caller does not hold the lease at the epoch it named.
    #[error("lease of shard {shard_id} is not held by session {session} at epoch {epoch} (now owner {current_owner:?}, epoch {current_epoch})")]
    LeaseLost {
        /// Shard.
        shard_id: String,
        /// Caller's session.
        session: String,
        /// Caller's epoch.
        epoch: u64,
        /// Current owner.
        current_owner: Option<String>,
        /// Current epoch.
        current_epoch: u64,
    },
    /// The checkpoint would move backwards.
    #[error("checkpoint of shard {shard_id} would move backwards from {stored} to {requested}")]
    Regression {
        /// Shard.
        shard_id: String,
        /// Stored checkpoint text.
        stored: String,
        /// Requested checkpoint text.
        requested: String,
    },
    /// The store could not be reached, or a write kept conflicting; it may be retried.
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
    /// Any other backend failure.
    #[error("lease store error: {0}")]
    Backend(String),
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Backend primitives. No lease rule lives here: only versioned compare-and-set and reads.
/// Every method is one round trip (one transaction, one Lua script or one statement).
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Every lease of the group, in shard id order.
    async fn read_leases(&self, group: &GroupKey) -> StoreResult<Vec<Versioned<Lease>>>;

    /// One lease, if it exists.
    async fn read_lease(&self, group: &GroupKey, shard_id: &str) -> StoreResult<Option<Versioned<Lease>>>;

    /// Applies each write independently (each shard at most once per call); per write
    /// `Some(new version)`, or `None` on a version conflict.
    async fn write_leases(&self, group: &GroupKey, writes: &[LeaseWrite]) -> StoreResult<Vec<Option<u64>>>;

    /// A number that changes whenever any lease of the group is written (rounds skip
    /// re-reading unchanged leases). 0 before the first write.
    async fn lease_generation(&self, group: &GroupKey) -> StoreResult<u64>;

    /// The leases written after generation `since`, with the generation this read reflects:
    /// at least every lease written since (it may hold more, up to all of them), in shard
    /// id order. Nothing when the generation is still `since`. Rounds merge it into the
    /// leases they hold instead of reading every lease after each change. The default is
    /// [`lease_generation`](Self::lease_generation), then every lease if it moved.
    async fn read_leases_since(&self, group: &GroupKey, since: u64) -> StoreResult<(u64, Vec<Versioned<Lease>>)> {
        let generation = self.lease_generation(group).await?;
        if generation == since {
            return Ok((generation, Vec::new()));
        }
        Ok((generation, self.read_leases(group).await?))
    }

    /// Every session record of the group, in session id order.
    async fn read_sessions(&self, group: &GroupKey) -> StoreResult<Vec<Versioned<SessionRecord>>>;

    /// Creates (`expected` None) or replaces (`expected` Some(v)) a session record; `None`
    /// on a conflict.
    async fn write_session(
        &self,
        group: &GroupKey,
        session: &SessionRecord,
        expected: Option<u64>,
    ) -> StoreResult<Option<u64>>;

    /// Bumps the heartbeat (and version) of each named session that exists, in one round
    /// trip; returns the ids that do not exist, in the order given. The ids are distinct.
    async fn beat_sessions(&self, group: &GroupKey, session_ids: &[String]) -> StoreResult<Vec<String>>;

    /// Deletes a session record (if `expected` is Some, only at that version). Returns
    /// whether it was deleted.
    async fn delete_session(&self, group: &GroupKey, session_id: &str, expected: Option<u64>) -> StoreResult<bool>;

    /// Cheap liveness probe of the backend.
    async fn ping(&self) -> StoreResult<()>;

    /// Optional push: yields whenever another instance changed the group's leases or
    /// sessions. Default: `None` (callers poll).
    fn watch(&self, group: &GroupKey) -> Option<futures::stream::BoxStream<'static, ()>> {
        let _ = group;
        None
    }

    /// Announces a change (join, handoff request, release) to other instances' `watch`.
    /// Default: nothing.
    async fn notify(&self, group: &GroupKey) -> StoreResult<()> {
        let _ = group;
        Ok(())
    }
}

/// Bound on opening the subscription of a `watch`.
const WATCH_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The stream of a backend's `watch`: opens the subscription with `subscribe` (bounded by
/// a timeout) when first polled, yields once when it is in place (changes before it may
/// have been missed), then once per item of the subscription. If it cannot be opened the
/// stream ends at once, with a warning naming `what`; callers keep polling either way.
pub(crate) fn watch_stream<F, S, E>(what: String, subscribe: F) -> futures::stream::BoxStream<'static, ()>
where
    F: std::future::Future<Output = Result<S, E>> + Send + 'static,
    S: futures::Stream<Item = ()> + Send + 'static,
    E: std::fmt::Display,
{
    use futures::stream::{self, StreamExt};
    let opened = async move {
        match tokio::time::timeout(WATCH_CONNECT_TIMEOUT, subscribe).await {
            Ok(Ok(changes)) => stream::once(async {}).chain(changes).boxed(),
            Ok(Err(e)) => {
                tracing::warn!("cannot watch {what}: {e}");
                stream::empty().boxed()
            }
            Err(_) => {
                tracing::warn!("cannot watch {what}: no subscription within {WATCH_CONNECT_TIMEOUT:?}");
                stream::empty().boxed()
            }
        }
    };
    stream::once(opened).flatten().boxed()
}

/// Removes query parameter `name` from a store URL; returns the URL without it and its
/// value (taken verbatim, not percent-decoded). Backends use it for their own options
/// (`prefix=…` for Redis, `schema=…` for PostgreSQL) before handing the URL to a driver.
pub(crate) fn take_query_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => {
                value = Some(v.to_owned());
                false
            }
            _ => !kv.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    (url, value)
}

/// Opens the store named by a URL: `memory://`, `sqlite://PATH`, `redis://…`, `rediss://…`,
/// `redis+cluster://host:port[,host:port…]`, `rediss+cluster://…`, `postgres://…` /
/// `postgresql://…`.
pub async fn open(url: &str) -> StoreResult<Arc<dyn LeaseStore>> {
    if url == "memory://" {
        Ok(Arc::new(MemoryStore::new()))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(sqlite::SqliteStore::open(path).await?))
    } else if ["redis://", "rediss://", "redis+cluster://", "rediss+cluster://"].iter().any(|p| url.starts_with(p)) {
        Ok(Arc::new(redis::RedisStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(url).await?))
    } else if url.starts_with("dynamodb://") {
        Ok(Arc::new(dynamodb::DynamoStore::open(url).await?))
    } else {
        Err(StoreError::Backend(format!(
            "unsupported store URL {:?}: use sqlite://PATH, redis://HOST, rediss://HOST, \
             redis+cluster://HOST:PORT[,HOST:PORT…], postgres://… or memory://",
            crate::redact::redact_url(url)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_query_param() {
        let t = |u| take_query_param(u, "prefix");
        assert_eq!(t("redis://h/?prefix=a"), ("redis://h/".into(), Some("a".into())));
        assert_eq!(t("redis://h/0?x=1&prefix=a&y=2"), ("redis://h/0?x=1&y=2".into(), Some("a".into())));
        assert_eq!(t("redis://h"), ("redis://h".into(), None));
        assert_eq!(t("postgres://u@h/db?schema=s"), ("postgres://u@h/db?schema=s".into(), None));
    }

    #[tokio::test]
    async fn unknown_schemes_are_clear_errors() {
        let err = open("mysql://u:s3cret@h/db").await.err().expect("refused");
        assert!(matches!(&err, StoreError::Backend(m) if m.contains("unsupported") && !m.contains("s3cret")), "{err}");
        assert!(open("memory://").await.is_ok());
    }
}
