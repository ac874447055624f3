//! Checkpoint calls for one shard lease: serialised, never backwards, retried on
//! transient errors, and fenced by the lease epoch the server gave.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kinesis_butler_proto as pb;
use tracing::{debug, warn};

use crate::connection::Api;
use crate::error::{describe, is_transient, Error};
use crate::handler::{Record, ShardInfo};
use crate::options::BackoffSettings;
use crate::policy::{Position, Progress};
use kinesis_butler_proto::backoff::Backoff;

/// Attempts of one checkpoint call on transient errors.
const CHECKPOINT_ATTEMPTS: u32 = 3;
const CHECKPOINT_BACKOFF: BackoffSettings =
    BackoffSettings { initial: Duration::from_millis(100), max: Duration::from_secs(1) };

/// What a checkpoint stores.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// Nothing new (a release only).
    Nothing,
    /// The handled progress not stored yet (nothing if there is none).
    Handled,
    /// A given record.
    At(Position),
    /// The shard was handled to its end.
    ShardEnd,
}

/// One shard held at one lease epoch by one session.
pub(crate) struct ShardLease {
    client: Api,
    endpoint: String,
    session_id: String,
    shard: Arc<ShardInfo>,
    request_timeout: Duration,
    progress: Mutex<Progress>,
    /// Serialises checkpoint calls so that they reach the server in order.
    calls: tokio::sync::Mutex<()>,
    /// Released or ended by this consumer: later checkpoints would fail anyway.
    finished: AtomicBool,
}

impl ShardLease {
    /// A lease with nothing handled yet.
    pub(crate) fn new(
        client: Api,
        endpoint: String,
        session_id: String,
        shard: Arc<ShardInfo>,
        request_timeout: Duration,
    ) -> Self {
        Self {
            client,
            endpoint,
            session_id,
            shard,
            request_timeout,
            progress: Mutex::new(Progress::new()),
            calls: tokio::sync::Mutex::new(()),
            finished: AtomicBool::new(false),
        }
    }

    /// The shard.
    pub(crate) fn shard(&self) -> &Arc<ShardInfo> {
        &self.shard
    }

    /// The shard's progress.
    pub(crate) fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `target` (unless it is already stored) and, with `release`, gives the
    /// lease up. Does nothing when there is nothing to store or release.
    pub(crate) async fn store(&self, target: Target, release: bool) -> Result<(), Error> {
        let _serial = self.calls.lock().await;
        if self.finished.load(Ordering::Acquire) {
            return Err(self.lease_lost("this consumer already released the shard".into()));
        }
        let (position, shard_end) = {
            let progress = self.progress();
            match target {
                Target::Nothing => (None, false),
                Target::ShardEnd => (None, true),
                Target::Handled => (progress.unsaved().cloned(), false),
                Target::At(p) => ((!progress.is_saved(&p)).then_some(p), false),
            }
        };
        if position.is_none() && !release && !shard_end {
            return Ok(());
        }
        let request = pb::CheckpointRequest {
            session_id: self.session_id.clone(),
            stream: self.shard.stream.clone(),
            shard_id: self.shard.shard_id.clone(),
            lease_epoch: self.shard.lease_epoch,
            sequence_number: position.as_ref().map(|p| p.sequence.clone()).unwrap_or_default(),
            sub_sequence_number: position.as_ref().map_or(0, |p| p.sub_sequence),
            shard_end,
            release,
        };
        self.call(request).await?;
        debug!(stream = %self.shard.stream, shard = %self.shard.shard_id, epoch = self.shard.lease_epoch,
            sequence = position.as_ref().map_or("", |p| p.sequence.as_str()), shard_end, release, "checkpoint stored");
        if let Some(p) = position {
            self.progress().saved(p);
        }
        if release || shard_end {
            self.finished.store(true, Ordering::Release);
        }
        Ok(())
    }

    async fn call(&self, request: pb::CheckpointRequest) -> Result<(), Error> {
        let mut backoff = Backoff::new(CHECKPOINT_BACKOFF);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut client = self.client.clone();
            let status = match tokio::time::timeout(self.request_timeout, client.checkpoint(request.clone())).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(status)) => status,
                Err(_) => tonic::Status::deadline_exceeded(format!(
                    "no answer within {:?} (request_timeout)",
                    self.request_timeout
                )),
            };
            match status.code() {
                tonic::Code::FailedPrecondition | tonic::Code::NotFound => {
                    return Err(self.lease_lost(status.message().to_owned()))
                }
                tonic::Code::InvalidArgument => return Err(Error::InvalidArgument(status.message().to_owned())),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                    return Err(Error::Unauthenticated(status.message().to_owned()))
                }
                code if is_transient(code) && attempt < CHECKPOINT_ATTEMPTS => {
                    let delay = backoff.next_delay();
                    warn!(stream = %self.shard.stream, shard = %self.shard.shard_id, error = %describe(&status),
                        ?delay, "checkpoint failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                code if is_transient(code) => {
                    return Err(Error::Connection { endpoint: self.endpoint.clone(), message: describe(&status) })
                }
                code => return Err(Error::Server { code, message: status.message().to_owned() }),
            }
        }
    }

    fn lease_lost(&self, message: String) -> Error {
        Error::LeaseLost {
            stream: self.shard.stream.clone(),
            shard_id: self.shard.shard_id.clone(),
            epoch: self.shard.lease_epoch,
            message,
        }
    }
}

/// Stores checkpoints of one shard from inside a handler (see
/// [`crate::CheckpointPolicy::Manual`]). Cheap to clone; usable after the handler
/// returned, for as long as this consumer holds the shard.
///
/// A checkpoint says "every record up to and including this one is done with"; the
/// next consumer of the shard starts right after it. Checkpoints never move backwards:
/// one at or before the stored one succeeds without a call.
#[derive(Clone)]
pub struct Checkpointer {
    lease: Arc<ShardLease>,
    batch_end: Position,
}

impl Checkpointer {
    pub(crate) fn new(lease: Arc<ShardLease>, batch_end: Position) -> Self {
        Self { lease, batch_end }
    }

    /// The shard checkpoints go to.
    pub fn shard(&self) -> &ShardInfo {
        self.lease.shard()
    }

    /// Checkpoints the whole batch (its last record).
    ///
    /// Errors: [`crate::ErrorKind::LeaseLost`] when the shard moved on,
    /// [`crate::ErrorKind::Connection`] when the server could not be reached.
    pub async fn checkpoint(&self) -> Result<(), Error> {
        self.lease.store(Target::At(self.batch_end.clone()), false).await
    }

    /// Checkpoints up to and including `record` (a record of this shard).
    pub async fn checkpoint_at(&self, record: &Record) -> Result<(), Error> {
        self.checkpoint_sequence(&record.sequence_number, record.sub_sequence_number).await
    }

    /// Checkpoints up to and including the record with this sequence number.
    pub async fn checkpoint_sequence(&self, sequence_number: &str, sub_sequence_number: u64) -> Result<(), Error> {
        if sequence_number.is_empty() || !sequence_number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidArgument(format!(
                "sequence number {sequence_number:?} is not a decimal Kinesis sequence number"
            )));
        }
        let at = Position { sequence: sequence_number.to_owned(), sub_sequence: sub_sequence_number };
        self.lease.store(Target::At(at), false).await
    }
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("stream", &self.lease.shard.stream)
            .field("shard_id", &self.lease.shard.shard_id)
            .field("lease_epoch", &self.lease.shard.lease_epoch)
            .field("batch_end", &self.batch_end.sequence)
            .finish()
    }
}
