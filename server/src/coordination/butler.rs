//! The core of a server instance: sessions, groups and checkpoints. The gRPC layer
//! translates requests into calls here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kinesis_butler_proto as pb;
use pb::get_records_response::Event;
use pb::start_position::Kind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::coordination::admin;
use crate::coordination::group::{Group, GroupSettings};
use crate::coordination::session::Session;
use crate::error::ButlerError;
use crate::metrics as m;
use crate::retrieval::kinesis::IteratorStart;
use crate::retrieval::source::Source;
use crate::seqnum::SequenceNumber;
use crate::store::{Checkpoint, GroupKey, LeaseStore, Leases, SessionRecord};

/// Limits and defaults of an instance.
#[derive(Clone, Debug)]
pub(crate) struct ButlerSettings {
    /// Group worker timings.
    pub group: GroupSettings,
    /// Default records per batch.
    pub batch_size: u32,
    /// Batches buffered per session.
    pub session_buffer: usize,
}

/// A server instance's core.
pub(crate) struct Butler {
    instance_id: String,
    store: Arc<dyn LeaseStore>,
    leases: Leases,
    kinesis: Source,
    settings: ButlerSettings,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    groups: Mutex<HashMap<GroupKey, Arc<Group>>>,
    /// When each group's shards were first listed by an opening session: concurrent
    /// openers of a new group wait for one listing instead of making their own.
    listed: Mutex<HashMap<GroupKey, Arc<tokio::sync::OnceCell<tokio::time::Instant>>>>,
    shutdown: CancellationToken,
}

/// The event stream of a new session; it ends when the server closes the session.
pub(crate) type SessionEvents = futures::stream::TakeUntil<
    tokio_stream::wrappers::ReceiverStream<Result<pb::GetRecordsResponse, tonic::Status>>,
    tokio_util::sync::WaitForCancellationFutureOwned,
>;

fn require_name(what: &str, value: &str) -> Result<(), ButlerError> {
    kinesis_butler_proto::names::validate_name(what, value).map_err(ButlerError::InvalidArgument)
}

fn require_streams(streams: &[String]) -> Result<(), ButlerError> {
    kinesis_butler_proto::names::validate_streams(streams).map_err(ButlerError::InvalidArgument)
}

impl Butler {
    /// A new instance core with a random instance id.
    pub(crate) fn new(store: Arc<dyn LeaseStore>, kinesis: Source, settings: ButlerSettings) -> Arc<Self> {
        Arc::new(Self {
            instance_id: uuid::Uuid::new_v4().to_string(),
            leases: Leases::new(store.clone()),
            store,
            kinesis,
            settings,
            sessions: Mutex::default(),
            groups: Mutex::default(),
            listed: Mutex::default(),
            shutdown: CancellationToken::new(),
        })
    }

    /// This instance's id.
    pub(crate) fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The app and stream of every group this instance runs.
    pub(crate) fn group_keys(&self) -> Vec<GroupKey> {
        self.groups.lock().expect("groups").keys().cloned().collect()
    }

    /// The lease driver.
    pub(crate) fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Lists each stream's shards and creates or updates their leases.
    pub(crate) async fn initialize(&self, app: &str, streams: &[String]) -> Result<Vec<pb::StreamStatus>, ButlerError> {
        require_name("app", app)?;
        require_streams(streams)?;
        let mut out = Vec::with_capacity(streams.len());
        for stream in streams {
            let shards = self.kinesis.list_shards(stream).await.map_err(|e| match ButlerError::from(e) {
                ButlerError::NotFound(_) => ButlerError::NotFound(format!("stream {stream:?} does not exist")),
                other => other,
            })?;
            self.leases.sync_shards(&GroupKey::new(app, stream), &shards).await?;
            let closed = shards.iter().filter(|s| s.closed).count() as u32;
            out.push(pb::StreamStatus {
                stream: stream.clone(),
                open_shards: shards.len() as u32 - closed,
                closed_shards: closed,
            });
        }
        Ok(out)
    }

    /// Opens a session: validates the request, initializes its streams, registers it
    /// with each stream's group and returns its event stream.
    pub(crate) async fn open_session(
        self: &Arc<Self>,
        req: pb::GetRecordsRequest,
    ) -> Result<SessionEvents, ButlerError> {
        require_name("app", &req.app)?;
        require_streams(&req.streams)?;
        if req.max_records_per_batch > 10_000 {
            return Err(ButlerError::InvalidArgument("max_records_per_batch must be at most 10000".into()));
        }
        let start = match req.start {
            None => IteratorStart::TrimHorizon,
            Some(p) => match Kind::try_from(p.kind) {
                Ok(Kind::TrimHorizon) => IteratorStart::TrimHorizon,
                Ok(Kind::Latest) => IteratorStart::Latest,
                Ok(Kind::AtTimestamp) if p.timestamp_ms > 0 => IteratorStart::AtTimestamp(p.timestamp_ms),
                Ok(Kind::AtTimestamp) => {
                    return Err(ButlerError::InvalidArgument("AT_TIMESTAMP needs a positive timestamp_ms".into()))
                }
                Err(_) => return Err(ButlerError::InvalidArgument(format!("unknown start position kind {}", p.kind))),
            },
        };
        // Only streams this instance has no group for yet are listed now (which also
        // tells a missing stream at once); a known group's periodic shard sync finds new
        // shards, so a session joining a busy stream makes no Kinesis call.
        for stream in &req.streams {
            let key = GroupKey::new(&req.app, stream);
            if self.groups.lock().expect("groups").contains_key(&key) {
                continue;
            }
            let cell = self.listed.lock().expect("listed").entry(key).or_default().clone();
            cell.get_or_try_init(|| async {
                self.initialize(&req.app, std::slice::from_ref(stream)).await?;
                Ok::<_, ButlerError>(tokio::time::Instant::now())
            })
            .await?;
        }

        let (tx, rx) = mpsc::channel(self.settings.session_buffer.max(2));
        let session = Arc::new(Session {
            id: uuid::Uuid::new_v4().to_string(),
            app: req.app.clone(),
            streams: req.streams.clone(),
            client_name: req.client_name.clone(),
            start,
            batch_size: match req.max_records_per_batch {
                0 => self.settings.batch_size,
                n => n,
            },
            out: tx,
            closed: CancellationToken::new(),
        });
        let started = Event::SessionStarted(pb::SessionStarted { session_id: session.id.clone() });
        session
            .out
            .send(Ok(pb::GetRecordsResponse { event: Some(started) }))
            .await
            .map_err(|_| ButlerError::Internal("session closed before it started".into()))?;

        let record = SessionRecord {
            session_id: session.id.clone(),
            instance_id: self.instance_id.clone(),
            client_name: session.client_name.clone(),
            heartbeat: 0,
        };
        for stream in &session.streams {
            let key = GroupKey::new(&session.app, stream);
            self.leases.put_session(&key, &record).await?;
            // Other instances balance towards the newcomer at once where the store pushes.
            if let Err(e) = self.store.notify(&key).await {
                tracing::warn!(app = %session.app, stream = %stream, error = %e, "could not announce the session");
            }
        }
        self.sessions.lock().expect("sessions").insert(session.id.clone(), session.clone());
        for stream in &session.streams {
            self.group(GroupKey::new(&session.app, stream)).add_session(session.clone());
        }
        info!(app = %session.app, streams = ?session.streams, session = %session.id,
            client = %session.client_name, "session opened");

        // The session ends when the client goes away.
        let this = self.clone();
        let watched = session.clone();
        tokio::spawn(async move {
            watched.out.closed().await;
            this.close_session(&watched.id).await;
        });
        metrics::gauge!(m::SESSIONS).increment(1.0);
        let closed = session.closed.clone().cancelled_owned();
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).take_until(closed))
    }

    /// The group of `key`, started if needed.
    fn group(self: &Arc<Self>, key: GroupKey) -> Arc<Group> {
        let mut groups = self.groups.lock().expect("groups");
        if let Some(g) = groups.get(&key) {
            return g.clone();
        }
        let listed = self.listed.lock().expect("listed").get(&key).and_then(|c| c.get().copied());
        let group = Arc::new(Group::new(
            key.clone(),
            listed,
            self.leases.clone(),
            self.kinesis.clone(),
            self.instance_id.clone(),
            self.settings.group.clone(),
        ));
        groups.insert(key.clone(), group.clone());
        let (this, worker) = (self.clone(), group.clone());
        tokio::spawn(async move {
            worker.clone().run(this.shutdown.clone()).await;
            let mut groups = this.groups.lock().expect("groups");
            if groups.get(&key).is_some_and(|g| Arc::ptr_eq(g, &worker)) {
                groups.remove(&key);
            }
        });
        group
    }

    /// Ends a session: stops its readers and frees its leases at once.
    pub(crate) async fn close_session(&self, session_id: &str) {
        let Some(session) = self.sessions.lock().expect("sessions").remove(session_id) else {
            return;
        };
        for stream in &session.streams {
            let group = self.groups.lock().expect("groups").get(&GroupKey::new(&session.app, stream)).cloned();
            if let Some(group) = group {
                group.remove_session(session_id).await;
            }
        }
        session.closed.cancel();
        metrics::gauge!(m::SESSIONS).decrement(1.0);
        info!(app = %session.app, session = session_id, "session closed");
    }

    /// Stores a checkpoint for a shard the session holds, and releases the shard when
    /// asked to or at its end.
    pub(crate) async fn checkpoint(&self, req: pb::CheckpointRequest) -> Result<(), ButlerError> {
        require_name("session_id", &req.session_id)?;
        require_name("stream", &req.stream)?;
        require_name("shard_id", &req.shard_id)?;
        let session = self.sessions.lock().expect("sessions").get(&req.session_id).cloned().ok_or_else(|| {
            ButlerError::NotFound(format!(
                "unknown session {:?} (closed, or opened on another server instance)",
                req.session_id
            ))
        })?;
        if !session.streams.contains(&req.stream) {
            return Err(ButlerError::NotFound(format!("session {} does not read stream {:?}", session.id, req.stream)));
        }
        let checkpoint = if req.shard_end {
            Some(Checkpoint::ShardEnd)
        } else if req.sequence_number.is_empty() {
            if !req.release {
                return Err(ButlerError::InvalidArgument(
                    "sequence_number is required unless shard_end or release is set".into(),
                ));
            }
            None
        } else {
            let sequence =
                SequenceNumber::parse(&req.sequence_number).map_err(|e| ButlerError::InvalidArgument(e.to_string()))?;
            Some(Checkpoint::At { sequence, sub_sequence: req.sub_sequence_number })
        };
        let key = GroupKey::new(&session.app, &req.stream);
        let releasing = req.release || req.shard_end;
        let group = self.groups.lock().expect("groups").get(&key).cloned();
        let started = std::time::Instant::now();
        let stored = match (&group, &checkpoint) {
            // The final checkpoint and the release in one conditional write.
            (Some(group), cp) if releasing => {
                group.release(&session.id, &req.shard_id, req.lease_epoch, cp.as_ref()).await
            }
            (Some(group), Some(cp)) => group.checkpoint(&session.id, &req.shard_id, req.lease_epoch, cp).await,
            (_, Some(cp)) => {
                self.leases.checkpoint(&key, &req.shard_id, &session.id, req.lease_epoch, cp).await.map_err(Into::into)
            }
            (_, None) => Ok(()),
        };
        if checkpoint.is_some() {
            metrics::histogram!(m::CHECKPOINT_SECONDS).record(started.elapsed().as_secs_f64());
            match &stored {
                Ok(()) => metrics::counter!(m::CHECKPOINTS).increment(1),
                Err(e) => metrics::counter!(m::CHECKPOINT_FAILURES, "code" => e.code_name()).increment(1),
            }
        }
        stored?;
        Ok(())
    }

    /// Every lease and live session of one app and stream.
    pub(crate) async fn describe(&self, app: &str, stream: &str) -> Result<pb::DescribeLeasesResponse, ButlerError> {
        require_name("app", app)?;
        require_name("stream", stream)?;
        let key = GroupKey::new(app, stream);
        let mut described = describe_group(&self.leases, &key).await?;
        // Where this instance has the group, it knows who is alive: dead sessions and
        // their owners are left out, as a reader of the table would expect.
        let group = self.groups.lock().expect("groups").get(&key).cloned();
        if let Some(alive) = group.map(|g| g.alive_sessions()) {
            described.sessions.retain(|s| alive.contains(&s.session_id));
            for lease in &mut described.leases {
                if !alive.contains(&lease.owner) {
                    lease.owner.clear();
                }
            }
        }
        Ok(described)
    }

    /// Admin reset (replay): see [`admin`](crate::coordination::admin). A local group of
    /// the stream runs a round at once; others hear of it through the store's notify.
    pub(crate) async fn reset_leases(
        &self,
        req: pb::ResetLeasesRequest,
    ) -> Result<pb::ResetLeasesResponse, ButlerError> {
        let to = admin::ResetTo::from_proto(req.to.as_ref())?;
        let key = GroupKey::new(&req.app, &req.stream);
        let shard = Some(req.shard_id.as_str()).filter(|s| !s.is_empty());
        let done = admin::reset(&self.leases, self.kinesis.as_ref(), &key, shard, &to, req.dry_run).await?;
        if let Some(group) = self.groups.lock().expect("groups").get(&key) {
            group.wake();
        }
        Ok(pb::ResetLeasesResponse {
            shards: done.iter().map(admin::ShardReset::to_proto).collect(),
            dry_run: req.dry_run,
        })
    }

    /// Graceful shutdown: revokes every shard with `SHUTDOWN`, waits up to `grace` for
    /// the clients' final checkpoints and releases, then closes every session (freeing
    /// what is left, so other instances take it at once) and stops the group workers.
    pub(crate) async fn drain(&self, grace: std::time::Duration) {
        let groups: Vec<Arc<Group>> = self.groups.lock().expect("groups").values().cloned().collect();
        for group in &groups {
            group.revoke_all();
        }
        let released = futures::future::join_all(groups.iter().map(|g| g.wait_released()));
        if tokio::time::timeout(grace, released).await.is_err() {
            tracing::warn!(?grace, "not every shard was released within the shutdown grace; freeing the rest");
        }
        let ids: Vec<String> = self.sessions.lock().expect("sessions").keys().cloned().collect();
        for id in ids {
            self.close_session(&id).await;
        }
        self.shutdown.cancel();
    }
}

/// Every lease and session record of a group, as `DescribeLeases` reports them. (One
/// read cannot tell a dead session from a live one: liveness is judged by change over
/// time, so a crashed instance's sessions are listed until their records are tidied.)
pub(crate) async fn describe_group(leases: &Leases, key: &GroupKey) -> Result<pb::DescribeLeasesResponse, ButlerError> {
    let all = leases.list(key).await?;
    let sessions = leases.sessions(key).await?;
    let held = |id: &str| all.iter().filter(|l| l.value.owner.as_deref() == Some(id)).count() as u32;
    Ok(pb::DescribeLeasesResponse {
        sessions: sessions
            .iter()
            .map(|s| pb::SessionInfo {
                session_id: s.value.session_id.clone(),
                instance_id: s.value.instance_id.clone(),
                client_name: s.value.client_name.clone(),
                shard_count: held(&s.value.session_id),
            })
            .collect(),
        leases: all
            .into_iter()
            .map(|l| l.value)
            .map(|l| pb::LeaseInfo {
                owner: l.owner.clone().unwrap_or_default(),
                expires_at_ms: 0,
                checkpoint: l.checkpoint.as_text().to_owned(),
                sub_sequence_number: l.checkpoint.sub_sequence(),
                shard_id: l.shard_id,
                epoch: l.epoch,
                parent_shard_ids: l.parent_shard_ids,
                closed: l.closed,
                handoff_to: l.handoff_to.unwrap_or_default(),
            })
            .collect(),
    })
}
