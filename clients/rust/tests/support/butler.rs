//! An in-process scripted Butler for the client's tests: a tonic `Butler` service
//! reached over `tokio::io::duplex` (no socket, no real server).
//!
//! - **Scripted**: [`ScriptedButler::new`]. Each `GetRecords` call answers
//!   `SessionStarted` and hands the session to the test ([`ScriptedButler::session`]),
//!   which sends the events it wants ([`ScriptedSession`]). `Checkpoint` calls are
//!   recorded ([`ScriptedButler::checkpoints`]) and answered OK, or with the statuses
//!   queued by [`ScriptedButler::fail_checkpoints`].
//! - **Serving**: [`ScriptedButler::serving`] plays a server over fixed records: each
//!   session gets every free shard (`ShardAssigned` at a new epoch), then its batches
//!   after the stored checkpoint, at most `window` batches beyond it (as a real server
//!   paces reads). Checkpoints are fenced by session and epoch; a release gives the
//!   shard again at the next epoch, from its checkpoint; a closed session frees its
//!   shards. `DescribeLeases` shows the leases and live sessions.
//!
//! Shared by the unit tests (`#[path]` include) and the integration tests
//! (`tests/support`), so it uses only public APIs.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use kinesis_butler_proto as pb;
use pb::butler_server::{Butler, ButlerServer};
use pb::get_records_response::Event;
use pb::shard_revoked::Reason;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Request, Response, Status};

/// What a session's stream carries: an event or error, or its end.
enum Out {
    Item(Result<pb::GetRecordsResponse, Status>),
    End,
}

/// One `GetRecords` stream, driven by the test (or the serving model).
#[derive(Clone)]
pub struct ScriptedSession {
    /// The session id sent in `SessionStarted`.
    pub id: String,
    /// The request that opened it.
    pub request: pb::GetRecordsRequest,
    tx: mpsc::UnboundedSender<Out>,
}

impl ScriptedSession {
    /// Sends an event; false once the client dropped the stream.
    pub fn send(&self, event: Event) -> bool {
        self.tx.send(Out::Item(Ok(pb::GetRecordsResponse { event: Some(event) }))).is_ok()
    }

    /// `ShardAssigned`.
    pub fn assign(&self, stream: &str, shard_id: &str, epoch: u64, checkpoint: &str) -> bool {
        self.send(Event::ShardAssigned(pb::ShardAssigned {
            stream: stream.into(),
            shard_id: shard_id.into(),
            lease_epoch: epoch,
            checkpoint: checkpoint.into(),
        }))
    }

    /// A `RecordBatch` of records with these sequence numbers.
    pub fn batch(&self, stream: &str, shard_id: &str, epoch: u64, sequences: &[&str]) -> bool {
        let records = sequences.iter().map(|s| record(s, s.as_bytes().to_vec())).collect();
        self.records(stream, shard_id, epoch, records)
    }

    /// A `RecordBatch`.
    pub fn records(&self, stream: &str, shard_id: &str, epoch: u64, records: Vec<pb::Record>) -> bool {
        self.send(Event::Records(pb::RecordBatch {
            stream: stream.into(),
            shard_id: shard_id.into(),
            lease_epoch: epoch,
            records,
            millis_behind_latest: 0,
        }))
    }

    /// `ShardRevoked`.
    pub fn revoke(&self, stream: &str, shard_id: &str, epoch: u64, reason: Reason) -> bool {
        self.send(Event::ShardRevoked(pb::ShardRevoked {
            stream: stream.into(),
            shard_id: shard_id.into(),
            lease_epoch: epoch,
            reason: reason as i32,
        }))
    }

    /// `ShardEnded`.
    pub fn end_shard(&self, stream: &str, shard_id: &str, epoch: u64) -> bool {
        self.send(Event::ShardEnded(pb::ShardEnded {
            stream: stream.into(),
            shard_id: shard_id.into(),
            lease_epoch: epoch,
        }))
    }

    /// Ends the stream with an error status.
    pub fn fail(&self, status: Status) {
        let _ = self.tx.send(Out::Item(Err(status)));
    }

    /// Ends the stream normally ("the server ended the session").
    pub fn end(&self) {
        let _ = self.tx.send(Out::End);
    }

    /// Whether the client dropped the stream (closed the session).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits (bounded) until the client dropped the stream.
    pub async fn wait_closed(&self, secs: u64) {
        tokio::time::timeout(Duration::from_secs(secs), self.tx.closed())
            .await
            .unwrap_or_else(|_| panic!("session {} not closed within {secs}s", self.id));
    }
}

/// A record with this sequence number and payload.
pub fn record(sequence: &str, data: Vec<u8>) -> pb::Record {
    pb::Record {
        sequence_number: sequence.into(),
        sub_sequence_number: 0,
        partition_key: format!("pk-{sequence}"),
        data: Bytes::from(data),
        approximate_arrival_timestamp_ms: 1_700_000_000_000,
    }
}

/// A record as the test put it.
#[derive(Clone, Debug)]
pub struct Put {
    pub shard_id: String,
    pub sequence_number: String,
    pub data: Vec<u8>,
}

/// `count` records `rec-0`, `rec-1`… spread over `shards` shards, with increasing
/// 56-digit sequence numbers (like Kinesis'), by shard.
pub fn make_records(shards: usize, count: usize) -> BTreeMap<String, Vec<Put>> {
    let mut out: BTreeMap<String, Vec<Put>> = BTreeMap::new();
    for i in 0..count {
        let shard_id = format!("shardId-{:012}", i % shards);
        let sequence_number = format!("4959033827149025660855969253836157109592157598{:010}", i);
        out.entry(shard_id.clone()).or_default().push(Put {
            shard_id,
            sequence_number,
            data: format!("rec-{i}").into_bytes(),
        });
    }
    out
}

/// One shard of the serving model.
struct Shard {
    records: Vec<pb::Record>,
    epoch: u64,
    owner: Option<String>,
    checkpoint: String,
    /// Records covered by the checkpoint.
    acked: usize,
    /// Next record to send to the owner.
    next: usize,
}

struct Model {
    stream: String,
    window: usize,
    shards: BTreeMap<String, Shard>,
    /// Live sessions and their batch sizes.
    sessions: HashMap<String, (ScriptedSession, usize)>,
}

impl Model {
    fn give(&mut self, shard_id: &str, session_id: &str) {
        let Some((session, _)) = self.sessions.get(session_id) else { return };
        let session = session.clone();
        let stream = self.stream.clone();
        let shard = self.shards.get_mut(shard_id).expect("shard");
        shard.epoch += 1;
        shard.owner = Some(session_id.to_owned());
        shard.next = shard.acked;
        session.assign(&stream, shard_id, shard.epoch, &shard.checkpoint);
        self.feed(shard_id);
    }

    /// Sends the owner the batches it may have.
    fn feed(&mut self, shard_id: &str) {
        let shard = self.shards.get_mut(shard_id).expect("shard");
        let Some((session, batch)) = shard.owner.as_ref().and_then(|o| self.sessions.get(o)) else { return };
        while shard.next < shard.records.len() && shard.next < shard.acked + self.window * batch {
            let end = (shard.next + batch).min(shard.records.len());
            session.records(&self.stream, shard_id, shard.epoch, shard.records[shard.next..end].to_vec());
            shard.next = end;
        }
    }

    fn checkpoint(&mut self, req: &pb::CheckpointRequest) -> Result<(), Status> {
        if !self.sessions.contains_key(&req.session_id) {
            return Err(Status::not_found(format!("unknown session {}", req.session_id)));
        }
        let shard = self.shards.get_mut(&req.shard_id).ok_or_else(|| Status::not_found("unknown shard"))?;
        if shard.owner.as_deref() != Some(req.session_id.as_str()) || shard.epoch != req.lease_epoch {
            return Err(Status::failed_precondition(format!(
                "lease of {} is not held by {} at epoch {}",
                req.shard_id, req.session_id, req.lease_epoch
            )));
        }
        if req.shard_end {
            shard.checkpoint = "SHARD_END".into();
            shard.acked = shard.records.len();
        } else if !req.sequence_number.is_empty() {
            let at = shard
                .records
                .iter()
                .position(|r| r.sequence_number == req.sequence_number)
                .ok_or_else(|| Status::invalid_argument("no such record"))?;
            if at + 1 < shard.acked {
                return Err(Status::invalid_argument("checkpoint regression"));
            }
            shard.acked = at + 1;
            shard.checkpoint = req.sequence_number.clone();
        }
        if req.release || req.shard_end {
            shard.owner = None;
            if !req.shard_end {
                // Given out again at once (to the same session: the only one asking).
                self.give(&req.shard_id, &req.session_id);
            }
        } else {
            self.feed(&req.shard_id);
        }
        Ok(())
    }

    fn open(&mut self, session: ScriptedSession) {
        let batch = match session.request.max_records_per_batch {
            0 => 1000,
            n => n as usize,
        };
        let id = session.id.clone();
        self.sessions.insert(id.clone(), (session, batch));
        let free: Vec<String> = self.shards.iter().filter(|(_, s)| s.owner.is_none()).map(|(k, _)| k.clone()).collect();
        for shard_id in free {
            self.give(&shard_id, &id);
        }
    }

    fn close(&mut self, session_id: &str) {
        self.sessions.remove(session_id);
        for shard in self.shards.values_mut() {
            if shard.owner.as_deref() == Some(session_id) {
                shard.owner = None;
            }
        }
    }

    fn describe(&self) -> pb::DescribeLeasesResponse {
        let leases = self
            .shards
            .iter()
            .map(|(id, s)| pb::LeaseInfo {
                shard_id: id.clone(),
                owner: s.owner.clone().unwrap_or_default(),
                epoch: s.epoch,
                checkpoint: s.checkpoint.clone(),
                ..Default::default()
            })
            .collect();
        let sessions = self
            .sessions
            .keys()
            .map(|id| pb::SessionInfo {
                session_id: id.clone(),
                shard_count: self.shards.values().filter(|s| s.owner.as_deref() == Some(id.as_str())).count() as u32,
                ..Default::default()
            })
            .collect();
        pb::DescribeLeasesResponse { leases, sessions }
    }
}

struct Inner {
    sessions: Mutex<Vec<ScriptedSession>>,
    checkpoints: Mutex<Vec<pb::CheckpointRequest>>,
    replies: Mutex<VecDeque<Status>>,
    model: Option<Mutex<Model>>,
    /// Bumped when a session opens or closes and when a checkpoint arrives.
    changed: watch::Sender<u64>,
}

/// The scripted server; cheap to clone (shared state).
#[derive(Clone)]
pub struct ScriptedButler {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for ScriptedButler {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptedButler {
    /// A server whose sessions the test drives.
    pub fn new() -> Self {
        Self::with_model(None)
    }

    fn with_model(model: Option<Model>) -> Self {
        let inner = Inner {
            sessions: Mutex::default(),
            checkpoints: Mutex::default(),
            replies: Mutex::default(),
            model: model.map(Mutex::new),
            changed: watch::channel(0).0,
        };
        Self { inner: Arc::new(inner) }
    }

    /// A server of `records` of `stream` (see the module documentation).
    pub fn serving(stream: &str, records: &BTreeMap<String, Vec<Put>>, window: usize) -> Self {
        let shards = records
            .iter()
            .map(|(id, puts)| {
                let records = puts.iter().map(|p| record(&p.sequence_number, p.data.clone())).collect();
                (id.clone(), Shard { records, epoch: 0, owner: None, checkpoint: String::new(), acked: 0, next: 0 })
            })
            .collect();
        Self::with_model(Some(Model { stream: stream.into(), window, shards, sessions: HashMap::new() }))
    }

    fn touch(&self) {
        self.inner.changed.send_modify(|n| *n += 1);
    }

    /// A channel to this server: every connection is a new in-memory duplex pipe.
    pub fn channel(&self) -> Channel {
        let butler = self.clone();
        Endpoint::from_static("http://scripted.butler").connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let butler = butler.clone();
            async move {
                let (client, server) = tokio::io::duplex(1 << 20);
                let incoming = tokio_stream::once(Ok::<_, std::io::Error>(server));
                tokio::spawn(Server::builder().add_service(ButlerServer::new(butler)).serve_with_incoming(incoming));
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
            }
        }))
    }

    /// The next `Checkpoint` calls are answered with these statuses, in order.
    pub fn fail_checkpoints(&self, statuses: impl IntoIterator<Item = Status>) {
        lock(&self.inner.replies).extend(statuses);
    }

    /// Every `Checkpoint` request received, in order.
    pub fn checkpoints(&self) -> Vec<pb::CheckpointRequest> {
        lock(&self.inner.checkpoints).clone()
    }

    /// Every session opened, in order.
    pub fn sessions(&self) -> Vec<ScriptedSession> {
        lock(&self.inner.sessions).clone()
    }

    /// The leases and live sessions of the serving model.
    pub fn describe_now(&self) -> pb::DescribeLeasesResponse {
        lock(self.inner.model.as_ref().expect("a serving butler")).describe()
    }

    /// Waits (bounded) until `done` holds; re-checked whenever a session opens or
    /// closes or a checkpoint arrives. Panics with `what` on timeout.
    pub async fn wait_until(&self, secs: u64, what: &str, done: impl Fn(&ScriptedButler) -> bool) {
        let waited =
            tokio::time::timeout(Duration::from_secs(secs), until(self.inner.changed.subscribe(), || done(self)));
        waited.await.unwrap_or_else(|_| panic!("timed out after {secs}s: {what}"));
    }

    /// The `index`-th session (from 0), once opened (bounded wait).
    pub async fn session(&self, index: usize, secs: u64) -> ScriptedSession {
        self.wait_until(secs, &format!("session {index} to open"), |b| lock(&b.inner.sessions).len() > index).await;
        lock(&self.inner.sessions)[index].clone()
    }

    /// Waits (bounded) until `count` checkpoints arrived; returns them all.
    pub async fn wait_checkpoints(&self, count: usize, secs: u64) -> Vec<pb::CheckpointRequest> {
        self.wait_until(secs, &format!("{count} checkpoint(s)"), |b| lock(&b.inner.checkpoints).len() >= count).await;
        self.checkpoints()
    }
}

/// Returns once `done` holds; re-checked on every change announced on `changed`
/// (unbounded: callers bound it).
pub async fn until(mut changed: watch::Receiver<u64>, done: impl Fn() -> bool) {
    loop {
        changed.borrow_and_update();
        if done() || changed.changed().await.is_err() {
            return;
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::GetRecordsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Butler for ScriptedButler {
    type GetRecordsStream = EventStream;

    async fn initialize(
        &self,
        _request: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::InitializeResponse>, Status> {
        Err(Status::unimplemented("the scripted butler does not initialize"))
    }

    async fn get_records(
        &self,
        request: Request<pb::GetRecordsRequest>,
    ) -> Result<Response<Self::GetRecordsStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = format!("session-{}", lock(&self.inner.sessions).len() + 1);
        let session = ScriptedSession { id: id.clone(), request: request.into_inner(), tx };
        session.send(Event::SessionStarted(pb::SessionStarted { session_id: id.clone() }));
        lock(&self.inner.sessions).push(session.clone());
        if let Some(model) = &self.inner.model {
            lock(model).open(session.clone());
        }
        // Notices when the client drops the stream (closes the session).
        let butler = self.clone();
        tokio::spawn(async move {
            session.tx.closed().await;
            if let Some(model) = &butler.inner.model {
                lock(model).close(&session.id);
            }
            butler.touch();
        });
        self.touch();
        let events = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Some(Out::Item(item)) => Some((item, rx)),
                Some(Out::End) | None => None,
            }
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn checkpoint(
        &self,
        request: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        let request = request.into_inner();
        lock(&self.inner.checkpoints).push(request.clone());
        let scripted = lock(&self.inner.replies).pop_front();
        let result = match (scripted, &self.inner.model) {
            (Some(status), _) => Err(status),
            (None, Some(model)) => lock(model).checkpoint(&request),
            (None, None) => Ok(()),
        };
        self.touch();
        result.map(|()| Response::new(pb::CheckpointResponse {}))
    }

    async fn describe_leases(
        &self,
        _request: Request<pb::DescribeLeasesRequest>,
    ) -> Result<Response<pb::DescribeLeasesResponse>, Status> {
        match &self.inner.model {
            Some(model) => Ok(Response::new(lock(model).describe())),
            None => Err(Status::unimplemented("only a serving butler describes leases")),
        }
    }

    async fn reset_leases(
        &self,
        _request: Request<pb::ResetLeasesRequest>,
    ) -> Result<Response<pb::ResetLeasesResponse>, Status> {
        Err(Status::unimplemented("the scripted butler does not reset leases"))
    }
}
