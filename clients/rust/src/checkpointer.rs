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
use crate::stats::{Counter, Counters};
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
    /// The last record delivered to the handler under this lease: checkpoints past it
    /// are refused (they would skip records nobody handled).
    delivered: Mutex<Option<Position>>,
    /// Serialises checkpoint calls so that they reach the server in order.
    calls: tokio::sync::Mutex<()>,
    /// Released or ended by this consumer: later checkpoints would fail anyway.
    finished: AtomicBool,
    stats: Option<Arc<Counters>>,
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
            delivered: Mutex::new(None),
            calls: tokio::sync::Mutex::new(()),
            finished: AtomicBool::new(false),
            stats: None,
        }
    }

    /// Counts stored checkpoints in `stats`.
    pub(crate) fn with_stats(mut self, stats: Arc<Counters>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// The shard.
    pub(crate) fn shard(&self) -> &Arc<ShardInfo> {
        &self.shard
    }

    /// The shard's progress.
    pub(crate) fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batch ending at `end` was handed to the handler.
    pub(crate) fn delivered(&self, end: &Position) {
        let mut delivered = self.delivered.lock().unwrap_or_else(|e| e.into_inner());
        if delivered.as_ref().is_none_or(|d| d < end) {
            *delivered = Some(end.clone());
        }
    }

    /// Refuses a position this lease never delivered.
    fn check_delivered(&self, at: &Position) -> Result<(), Error> {
        let delivered = self.delivered.lock().unwrap_or_else(|e| e.into_inner());
        match delivered.as_ref() {
            Some(end) if at <= end => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "sequence number {} (sub-sequence {}) was not delivered to this consumer for shard {} of stream {} \
                 (delivered up to {}): a checkpoint there would skip records nobody handled",
                at.sequence,
                at.sub_sequence,
                self.shard.shard_id,
                self.shard.stream,
                delivered.as_ref().map_or("nothing", |d| d.sequence.as_str()),
            ))),
        }
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
        if position.is_some() || shard_end {
            if let Some(stats) = &self.stats {
                stats.add(Counter::Checkpoints, 1);
            }
        }
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
    /// The checkpointer of a batch ending at `batch_end`, delivered under `lease`.
    pub(crate) fn new(lease: Arc<ShardLease>, batch_end: Position) -> Self {
        lease.delivered(&batch_end);
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

    /// Checkpoints up to and including the record with this sequence number (a record
    /// this lease delivered: a position past the last delivered record is refused with
    /// [`crate::ErrorKind::InvalidArgument`]).
    pub async fn checkpoint_sequence(&self, sequence_number: &str, sub_sequence_number: u64) -> Result<(), Error> {
        if sequence_number.is_empty() || !sequence_number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidArgument(format!(
                "sequence number {sequence_number:?} is not a decimal Kinesis sequence number"
            )));
        }
        let at = Position { sequence: sequence_number.to_owned(), sub_sequence: sub_sequence_number };
        self.lease.check_delivered(&at)?;
        self.lease.store(Target::At(at), false).await
    }

    /// [`Checkpointer::checkpoint_sequence`] for a record that names its shard (as the
    /// bindings' records do): a record of another shard (or stream) is refused with
    /// [`crate::ErrorKind::InvalidArgument`] before anything is sent.
    pub async fn checkpoint_record_of(
        &self,
        stream: &str,
        shard_id: &str,
        sequence_number: &str,
        sub_sequence_number: u64,
    ) -> Result<(), Error> {
        let shard = self.lease.shard();
        check_record_shard(&shard.stream, &shard.shard_id, stream, shard_id)?;
        self.checkpoint_sequence(sequence_number, sub_sequence_number).await
    }
}

/// The rule that a batch checkpoints only records of its own shard: `Ok` when the record
/// (of shard `record_shard_id` of stream `record_stream`) is of the batch's shard
/// (`batch_shard_id` of `batch_stream`), else [`Error::InvalidArgument`] naming both.
///
/// [`Checkpointer::checkpoint_record_of`] checks it before sending anything; the
/// bindings' test batches (`kinesis_butler.testing`, `kinesis-butler/testing`) call it
/// too, so a stand-in batch refuses a record exactly as a real one does.
///
/// ```
/// use kinesis_butler_client::{check_record_shard, ErrorKind};
///
/// assert!(check_record_shard("orders", "shardId-000000000000", "orders", "shardId-000000000000").is_ok());
/// let refused = check_record_shard("orders", "shardId-000000000000", "orders", "shardId-000000000001").unwrap_err();
/// assert_eq!(refused.kind(), ErrorKind::InvalidArgument);
/// ```
pub fn check_record_shard(
    batch_stream: &str,
    batch_shard_id: &str,
    record_stream: &str,
    record_shard_id: &str,
) -> Result<(), Error> {
    if record_stream == batch_stream && record_shard_id == batch_shard_id {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "the record is from shard {record_shard_id} of stream {record_stream}, not {batch_shard_id} of \
         {batch_stream}: a batch checkpoints only records of its own shard"
    )))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection;
    use crate::error::ErrorKind;
    use crate::scripted::ScriptedButler;
    use crate::test_support::short;
    use tokio::time::Instant;

    fn lease(butler: &ScriptedButler) -> Arc<ShardLease> {
        let shard =
            ShardInfo { stream: "s".into(), shard_id: "shard-1".into(), lease_epoch: 7, checkpoint: String::new() };
        let api = connection::api(butler.channel());
        Arc::new(ShardLease::new(api, "scripted".into(), "session-1".into(), Arc::new(shard), Duration::from_secs(10)))
    }

    fn pos(seq: &str) -> Position {
        Position { sequence: seq.into(), sub_sequence: 0 }
    }

    fn stored(butler: &ScriptedButler) -> Vec<(String, u64, String, bool, bool)> {
        butler.checkpoints().iter().map(short).collect()
    }

    #[tokio::test]
    async fn stores_only_what_is_new_never_backwards_and_nothing_after_a_release() {
        let butler = ScriptedButler::new();
        let lease = lease(&butler);
        lease.store(Target::Handled, false).await.expect("nothing to store is no call");
        lease.progress().handled(pos("10"), 2, Instant::now());
        lease.store(Target::Handled, false).await.unwrap();
        lease.store(Target::Handled, false).await.unwrap();
        lease.store(Target::At(pos("5")), false).await.expect("behind the stored one: no call");
        lease.store(Target::At(pos("20")), false).await.unwrap();
        lease.store(Target::Nothing, true).await.unwrap();
        let after = lease.store(Target::At(pos("30")), false).await.expect_err("released");
        assert_eq!(after.kind(), ErrorKind::LeaseLost);
        let s = |seq: &str, release| ("shard-1".to_owned(), 7, seq.to_owned(), false, release);
        assert_eq!(stored(&butler), vec![s("10", false), s("20", false), s("", true)]);
        assert_eq!(butler.checkpoints()[0].session_id, "session-1");
    }

    #[tokio::test]
    async fn shard_end_is_stored_once() {
        let butler = ScriptedButler::new();
        let lease = lease(&butler);
        lease.store(Target::ShardEnd, false).await.unwrap();
        assert!(lease.store(Target::ShardEnd, false).await.is_err(), "ended: later checkpoints fail");
        assert_eq!(stored(&butler), vec![("shard-1".to_owned(), 7, String::new(), true, false)]);
    }

    #[tokio::test]
    async fn transient_errors_are_retried_and_refusals_are_mapped() {
        let butler = ScriptedButler::new();
        let lease = lease(&butler);
        butler.fail_checkpoints([tonic::Status::unavailable("blip"), tonic::Status::internal("hiccup")]);
        lease.store(Target::At(pos("1")), false).await.expect("third attempt succeeds");
        assert_eq!(butler.checkpoints().len(), 3);

        butler.fail_checkpoints((0..CHECKPOINT_ATTEMPTS).map(|_| tonic::Status::unavailable("down")));
        let err = lease.store(Target::At(pos("2")), false).await.expect_err("every attempt failed");
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        assert_eq!(butler.checkpoints().len(), 3 + CHECKPOINT_ATTEMPTS as usize);

        let refusals = [
            (tonic::Status::failed_precondition("stale epoch"), ErrorKind::LeaseLost),
            (tonic::Status::not_found("no session"), ErrorKind::LeaseLost),
            (tonic::Status::invalid_argument("regression"), ErrorKind::InvalidArgument),
            (tonic::Status::unauthenticated("token"), ErrorKind::Unauthenticated),
            (tonic::Status::unimplemented("old server"), ErrorKind::Server),
        ];
        for (status, kind) in refusals {
            let before = butler.checkpoints().len();
            butler.fail_checkpoints([status]);
            let err = lease.store(Target::At(pos("3")), false).await.expect_err("refused");
            assert_eq!(err.kind(), kind, "{err}");
            assert_eq!(butler.checkpoints().len(), before + 1, "a refusal is not retried");
        }
        // Nothing refused was taken as stored: the position is sent again.
        lease.store(Target::At(pos("3")), false).await.unwrap();
        assert_eq!(butler.checkpoints().last().map(|c| c.sequence_number.clone()), Some("3".into()));
    }

    #[tokio::test]
    async fn a_checkpointer_refuses_a_malformed_sequence_number_without_a_call() {
        let butler = ScriptedButler::new();
        let checkpointer = Checkpointer::new(lease(&butler), pos("42"));
        for bad in ["", "12a", "-1"] {
            let err = checkpointer.checkpoint_sequence(bad, 0).await.expect_err("malformed");
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        }
        assert!(butler.checkpoints().is_empty());
        checkpointer.checkpoint().await.unwrap();
        checkpointer.checkpoint_sequence("7", 1).await.expect("behind the batch end: no call");
        assert_eq!(stored(&butler), vec![("shard-1".to_owned(), 7, "42".to_owned(), false, false)]);
        assert_eq!(checkpointer.shard().shard_id, "shard-1");
    }

    #[tokio::test]
    async fn a_checkpointer_refuses_positions_never_delivered_and_records_of_other_shards() {
        let butler = ScriptedButler::new();
        let lease = lease(&butler);
        let first = Checkpointer::new(lease.clone(), pos("42"));
        for (seq, sub) in [("43", 0), ("42", 1), ("1000", 0)] {
            let err = first.checkpoint_sequence(seq, sub).await.expect_err("past the delivered records");
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        }
        let err = first.checkpoint_record_of("s", "shard-2", "10", 0).await.expect_err("another shard");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("shard-2"), "{err}");
        let err = first.checkpoint_record_of("other", "shard-1", "10", 0).await.expect_err("another stream");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(butler.checkpoints().is_empty(), "nothing refused reached the server");
        // A later batch's delivery widens what the lease can checkpoint, from any of its checkpointers.
        let _second = Checkpointer::new(lease, pos("50"));
        first.checkpoint_record_of("s", "shard-1", "45", 0).await.unwrap();
        assert_eq!(stored(&butler), vec![("shard-1".to_owned(), 7, "45".to_owned(), false, false)]);
    }

    #[test]
    fn a_record_of_another_shard_or_stream_is_refused_by_the_one_rule() {
        assert!(check_record_shard("s", "shard-1", "s", "shard-1").is_ok());
        let err = check_record_shard("s", "shard-1", "s", "shard-2").expect_err("another shard");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            err.to_string(),
            "invalid argument: the record is from shard shard-2 of stream s, not shard-1 of s: \
             a batch checkpoints only records of its own shard"
        );
        let err = check_record_shard("s", "shard-1", "other", "shard-1").expect_err("another stream");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            err.to_string(),
            "invalid argument: the record is from shard shard-1 of stream other, not shard-1 of s: \
             a batch checkpoints only records of its own shard"
        );
        // The same shard id in another stream is another shard; names are compared whole.
        assert!(check_record_shard("s", "shard-1", "s", "shard-10").is_err());
        assert!(check_record_shard("s", "shard-1", "", "").is_err());
    }
}
