//! Lease storage: the `LeaseStore` trait and its backends.
//!
//! Every backend keeps, per app and stream, one lease per shard and one record per live
//! session. All changes of owner go through a compare-and-set on the lease epoch, which
//! makes the epoch a fencing token: a session may checkpoint only at the epoch it holds.

pub mod postgres;
pub mod redis;
mod rules;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::seqnum::SequenceNumber;

/// The text stored for a shard that was processed to its end.
pub const SHARD_END: &str = "SHARD_END";

/// How long a session record is kept after it expired before `list_sessions` deletes it.
/// Records of cleanly closed sessions are deleted at once; this only cleans up after
/// crashed instances. It is long so that a session whose instance merely lost the store
/// for a while is still renewed (renewals never re-create a deleted record).
pub const SESSION_RECORD_RETENTION_MS: i64 = 60 * 60 * 1000;

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

/// The right of one session to read one shard for one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Shard id.
    pub shard_id: String,
    /// Session holding the lease, if any.
    pub owner: Option<String>,
    /// Fencing token, bumped on every change of owner.
    pub epoch: u64,
    /// Wall-clock expiry in ms since the Unix epoch; meaningful only with an owner.
    pub expires_at_ms: i64,
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
    /// Whether a session holds the lease at `now_ms`.
    pub fn is_held(&self, now_ms: i64) -> bool {
        self.owner.is_some() && self.expires_at_ms > now_ms
    }

    /// Whether the shard was processed to its end.
    pub fn is_finished(&self) -> bool {
        self.checkpoint == Checkpoint::ShardEnd
    }
}

/// A lease a server instance believes one of its sessions holds, for renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLease {
    /// Shard id.
    pub shard_id: String,
    /// Owning session.
    pub owner: String,
    /// Epoch the session holds.
    pub epoch: u64,
}

/// A live session as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id.
    pub session_id: String,
    /// Server instance keeping it alive.
    pub instance_id: String,
    /// The client's self-given name.
    pub client_name: String,
    /// Wall-clock expiry in ms since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
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
    /// The store could not be reached; the operation may be retried.
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
    /// Any other backend failure.
    #[error("lease store error: {0}")]
    Backend(String),
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Durable, shared lease state. Every method is one round trip (or one transaction).
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Creates leases for new shards and updates parents and closed state of known ones;
    /// owners, epochs and checkpoints are kept.
    async fn sync_shards(&self, group: &GroupKey, shards: &[ShardInfo]) -> StoreResult<()>;

    /// Every lease of the group, in shard id order.
    async fn list_leases(&self, group: &GroupKey) -> StoreResult<Vec<Lease>>;

    /// Takes a lease that is free or expired at `now_ms`, if its epoch is still
    /// `expected_epoch`. Returns the new lease (epoch + 1), or `None` if it was not
    /// acquirable or someone else changed it first.
    async fn acquire(
        &self,
        group: &GroupKey,
        shard_id: &str,
        expected_epoch: u64,
        owner: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> StoreResult<Option<Lease>>;

    /// Extends every lease in `held` still owned at its epoch to `expires_at_ms`, in one
    /// round trip. Returns the shard ids of the leases that were lost.
    async fn renew(&self, group: &GroupKey, held: &[HeldLease], expires_at_ms: i64) -> StoreResult<Vec<String>>;

    /// Gives up a lease held by `owner` at `epoch`. If a handoff was requested it goes to
    /// that session (expiring at `expires_at_ms`), else it becomes free; the epoch is
    /// bumped either way. Returns the lease as it now is, or `None` if it was not held.
    async fn release(
        &self,
        group: &GroupKey,
        shard_id: &str,
        owner: &str,
        epoch: u64,
        expires_at_ms: i64,
    ) -> StoreResult<Option<Lease>>;

    /// Asks for a live lease to be handed to session `to`, if its epoch is still `epoch`.
    async fn request_handoff(&self, group: &GroupKey, shard_id: &str, epoch: u64, to: &str) -> StoreResult<bool>;

    /// Stores a checkpoint if `owner` holds the lease at `epoch` and it does not move
    /// backwards.
    async fn checkpoint(
        &self,
        group: &GroupKey,
        shard_id: &str,
        owner: &str,
        epoch: u64,
        checkpoint: &Checkpoint,
    ) -> StoreResult<()>;

    /// Registers or refreshes a session of the group.
    async fn put_session(&self, group: &GroupKey, session: &SessionRecord) -> StoreResult<()>;

    /// Extends the given sessions to `expires_at_ms` in one round trip.
    async fn renew_sessions(&self, group: &GroupKey, session_ids: &[String], expires_at_ms: i64) -> StoreResult<()>;

    /// Removes a session and frees every lease it holds (epochs bumped).
    async fn drop_session(&self, group: &GroupKey, session_id: &str) -> StoreResult<()>;

    /// Sessions of the group alive at `now_ms`. A backend may delete records that
    /// expired more than [`SESSION_RECORD_RETENTION_MS`] before `now_ms` on the way.
    async fn list_sessions(&self, group: &GroupKey, now_ms: i64) -> StoreResult<Vec<SessionRecord>>;

    /// Cheap liveness probe of the backend.
    async fn ping(&self) -> StoreResult<()>;
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

/// Opens the store named by a URL: `sqlite://PATH`, `redis://…`, `rediss://…`,
/// `postgres://…` / `postgresql://…`.
pub async fn open(url: &str) -> StoreResult<Arc<dyn LeaseStore>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(sqlite::SqliteStore::open(path).await?))
    } else if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(Arc::new(redis::RedisStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(url).await?))
    } else {
        Err(StoreError::Backend(format!(
            "unsupported store URL {:?}: use sqlite://PATH, redis://HOST, rediss://HOST or postgres://…",
            crate::redact::redact_url(url)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::take_query_param;

    #[test]
    fn takes_query_param() {
        let t = |u| take_query_param(u, "prefix");
        assert_eq!(t("redis://h/?prefix=a"), ("redis://h/".into(), Some("a".into())));
        assert_eq!(t("redis://h/0?x=1&prefix=a&y=2"), ("redis://h/0?x=1&y=2".into(), Some("a".into())));
        assert_eq!(t("redis://h"), ("redis://h".into(), None));
        assert_eq!(t("postgres://u@h/db?schema=s"), ("postgres://u@h/db?schema=s".into(), None));
    }
}
