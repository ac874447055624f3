//! One worker per app and stream with local sessions: each round it renews this
//! instance's sessions and leases in batches, runs the balancer, and starts, revokes and
//! stops shard readers so they match the leases the store says its sessions hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_ms;

use kinesis_butler_proto as pb;
use pb::get_records_response::Event;
use pb::shard_revoked::Reason;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::coordination::balancer;
use crate::coordination::session::Session;
use crate::error::ButlerError;
use crate::metrics as m;
use crate::retrieval::delivery::{Position, ReaderSpec, StartAt};
use crate::retrieval::kinesis::IteratorStart;
use crate::retrieval::reader;
use crate::retrieval::source::Source;
use crate::store::{Checkpoint, GroupKey, HeldLease, Lease, LeaseStore};

/// Timing knobs of a group worker.
#[derive(Clone, Debug)]
pub(crate) struct GroupSettings {
    /// Lease and session time to live.
    pub lease_ttl: Duration,
    /// Round interval.
    pub balance_interval: Duration,
    /// Grace for a revoked shard's release.
    pub handoff_grace: Duration,
    /// Shard listing interval.
    pub shard_sync_interval: Duration,
    /// Reader pause when caught up.
    pub idle_interval: Duration,
    /// Read with enhanced fan-out instead of polling.
    pub fanout: Option<crate::retrieval::fanout::FanOut>,
}

struct RunningReader {
    session: Arc<Session>,
    epoch: u64,
    cancel: CancellationToken,
    revoked_at: Option<Instant>,
}

#[derive(Default)]
struct GroupState {
    sessions: HashMap<String, Arc<Session>>,
    readers: HashMap<String, RunningReader>,
    last_shard_sync: Option<Instant>,
}

/// The shared state of one app and stream on this instance.
pub(crate) struct Group {
    key: GroupKey,
    store: Arc<dyn LeaseStore>,
    kinesis: Source,
    settings: GroupSettings,
    state: Mutex<GroupState>,
    wake: Notify,
    /// Set on shutdown: no new leases, no new readers.
    draining: AtomicBool,
    /// Signalled whenever a reader goes away, for shutdown to wait on.
    released: Notify,
}

impl Group {
    /// A group with no sessions yet; `run` drives it.
    pub(crate) fn new(key: GroupKey, store: Arc<dyn LeaseStore>, kinesis: Source, settings: GroupSettings) -> Self {
        Self {
            key,
            store,
            kinesis,
            settings,
            state: Mutex::new(GroupState::default()),
            wake: Notify::new(),
            draining: AtomicBool::new(false),
            released: Notify::new(),
        }
    }

    /// Adds a local session and asks for a round at once.
    pub(crate) async fn add_session(&self, session: Arc<Session>) {
        self.state.lock().await.sessions.insert(session.id.clone(), session);
        self.wake.notify_one();
    }

    /// Removes a local session: stops its readers and frees its leases in the store at
    /// once. Returns whether the group has no local session left.
    pub(crate) async fn remove_session(&self, session_id: &str) -> bool {
        let mut state = self.state.lock().await;
        state.sessions.remove(session_id);
        state.readers.retain(|_, r| {
            let keep = r.session.id != session_id;
            if !keep {
                r.cancel.cancel();
            }
            keep
        });
        if let Err(e) = self.store.drop_session(&self.key, session_id).await {
            warn!(app = %self.key.app, stream = %self.key.stream, session = session_id, error = %e,
                "could not free the session's leases; they expire after the lease TTL");
        }
        self.released.notify_waiters();
        self.wake.notify_one();
        state.sessions.is_empty()
    }

    /// Whether no local session is left.
    pub(crate) async fn is_empty(&self) -> bool {
        self.state.lock().await.sessions.is_empty()
    }

    /// Gives up a shard after the client's final checkpoint (answer to a revoke, or
    /// after `shard_end`).
    pub(crate) async fn release(&self, session_id: &str, shard_id: &str, epoch: u64) -> Result<(), ButlerError> {
        let mut state = self.state.lock().await;
        if let Some(r) = state.readers.get(shard_id) {
            if r.session.id == session_id && r.epoch == epoch {
                r.cancel.cancel();
                if let Some(at) = r.revoked_at {
                    metrics::histogram!(m::HANDOFF_SECONDS).record(at.elapsed().as_secs_f64());
                }
                state.readers.remove(shard_id);
                self.released.notify_waiters();
            }
        }
        let expires = now_ms() + self.settings.lease_ttl.as_millis() as i64;
        let released = self.store.release(&self.key, shard_id, session_id, epoch, expires).await?;
        drop(state);
        match released {
            Some(lease) => {
                info!(app = %self.key.app, stream = %self.key.stream, shard = shard_id, from = session_id,
                    to = lease.owner.as_deref().unwrap_or(""), epoch = lease.epoch, "lease released");
                self.wake.notify_one();
                Ok(())
            }
            None => Err(ButlerError::FailedPrecondition(format!(
                "session {session_id} does not hold shard {shard_id} at epoch {epoch}"
            ))),
        }
    }

    /// Starts draining: revokes every running shard with `SHUTDOWN` and stops taking
    /// new ones. Clients answer with their final checkpoint and a release.
    pub(crate) async fn revoke_all(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let mut state = self.state.lock().await;
        for (shard, r) in state.readers.iter_mut().filter(|(_, r)| r.revoked_at.is_none()) {
            r.revoked_at = Some(Instant::now());
            r.cancel.cancel();
            send_revoked(&r.session, &self.key.stream, shard, r.epoch, Reason::Shutdown);
        }
    }

    /// Waits until every reader of this group was released.
    pub(crate) async fn wait_released(&self) {
        loop {
            let notified = self.released.notified();
            if self.state.lock().await.readers.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Runs rounds until the group has no local session or `shutdown` fires.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if self.is_empty().await {
                return;
            }
            if let Err(e) = self.round().await {
                metrics::counter!(m::STORE_ERRORS, "op" => "round").increment(1);
                warn!(app = %self.key.app, stream = %self.key.stream, error = %e, "balancing round failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.balance_interval) => {}
            }
        }
    }

    async fn round(&self) -> Result<(), ButlerError> {
        let mut state = self.state.lock().await;
        let (key, store) = (&self.key, &self.store);
        let now = now_ms();
        let expires = now + self.settings.lease_ttl.as_millis() as i64;

        let local: Vec<String> = state.sessions.keys().cloned().collect();
        store.renew_sessions(key, &local, expires).await?;
        let held: Vec<HeldLease> = state
            .readers
            .iter()
            .map(|(shard, r)| HeldLease { shard_id: shard.clone(), owner: r.session.id.clone(), epoch: r.epoch })
            .collect();
        for shard in store.renew(key, &held, expires).await? {
            if let Some(r) = state.readers.remove(&shard) {
                warn!(app = %key.app, stream = %key.stream, shard = %shard, session = %r.session.id, "lease lost");
                stop(r, &key.stream, &shard, Reason::LeaseLost);
            }
        }

        let sync_due = state.last_shard_sync.is_none_or(|t| t.elapsed() >= self.settings.shard_sync_interval);
        if sync_due {
            match self.kinesis.list_shards(&key.stream).await {
                Ok(shards) => {
                    store.sync_shards(key, &shards).await?;
                    state.last_shard_sync = Some(Instant::now());
                }
                Err(e) => warn!(app = %key.app, stream = %key.stream, error = %e, "listing shards failed"),
            }
        }

        let mut leases = store.list_leases(key).await?;
        let sessions = store.list_sessions(key, now).await?;
        let plan = if self.draining.load(Ordering::SeqCst) {
            balancer::Plan::default()
        } else {
            balancer::plan(&leases, &sessions, &local, now)
        };
        let changed = !plan.acquire.is_empty() || !plan.handoff.is_empty();
        for (shard, epoch, session) in &plan.acquire {
            if let Some(lease) = store.acquire(key, shard, *epoch, session, now, expires).await? {
                let from = leases.iter().find(|l| &l.shard_id == shard).and_then(|l| l.owner.clone());
                info!(app = %key.app, stream = %key.stream, shard = %shard, from = from.as_deref().unwrap_or(""),
                    to = %session, epoch = lease.epoch, "lease acquired");
            }
        }
        for (shard, epoch, session) in &plan.handoff {
            if store.request_handoff(key, shard, *epoch, session).await? {
                info!(app = %key.app, stream = %key.stream, shard = %shard, to = %session, "handoff requested");
            }
        }
        if changed {
            leases = store.list_leases(key).await?;
        }
        let live: Vec<&str> = sessions.iter().map(|s| s.session_id.as_str()).collect();
        self.reconcile(&mut state, &leases, &live, now, expires).await?;
        metrics::gauge!(m::LEASES_HELD, "app" => key.app.clone(), "stream" => key.stream.clone())
            .set(state.readers.len() as f64);
        Ok(())
    }

    /// Makes the running readers match the leases held by local sessions.
    async fn reconcile(
        &self,
        state: &mut GroupState,
        leases: &[Lease],
        live: &[&str],
        now: i64,
        expires: i64,
    ) -> Result<(), ButlerError> {
        let key = &self.key;
        let mut keep = Vec::new();
        for lease in leases {
            let owner = lease.owner.as_deref().filter(|_| lease.is_held(now));
            let Some(session) = owner.and_then(|o| state.sessions.get(o)).cloned() else {
                continue;
            };
            let shard = lease.shard_id.as_str();
            if lease.is_finished() {
                // Processed to its end: nothing left to read, free the lease.
                if let Some(r) = state.readers.remove(shard) {
                    r.cancel.cancel();
                }
                self.store.release(key, shard, &session.id, lease.epoch, expires).await?;
                continue;
            }
            keep.push(shard.to_owned());
            let running = state.readers.get_mut(shard).filter(|r| r.session.id == session.id && r.epoch == lease.epoch);
            match running {
                Some(r) => {
                    let handoff_live = lease.handoff_to.as_deref().is_some_and(|t| live.contains(&t));
                    match r.revoked_at {
                        None if handoff_live => {
                            metrics::counter!(m::REBALANCES, "app" => key.app.clone(), "stream" => key.stream.clone())
                                .increment(1);
                            r.revoked_at = Some(Instant::now());
                            r.cancel.cancel();
                            info!(app = %key.app, stream = %key.stream, shard, from = %session.id,
                                to = lease.handoff_to.as_deref().unwrap_or(""), "revoking shard for rebalance");
                            send_revoked(&r.session, &key.stream, shard, r.epoch, Reason::Rebalance);
                        }
                        Some(at) if at.elapsed() >= self.settings.handoff_grace => {
                            warn!(app = %key.app, stream = %key.stream, shard, session = %session.id,
                                "no release within the handoff grace; handing the shard over");
                            state.readers.remove(shard);
                            self.store.release(key, shard, &session.id, lease.epoch, expires).await?;
                            self.released.notify_waiters();
                            self.wake.notify_one();
                        }
                        _ => {}
                    }
                }
                None => {
                    if let Some(old) = state.readers.remove(shard) {
                        stop(old, &key.stream, shard, Reason::LeaseLost);
                    }
                    if self.draining.load(Ordering::SeqCst) {
                        continue;
                    }
                    let reader = self.start_reader(&session, lease);
                    state.readers.insert(shard.to_owned(), reader);
                }
            }
        }
        let gone: Vec<String> = state.readers.keys().filter(|s| !keep.contains(s)).cloned().collect();
        for shard in gone {
            if let Some(r) = state.readers.remove(&shard) {
                stop(r, &key.stream, &shard, Reason::LeaseLost);
            }
        }
        if state.readers.is_empty() {
            self.released.notify_waiters();
        }
        Ok(())
    }

    fn start_reader(&self, session: &Arc<Session>, lease: &Lease) -> RunningReader {
        let start = match &lease.checkpoint {
            // At the checkpointed record, dropping the user records up to it (see the
            // resume rule in `reader`): a restart inside a KPL aggregate neither skips
            // nor repeats.
            Checkpoint::At { sequence, sub_sequence } => {
                StartAt::After(Position { sequence: sequence.clone(), sub_sequence: *sub_sequence })
            }
            // Children of a reshard start at their beginning so nothing between the
            // parent's end and the child's first read is skipped.
            _ if !lease.parent_shard_ids.is_empty() => StartAt::Fresh(IteratorStart::TrimHorizon),
            _ => StartAt::Fresh(session.start.clone()),
        };
        let spec = ReaderSpec {
            app: self.key.app.clone(),
            stream: self.key.stream.clone(),
            shard_id: lease.shard_id.clone(),
            epoch: lease.epoch,
            start,
            batch_size: session.batch_size,
            idle_interval: self.settings.idle_interval,
            assigned: pb::ShardAssigned {
                stream: self.key.stream.clone(),
                shard_id: lease.shard_id.clone(),
                lease_epoch: lease.epoch,
                checkpoint: lease.checkpoint.as_text().to_owned(),
            },
            fanout: self.settings.fanout.clone(),
        };
        let cancel = CancellationToken::new();
        tokio::spawn(reader::run(self.kinesis.clone(), spec, session.out.clone(), cancel.clone()));
        RunningReader { session: session.clone(), epoch: lease.epoch, cancel, revoked_at: None }
    }
}

fn stop(reader: RunningReader, stream: &str, shard: &str, reason: Reason) {
    reader.cancel.cancel();
    if reader.revoked_at.is_none() || reason == Reason::LeaseLost {
        send_revoked(&reader.session, stream, shard, reader.epoch, reason);
    }
}

/// Queues a revoke behind the batches already in the session's outbox without blocking
/// the round on a slow client.
fn send_revoked(session: &Arc<Session>, stream: &str, shard: &str, epoch: u64, reason: Reason) {
    let event = Event::ShardRevoked(pb::ShardRevoked {
        stream: stream.to_owned(),
        shard_id: shard.to_owned(),
        lease_epoch: epoch,
        reason: reason as i32,
    });
    let out = session.out.clone();
    tokio::spawn(async move {
        let _ = out.send(Ok(pb::GetRecordsResponse { event: Some(event) })).await;
    });
}
