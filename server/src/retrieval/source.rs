//! Where shards and records come from: the [`ShardSource`] seam. The aws-sdk client
//! ([`crate::retrieval::kinesis::Kinesis`]) is the production source; [`MemorySource`](crate::retrieval::memory::MemorySource)
//! serves the unit tests of the readers and groups, with no
//! emulator.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::types::SubscribeToShardEvent;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::retrieval::kinesis::{IteratorStart, KinesisError};
use crate::store::ShardInfo;

/// A shared shard source.
pub type Source = Arc<dyn ShardSource>;

/// One GetRecords page.
#[derive(Debug)]
pub struct Page {
    /// Records, in sequence order.
    pub records: Vec<aws_sdk_kinesis::types::Record>,
    /// The iterator for the next call; `None` at the end of a closed shard.
    pub next_iterator: Option<String>,
    /// How far behind the tip this page is.
    pub millis_behind_latest: i64,
}

/// An open SubscribeToShard event stream.
pub struct Subscription {
    events: BoxStream<'static, Result<SubscribeToShardEvent, KinesisError>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

impl Subscription {
    /// A subscription over any stream of events.
    pub fn new(events: BoxStream<'static, Result<SubscribeToShardEvent, KinesisError>>) -> Self {
        Self { events }
    }

    /// The next event; `Ok(None)` when Kinesis ended the subscription.
    pub async fn next(&mut self) -> Result<Option<SubscribeToShardEvent>, KinesisError> {
        self.events.next().await.transpose()
    }
}

/// The Kinesis calls a server makes.
#[async_trait]
pub trait ShardSource: Send + Sync + std::fmt::Debug + 'static {
    /// Every shard of the stream, following ListShards pages, in shard id order.
    async fn list_shards(&self, stream: &str) -> Result<Vec<ShardInfo>, KinesisError>;

    /// A shard iterator at `start`.
    async fn shard_iterator(&self, stream: &str, shard_id: &str, start: &IteratorStart)
        -> Result<String, KinesisError>;

    /// One GetRecords call.
    async fn get_records(&self, iterator: &str, limit: u32) -> Result<Page, KinesisError>;

    /// Registers the enhanced fan-out consumer `name` on the stream (or finds it if it
    /// exists) and waits, up to `wait`, until it is ACTIVE. Returns its ARN.
    async fn register_consumer(&self, stream: &str, name: &str, wait: Duration) -> Result<String, KinesisError>;

    /// Subscribes the fan-out consumer to a shard from `start`.
    async fn subscribe(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        start: &IteratorStart,
    ) -> Result<Subscription, KinesisError>;
}
