//! What the user writes: a [`Handler`] that receives [`Batch`]es.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use kinesis_butler_proto as pb;

use crate::checkpointer::Checkpointer;
use crate::error::HandlerError;
use tokio_util::sync::CancellationToken;

/// One Kinesis record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The Kinesis sequence number (a decimal of up to 128 bits).
    pub sequence_number: String,
    /// Position inside a KPL-aggregated record; 0 otherwise.
    pub sub_sequence_number: u64,
    /// The partition key the producer gave.
    pub partition_key: String,
    /// The payload: a slice of the buffer the batch arrived in (no copy per record), so
    /// holding one record's data holds that buffer; `.to_vec()` detaches it.
    pub data: Bytes,
    /// When Kinesis received the record, in milliseconds since the Unix epoch.
    pub approximate_arrival_timestamp_ms: i64,
}

impl From<pb::Record> for Record {
    fn from(r: pb::Record) -> Self {
        Self {
            sequence_number: r.sequence_number,
            sub_sequence_number: r.sub_sequence_number,
            partition_key: r.partition_key,
            data: r.data,
            approximate_arrival_timestamp_ms: r.approximate_arrival_timestamp_ms,
        }
    }
}

/// A shard as this consumer holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// Stream name.
    pub stream: String,
    /// Shard id.
    pub shard_id: String,
    /// The lease epoch (fencing token) this consumer holds the shard at.
    pub lease_epoch: u64,
    /// The stored checkpoint reading starts after: a sequence number, `SHARD_END`, or
    /// empty when the shard had none and reading starts at the start position.
    pub checkpoint: String,
}

/// Why a consumer stopped working on a shard (given to [`Handler::shard_stopped`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The server moved the shard to another consumer; handled batches were
    /// checkpointed and the shard released.
    Rebalanced,
    /// The server is shutting down; handled batches were checkpointed and the shard
    /// released.
    ServerShutdown,
    /// The lease was lost; nothing more could be checkpointed.
    LeaseLost,
    /// The shard is closed and was handled to its end (`SHARD_END` stored).
    Ended,
    /// The shard's buffer overflowed (its handler was slow); handled batches were
    /// checkpointed and the shard released to be read again from there.
    Released,
    /// The consumer is stopping; handled batches were checkpointed.
    ConsumerStopped,
    /// The connection to the server broke; the shard is read again after reconnecting.
    Disconnected,
    /// A batch failed every retry with [`crate::FailurePolicy::Stop`].
    HandlerFailed,
}

impl StopReason {
    /// A short snake_case name, stable across versions (what the bindings pass to their
    /// `shard_stopped` hooks): `rebalanced`, `server_shutdown`, `lease_lost`, `ended`,
    /// `released`, `consumer_stopped`, `disconnected`, `handler_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Rebalanced => "rebalanced",
            StopReason::ServerShutdown => "server_shutdown",
            StopReason::LeaseLost => "lease_lost",
            StopReason::Ended => "ended",
            StopReason::Released => "released",
            StopReason::ConsumerStopped => "consumer_stopped",
            StopReason::Disconnected => "disconnected",
            StopReason::HandlerFailed => "handler_failed",
        }
    }
}

/// Records of one shard, in sequence order, following the previous batch of the shard.
///
/// Cheap to clone (the records are shared).
#[derive(Clone, Debug)]
pub struct Batch {
    pub(crate) shard: Arc<ShardInfo>,
    pub(crate) records: Arc<[Record]>,
    pub(crate) millis_behind_latest: i64,
    pub(crate) attempt: u32,
    pub(crate) checkpointer: Checkpointer,
    pub(crate) cancel: CancellationToken,
}

impl Batch {
    /// Stream name.
    pub fn stream(&self) -> &str {
        &self.shard.stream
    }

    /// Shard id.
    pub fn shard_id(&self) -> &str {
        &self.shard.shard_id
    }

    /// The shard as this consumer holds it.
    pub fn shard(&self) -> &ShardInfo {
        &self.shard
    }

    /// The records, in sequence order (never empty).
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The records as a shared slice (for handing to another task without copying).
    pub fn shared_records(&self) -> Arc<[Record]> {
        self.records.clone()
    }

    /// How far the server's reader is behind the tip of the shard, as Kinesis reports it.
    pub fn millis_behind_latest(&self) -> i64 {
        self.millis_behind_latest
    }

    /// 1 on the first delivery of this batch, then 2, 3… on retries.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the consumer gave up on this call (`handler_timeout` or
    /// `shutdown_timeout`): stop working on the batch and return.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the consumer gives up on this call (see [`Batch::is_cancelled`]);
    /// `select!` on it in a long handler. No retry starts before the call returned.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// The token behind [`Batch::cancelled`] (for bindings: cancel the host's call).
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Stores checkpoints for this shard yourself (with
    /// [`crate::CheckpointPolicy::Manual`], or to checkpoint more often than the policy).
    pub fn checkpointer(&self) -> &Checkpointer {
        &self.checkpointer
    }
}

/// The user's record processor.
///
/// Any `Fn(Batch) -> impl Future<Output = Result<(), HandlerError>>` closure is a
/// handler. Implement the trait on your own type to also get the shard start and stop
/// hooks. Batches of one shard are handled one at a time, in order; batches of
/// different shards concurrently. Returning `Ok` means every record of the batch is
/// done with: the consumer may checkpoint it. A returned error (or a panic, or a
/// timeout) is retried; see [`crate::ConsumerOptions`].
pub trait Handler: Send + Sync + 'static {
    /// Processes one batch.
    fn handle(&self, batch: Batch) -> BoxFuture<'static, Result<(), HandlerError>>;

    /// Whether a call keeps running on its own after its future is dropped (a call into
    /// another runtime, as in the bindings). Then, when a call runs out of time, the
    /// consumer cancels [`Batch::cancellation_token`] and waits for the future to finish
    /// before any retry; otherwise (the default, plain Rust futures) it cancels the token
    /// and drops the future. Either way one shard never has two calls at once.
    fn keeps_running_when_dropped(&self) -> bool {
        false
    }

    /// Called before the first batch of a shard this consumer was given.
    fn shard_started(&self, shard: &ShardInfo) -> BoxFuture<'static, ()> {
        let _ = shard;
        Box::pin(async {})
    }

    /// Called after the last batch of a shard this consumer gives up, and awaited
    /// **before** its final checkpoint and release: the shard is still held, so the
    /// handler can flush per-shard state (and checkpoint it through a kept
    /// [`Batch::checkpointer`]) before the next owner starts. Only for shards
    /// [`Handler::shard_started`] was called for. `reason` is why work on the shard
    /// ends; if the final checkpoint is then refused, the lease was lost after all.
    ///
    /// Hooks of one shard lease are ordered (start, batches, stop), but hooks of
    /// different shards are not ordered among themselves.
    fn shard_stopped(&self, shard: &ShardInfo, reason: StopReason) -> BoxFuture<'static, ()> {
        let _ = (shard, reason);
        Box::pin(async {})
    }
}

impl<F, Fut> Handler for F
where
    F: Fn(Batch) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle(&self, batch: Batch) -> BoxFuture<'static, Result<(), HandlerError>> {
        Box::pin(self(batch))
    }
}
