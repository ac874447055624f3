//! One worker per app and stream with local sessions. Each round it renews this
//! instance's sessions (one store call), observes every session's heartbeat, reads the
//! leases when they changed, asks [`decide`](crate::coordination::decide::decide) what to
//! do and performs it. The state mutex is a `std` mutex that is never held across an
//! `.await`: store and Kinesis calls happen outside it, so a slow store stalls no
//! checkpoint, release or joining session.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kinesis_butler_proto as pb;
use pb::get_records_response::Event;
use pb::shard_revoked::Reason;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::coordination::announcer::Announcer;
use crate::coordination::decide::{self, Action, GivenUp, ReaderView, ReleaseCause, View};
use crate::coordination::liveness::Liveness;
use crate::coordination::session::Session;
use crate::error::ButlerError;
use crate::metrics as m;
use crate::retrieval::delivery::{Position, ReaderSpec, StartAt};
use crate::retrieval::kinesis::IteratorStart;
use crate::retrieval::reader;
use crate::retrieval::source::Source;
use crate::store::{Checkpoint, GroupKey, Lease, Leases, SessionRecord, Versioned};

/// How long a session record whose heartbeat stopped is kept before any instance deletes
/// it. Its leases are free after the lease TTL already; this only tidies up after
/// crashed instances, and is long so that an instance that lost the store for a while
/// finds its records again.
pub(crate) const SESSION_RECORD_RETENTION: Duration = Duration::from_secs(60 * 60);

/// How long a group keeps merging changed-since reads into its leases before it reads
/// them all again (only when something changed): a bound on any drift.
const FULL_READ_INTERVAL: Duration = Duration::from_secs(30);

/// How long a group waits after a pushed change before its round, gathering the burst
/// of announcements one change on other instances makes.
const PUSH_DEBOUNCE: Duration = Duration::from_millis(20);

/// How long a group polls only, after its store subscription ended, before it subscribes
/// again.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(10);

/// A group's copy of its leases.
struct LeaseCache {
    /// The lease generation the copy reflects.
    generation: u64,
    /// Every lease, in shard id order (shared with the round that uses it).
    leases: Arc<Vec<Versioned<Lease>>>,
    /// When every lease was last read.
    full_at: Instant,
}

/// Merges leases read since a generation into `leases` (both in shard id order): a newer
/// version replaces the one held, a new shard is inserted in order.
fn merge_leases(leases: &mut Vec<Versioned<Lease>>, changed: Vec<Versioned<Lease>>) {
    for lease in changed {
        match leases.binary_search_by(|l| l.value.shard_id.cmp(&lease.value.shard_id)) {
            Ok(i) if leases[i].version < lease.version => leases[i] = lease,
            Ok(_) => {}
            Err(i) => leases.insert(i, lease),
        }
    }
}

/// Timing knobs of a group worker.
#[derive(Clone, Debug)]
pub(crate) struct GroupSettings {
    /// How long a session's heartbeat may stay unchanged before others judge it dead.
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

struct GroupState {
    sessions: HashMap<String, Arc<Session>>,
    readers: HashMap<String, RunningReader>,
    last_shard_sync: Option<Instant>,
    liveness: Liveness,
    /// Leases as last read, with the generation they were read at.
    leases: Option<LeaseCache>,
    /// Session records as last read, and when that read began and ended.
    records: Vec<Versioned<SessionRecord>>,
    records_read: Option<(Instant, Instant)>,
    /// When this instance last renewed its sessions.
    last_renewed: Option<Instant>,
    /// Shard → the highest epoch this instance gave up (released, stopped, dropped). A
    /// round whose lease read predates the release must not start that epoch again.
    given_up: HashMap<String, GivenUp>,
}

/// The shared state of one app and stream on this instance.
pub(crate) struct Group {
    key: GroupKey,
    leases: Leases,
    source: Source,
    instance_id: String,
    settings: GroupSettings,
    state: Mutex<GroupState>,
    wake: Notify,
    /// Tells other instances of this group's changes (a join, a release, a handoff
    /// request, an acquisition), so they need not wait for their next round.
    announcer: Announcer,
    /// Set on shutdown: no new leases, no new readers.
    draining: AtomicBool,
    /// Signalled whenever a reader goes away, for shutdown to wait on.
    released: Notify,
    /// A shard listing runs beside the rounds.
    syncing: AtomicBool,
}

impl Group {
    /// A group with no sessions yet; `run` drives it.
    /// `listed`: when the stream's shards were last synced into leases, if they were.
    pub(crate) fn new(
        key: GroupKey,
        listed: Option<Instant>,
        leases: Leases,
        source: Source,
        instance_id: String,
        settings: GroupSettings,
    ) -> Self {
        let liveness = Liveness::new(settings.lease_ttl);
        let announcer = Announcer::new(leases.store().clone(), key.clone());
        Self {
            announcer,
            key,
            leases,
            source,
            instance_id,
            settings,
            state: Mutex::new(GroupState {
                sessions: HashMap::new(),
                readers: HashMap::new(),
                last_shard_sync: listed,
                liveness,
                leases: None,
                records: Vec::new(),
                records_read: None,
                given_up: HashMap::new(),
                last_renewed: None,
            }),
            wake: Notify::new(),
            draining: AtomicBool::new(false),
            released: Notify::new(),
            syncing: AtomicBool::new(false),
        }
    }

    /// Marks `epoch` of `shard` given up; `settled_at` is `None` while its release is in
    /// flight (see [`Group::settle`]).
    fn give_up(state: &mut GroupState, shard: &str, epoch: u64, settled_at: Option<Instant>) {
        let given = GivenUp { epoch, settled_at };
        let g = state.given_up.entry(shard.to_owned()).or_insert(given);
        if epoch >= g.epoch {
            *g = given;
        }
    }

    /// Marks the release of `epoch` of each shard returned (whether or not it landed).
    fn settle<'a>(&self, shards: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut state = self.state();
        let now = Instant::now();
        for (shard, epoch) in shards {
            if let Some(g) = state.given_up.get_mut(shard).filter(|g| g.epoch == epoch) {
                g.settled_at.get_or_insert(now);
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().expect("group state")
    }

    /// Adds a local session and asks for a round at once.
    pub(crate) fn add_session(&self, session: Arc<Session>) {
        self.state().sessions.insert(session.id.clone(), session);
        self.wake.notify_one();
    }

    /// Removes a local session: stops its readers and frees its leases in the store at
    /// once. Returns whether the group has no local session left.
    pub(crate) async fn remove_session(&self, session_id: &str) -> bool {
        let (empty, gone) = {
            let mut state = self.state();
            state.sessions.remove(session_id);
            let gone: Vec<(String, u64)> = state
                .readers
                .iter()
                .filter(|(_, r)| r.session.id == session_id)
                .map(|(shard, r)| (shard.clone(), r.epoch))
                .collect();
            for (shard, epoch) in &gone {
                if let Some(r) = state.readers.remove(shard) {
                    r.cancel.cancel();
                }
                Self::give_up(&mut state, shard, *epoch, None);
            }
            (state.sessions.is_empty(), gone)
        };
        if let Err(e) = self.leases.drop_session(&self.key, session_id).await {
            warn!(app = %self.key.app, stream = %self.key.stream, session = session_id, error = %e,
                "could not free the session's leases; they are free after the lease TTL");
        }
        self.settle(gone.iter().map(|(shard, epoch)| (shard.as_str(), *epoch)));
        self.announcer.now().await;
        self.released.notify_waiters();
        self.wake.notify_one();
        empty
    }

    /// Asks for a round at once (after a change made outside the group, like a reset).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sessions alive in this instance's view (its own included).
    pub(crate) fn alive_sessions(&self) -> HashSet<String> {
        let state = self.state();
        let now = Instant::now();
        state.sessions.keys().cloned().chain(state.liveness.alive(now).cloned()).collect()
    }

    /// Whether no local session is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.state().sessions.is_empty()
    }

    /// Gives up a shard with the client's final checkpoint (the answer to a revoke, or
    /// `shard_end`): both in one conditional write.
    pub(crate) async fn release(
        &self,
        session_id: &str,
        shard_id: &str,
        epoch: u64,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), ButlerError> {
        self.stop_reader_of(session_id, shard_id, epoch);
        let hint = self.cached_lease(shard_id);
        let released = self
            .leases
            .checkpoint_and_release_from(&self.key, hint.as_ref(), shard_id, session_id, epoch, checkpoint)
            .await;
        self.settle([(shard_id, epoch)]);
        let released = released?;
        if let Some(written) = &released {
            self.note_written(written.clone());
        }
        match released.map(|l| l.value) {
            Some(lease) => {
                info!(app = %self.key.app, stream = %self.key.stream, shard = shard_id, from = session_id,
                    to = lease.owner.as_deref().unwrap_or(""), epoch = lease.epoch, "lease released");
                self.announcer.later();
                self.wake.notify_one();
                Ok(())
            }
            None => Err(ButlerError::FailedPrecondition(format!(
                "session {session_id} does not hold shard {shard_id} at epoch {epoch}"
            ))),
        }
    }

    /// Stores a checkpoint of a shard `session_id` holds at `epoch`: one conditional write
    /// at the version this group last saw, the usual read and write if that was stale.
    pub(crate) async fn checkpoint(
        &self,
        session_id: &str,
        shard_id: &str,
        epoch: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), ButlerError> {
        let hint = self.cached_lease(shard_id);
        let written =
            self.leases.checkpoint_from(&self.key, hint.as_ref(), shard_id, session_id, epoch, checkpoint).await?;
        self.note_written(written);
        Ok(())
    }

    /// The lease of `shard_id` as this group last read or wrote it.
    fn cached_lease(&self, shard_id: &str) -> Option<Versioned<Lease>> {
        let state = self.state();
        let leases = &state.leases.as_ref()?.leases;
        let i = leases.binary_search_by(|l| l.value.shard_id.as_str().cmp(shard_id)).ok()?;
        Some(leases[i].clone())
    }

    /// Keeps a lease this instance just wrote in the cache (if newer), so that the next
    /// write of it needs no read.
    fn note_written(&self, lease: Versioned<Lease>) {
        if let Some(cache) = self.state().leases.as_mut() {
            merge_leases(Arc::make_mut(&mut cache.leases), vec![lease]);
        }
    }

    /// Stops the reader of `shard_id` if `session_id` runs it at `epoch`.
    fn stop_reader_of(&self, session_id: &str, shard_id: &str, epoch: u64) {
        let mut state = self.state();
        Self::give_up(&mut state, shard_id, epoch, None);
        if state.readers.get(shard_id).is_some_and(|r| r.session.id == session_id && r.epoch == epoch) {
            let r = state.readers.remove(shard_id).expect("present");
            r.cancel.cancel();
            if let Some(at) = r.revoked_at {
                metrics::histogram!(m::HANDOFF_SECONDS).record(at.elapsed().as_secs_f64());
            }
            self.released.notify_waiters();
        }
    }

    /// Starts draining: revokes every running shard with `SHUTDOWN` and stops taking
    /// new ones. Clients answer with their final checkpoint and a release.
    pub(crate) fn revoke_all(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let mut state = self.state();
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
            if self.state().readers.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Runs rounds until the group has no local session or `shutdown` fires. Rounds
    /// also run at once on a local join, leave or release, and when another instance
    /// announces a change through the store (where the store can push).
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let beating = shutdown.child_token();
        let _stop_beating = beating.clone().drop_guard();
        tokio::spawn(self.clone().beat_loop(beating));
        let mut watch = self.leases.store().watch(&self.key);
        let mut resubscribe_at: Option<Instant> = None;
        loop {
            if self.is_empty() {
                return;
            }
            if resubscribe_at.is_some_and(|at| Instant::now() >= at) {
                watch = self.leases.store().watch(&self.key);
                resubscribe_at = None;
            }
            if let Err(e) = self.round().await {
                metrics::counter!(m::STORE_ERRORS, "op" => "round").increment(1);
                warn!(app = %self.key.app, stream = %self.key.stream, error = %e, "balancing round failed");
                self.fence_if_stale();
            }
            let pushed = async {
                match watch.as_mut() {
                    Some(w) => futures::StreamExt::next(w).await.is_some(),
                    None => std::future::pending::<bool>().await,
                }
            };
            let was_pushed = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => false,
                open = pushed => {
                    if !open {
                        // The subscription is gone: poll, and subscribe again later.
                        watch = None;
                        resubscribe_at = Some(Instant::now() + RESUBSCRIBE_AFTER);
                    }
                    open
                }
                _ = tokio::time::sleep(self.settings.balance_interval) => false,
            };
            if was_pushed {
                // Other instances announce in bursts (each of their rounds, releases and
                // joins): one round after a short pause answers all of them.
                tokio::time::sleep(PUSH_DEBOUNCE).await;
                if let Some(w) = watch.as_mut() {
                    while let Some(Some(())) = futures::FutureExt::now_or_never(futures::StreamExt::next(w)) {}
                }
            }
        }
    }

    /// Stops every reader when this instance could not renew its sessions for a TTL:
    /// other instances may judge them dead and take their leases any moment.
    fn fence_if_stale(&self) {
        let mut state = self.state();
        if !decide::self_fenced(state.last_renewed, Instant::now(), self.settings.lease_ttl) {
            return;
        }
        let shards: Vec<String> = state.readers.keys().cloned().collect();
        for shard in shards {
            let r = state.readers.remove(&shard).expect("present");
            warn!(app = %self.key.app, stream = %self.key.stream, shard = %shard, session = %r.session.id,
                "sessions not renewed for a lease TTL; stopping the reader");
            // Not given up: once the store answers again and the lease is still this
            // session's at this epoch, reading resumes.
            stop(r, &self.key.stream, &shard, Reason::LeaseLost);
        }
        state.leases = None;
        self.released.notify_waiters();
    }

    /// Renews this instance's sessions every third of the lease TTL (at most every
    /// balance interval), apart from the rounds: a round that waits on a slow store or
    /// Kinesis must not make the sessions look dead to other instances.
    async fn beat_loop(self: Arc<Self>, stop: CancellationToken) {
        let every = (self.settings.lease_ttl / 3).min(self.settings.balance_interval).max(Duration::from_millis(10));
        loop {
            if let Err(e) = self.beat().await {
                metrics::counter!(m::STORE_ERRORS, "op" => "beat").increment(1);
                warn!(app = %self.key.app, stream = %self.key.stream, error = %e, "renewing the sessions failed");
                self.fence_if_stale();
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One renewal of every local session (one store call); sessions whose record is
    /// gone (deleted while this instance could not reach the store) are registered again.
    async fn beat(&self) -> Result<(), ButlerError> {
        let key = &self.key;
        let local: Vec<(String, String)> =
            self.state().sessions.values().map(|s| (s.id.clone(), s.client_name.clone())).collect();
        if local.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let ids: Vec<String> = local.iter().map(|(id, _)| id.clone()).collect();
        let missing = self.leases.beat(key, &ids).await?;
        for (id, client_name) in local.iter().filter(|(id, _)| missing.contains(id)) {
            let record = SessionRecord {
                session_id: id.clone(),
                instance_id: self.instance_id.clone(),
                client_name: client_name.clone(),
                heartbeat: 0,
            };
            self.leases.put_session(key, &record).await?;
        }
        // Renewed as of when the call was sent: the conservative end for self-fencing.
        self.state().last_renewed = Some(started);
        Ok(())
    }

    /// Lists the stream's shards and merges them into the leases. Returns whether it did.
    async fn sync_shards(&self) -> Result<bool, ButlerError> {
        let key = &self.key;
        match self.source.list_shards(&key.stream).await {
            Ok(shards) => {
                self.leases.sync_shards(key, &shards).await?;
                self.state().last_shard_sync = Some(Instant::now());
                Ok(true)
            }
            Err(e) => {
                warn!(app = %key.app, stream = %key.stream, error = %e, "listing shards failed");
                Ok(false)
            }
        }
    }

    async fn round(self: &Arc<Self>) -> Result<(), ButlerError> {
        let key = &self.key;
        let last_sync = self.state().last_shard_sync;
        match last_sync {
            // The first listing: nothing to balance without it.
            None => {
                self.sync_shards().await?;
            }
            // Later ones run beside the rounds, so that a slow Kinesis never holds up
            // renewals, failover or handoffs; the round after it sees the new leases.
            Some(at) if at.elapsed() >= self.settings.shard_sync_interval => {
                if !self.syncing.swap(true, Ordering::SeqCst) {
                    let group = self.clone();
                    tokio::spawn(async move {
                        let synced = group.sync_shards().await;
                        if !matches!(synced, Ok(true)) {
                            if let Err(e) = &synced {
                                warn!(app = %group.key.app, stream = %group.key.stream, error = %e,
                                    "storing listed shards failed");
                            }
                            // Try again after a balance interval, not a whole sync interval.
                            let retry = Instant::now() + group.settings.balance_interval;
                            group.state().last_shard_sync = retry.checked_sub(group.settings.shard_sync_interval);
                        }
                        group.syncing.store(false, Ordering::SeqCst);
                        group.wake.notify_one();
                    });
                }
            }
            Some(_) => {}
        }

        let read_at = Instant::now();
        let records = self.leases.sessions(key).await?;
        let sessions_read = read_at.elapsed();
        let stale = {
            let mut state = self.state();
            state.records = records;
            state.records_read = Some((read_at, Instant::now()));
            state.liveness.stale(Instant::now(), SESSION_RECORD_RETENTION)
        };
        if !stale.is_empty() {
            let local: Vec<String> = self.state().sessions.keys().cloned().collect();
            for id in self.leases.remove_stale_sessions(key, &stale, &local).await? {
                info!(app = %key.app, stream = %key.stream, session = %id, "deleted the record of a dead session");
            }
        }

        // Two passes: the second starts readers for what the first acquired.
        let (mut leases_read, mut written) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..2 {
            let at = Instant::now();
            let leases = self.current_leases().await?;
            leases_read += at.elapsed();
            let store_actions = self.apply_local(&leases, at);
            if store_actions.is_empty() {
                break;
            }
            let at = Instant::now();
            self.apply_store(store_actions).await?;
            written += at.elapsed();
        }
        let held = self.state().readers.len();
        debug!(app = %key.app, stream = %key.stream, held, sessions_ms = sessions_read.as_millis() as u64,
            leases_ms = leases_read.as_millis() as u64, writes_ms = written.as_millis() as u64,
            total_ms = read_at.elapsed().as_millis() as u64, "round");
        metrics::gauge!(m::LEASES_HELD, "app" => key.app.clone(), "stream" => key.stream.clone()).set(held as f64);
        Ok(())
    }

    /// The leases: those written since the last read merged into the ones held (one store
    /// call, nothing decoded when nothing changed), with a whole read at first, after
    /// [`FULL_READ_INTERVAL`] of changes, and when the cache was dropped.
    async fn current_leases(&self) -> Result<Arc<Vec<Versioned<Lease>>>, ButlerError> {
        let cached = self.state().leases.as_ref().map(|c| (c.generation, c.full_at));
        let (since, stale) = cached.map_or((0, false), |(g, at)| (g, at.elapsed() >= FULL_READ_INTERVAL));
        let store = self.leases.store();
        let (mut generation, mut changed) = store.read_leases_since(&self.key, since).await?;
        let mut full = since == 0;
        if !full && (stale || generation < since) && generation != since {
            (generation, changed) = store.read_leases_since(&self.key, 0).await?;
            full = true;
        }
        {
            let mut state = self.state();
            if full {
                state.leases = Some(LeaseCache { generation, leases: Arc::new(changed), full_at: Instant::now() });
            } else if let Some(cache) = state.leases.as_mut().filter(|c| c.generation == since) {
                merge_leases(Arc::make_mut(&mut cache.leases), changed);
                cache.generation = generation;
            } else {
                // The cache was dropped or replaced while this read ran: read everything.
                state.leases = None;
            }
            if let Some(cache) = &state.leases {
                return Ok(cache.leases.clone());
            }
        }
        Box::pin(self.current_leases()).await
    }

    /// Decides, performs what needs no store call (start, revoke, stop readers) and
    /// returns the rest.
    fn apply_local(&self, leases: &[Versioned<Lease>], leases_read_at: Instant) -> Vec<Action> {
        let mut guard = self.state();
        let state = &mut *guard;
        let now = Instant::now();
        // Sessions are read before leases, so every owner a lease names had its record
        // written before this read of the leases; one not seen yet gets a whole TTL.
        // A change counts from the end of the read that showed it, and liveness is
        // judged as of the read's start: both err towards alive.
        let (read_at, read_done) = state.records_read.unwrap_or((now, now));
        let referenced = leases.iter().flat_map(|l| l.value.owner.iter().chain(l.value.handoff_to.iter()));
        state.liveness.observe(&state.records, referenced.map(String::as_str), read_done);
        let local: Vec<String> = state.sessions.keys().cloned().collect();
        let mut live: HashSet<String> = local.iter().cloned().collect();
        live.extend(state.liveness.alive(read_at).cloned());
        let readers: BTreeMap<String, ReaderView> = state
            .readers
            .iter()
            .map(|(shard, r)| {
                (shard.clone(), ReaderView { session: r.session.id.clone(), epoch: r.epoch, revoked_at: r.revoked_at })
            })
            .collect();
        // A read that shows a newer epoch than one given up makes the marker moot.
        for lease in leases {
            if state.given_up.get(&lease.value.shard_id).is_some_and(|g| lease.value.epoch > g.epoch) {
                state.given_up.remove(&lease.value.shard_id);
            }
        }
        let actions = decide::decide(&View {
            leases,
            live: &live,
            local: &local,
            readers: &readers,
            now,
            handoff_grace: self.settings.handoff_grace,
            draining: self.draining.load(Ordering::SeqCst),
            given_up: &state.given_up,
            leases_read_at,
            free_start: decide::free_start(
                &self.instance_id,
                state.records.iter().map(|r| (r.value.session_id.as_str(), r.value.instance_id.as_str())),
                &live,
            ),
        });
        let key = &self.key;
        let mut rest = Vec::new();
        for action in actions {
            match action {
                Action::Start { session, lease } => {
                    if let Some(session) = state.sessions.get(&session).cloned() {
                        let reader = self.start_reader(&session, &lease);
                        state.readers.insert(lease.shard_id.clone(), reader);
                    }
                }
                Action::Revoke { shard } => {
                    if let Some(r) = state.readers.get_mut(&shard) {
                        metrics::counter!(m::REBALANCES, "app" => key.app.clone(), "stream" => key.stream.clone())
                            .increment(1);
                        r.revoked_at = Some(now);
                        r.cancel.cancel();
                        info!(app = %key.app, stream = %key.stream, shard = %shard, from = %r.session.id,
                            "revoking shard for rebalance");
                        send_revoked(&r.session, &key.stream, &shard, r.epoch, Reason::Rebalance);
                    }
                }
                Action::Stop { shard } => {
                    if let Some(r) = state.readers.remove(&shard) {
                        // Nothing to release: the lease is no longer this instance's.
                        Self::give_up(state, &shard, r.epoch, Some(now));
                        warn!(app = %key.app, stream = %key.stream, shard = %shard, session = %r.session.id, "lease lost");
                        stop(r, &key.stream, &shard, Reason::LeaseLost);
                    }
                }
                Action::Release { ref shard, ref session, cause, epoch } => {
                    if let Some(r) = state.readers.remove(shard) {
                        r.cancel.cancel();
                    }
                    Self::give_up(state, shard, epoch, None);
                    if cause == ReleaseCause::GraceExpired {
                        warn!(app = %key.app, stream = %key.stream, shard = %shard, session = %session,
                            "no release within the handoff grace; handing the shard over");
                    }
                    rest.push(action);
                }
                other => rest.push(other),
            }
        }
        if state.readers.is_empty() {
            self.released.notify_waiters();
        }
        rest
    }

    /// Performs the store's part of a round: acquisitions and handoff requests in one
    /// call each, then releases.
    async fn apply_store(&self, actions: Vec<Action>) -> Result<(), ButlerError> {
        let key = &self.key;
        let mut acquire = Vec::new();
        let mut handoff = Vec::new();
        let mut release = Vec::new();
        for action in actions {
            match action {
                Action::Acquire { lease, session, owner_dead } => acquire.push((lease, session, owner_dead)),
                Action::RequestHandoff { lease, to } => handoff.push((lease, to)),
                Action::Release { shard, session, epoch, .. } => release.push((shard, session, epoch)),
                _ => {}
            }
        }
        if !acquire.is_empty() {
            let got = self.leases.acquire_many(key, &acquire).await?;
            // Other instances plan with this instance's holdings: tell them at once.
            if got.iter().any(Option::is_some) {
                self.announcer.later();
            }
            for ((before, session, _), lease) in acquire.iter().zip(got) {
                if let Some(lease) = lease {
                    info!(app = %key.app, stream = %key.stream, shard = %lease.shard_id,
                        from = before.value.owner.as_deref().unwrap_or(""), to = %session, epoch = lease.epoch,
                        "lease acquired");
                }
            }
        }
        if !handoff.is_empty() {
            let asked = self.leases.request_handoffs(key, &handoff).await?;
            for ((lease, to), ok) in handoff.iter().zip(asked) {
                if ok {
                    info!(app = %key.app, stream = %key.stream, shard = %lease.value.shard_id, to = %to,
                        "handoff requested");
                }
            }
            self.announcer.now().await;
        }
        // All at once: concurrent single-lease writes share store calls (`combiner.rs`).
        let released = futures::future::join_all(
            release.iter().map(|(shard, session, epoch)| self.leases.release(key, shard, session, *epoch)),
        )
        .await;
        self.settle(release.iter().map(|(shard, _, epoch)| (shard.as_str(), *epoch)));
        if !release.is_empty() {
            self.released.notify_waiters();
            self.announcer.now().await;
        }
        released.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(())
    }

    fn start_reader(&self, session: &Arc<Session>, lease: &Lease) -> RunningReader {
        let start = match &lease.checkpoint {
            // A reset to the start of the shard (`coordination::admin`): below every record.
            Checkpoint::At { sequence, .. } if sequence.as_str() == "0" => StartAt::Fresh(IteratorStart::TrimHorizon),
            // At the checkpointed record, dropping the user records up to it (see the
            // resume rule in `delivery`): a restart inside a KPL aggregate neither skips
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
        tokio::spawn(reader::run(self.source.clone(), spec, session.out.clone(), cancel.clone()));
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

#[cfg(test)]
mod tests {
    //! The group worker over the in-memory store and source, on tokio's paused clock: no
    //! emulator, no store server.

    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;
    use crate::retrieval::memory::MemorySource;
    use crate::store::memory::MemoryStore;
    use crate::store::LeaseStore;

    const STREAM: &str = "s";

    struct Fixture {
        store: Arc<MemoryStore>,
        leases: Leases,
        source: Arc<MemorySource>,
        key: GroupKey,
        group: Arc<Group>,
        events: mpsc::Receiver<Result<pb::GetRecordsResponse, tonic::Status>>,
        shutdown: CancellationToken,
    }

    async fn fixture(shards: usize) -> Fixture {
        let store = Arc::new(MemoryStore::new());
        let leases = Leases::new(store.clone() as Arc<dyn LeaseStore>);
        let source = MemorySource::new();
        source.create_stream(STREAM, shards);
        let key = GroupKey::new("app", STREAM);
        let settings = GroupSettings {
            lease_ttl: Duration::from_secs(3),
            balance_interval: Duration::from_secs(1),
            handoff_grace: Duration::from_secs(2),
            shard_sync_interval: Duration::from_secs(30),
            idle_interval: Duration::from_millis(200),
            fanout: None,
        };
        let group = Arc::new(Group::new(key.clone(), None, leases.clone(), source.clone(), "i1".into(), settings));
        let (tx, events) = mpsc::channel(64);
        let session = Arc::new(Session {
            id: "s1".into(),
            app: "app".into(),
            streams: vec![STREAM.into()],
            client_name: "test".into(),
            start: IteratorStart::TrimHorizon,
            batch_size: 100,
            out: tx,
            closed: CancellationToken::new(),
        });
        let record = SessionRecord {
            session_id: "s1".into(),
            instance_id: "i1".into(),
            client_name: "test".into(),
            heartbeat: 0,
        };
        leases.put_session(&key, &record).await.unwrap();
        group.add_session(session);
        let shutdown = CancellationToken::new();
        tokio::spawn(group.clone().run(shutdown.clone()));
        Fixture { store, leases, source, key, group, events, shutdown }
    }

    impl Fixture {
        /// The next event that `pick` accepts, skipping others; fails after 60 s of
        /// (paused, so instant) time.
        async fn next<T>(&mut self, mut pick: impl FnMut(Event) -> Option<T>) -> T {
            tokio::time::timeout(Duration::from_secs(60), async {
                loop {
                    let event = self.events.recv().await.expect("open").expect("ok").event.expect("event");
                    if let Some(t) = pick(event) {
                        return t;
                    }
                }
            })
            .await
            .expect("event within the timeout")
        }

        /// A session on another instance that keeps beating.
        async fn remote_session(&self, id: &str) -> CancellationToken {
            let record = SessionRecord {
                session_id: id.into(),
                instance_id: "i2".into(),
                client_name: String::new(),
                heartbeat: 0,
            };
            self.leases.put_session(&self.key, &record).await.unwrap();
            let (leases, key, id, stop) =
                (self.leases.clone(), self.key.clone(), id.to_owned(), CancellationToken::new());
            let stopped = stop.clone();
            tokio::spawn(async move {
                while !stopped.is_cancelled() {
                    leases.beat(&key, std::slice::from_ref(&id)).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
            stop
        }
    }

    fn shard(i: usize) -> String {
        format!("shardId-{i:012}")
    }

    #[test]
    fn changed_leases_merge_in_order_and_only_forwards() {
        let lease = |i: usize, version: u64, owner: &str| Versioned {
            version,
            value: Lease {
                owner: Some(owner.into()),
                ..Lease::new(&crate::store::ShardInfo { shard_id: shard(i), parent_shard_ids: vec![], closed: false })
            },
        };
        let mut held = vec![lease(0, 1, "a"), lease(2, 1, "a"), lease(4, 5, "a")];
        merge_leases(&mut held, vec![lease(1, 1, "b"), lease(2, 2, "b"), lease(4, 3, "old"), lease(5, 1, "b")]);
        let view: Vec<(String, u64, &str)> =
            held.iter().map(|l| (l.value.shard_id.clone(), l.version, l.value.owner.as_deref().unwrap())).collect();
        assert_eq!(
            view,
            [(shard(0), 1, "a"), (shard(1), 1, "b"), (shard(2), 2, "b"), (shard(4), 5, "a"), (shard(5), 1, "b")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn takes_free_leases_reads_them_and_stops_a_lease_taken_elsewhere() {
        let mut f = fixture(4).await;
        for i in 0..4 {
            f.source.put(STREAM, &shard(i), "k", b"x");
        }
        let (mut assigned, mut records) = (BTreeMap::new(), 0);
        while assigned.len() < 4 || records < 4 {
            match f.next(Some).await {
                Event::ShardAssigned(a) => {
                    assigned.insert(a.shard_id, a.lease_epoch);
                }
                Event::Records(b) => records += b.records.len(),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(assigned.values().all(|e| *e == 1), "{assigned:?}");
        assert_eq!(f.source.list_shards_calls(), 1, "one shard sync: the group's first round");

        // Another instance's session takes shard 0 (it judged s1 dead): the reader stops
        // with LEASE_LOST, and the group does not take it back from a live session.
        let _remote = f.remote_session("s2").await;
        let lease = f.leases.get(&f.key, &shard(0)).await.unwrap().unwrap();
        let taken = f.leases.acquire_many(&f.key, &[(lease, "s2".into(), true)]).await.unwrap();
        assert!(taken[0].is_some());
        let (lost, reason) = f
            .next(|e| match e {
                Event::ShardRevoked(r) => Some((r.shard_id, r.reason)),
                _ => None,
            })
            .await;
        assert_eq!((lost.as_str(), reason), (shard(0).as_str(), Reason::LeaseLost as i32));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = f.leases.get(&f.key, &shard(0)).await.unwrap().unwrap();
        assert_eq!(now.value.owner.as_deref(), Some("s2"), "a live owner keeps its lease");
        f.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_revokes_the_reader_and_reads_again_from_the_start() {
        let mut f = fixture(1).await;
        for _ in 0..3 {
            f.source.put(STREAM, &shard(0), "k", b"x");
        }
        let mut records = 0;
        while records < 3 {
            if let Event::Records(b) = f.next(Some).await {
                records += b.records.len();
            }
        }
        let back = Checkpoint::from_stored(crate::coordination::admin::BEFORE_FIRST_RECORD, 0).unwrap();
        let (before, after) = f.leases.reset(&f.key, &shard(0), &back).await.unwrap();
        assert_eq!((before.owner.as_deref(), after.owner, after.epoch), (Some("s1"), None, before.epoch + 1));
        let lost = f.next(|e| match e {
            Event::ShardRevoked(r) => Some(r.reason),
            _ => None,
        });
        assert_eq!(lost.await, Reason::LeaseLost as i32);
        let assigned = f.next(|e| match e {
            Event::ShardAssigned(a) => Some(a),
            _ => None,
        });
        let assigned = assigned.await;
        assert_eq!((assigned.checkpoint.as_str(), assigned.lease_epoch), ("0", before.epoch + 2));
        let mut again = 0;
        while again < 3 {
            if let Event::Records(b) = f.next(Some).await {
                assert_eq!(b.lease_epoch, before.epoch + 2);
                again += b.records.len();
            }
        }
        f.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_lost_to_a_store_failure_is_made_again() {
        let mut f = fixture(2).await;
        for _ in 0..2 {
            f.next(|e| matches!(e, Event::ShardAssigned(_)).then_some(())).await;
        }
        let _remote = f.remote_session("s2").await;
        let lease = f.leases.get(&f.key, &shard(1)).await.unwrap().unwrap();
        assert_eq!(f.leases.request_handoffs(&f.key, &[(lease, "s2".into())]).await.unwrap(), vec![true]);
        f.next(|e| matches!(e, Event::ShardRevoked(_)).then_some(())).await;
        // The client never answers; the group's own release after the grace fails once.
        f.store.fail_lease_writes(1);
        let handed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let l = f.leases.get(&f.key, &shard(1)).await.unwrap().unwrap();
                if l.value.owner.as_deref() == Some("s2") {
                    return l.value.epoch;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        assert_eq!(handed.await.expect("handed over after the failed release"), 2);
        let held = f.leases.get(&f.key, &shard(0)).await.unwrap().unwrap();
        assert_eq!((held.value.owner.as_deref(), held.value.epoch), (Some("s1"), 1), "the other lease stays");
        f.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoke_without_release_hands_over_after_the_grace_and_a_dead_owner_loses() {
        let mut f = fixture(2).await;
        let mut assigned = 0;
        while assigned < 2 {
            f.next(|e| matches!(e, Event::ShardAssigned(_)).then_some(())).await;
            assigned += 1;
        }
        // s2 (another instance) asks for shard 1; the client never answers the revoke.
        let remote = f.remote_session("s2").await;
        let lease = f.leases.get(&f.key, &shard(1)).await.unwrap().unwrap();
        assert_eq!(f.leases.request_handoffs(&f.key, &[(lease, "s2".into())]).await.unwrap(), vec![true]);
        let revoked_at = Instant::now();
        let reason = f
            .next(|e| match e {
                Event::ShardRevoked(r) => Some(r.reason),
                _ => None,
            })
            .await;
        assert_eq!(reason, Reason::Rebalance as i32);
        let owner = loop {
            let l = f.leases.get(&f.key, &shard(1)).await.unwrap().unwrap();
            if l.value.owner.as_deref() == Some("s2") {
                break l.value.owner;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(owner.as_deref(), Some("s2"));
        assert!(revoked_at.elapsed() >= Duration::from_secs(2), "handed over only after the grace");

        // s2's instance dies: its heartbeat stops, and after the TTL s1 takes the shard back.
        remote.cancel();
        let (back, epoch) = f
            .next(|e| match e {
                Event::ShardAssigned(a) if a.shard_id == shard(1) => Some((a.shard_id, a.lease_epoch)),
                _ => None,
            })
            .await;
        assert_eq!(back, shard(1));
        assert!(epoch >= 3, "taken over at a new epoch: {epoch}");
        assert!(f.group.alive_sessions().contains("s1"));
        assert!(!f.group.alive_sessions().contains("s2"), "s2 is dead in this instance's view");
        f.shutdown.cancel();
    }
}
