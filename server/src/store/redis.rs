//! Redis lease store (being written).

use async_trait::async_trait;

use super::{Checkpoint, GroupKey, HeldLease, Lease, LeaseStore, SessionRecord, ShardInfo, StoreError, StoreResult};

/// Redis lease store.
pub struct RedisStore;

impl RedisStore {
    /// Connects to the store.
    pub async fn open(_url: &str) -> StoreResult<Self> {
        Err(StoreError::Backend("not implemented".into()))
    }
}

#[async_trait]
impl LeaseStore for RedisStore {
    async fn sync_shards(&self, _: &GroupKey, _: &[ShardInfo]) -> StoreResult<()> { unimplemented!() }
    async fn list_leases(&self, _: &GroupKey) -> StoreResult<Vec<Lease>> { unimplemented!() }
    async fn acquire(&self, _: &GroupKey, _: &str, _: u64, _: &str, _: i64, _: i64) -> StoreResult<Option<Lease>> { unimplemented!() }
    async fn renew(&self, _: &GroupKey, _: &[HeldLease], _: i64) -> StoreResult<Vec<String>> { unimplemented!() }
    async fn release(&self, _: &GroupKey, _: &str, _: &str, _: u64, _: i64) -> StoreResult<Option<Lease>> { unimplemented!() }
    async fn request_handoff(&self, _: &GroupKey, _: &str, _: u64, _: &str) -> StoreResult<bool> { unimplemented!() }
    async fn checkpoint(&self, _: &GroupKey, _: &str, _: &str, _: u64, _: &Checkpoint) -> StoreResult<()> { unimplemented!() }
    async fn put_session(&self, _: &GroupKey, _: &SessionRecord) -> StoreResult<()> { unimplemented!() }
    async fn renew_sessions(&self, _: &GroupKey, _: &[String], _: i64) -> StoreResult<()> { unimplemented!() }
    async fn drop_session(&self, _: &GroupKey, _: &str) -> StoreResult<()> { unimplemented!() }
    async fn list_sessions(&self, _: &GroupKey, _: i64) -> StoreResult<Vec<SessionRecord>> { unimplemented!() }
    async fn ping(&self) -> StoreResult<()> { unimplemented!() }
}
