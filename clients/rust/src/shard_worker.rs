//! One task per shard lease: handles the shard's batches one at a time, in order,
//! retries failures, checkpoints by policy, and answers the session's signals (revoke,
//! lease lost, shard end, overflow, stop, disconnect).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use kinesis_butler_proto as pb;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::checkpointer::{ShardLease, Target};
use crate::dead_letter::DeadLetter;
use crate::error::{Error, ErrorKind, HandlerError};
use crate::failure::{interruption, panicked, position, Attempts, Outcome};
use crate::handler::{Handler, Record, ShardInfo, StopReason};
use crate::lanes::{lane_of, Tracker};
use crate::options::{CheckpointPolicy, ConsumerOptions};
use crate::policy::Position;
use crate::stats::Counters;
use kinesis_butler_proto::backoff::Backoff;
use tokio_util::sync::CancellationToken;

/// What the session tells a worker. A `watch` value: the worker acts on the latest.
#[derive(Clone, Debug, Default)]
pub(crate) struct Control {
    /// `ShardEnded` arrived: every batch of the shard is queued.
    pub ended: bool,
    /// The shard's queue overflowed and later batches were dropped: release the shard
    /// once the queued ones are handled.
    pub overflowed: bool,
    /// `ShardRevoked{REBALANCE|SHUTDOWN}`: finish the batch in hand, checkpoint, release.
    pub revoked: Option<StopReason>,
    /// `ShardRevoked{LEASE_LOST}`: drop everything, checkpoint nothing.
    pub lost: bool,
    /// The consumer is stopping: finish the batch in hand, checkpoint.
    pub stopping: bool,
    /// The session is gone: finish the batch in hand, checkpoint nothing.
    pub disconnected: bool,
}

impl Control {
    /// The signal that ends work on the shard before its queue is handled, if any.
    pub(crate) fn interruption(&self) -> Option<StopReason> {
        if self.lost {
            Some(StopReason::LeaseLost)
        } else if self.disconnected {
            Some(StopReason::Disconnected)
        } else if let Some(reason) = self.revoked {
            Some(reason)
        } else if self.stopping {
            Some(StopReason::ConsumerStopped)
        } else {
            None
        }
    }
}

/// How a worker ended.
#[derive(Debug)]
pub(crate) struct WorkerExit {
    /// The shard and lease epoch the worker had.
    pub shard: Arc<ShardInfo>,
    /// Why it ended.
    pub reason: StopReason,
    /// The handler's error, with [`FailurePolicy::Stop`].
    pub error: Option<Error>,
}

/// Sends the worker's exit to its session, also when the worker panicked or was
/// aborted (then as [`StopReason::Disconnected`]).
pub(crate) struct ExitReporter {
    exits: mpsc::UnboundedSender<WorkerExit>,
    shard: Arc<ShardInfo>,
    sent: bool,
}

impl ExitReporter {
    pub(crate) fn new(exits: mpsc::UnboundedSender<WorkerExit>, shard: Arc<ShardInfo>) -> Self {
        Self { exits, shard, sent: false }
    }

    fn report(mut self, reason: StopReason, error: Option<Error>) {
        self.sent = true;
        let _ = self.exits.send(WorkerExit { shard: self.shard.clone(), reason, error });
    }
}

impl Drop for ExitReporter {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.exits.send(WorkerExit {
                shard: self.shard.clone(),
                reason: StopReason::Disconnected,
                error: None,
            });
        }
    }
}

/// The worker of one shard lease.
pub(crate) struct ShardWorker {
    pub lease: Arc<ShardLease>,
    pub handler: Arc<dyn Handler>,
    pub options: Arc<ConsumerOptions>,
    pub queue: mpsc::Receiver<pb::RecordBatch>,
    pub control: watch::Receiver<Control>,
    /// Bounds handler calls over all shards.
    pub handler_slots: Arc<Semaphore>,
    /// Held while working, so that the next lease of the same shard in this process
    /// starts only after this one is done (order across leases).
    pub shard_lock: Arc<tokio::sync::Mutex<()>>,
    pub reporter: ExitReporter,
    /// The app, for dead-letter entries.
    pub app: Arc<str>,
    /// The consumer's counters.
    pub stats: Arc<Counters>,
    /// Where given-up records go (`on_failure` = a destination).
    pub dead_letter: Option<Arc<dyn DeadLetter>>,
    /// Cancelled at the shutdown deadline: calls in hand are cancelled.
    pub expire: CancellationToken,
    /// `shard_started` ran and `shard_stopped` has not yet: it runs before the final
    /// checkpoint and release, so that the handler can flush per-shard state first.
    pub stop_hook_due: bool,
}

type Exit = (StopReason, Option<Error>);

impl ShardWorker {
    /// Works on the shard until it is released, ended, lost, stopped or disconnected.
    pub(crate) async fn run(mut self) {
        let shard = self.lease.shard().clone();
        let turn = tokio::select! {
            biased;
            reason = interruption(&mut self.control) => {
                // Interrupted before it could start: only hand the shard back.
                let (reason, error) = self.finish(reason, None).await;
                return self.exit(reason, error);
            }
            turn = self.shard_lock.clone().lock_owned() => turn,
        };
        info!(checkpoint = %shard.checkpoint, "shard started");
        guarded_hook(|| self.handler.shard_started(&shard), "shard_started").await;
        self.stop_hook_due = true;
        let (reason, error) = self.process().await;
        info!(?reason, "shard stopped");
        self.stop_hook(reason).await;
        drop(turn);
        self.exit(reason, error);
    }

    /// Runs `shard_stopped` once, if `shard_started` ran.
    async fn stop_hook(&mut self, reason: StopReason) {
        if std::mem::take(&mut self.stop_hook_due) {
            let shard = self.lease.shard().clone();
            guarded_hook(|| self.handler.shard_stopped(&shard, reason), "shard_stopped").await;
        }
    }

    fn exit(self, reason: StopReason, error: Option<Error>) {
        self.reporter.report(reason, error);
    }

    async fn process(&mut self) -> Exit {
        if self.options.parallelization_factor > 1 {
            let (reason, error) = self.run_lanes().await;
            return self.finish(reason, error).await;
        }
        loop {
            let control = self.control.borrow_and_update().clone();
            if let Some(reason) = control.interruption() {
                return self.finish(reason, None).await;
            }
            match self.queue.try_recv() {
                Ok(batch) => {
                    if let Some(exit) = self.handle(batch).await {
                        return exit;
                    }
                    continue;
                }
                Err(TryRecvError::Disconnected) => return self.finish(StopReason::Disconnected, None).await,
                Err(TryRecvError::Empty) if control.ended => return self.finish(StopReason::Ended, None).await,
                Err(TryRecvError::Empty) if control.overflowed => return self.finish(StopReason::Released, None).await,
                Err(TryRecvError::Empty) => {}
            }
            // Idle: wait for a batch, a signal or a time-based checkpoint.
            let deadline = self.lease.progress().deadline(self.options.checkpoint);
            tokio::select! {
                biased;
                changed = self.control.changed() => {
                    if changed.is_err() {
                        return self.finish(StopReason::Disconnected, None).await;
                    }
                }
                batch = self.queue.recv() => match batch {
                    Some(batch) => {
                        if let Some(exit) = self.handle(batch).await {
                            return exit;
                        }
                    }
                    None => return self.finish(StopReason::Disconnected, None).await,
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    if let Some(exit) = self.checkpoint_if_due().await {
                        return exit;
                    }
                }
            }
        }
    }

    /// Hands one batch to the handler (attempts, partial failures, bisect, `on_failure`:
    /// see `failure.rs`), then checkpoints by policy. Returns the exit when work on the
    /// shard ends.
    async fn handle(&mut self, batch: pb::RecordBatch) -> Option<Exit> {
        let millis_behind = batch.millis_behind_latest;
        let records: Arc<[Record]> = batch.records.into_iter().map(Record::from).collect();
        if records.is_empty() {
            return None;
        }
        let lease = self.lease.clone();
        let done = move |finished: &[Record]| {
            if let Some(last) = finished.last() {
                lease.progress().handled(position(last), finished.len() as u64, Instant::now());
            }
        };
        let attempts = Attempts {
            app: &self.app,
            lease: &self.lease,
            handler: &self.handler,
            options: &self.options,
            slots: &self.handler_slots,
            stats: &self.stats,
            dead_letter: self.dead_letter.as_ref(),
            expire: &self.expire,
        };
        match attempts.run(records, millis_behind, &mut self.control, &done).await {
            Outcome::Done => self.checkpoint_if_due().await,
            Outcome::Interrupted(reason) => Some(self.finish(reason, None).await),
            Outcome::Failed { attempts, error } => {
                let error = self.handler_failed(attempts, error);
                Some(self.finish(StopReason::HandlerFailed, Some(error)).await)
            }
        }
    }

    fn handler_failed(&self, attempts: u32, error: HandlerError) -> Error {
        let shard = self.lease.shard();
        Error::Handler {
            stream: shard.stream.clone(),
            shard_id: shard.shard_id.clone(),
            attempts,
            source: error.into_inner(),
        }
    }

    /// `parallelization_factor` > 1: the shard's records go into per-key lanes, each
    /// handled in order by its own calls while the others run; batches keep being taken
    /// in while lanes work (bounded); the checkpoint is at the lowest record not yet
    /// finished in every lane. Returns why work on the shard ends (not yet finished).
    async fn run_lanes(&mut self) -> Exit {
        let factor = self.options.parallelization_factor.max(1) as usize;
        let chunk = match self.options.max_records_per_batch {
            0 => 10_000,
            n => n as usize,
        };
        let limit = chunk * (self.options.shard_queue_batches + 1);
        let tracker = std::sync::Mutex::new(Tracker::default());
        let lease = self.lease.clone();
        let done = |finished: &[Record]| {
            let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
            let positions: Vec<Position> = finished.iter().map(position).collect();
            t.finish(positions.iter());
            if let Some((last, n)) = t.advance() {
                lease.progress().handled(last, n, Instant::now());
            }
        };
        let ShardWorker {
            app, lease, handler, options, queue, control, handler_slots, stats, dead_letter, expire, ..
        } = self;
        let attempts = Attempts {
            app,
            lease,
            handler,
            options,
            slots: handler_slots,
            stats,
            dead_letter: dead_letter.as_ref(),
            expire,
        };
        let (attempts, done) = (&attempts, &done);
        let mut lanes: Vec<std::collections::VecDeque<Record>> = vec![Default::default(); factor];
        let mut busy = vec![false; factor];
        let mut running = futures::stream::FuturesUnordered::new();
        let mut millis_behind = 0;
        let mut ending: Option<Exit> = None;
        let mut control_open = true;
        let mut checkpoint_wanted = false;
        loop {
            if ending.is_none() {
                for lane in 0..factor {
                    if busy[lane] || lanes[lane].is_empty() {
                        continue;
                    }
                    let n = lanes[lane].len().min(chunk);
                    let part: Arc<[Record]> = lanes[lane].drain(..n).collect();
                    busy[lane] = true;
                    let mut lane_control = control.clone();
                    running
                        .push(async move { (lane, attempts.run(part, millis_behind, &mut lane_control, done).await) });
                }
            }
            // Checkpoint once the idle lanes are busy again (they run meanwhile).
            if std::mem::take(&mut checkpoint_wanted) {
                if let Some(exit) = checkpoint_due(lease, options).await {
                    ending.get_or_insert(exit);
                }
            }
            if running.is_empty() {
                if let Some(exit) = ending.take() {
                    return exit;
                }
                let c = control.borrow_and_update().clone();
                if let Some(reason) = c.interruption() {
                    return (reason, None);
                }
                if queue.is_empty() && c.ended {
                    return (StopReason::Ended, None);
                }
                if queue.is_empty() && c.overflowed {
                    return (StopReason::Released, None);
                }
            }
            let taking = ending.is_none() && tracker.lock().unwrap_or_else(|e| e.into_inner()).len() < limit;
            let deadline = lease.progress().deadline(options.checkpoint);
            tokio::select! {
                biased;
                Some((lane, outcome)) = running.next(), if !running.is_empty() => {
                    busy[lane] = false;
                    match outcome {
                        Outcome::Done => checkpoint_wanted = true,
                        Outcome::Interrupted(reason) => {
                            ending.get_or_insert((reason, None));
                        }
                        Outcome::Failed { attempts, error } => {
                            let shard = lease.shard();
                            let error = Error::Handler {
                                stream: shard.stream.clone(),
                                shard_id: shard.shard_id.clone(),
                                attempts,
                                source: error.into_inner(),
                            };
                            ending = Some((StopReason::HandlerFailed, Some(error)));
                        }
                    }
                }
                changed = control.changed(), if control_open => {
                    if changed.is_err() {
                        control_open = false;
                        ending.get_or_insert((StopReason::Disconnected, None));
                    } else if let Some(reason) = control.borrow().interruption() {
                        ending.get_or_insert((reason, None));
                    }
                }
                batch = queue.recv(), if taking => match batch {
                    Some(batch) => {
                        millis_behind = batch.millis_behind_latest;
                        let records: Vec<Record> = batch.records.into_iter().map(Record::from).collect();
                        tracker.lock().unwrap_or_else(|e| e.into_inner()).take(records.iter().map(position));
                        for r in records {
                            lanes[lane_of(&r.partition_key, factor)].push_back(r);
                        }
                    }
                    None => {
                        ending.get_or_insert((StopReason::Disconnected, None));
                    }
                },
                _ = sleep_until(deadline), if deadline.is_some() && ending.is_none() => {
                    if let Some(exit) = checkpoint_due(lease, options).await {
                        ending.get_or_insert(exit);
                    }
                }
            }
        }
    }

    /// Stores the handled progress when the policy says so.
    async fn checkpoint_if_due(&mut self) -> Option<Exit> {
        checkpoint_due(&self.lease, &self.options).await
    }

    /// The last word on the shard for `reason`: checkpoint and release as it requires.
    async fn finish(&mut self, reason: StopReason, error: Option<Error>) -> Exit {
        self.stop_hook(reason).await;
        let handled = match self.options.checkpoint {
            CheckpointPolicy::Manual => Target::Nothing,
            _ => Target::Handled,
        };
        let (target, release) = match reason {
            StopReason::Rebalanced | StopReason::ServerShutdown | StopReason::Released => (handled, true),
            StopReason::ConsumerStopped | StopReason::HandlerFailed => (handled, false),
            StopReason::Ended => (Target::ShardEnd, false),
            StopReason::LeaseLost | StopReason::Disconnected => {
                let dropped = self.queue.len();
                if dropped > 0 {
                    debug!(batches = dropped, ?reason, "dropping queued batches without checkpointing");
                }
                return (reason, error);
            }
        };
        match self.store_persistently(target, release).await {
            Ok(()) => (reason, error),
            Err(e) if e.kind() == ErrorKind::LeaseLost => {
                warn!(error = %e, ?reason, "final checkpoint refused: the lease is lost");
                (if error.is_some() { reason } else { StopReason::LeaseLost }, error)
            }
            Err(e) => {
                warn!(error = %e, ?reason, "final checkpoint failed; the shard is read again from its last checkpoint");
                (reason, error)
            }
        }
    }

    /// A final checkpoint or release must not be given up on lightly (a shard
    /// released by nobody stays idle until the session ends): retried until it
    /// succeeds, the lease is lost or the session goes away.
    async fn store_persistently(&mut self, target: Target, release: bool) -> Result<(), Error> {
        let mut backoff = Backoff::new(self.options.retry_backoff);
        loop {
            let error = match self.lease.store(target.clone(), release).await {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.kind(), ErrorKind::Connection | ErrorKind::Server) => e,
                Err(e) => return Err(e),
            };
            let delay = backoff.next_delay();
            warn!(error = %error, ?target, release, ?delay, "final checkpoint failed, retrying");
            tokio::select! {
                _ = self.control.wait_for(|c| c.lost || c.disconnected) => return Err(error),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Stores the handled progress of `lease` when the policy says so.
async fn checkpoint_due(lease: &ShardLease, options: &ConsumerOptions) -> Option<Exit> {
    if !lease.progress().is_due(options.checkpoint, Instant::now()) {
        return None;
    }
    match lease.store(Target::Handled, false).await {
        Ok(()) => None,
        Err(e) if e.kind() == ErrorKind::LeaseLost => {
            warn!(error = %e, "checkpoint refused: the lease is lost");
            Some((StopReason::LeaseLost, None))
        }
        Err(e) => {
            // Kept as unsaved progress: the next checkpoint carries it.
            warn!(error = %e, "checkpoint failed; will try again after the next batch");
            None
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs a hook; a panic in it is logged, not propagated.
async fn guarded_hook(hook: impl FnOnce() -> futures::future::BoxFuture<'static, ()>, name: &str) {
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(hook)) {
        Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
        Err(panic) => Err(panic),
    };
    if let Err(panic) = outcome {
        error!(hook = name, error = %panicked(panic), "hook panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection;
    use crate::handler::Batch;
    use crate::options::BackoffSettings;
    use crate::scripted::ScriptedButler;
    use crate::test_support::{batch, short, wait_calls, Call, Recording};
    use std::sync::Mutex;
    use std::time::Duration;

    /// A worker of `shard-1` at epoch 7 against a scripted Butler, and its controls.
    struct Rig {
        butler: ScriptedButler,
        queue: mpsc::Sender<pb::RecordBatch>,
        control: watch::Sender<Control>,
        exits: mpsc::UnboundedReceiver<WorkerExit>,
        calls: Arc<Mutex<Vec<Call>>>,
        changed: watch::Sender<u64>,
        gate: watch::Sender<bool>,
    }

    fn make_rig(options: ConsumerOptions, failures: u32) -> (Rig, ShardWorker) {
        let butler = ScriptedButler::new();
        let shard = Arc::new(ShardInfo {
            stream: "s".into(),
            shard_id: "shard-1".into(),
            lease_epoch: 7,
            checkpoint: "".into(),
        });
        let api = connection::api(butler.channel());
        let lease = ShardLease::new(api, "scripted".into(), "session-1".into(), shard.clone(), Duration::from_secs(10));
        let (handler, gate) = Recording::new(failures);
        let (calls, changed) = (handler.calls.clone(), handler.changed.clone());
        let (queue_tx, queue) = mpsc::channel(options.shard_queue_batches);
        let (control_tx, control) = watch::channel(Control::default());
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let worker = ShardWorker {
            lease: Arc::new(lease),
            handler: Arc::new(handler),
            handler_slots: Arc::new(Semaphore::new(options.max_concurrent_handlers)),
            options: Arc::new(options),
            queue,
            control,
            shard_lock: Arc::default(),
            reporter: ExitReporter::new(exits_tx, shard),
            app: "app".into(),
            stats: Arc::default(),
            dead_letter: None,
            expire: CancellationToken::new(),
            stop_hook_due: false,
        };
        (Rig { butler, queue: queue_tx, control: control_tx, exits, calls, changed, gate }, worker)
    }

    fn options() -> ConsumerOptions {
        let fast = BackoffSettings { initial: Duration::from_millis(1), max: Duration::from_millis(5) };
        ConsumerOptions { retry_backoff: fast, ..ConsumerOptions::default() }
    }

    impl Rig {
        async fn exit(&mut self) -> WorkerExit {
            tokio::time::timeout(Duration::from_secs(10), self.exits.recv())
                .await
                .expect("worker exits")
                .expect("an exit")
        }

        fn stored(&self) -> Vec<(String, bool, bool)> {
            self.butler
                .checkpoints()
                .iter()
                .map(short)
                .map(|(_, epoch, seq, end, release)| {
                    assert_eq!(epoch, 7, "fenced by the worker's epoch");
                    (seq, end, release)
                })
                .collect()
        }

        fn batches(&self) -> Vec<(u32, Vec<String>)> {
            Recording::calls(&self.calls)
                .into_iter()
                .filter_map(|c| match c {
                    Call::Batch { attempt, sequences, .. } => Some((attempt, sequences)),
                    _ => None,
                })
                .collect()
        }

        async fn wait_batches(&self, n: usize) {
            wait_calls(&self.calls, &self.changed, "handler calls", |calls| {
                calls.iter().filter(|c| matches!(c, Call::Batch { .. })).count() >= n
            })
            .await;
        }
    }

    fn seqs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn a_failing_batch_is_retried_then_checkpointed_and_a_stop_ends_the_shard() {
        let (mut rig, worker) = make_rig(options(), 2);
        rig.queue.send(batch("s", "shard-1", 7, &["1", "2"])).await.unwrap();
        tokio::spawn(worker.run());
        rig.butler.wait_checkpoints(1, 10).await;
        assert_eq!(rig.batches(), vec![(1, seqs(&["1", "2"])), (2, seqs(&["1", "2"])), (3, seqs(&["1", "2"]))]);
        assert_eq!(rig.stored(), vec![("2".into(), false, false)], "once, after the success");

        rig.control.send_modify(|c| c.stopping = true);
        let exit = rig.exit().await;
        assert_eq!(exit.reason, StopReason::ConsumerStopped);
        assert!(exit.error.is_none());
        assert_eq!(rig.stored().len(), 1, "nothing new to store, no release on a stop");
        let calls = Recording::calls(&rig.calls);
        assert_eq!(calls.first(), Some(&Call::Started { shard_id: "shard-1".into(), epoch: 7 }));
        assert_eq!(
            calls.last(),
            Some(&Call::Stopped { shard_id: "shard-1".into(), epoch: 7, reason: StopReason::ConsumerStopped })
        );
    }

    #[tokio::test]
    async fn a_revoke_while_handling_finishes_the_batch_in_hand_checkpoints_and_releases() {
        let (mut rig, worker) = make_rig(options(), 0);
        rig.gate.send_replace(false);
        rig.queue.send(batch("s", "shard-1", 7, &["1"])).await.unwrap();
        rig.queue.send(batch("s", "shard-1", 7, &["2"])).await.unwrap();
        tokio::spawn(worker.run());
        rig.wait_batches(1).await;
        rig.control.send_modify(|c| c.revoked = Some(StopReason::Rebalanced));
        rig.gate.send_replace(true);
        let exit = rig.exit().await;
        assert_eq!(exit.reason, StopReason::Rebalanced);
        assert_eq!(rig.batches(), vec![(1, seqs(&["1"]))], "the queued batch is dropped");
        assert_eq!(rig.stored(), vec![("1".into(), false, false), ("".into(), false, true)]);
    }

    /// Checkpoints as `short` gives them: (shard, epoch, sequence, shard end, release).
    type Stored = Vec<(String, u64, String, bool, bool)>;

    /// Records what the store held when `shard_stopped` ran.
    struct StopProbe {
        butler: ScriptedButler,
        seen: Arc<Mutex<Option<Stored>>>,
    }

    impl Handler for StopProbe {
        fn handle(&self, _batch: Batch) -> futures::future::BoxFuture<'static, Result<(), HandlerError>> {
            Box::pin(async { Ok(()) })
        }

        fn shard_stopped(&self, _shard: &ShardInfo, _reason: StopReason) -> futures::future::BoxFuture<'static, ()> {
            *self.seen.lock().unwrap() = Some(self.butler.checkpoints().iter().map(short).collect());
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn shard_stopped_runs_before_the_final_checkpoint_and_release() {
        let (mut rig, mut worker) = make_rig(options(), 0);
        let seen = Arc::new(Mutex::new(None));
        worker.handler = Arc::new(StopProbe { butler: rig.butler.clone(), seen: seen.clone() });
        rig.queue.send(batch("s", "shard-1", 7, &["1"])).await.unwrap();
        tokio::spawn(worker.run());
        rig.butler.wait_checkpoints(1, 10).await;
        rig.control.send_modify(|c| c.revoked = Some(StopReason::Rebalanced));
        assert_eq!(rig.exit().await.reason, StopReason::Rebalanced);
        let at_hook = seen.lock().unwrap().clone().expect("shard_stopped ran");
        assert_eq!(at_hook, vec![("shard-1".into(), 7, "1".into(), false, false)], "no release yet");
        assert_eq!(rig.stored(), vec![("1".into(), false, false), ("".into(), false, true)]);
    }

    #[tokio::test]
    async fn at_a_shard_end_the_queued_batches_are_handled_then_shard_end_is_stored() {
        let (mut rig, worker) = make_rig(options(), 0);
        rig.queue.send(batch("s", "shard-1", 7, &["1"])).await.unwrap();
        rig.queue.send(batch("s", "shard-1", 7, &["2"])).await.unwrap();
        rig.control.send_modify(|c| c.ended = true);
        tokio::spawn(worker.run());
        let exit = rig.exit().await;
        assert_eq!(exit.reason, StopReason::Ended);
        assert_eq!(rig.batches(), vec![(1, seqs(&["1"])), (1, seqs(&["2"]))]);
        assert_eq!(
            rig.stored(),
            vec![("1".into(), false, false), ("2".into(), false, false), ("".into(), true, false)]
        );
    }

    #[tokio::test]
    async fn an_overflowed_shard_is_released_after_its_queued_batches() {
        let (mut rig, worker) = make_rig(options(), 0);
        rig.queue.send(batch("s", "shard-1", 7, &["1"])).await.unwrap();
        rig.control.send_modify(|c| c.overflowed = true);
        tokio::spawn(worker.run());
        assert_eq!(rig.exit().await.reason, StopReason::Released);
        assert_eq!(rig.stored(), vec![("1".into(), false, false), ("".into(), false, true)]);
    }

    #[tokio::test]
    async fn a_batch_failing_every_retry_stops_with_the_handlers_error_and_no_checkpoint() {
        let (mut rig, worker) = make_rig(ConsumerOptions { handler_retries: 1, ..options() }, u32::MAX);
        rig.queue.send(batch("s", "shard-1", 7, &["1"])).await.unwrap();
        tokio::spawn(worker.run());
        let exit = rig.exit().await;
        assert_eq!(exit.reason, StopReason::HandlerFailed);
        let error = exit.error.expect("the handler's error");
        assert_eq!(error.kind(), ErrorKind::Handler);
        assert!(
            error.to_string().contains("2 attempt(s)") && error.to_string().contains("planned failure 2"),
            "{error}"
        );
        assert!(rig.stored().is_empty());
    }

    #[tokio::test]
    async fn a_lost_lease_or_a_broken_session_checkpoints_nothing() {
        let (mut rig, worker) = make_rig(options(), 0);
        rig.control.send_modify(|c| c.lost = true);
        tokio::spawn(worker.run());
        assert_eq!(rig.exit().await.reason, StopReason::LeaseLost);

        let (mut rig2, worker) = make_rig(options(), 0);
        rig2.queue.send(batch("s", "shard-1", 7, &["1"])).await.unwrap();
        rig2.gate.send_replace(false);
        tokio::spawn(worker.run());
        rig2.wait_batches(1).await;
        rig2.control.send_modify(|c| c.disconnected = true);
        rig2.gate.send_replace(true);
        assert_eq!(rig2.exit().await.reason, StopReason::Disconnected);
        assert!(rig.stored().is_empty());
        assert!(
            rig2.stored().iter().all(|(_, end, release)| !end && !release),
            "no release or end for a broken session: {:?}",
            rig2.stored()
        );
    }
}
