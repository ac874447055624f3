//! One `GetRecords` session: opens it, then reads its event stream without ever
//! blocking on a handler and routes each event to its shard's worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kinesis_butler_proto as pb;
use pb::get_records_response::Event;
use pb::shard_revoked::Reason;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::checkpointer::ShardLease;
use crate::connection::{Api, Target};
use crate::dead_letter::DeadLetter;
use crate::error::{describe, Error};
use crate::handler::{Handler, ShardInfo, StopReason};
use crate::options::{ConsumerOptions, StartPosition};
use crate::shard_worker::{Control, ExitReporter, ShardWorker, WorkerExit};
use crate::stats::Counters;

/// A shard, by stream and shard id.
type ShardKey = (String, String);

/// What lives as long as [`crate::Consumer::run`], across sessions.
pub(crate) struct Shared {
    pub target: Target,
    pub app: String,
    pub streams: Vec<String>,
    pub options: Arc<ConsumerOptions>,
    pub handler: Arc<dyn Handler>,
    pub handler_slots: Arc<Semaphore>,
    /// One lock per shard, held by the worker of its current lease.
    pub shard_locks: Mutex<HashMap<ShardKey, Arc<tokio::sync::Mutex<()>>>>,
    /// The consumer's counters.
    pub stats: Arc<Counters>,
    /// Where given-up records go (`on_failure` = a destination), opened once.
    pub dead_letter: Option<Arc<dyn DeadLetter>>,
    /// Cancelled at the shutdown deadline: handler calls in hand are cancelled.
    pub expire: CancellationToken,
}

impl Shared {
    fn shard_lock(&self, key: &ShardKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.shard_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(key.clone()).or_default().clone()
    }
}

/// An open session.
pub(crate) struct OpenSession {
    pub id: String,
    client: Api,
    events: Streaming<pb::GetRecordsResponse>,
}

/// How a session ended.
pub(crate) enum SessionEnd {
    /// The consumer was stopped and every shard was checkpointed.
    Stopped,
    /// A handler failed with `FailurePolicy::Stop`; every other shard was checkpointed.
    Failed(Error),
    /// The stream broke or ended; reconnect.
    Disconnected(String),
}

/// Connects and opens a session; returns once `SessionStarted` arrived.
pub(crate) async fn open(shared: &Shared) -> Result<OpenSession, Error> {
    let options = &shared.options;
    let timeout = options.request_timeout;
    let unreachable = |message: String| Error::Connection { endpoint: shared.target.url.clone(), message };
    let mut client = match tokio::time::timeout(timeout, shared.target.connect()).await {
        Ok(connected) => connected?,
        Err(_) => return Err(unreachable(format!("no connection within {timeout:?}"))),
    };
    let (kind, timestamp_ms) = match options.start {
        StartPosition::TrimHorizon => (pb::start_position::Kind::TrimHorizon, 0),
        StartPosition::Latest => (pb::start_position::Kind::Latest, 0),
        StartPosition::AtTimestamp { timestamp_ms } => (pb::start_position::Kind::AtTimestamp, timestamp_ms),
    };
    let request = pb::GetRecordsRequest {
        app: shared.app.clone(),
        streams: shared.streams.clone(),
        start: Some(pb::StartPosition { kind: kind as i32, timestamp_ms }),
        max_records_per_batch: options.max_records_per_batch,
        client_name: options.client_name.clone(),
    };
    // Opening initializes the streams on the server (it lists their shards): allow more.
    let open_timeout = timeout.saturating_mul(3);
    let mut events = match tokio::time::timeout(open_timeout, client.get_records(request)).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return Err(Error::from_status(&shared.target.url, &status)),
        Err(_) => return Err(unreachable(format!("GetRecords did not answer within {open_timeout:?}"))),
    };
    match tokio::time::timeout(timeout, events.message()).await {
        Ok(Ok(Some(pb::GetRecordsResponse { event: Some(Event::SessionStarted(started)) }))) => {
            Ok(OpenSession { id: started.session_id, client, events })
        }
        Ok(Ok(other)) => Err(unreachable(format!("protocol error: expected SessionStarted first, got {other:?}"))),
        Ok(Err(status)) => Err(Error::from_status(&shared.target.url, &status)),
        Err(_) => Err(unreachable(format!("no SessionStarted within {timeout:?}"))),
    }
}

/// The session's view of one shard's worker.
struct Route {
    epoch: u64,
    queue: mpsc::Sender<pb::RecordBatch>,
    control: watch::Sender<Control>,
    /// The queue overflowed: the shard's batches are dropped until it is released.
    shedding: bool,
}

/// Routes a session's events until it ends. Workers are spawned into `workers`, which
/// outlives the session (a worker of a broken session finishes its batch in hand).
pub(crate) async fn run(
    shared: &Arc<Shared>,
    session: OpenSession,
    stop: &CancellationToken,
    workers: &mut JoinSet<()>,
) -> SessionEnd {
    let OpenSession { id, client, mut events } = session;
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let mut router = Router { shared, session_id: id, client, routes: HashMap::new(), exits: exits_tx, stopping: None };
    let mut failure: Option<Error> = None;
    loop {
        if router.stopping.is_some() && router.routes.is_empty() {
            return failure.map_or(SessionEnd::Stopped, SessionEnd::Failed);
        }
        let deadline = router.stopping;
        tokio::select! {
            biased;
            Some(exit) = exits.recv() => {
                while workers.try_join_next().is_some() {}
                if let Some(error) = router.on_exit(exit) {
                    failure.get_or_insert(error);
                    router.begin_stop();
                }
            }
            _ = stop.cancelled(), if router.stopping.is_none() => {
                info!(session = %router.session_id, shards = router.routes.len(),
                    "stopping: finishing batches in hand and checkpointing");
                router.begin_stop();
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                warn!(session = %router.session_id, shards = router.routes.len(),
                    "shutdown timeout: dropping the batches still in hand and closing the session");
                // Calls in hand are cancelled; a host call that keeps running when
                // dropped is awaited (by `run`), so that no shard ever has two.
                shared.expire.cancel();
                router.disconnect();
                if !shared.handler.keeps_running_when_dropped() {
                    workers.abort_all();
                }
                return failure.map_or(SessionEnd::Stopped, SessionEnd::Failed);
            }
            message = events.message() => {
                let why = match message {
                    Ok(Some(pb::GetRecordsResponse { event: Some(event) })) => {
                        router.on_event(event, workers);
                        continue;
                    }
                    Ok(Some(_)) => {
                        debug!("ignoring an empty event");
                        continue;
                    }
                    Ok(None) => "the server ended the session".to_owned(),
                    Err(status) => describe(&status),
                };
                router.disconnect();
                if router.stopping.is_some() {
                    return failure.map_or(SessionEnd::Stopped, SessionEnd::Failed);
                }
                return SessionEnd::Disconnected(why);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Router<'a> {
    shared: &'a Arc<Shared>,
    session_id: String,
    client: Api,
    routes: HashMap<ShardKey, Route>,
    exits: mpsc::UnboundedSender<WorkerExit>,
    /// Set once stopping: the deadline for batches in hand.
    stopping: Option<Instant>,
}

impl Router<'_> {
    fn on_event(&mut self, event: Event, workers: &mut JoinSet<()>) {
        match event {
            Event::SessionStarted(s) => {
                warn!(session = %s.session_id, "ignoring a second SessionStarted")
            }
            Event::ShardAssigned(a) => self.on_assigned(a, workers),
            Event::Records(batch) => self.on_records(batch),
            Event::ShardRevoked(r) => {
                let signal = match Reason::try_from(r.reason) {
                    Ok(Reason::LeaseLost) => None,
                    Ok(Reason::Shutdown) => Some(StopReason::ServerShutdown),
                    // Unknown reasons are treated as a rebalance: a checkpoint for a
                    // lease that is already gone only fails.
                    Ok(Reason::Rebalance) | Err(_) => Some(StopReason::Rebalanced),
                };
                let reason = Reason::try_from(r.reason).map_or("unknown", |r| r.as_str_name());
                info!(stream = %r.stream, shard = %r.shard_id, epoch = r.lease_epoch, reason, "shard revoked");
                if let Some(route) = self.route(&r.stream, &r.shard_id, r.lease_epoch) {
                    route.control.send_modify(|c| match signal {
                        Some(reason) => c.revoked = Some(reason),
                        None => c.lost = true,
                    });
                }
            }
            Event::ShardEnded(e) => {
                debug!(stream = %e.stream, shard = %e.shard_id, epoch = e.lease_epoch, "shard ended");
                if let Some(route) = self.route(&e.stream, &e.shard_id, e.lease_epoch) {
                    // While shedding, batches before the end were dropped: the shard is
                    // released and read again instead.
                    if !route.shedding {
                        route.control.send_modify(|c| c.ended = true);
                    }
                }
            }
        }
    }

    fn route(&mut self, stream: &str, shard_id: &str, epoch: u64) -> Option<&mut Route> {
        let route = self.routes.get_mut(&(stream.to_owned(), shard_id.to_owned()))?;
        (route.epoch == epoch).then_some(route)
    }

    fn on_assigned(&mut self, a: pb::ShardAssigned, workers: &mut JoinSet<()>) {
        let key = (a.stream.clone(), a.shard_id.clone());
        if self.stopping.is_some() {
            debug!(stream = %a.stream, shard = %a.shard_id, "stopping: not starting a newly assigned shard");
            return;
        }
        if let Some(old) = self.routes.get(&key) {
            if old.epoch == a.lease_epoch {
                debug!(stream = %a.stream, shard = %a.shard_id, epoch = a.lease_epoch, "ignoring a repeated ShardAssigned");
                return;
            }
            // A new epoch fences the old lease off.
            old.control.send_modify(|c| c.lost = true);
        }
        info!(stream = %a.stream, shard = %a.shard_id, epoch = a.lease_epoch, checkpoint = %a.checkpoint, "shard assigned");
        let shard = Arc::new(ShardInfo {
            stream: a.stream,
            shard_id: a.shard_id,
            lease_epoch: a.lease_epoch,
            checkpoint: a.checkpoint,
        });
        let options = &self.shared.options;
        let (queue_tx, queue) = mpsc::channel(options.shard_queue_batches);
        let (control_tx, control) = watch::channel(Control::default());
        let lease = ShardLease::new(
            self.client.clone(),
            self.shared.target.url.clone(),
            self.session_id.clone(),
            shard.clone(),
            options.request_timeout,
        )
        .with_stats(self.shared.stats.clone());
        self.shared.stats.shard_assigned(&shard.stream, &shard.shard_id, shard.lease_epoch);
        let worker = ShardWorker {
            lease: Arc::new(lease),
            handler: self.shared.handler.clone(),
            options: options.clone(),
            queue,
            control,
            handler_slots: self.shared.handler_slots.clone(),
            shard_lock: self.shared.shard_lock(&key),
            stats: self.shared.stats.clone(),
            app: self.shared.app.as_str().into(),
            dead_letter: self.shared.dead_letter.clone(),
            expire: self.shared.expire.clone(),
            reporter: ExitReporter::new(self.exits.clone(), shard.clone()),
            stop_hook_due: false,
        };
        let span = info_span!("shard", stream = %shard.stream, shard = %shard.shard_id, epoch = shard.lease_epoch);
        workers.spawn(worker.run().instrument(span));
        self.routes
            .insert(key, Route { epoch: shard.lease_epoch, queue: queue_tx, control: control_tx, shedding: false });
    }

    fn on_records(&mut self, batch: pb::RecordBatch) {
        let stopping = self.stopping.is_some();
        let shared = self.shared;
        let Some(route) = self.route(&batch.stream, &batch.shard_id, batch.lease_epoch) else {
            debug!(stream = %batch.stream, shard = %batch.shard_id, epoch = batch.lease_epoch,
                "dropping a batch of a shard not held at its epoch");
            return;
        };
        if stopping || route.shedding {
            return;
        }
        shared.stats.lag(&batch.stream, &batch.shard_id, batch.lease_epoch, batch.millis_behind_latest);
        match route.queue.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(batch)) => {
                warn!(stream = %batch.stream, shard = %batch.shard_id, epoch = batch.lease_epoch,
                    queued = route.queue.max_capacity(),
                    "shard handler is behind and its queue is full: dropping its batches, releasing it once the queued ones are handled; it is read again from its checkpoint");
                route.shedding = true;
                route.control.send_modify(|c| c.overflowed = true);
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// A worker ended; returns the handler error that must stop the consumer, if any.
    fn on_exit(&mut self, exit: WorkerExit) -> Option<Error> {
        let key = (exit.shard.stream.clone(), exit.shard.shard_id.clone());
        if self.routes.get(&key).is_some_and(|r| r.epoch == exit.shard.lease_epoch) {
            self.routes.remove(&key);
        }
        self.shared.stats.shard_gone(&exit.shard.stream, &exit.shard.shard_id, exit.shard.lease_epoch);
        debug!(stream = %exit.shard.stream, shard = %exit.shard.shard_id, epoch = exit.shard.lease_epoch,
            reason = ?exit.reason, "shard worker ended");
        exit.error
    }

    fn begin_stop(&mut self) {
        if self.stopping.is_none() {
            self.stopping = Some(Instant::now() + self.shared.options.shutdown_timeout);
        }
        for route in self.routes.values() {
            route.control.send_modify(|c| c.stopping = true);
        }
    }

    /// The session is gone: workers finish their batch in hand and checkpoint nothing.
    fn disconnect(&mut self) {
        for (_, route) in self.routes.drain() {
            route.control.send_modify(|c| c.disconnected = true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::BackoffSettings;
    use crate::scripted::{ScriptedButler, ScriptedSession};
    use crate::test_support::{short, wait_calls, Call, Recording};
    use std::collections::BTreeSet;
    use std::time::Duration;

    struct Rig {
        butler: ScriptedButler,
        script: ScriptedSession,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<&'static str>,
        calls: Arc<Mutex<Vec<Call>>>,
        changed: watch::Sender<u64>,
        gate: watch::Sender<bool>,
    }

    /// A session of app `app` on stream `s` through a scripted Butler, routed by `run`.
    async fn start(options: ConsumerOptions) -> Rig {
        let butler = ScriptedButler::new();
        let (handler, gate) = Recording::new(0);
        let (calls, changed) = (handler.calls.clone(), handler.changed.clone());
        let shared = Arc::new(Shared {
            target: Target::with_channel(butler.channel(), &options).unwrap(),
            app: "app".into(),
            streams: vec!["s".into()],
            handler_slots: Arc::new(Semaphore::new(options.max_concurrent_handlers)),
            options: Arc::new(options),
            handler: Arc::new(handler),
            shard_locks: Mutex::default(),
            stats: Arc::default(),
            dead_letter: None,
            expire: CancellationToken::new(),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let session = open(&shared).await.expect("session opens");
                let mut workers = JoinSet::new();
                let end = run(&shared, session, &stop, &mut workers).await;
                while workers.join_next().await.is_some() {}
                match end {
                    SessionEnd::Stopped => "stopped",
                    SessionEnd::Failed(_) => "failed",
                    SessionEnd::Disconnected(_) => "disconnected",
                }
            }
        });
        let script = butler.session(0, 10).await;
        Rig { butler, script, stop, task, calls, changed, gate }
    }

    fn options() -> ConsumerOptions {
        let fast = BackoffSettings { initial: Duration::from_millis(1), max: Duration::from_millis(5) };
        ConsumerOptions { max_records_per_batch: 10, retry_backoff: fast, ..ConsumerOptions::default() }
    }

    impl Rig {
        async fn wait(&self, what: &str, done: impl Fn(&[Call]) -> bool) {
            wait_calls(&self.calls, &self.changed, what, done).await;
        }

        fn batches(&self) -> Vec<(String, u64, Vec<String>)> {
            Recording::calls(&self.calls)
                .into_iter()
                .filter_map(|c| match c {
                    Call::Batch { shard_id, epoch, sequences, .. } => Some((shard_id, epoch, sequences)),
                    _ => None,
                })
                .collect()
        }

        fn hooks(&self) -> Vec<Call> {
            Recording::calls(&self.calls).into_iter().filter(|c| !matches!(c, Call::Batch { .. })).collect()
        }

        async fn end(self) -> &'static str {
            tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("session ends").expect("no panic")
        }
    }

    fn batch(shard: &str, epoch: u64, seqs: &[&str]) -> (String, u64, Vec<String>) {
        (shard.into(), epoch, seqs.iter().map(|s| s.to_string()).collect())
    }

    fn started(shard: &str, epoch: u64) -> Call {
        Call::Started { shard_id: shard.into(), epoch }
    }

    fn stopped(shard: &str, epoch: u64, reason: StopReason) -> Call {
        Call::Stopped { shard_id: shard.into(), epoch, reason }
    }

    fn stored(butler: &ScriptedButler) -> BTreeSet<(String, u64, String, bool, bool)> {
        butler.checkpoints().iter().map(short).collect()
    }

    fn cp(shard: &str, epoch: u64, seq: &str, release: bool) -> (String, u64, String, bool, bool) {
        (shard.into(), epoch, seq.into(), false, release)
    }

    #[tokio::test]
    async fn events_reach_the_worker_of_their_shard_and_epoch_only() {
        let rig = start(options()).await;
        let s = &rig.script;
        assert_eq!((s.request.app.as_str(), s.request.streams.clone()), ("app", vec!["s".to_owned()]));
        assert_eq!(s.request.max_records_per_batch, 10);
        s.assign("s", "a", 1, "");
        s.assign("s", "b", 1, "");
        s.batch("s", "a", 1, &["1"]);
        s.batch("s", "b", 1, &["2"]);
        s.batch("s", "a", 9, &["x"]); // an epoch this session does not hold
        s.batch("s", "c", 1, &["y"]); // a shard never assigned
        s.assign("s", "a", 1, ""); // repeated: ignored
        s.batch("s", "a", 1, &["3"]);
        rig.wait("three batches", |c| c.iter().filter(|c| matches!(c, Call::Batch { .. })).count() >= 3).await;
        rig.butler.wait_checkpoints(3, 10).await;
        s.revoke("s", "b", 7, Reason::Rebalance); // not b's epoch: ignored
        s.revoke("s", "a", 1, Reason::Rebalance);
        rig.wait("a released", |c| c.contains(&stopped("a", 1, StopReason::Rebalanced))).await;
        rig.stop.cancel();
        let (butler, script) = (rig.butler.clone(), rig.script.clone());
        let mut batches = rig.batches();
        batches.sort();
        let mut hooks = rig.hooks();
        assert_eq!(rig.end().await, "stopped");
        assert_eq!(batches, vec![batch("a", 1, &["1"]), batch("a", 1, &["3"]), batch("b", 1, &["2"])]);
        hooks.retain(|h| matches!(h, Call::Started { .. }));
        hooks.sort_by_key(|h| format!("{h:?}"));
        assert_eq!(hooks, vec![started("a", 1), started("b", 1)], "one worker per shard lease");
        let want = [cp("a", 1, "1", false), cp("a", 1, "3", false), cp("a", 1, "", true), cp("b", 1, "2", false)];
        assert_eq!(stored(&butler), want.into_iter().collect());
        script.wait_closed(5).await;
    }

    #[tokio::test]
    async fn a_new_epoch_fences_the_old_worker_and_lease_lost_checkpoints_nothing() {
        let rig = start(options()).await;
        let s = &rig.script;
        s.assign("s", "a", 1, "");
        s.batch("s", "a", 1, &["1"]);
        rig.wait("the first batch", |c| c.iter().any(|c| matches!(c, Call::Batch { .. }))).await;
        s.assign("s", "a", 2, "1");
        s.batch("s", "a", 2, &["2"]);
        rig.wait("the second lease's batch", |c| c.iter().any(|c| matches!(c, Call::Batch { epoch: 2, .. }))).await;
        s.revoke("s", "a", 2, Reason::LeaseLost);
        rig.wait("the second lease lost", |c| c.contains(&stopped("a", 2, StopReason::LeaseLost))).await;
        assert_eq!(
            rig.hooks(),
            vec![
                started("a", 1),
                stopped("a", 1, StopReason::LeaseLost),
                started("a", 2),
                stopped("a", 2, StopReason::LeaseLost)
            ]
        );
        assert_eq!(stored(&rig.butler), [cp("a", 1, "1", false), cp("a", 2, "2", false)].into_iter().collect());
        rig.script.end();
        assert_eq!(rig.end().await, "disconnected");
    }

    #[tokio::test]
    async fn a_full_queue_sheds_the_shard_and_releases_it_after_the_queued_batches() {
        let rig = start(ConsumerOptions { shard_queue_batches: 1, ..options() }).await;
        let s = &rig.script;
        rig.gate.send_replace(false);
        s.assign("s", "a", 1, "");
        s.batch("s", "a", 1, &["1"]);
        rig.wait("the batch in hand", |c| c.iter().any(|c| matches!(c, Call::Batch { .. }))).await;
        s.batch("s", "a", 1, &["2"]); // queued
        s.batch("s", "a", 1, &["3"]); // the queue is full: shed from here on
        s.batch("s", "a", 1, &["4"]);
        s.end_shard("s", "a", 1); // batches were dropped: not the end for this lease
        s.assign("s", "b", 1, "");
        s.batch("s", "b", 1, &["5"]); // another shard is not held up
        rig.wait("b's batch", |c| c.iter().any(|c| matches!(c, Call::Batch { shard_id, .. } if shard_id == "b"))).await;
        rig.gate.send_replace(true);
        rig.wait("a released", |c| c.contains(&stopped("a", 1, StopReason::Released))).await;
        let a: Vec<_> = rig.batches().into_iter().filter(|b| b.0 == "a").collect();
        assert_eq!(a, vec![batch("a", 1, &["1"]), batch("a", 1, &["2"])]);
        let want = [cp("a", 1, "1", false), cp("a", 1, "2", false), cp("a", 1, "", true), cp("b", 1, "5", false)];
        assert_eq!(stored(&rig.butler), want.into_iter().collect());
        rig.stop.cancel();
        assert_eq!(rig.end().await, "stopped");
    }
}
