//! A reusable raw-gRPC test client that behaves like a good client, and a journal of
//! everything every such session saw, with the checks of DESIGN.md rules 1–3.
//!
//! A [`DriverSession`] reads one stream for one app. It checkpoints the last record of
//! every batch; on `ShardRevoked{REBALANCE|SHUTDOWN}` it checkpoints the last record it
//! processed and releases the shard; on `ShardEnded` it checkpoints `shard_end`. After
//! every shard it lost (revoke or failed checkpoint) it probes fencing: a checkpoint at
//! the old epoch must fail with `FAILED_PRECONDITION`.
//!
//! The [`Journal`] keeps every assignment (with the records delivered under it), every
//! checkpoint call with its timing and outcome, and every revoke; waiters are woken on
//! every change, so tests wait for events, not for time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kinesis_butler_proto as pb;
use pb::butler_client::ButlerClient;
use pb::get_records_response::Event;
use pb::shard_revoked::Reason;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

use super::{seq_cmp, within, Put};

/// Prints a measured figure in a form easy to grep from `--nocapture` output.
pub fn figure(name: &str, value: impl std::fmt::Display) {
    println!("FIGURE {name}={value}");
}

/// One assignment of a shard to a session, as the session saw it (`ShardAssigned`),
/// with the records delivered under it in arrival order.
#[derive(Clone, Debug)]
pub struct Segment {
    pub shard: String,
    pub epoch: u64,
    pub session: String,
    /// The checkpoint the reader started after ("" for none).
    pub checkpoint: String,
    pub at: Instant,
    pub records: Vec<String>,
}

/// One checkpoint call and its outcome.
#[derive(Clone, Debug)]
pub struct CheckpointCall {
    pub shard: String,
    pub epoch: u64,
    pub session: String,
    /// Sequence number, `SHARD_END`, or "" (a bare release).
    pub sequence: String,
    pub release: bool,
    /// A fencing probe: sent on purpose after the shard was lost.
    pub probe: bool,
    pub sent: Instant,
    pub done: Instant,
    /// `None` when it succeeded; `Some(Code::DeadlineExceeded)` when it timed out.
    pub error: Option<Code>,
}

/// A `ShardRevoked` a session received.
#[derive(Clone, Debug)]
pub struct Revoke {
    pub shard: String,
    pub epoch: u64,
    pub session: String,
    pub reason: Reason,
    pub at: Instant,
}

/// Everything the sessions of one test saw.
#[derive(Default)]
pub struct JournalData {
    pub segments: Vec<Segment>,
    pub checkpoints: Vec<CheckpointCall>,
    pub revokes: Vec<Revoke>,
    /// Client view: session → shard → epoch it holds now.
    pub held: BTreeMap<String, BTreeMap<String, u64>>,
    /// Sessions whose event stream ended, and how.
    pub ended: BTreeMap<String, String>,
    /// Every (shard, sequence number) delivered at least once.
    pub delivered: HashMap<String, HashSet<String>>,
    /// Records delivered, duplicates included.
    pub deliveries: usize,
}

impl JournalData {
    /// How many shards each session holds (client view), sessions that ended excluded.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.held.iter().filter(|(s, _)| !self.ended.contains_key(*s)).map(|(s, h)| (s.clone(), h.len())).collect()
    }

    /// shard → holder, if every shard in `all` has exactly one live holder.
    pub fn owners(&self, all: &BTreeSet<String>) -> Option<BTreeMap<String, String>> {
        let mut owners = BTreeMap::new();
        for (session, held) in self.held.iter().filter(|(s, _)| !self.ended.contains_key(*s)) {
            for shard in held.keys() {
                if owners.insert(shard.clone(), session.clone()).is_some() {
                    return None;
                }
            }
        }
        (owners.keys().eq(all.iter())).then_some(owners)
    }

    /// Whether every live session holds between `lo` and `hi` shards and every shard of
    /// `all` has exactly one holder.
    pub fn balanced(&self, all: &BTreeSet<String>, lo: usize, hi: usize) -> bool {
        self.owners(all).is_some() && self.counts().values().all(|n| (lo..=hi).contains(n))
    }

    /// Whether every put record was delivered at least once.
    pub fn has_all(&self, puts: &BTreeMap<String, Vec<Put>>) -> bool {
        puts.iter().all(|(shard, ps)| {
            self.delivered.get(shard).is_some_and(|d| ps.iter().all(|p| d.contains(&p.sequence_number)))
        })
    }
}

/// The shared journal of a test's sessions.
#[derive(Clone)]
pub struct Journal {
    data: Arc<Mutex<JournalData>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Journal {
    fn default() -> Self {
        Self { data: Arc::default(), changed: Arc::new(watch::channel(0).0) }
    }
}

impl Journal {
    fn update<T>(&self, f: impl FnOnce(&mut JournalData) -> T) -> T {
        let out = f(&mut self.data.lock().unwrap());
        self.changed.send_modify(|n| *n += 1);
        out
    }

    /// Reads the journal.
    pub fn read<T>(&self, f: impl FnOnce(&JournalData) -> T) -> T {
        f(&self.data.lock().unwrap())
    }

    /// Waits (bounded) until `done` holds; re-checked on every change. Returns when it
    /// first held.
    pub async fn wait_until(&self, secs: u64, what: &str, done: impl Fn(&JournalData) -> bool) -> Result<Instant> {
        let mut rx = self.changed.subscribe();
        within(secs, what, async {
            loop {
                rx.borrow_and_update();
                if self.read(&done) {
                    return Instant::now();
                }
                if rx.changed().await.is_err() {
                    return Instant::now();
                }
            }
        })
        .await
        .with_context(|| self.read(|d| format!("held counts then: {:?}", d.counts())))
    }

    /// Checks rules 1–3 over everything seen, against the records that were put:
    ///
    /// - one owner: each (shard, epoch) belongs to one session; a checkpoint at a lower
    ///   epoch never succeeds after one at a higher epoch was acknowledged; every probe
    ///   from a session that lost the shard failed with `FAILED_PRECONDITION`;
    /// - no loss, order: every put record was delivered; under each assignment the
    ///   records are exactly the ones put right after its checkpoint, in order;
    /// - resume from checkpoints: an assignment starts at or after every checkpoint
    ///   acknowledged at a lower epoch, so duplicates come only from batches not yet
    ///   checkpointed.
    ///
    /// Returns a summary.
    pub fn check(&self, puts: &BTreeMap<String, Vec<Put>>) -> Result<Summary> {
        self.read(|d| check(d, puts))
    }
}

/// Totals of a checked journal.
#[derive(Debug)]
pub struct Summary {
    pub put: usize,
    pub delivered: usize,
    pub duplicates: usize,
    pub assignments: usize,
    pub checkpoints_ok: usize,
    pub probes: usize,
    pub revokes: BTreeMap<String, usize>,
}

fn check(d: &JournalData, puts: &BTreeMap<String, Vec<Put>>) -> Result<Summary> {
    // One owner per (shard, epoch).
    let mut owner_of: HashMap<(&str, u64), &str> = HashMap::new();
    let ok_calls = d.checkpoints.iter().filter(|c| c.error.is_none() && !c.sequence.is_empty());
    let claims = d
        .segments
        .iter()
        .map(|s| (s.shard.as_str(), s.epoch, s.session.as_str()))
        .chain(ok_calls.clone().map(|c| (c.shard.as_str(), c.epoch, c.session.as_str())));
    for (shard, epoch, session) in claims {
        let first = *owner_of.entry((shard, epoch)).or_insert(session);
        ensure!(first == session, "shard {shard} epoch {epoch} had two owners: {first} and {session}");
    }

    // Fencing in time: per shard, acknowledged checkpoints are ordered by epoch.
    let mut by_shard: BTreeMap<&str, Vec<&CheckpointCall>> = BTreeMap::new();
    for c in ok_calls.clone() {
        by_shard.entry(c.shard.as_str()).or_default().push(c);
    }
    for (shard, calls) in &by_shard {
        for hi in calls {
            for lo in calls.iter().filter(|c| c.epoch < hi.epoch) {
                ensure!(
                    lo.sent <= hi.done,
                    "shard {shard}: checkpoint at epoch {} by {} was sent after one at epoch {} by {} was acknowledged, and succeeded",
                    lo.epoch,
                    lo.session,
                    hi.epoch,
                    hi.session
                );
            }
        }
    }

    // Every probe after losing a shard was refused as FAILED_PRECONDITION.
    let probes: Vec<&CheckpointCall> = d.checkpoints.iter().filter(|c| c.probe).collect();
    for p in &probes {
        ensure!(
            p.error == Some(Code::FailedPrecondition),
            "fencing probe by {} on shard {} at epoch {} answered {:?}, want FAILED_PRECONDITION",
            p.session,
            p.shard,
            p.epoch,
            p.error
        );
    }

    // Records: contiguous runs after each assignment's checkpoint; all delivered.
    let mut max_acked: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    for c in ok_calls.filter(|c| c.sequence != "SHARD_END") {
        max_acked.entry(c.shard.as_str()).or_default().push((c.epoch, c.sequence.as_str()));
    }
    let empty = Vec::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for seg in &d.segments {
        let shard_puts = puts.get(&seg.shard).unwrap_or(&empty);
        let acked_before = max_acked
            .get(seg.shard.as_str())
            .into_iter()
            .flatten()
            .filter(|(e, _)| *e < seg.epoch)
            .map(|(_, s)| *s)
            .max_by(|a, b| seq_cmp(a, b));
        if let Some(acked) = acked_before {
            ensure!(
                !seg.checkpoint.is_empty() && seq_cmp(&seg.checkpoint, acked).is_ge(),
                "shard {} epoch {} started after {:?}, before the acknowledged checkpoint {acked}",
                seg.shard,
                seg.epoch,
                seg.checkpoint
            );
        }
        let start = if seg.checkpoint.is_empty() {
            0
        } else {
            shard_puts.partition_point(|p| seq_cmp(&p.sequence_number, &seg.checkpoint).is_le())
        };
        let want: Vec<&str> =
            shard_puts.iter().skip(start).take(seg.records.len()).map(|p| p.sequence_number.as_str()).collect();
        let got: Vec<&str> = seg.records.iter().map(String::as_str).collect();
        ensure!(
            got == want,
            "shard {} epoch {} (session {}, after {:?}): records are not the ones put right after the checkpoint, in order",
            seg.shard,
            seg.epoch,
            seg.session,
            seg.checkpoint
        );
        for r in &seg.records {
            *seen.entry((seg.shard.as_str(), r.as_str())).or_default() += 1;
        }
    }
    let mut missing = 0;
    for (shard, ps) in puts {
        missing += ps.iter().filter(|p| !seen.contains_key(&(shard.as_str(), p.sequence_number.as_str()))).count();
    }
    ensure!(missing == 0, "{missing} records put were never delivered");

    let mut revokes = BTreeMap::new();
    for r in &d.revokes {
        *revokes.entry(format!("{:?}", r.reason)).or_default() += 1;
    }
    Ok(Summary {
        put: puts.values().map(Vec::len).sum(),
        delivered: d.deliveries,
        duplicates: seen.values().map(|n| n - 1).sum(),
        assignments: d.segments.len(),
        checkpoints_ok: d.checkpoints.iter().filter(|c| c.error.is_none()).count(),
        probes: probes.len(),
        revokes,
    })
}

/// A session driven by the good-client loop in a task.
pub struct DriverSession {
    pub id: String,
    pub label: String,
    journal: Journal,
    task: JoinHandle<()>,
}

impl DriverSession {
    /// Opens a session on the server at `addr` and starts its loop.
    pub async fn open(addr: &str, app: &str, stream: &str, label: &str, journal: &Journal) -> Result<Self> {
        let mut client = within(10, "connecting", ButlerClient::connect(addr.to_owned())).await??;
        let req = pb::GetRecordsRequest {
            app: app.into(),
            streams: vec![stream.into()],
            client_name: label.into(),
            ..Default::default()
        };
        // Opening lists the stream's shards on the emulator: slow when it is busy.
        let mut events = within(60, "GetRecords to open", client.get_records(req)).await??.into_inner();
        let id = match within(60, "SessionStarted", events.message()).await?? {
            Some(pb::GetRecordsResponse { event: Some(Event::SessionStarted(s)) }) => s.session_id,
            other => bail!("expected SessionStarted first, got {other:?}"),
        };
        journal.update(|d| d.held.insert(id.clone(), BTreeMap::new()));
        let worker =
            Worker { id: id.clone(), stream: stream.into(), client, journal: journal.clone(), open: HashMap::new() };
        let task = tokio::spawn(worker.run(events));
        Ok(Self { id, label: label.into(), journal: journal.clone(), task })
    }

    /// Closes the session like a client that goes away: the stream is dropped.
    pub async fn close(self) {
        self.task.abort();
        let _ = self.task.await;
        self.journal
            .update(|d| d.ended.entry(self.id.clone()).or_insert_with(|| "closed by the client".into()).clone());
    }

    /// Whether the session's event stream has ended.
    pub fn ended(&self) -> bool {
        self.journal.read(|d| d.ended.contains_key(&self.id))
    }
}

/// What a session knows of a shard it holds.
struct Open {
    epoch: u64,
    /// Index of its segment in the journal.
    segment: usize,
    /// Last record processed under this epoch.
    last: Option<String>,
}

struct Worker {
    id: String,
    stream: String,
    client: ButlerClient<Channel>,
    journal: Journal,
    open: HashMap<String, Open>,
}

impl Worker {
    async fn run(mut self, mut events: tonic::Streaming<pb::GetRecordsResponse>) {
        let end = loop {
            match events.message().await {
                Ok(Some(pb::GetRecordsResponse { event: Some(event) })) => self.handle(event).await,
                Ok(Some(_)) => break "empty event".to_owned(),
                Ok(None) => break "closed by the server".to_owned(),
                Err(status) => break format!("{:?}: {}", status.code(), status.message()),
            }
        };
        let id = self.id.clone();
        self.journal.update(|d| d.ended.insert(id, end));
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::ShardAssigned(a) => {
                let seg = Segment {
                    shard: a.shard_id.clone(),
                    epoch: a.lease_epoch,
                    session: self.id.clone(),
                    checkpoint: a.checkpoint.clone(),
                    at: Instant::now(),
                    records: Vec::new(),
                };
                let segment = self.journal.update(|d| {
                    d.held.entry(self.id.clone()).or_default().insert(a.shard_id.clone(), a.lease_epoch);
                    d.segments.push(seg);
                    d.segments.len() - 1
                });
                self.open.insert(a.shard_id, Open { epoch: a.lease_epoch, segment, last: None });
            }
            Event::Records(batch) => {
                let Some(last) = batch.records.last().map(|r| r.sequence_number.clone()) else {
                    return;
                };
                let segment =
                    self.open.get(&batch.shard_id).filter(|o| o.epoch == batch.lease_epoch).map(|o| o.segment);
                self.journal.update(|d| {
                    let set = d.delivered.entry(batch.shard_id.clone()).or_default();
                    for r in &batch.records {
                        set.insert(r.sequence_number.clone());
                    }
                    d.deliveries += batch.records.len();
                    if let Some(i) = segment {
                        d.segments[i].records.extend(batch.records.iter().map(|r| r.sequence_number.clone()));
                    }
                });
                if let Some(o) = self.open.get_mut(&batch.shard_id).filter(|o| o.epoch == batch.lease_epoch) {
                    o.last = Some(last.clone());
                }
                let outcome = self.checkpoint(&batch.shard_id, batch.lease_epoch, &last, false, false).await;
                if outcome == Some(Code::FailedPrecondition) {
                    self.lost(&batch.shard_id, batch.lease_epoch).await;
                }
            }
            Event::ShardRevoked(r) => {
                let reason = Reason::try_from(r.reason).unwrap_or(Reason::LeaseLost);
                self.journal.update(|d| {
                    d.revokes.push(Revoke {
                        shard: r.shard_id.clone(),
                        epoch: r.lease_epoch,
                        session: self.id.clone(),
                        reason,
                        at: Instant::now(),
                    })
                });
                if reason != Reason::LeaseLost {
                    // Finish up: checkpoint the last record processed, and release.
                    let last = self.last(&r.shard_id, r.lease_epoch).unwrap_or_default();
                    self.checkpoint(&r.shard_id, r.lease_epoch, &last, true, false).await;
                }
                self.lost(&r.shard_id, r.lease_epoch).await;
            }
            Event::ShardEnded(e) => {
                self.checkpoint(&e.shard_id, e.lease_epoch, "SHARD_END", false, false).await;
                self.forget(&e.shard_id, e.lease_epoch);
            }
            Event::SessionStarted(_) => {}
        }
    }

    fn last(&self, shard: &str, epoch: u64) -> Option<String> {
        self.open.get(shard).filter(|o| o.epoch == epoch).and_then(|o| o.last.clone())
    }

    fn forget(&mut self, shard: &str, epoch: u64) {
        if self.open.get(shard).is_some_and(|o| o.epoch == epoch) {
            self.open.remove(shard);
            self.journal.update(|d| {
                if let Some(held) = d.held.get_mut(&self.id) {
                    if held.get(shard) == Some(&epoch) {
                        held.remove(shard);
                    }
                }
            });
        }
    }

    /// The shard is gone at `epoch`: forget it and probe that the old epoch is fenced.
    async fn lost(&mut self, shard: &str, epoch: u64) {
        let last = self.last(shard, epoch);
        self.forget(shard, epoch);
        if let Some(last) = last {
            self.checkpoint(shard, epoch, &last, false, true).await;
        }
    }

    /// Sends a checkpoint (bounded) and journals it; returns the error code, if any.
    async fn checkpoint(
        &mut self,
        shard: &str,
        epoch: u64,
        sequence: &str,
        release: bool,
        probe: bool,
    ) -> Option<Code> {
        let shard_end = sequence == "SHARD_END";
        let req = pb::CheckpointRequest {
            session_id: self.id.clone(),
            stream: self.stream.clone(),
            shard_id: shard.into(),
            lease_epoch: epoch,
            sequence_number: if shard_end { String::new() } else { sequence.into() },
            shard_end,
            release,
            ..Default::default()
        };
        let sent = Instant::now();
        let error = match tokio::time::timeout(Duration::from_secs(10), self.client.checkpoint(req)).await {
            Ok(Ok(_)) => None,
            Ok(Err(status)) => Some(status.code()),
            Err(_) => Some(Code::DeadlineExceeded),
        };
        let call = CheckpointCall {
            shard: shard.into(),
            epoch,
            session: self.id.clone(),
            sequence: sequence.into(),
            release,
            probe,
            sent,
            done: Instant::now(),
            error,
        };
        self.journal.update(|d| d.checkpoints.push(call));
        error
    }
}

/// Puts records in the background at a steady pace until finished.
pub struct Producer {
    stop: tokio_util::sync::CancellationToken,
    put: Arc<Mutex<BTreeMap<String, Vec<Put>>>>,
    task: JoinHandle<Result<()>>,
}

impl Producer {
    /// Puts `per_tick` records every `tick`, at most `max` in all.
    pub fn start(client: aws_sdk_kinesis::Client, stream: &str, per_tick: usize, tick: Duration, max: usize) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let put: Arc<Mutex<BTreeMap<String, Vec<Put>>>> = Arc::default();
        let (token, stream, all) = (stop.clone(), stream.to_owned(), put.clone());
        let task = tokio::spawn(async move {
            let mut next = 0;
            let mut ticks = tokio::time::interval(tick);
            while next < max {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let n = per_tick.min(max - next);
                let batch = super::put_records(&client, &stream, next, n).await?;
                let mut all = all.lock().unwrap();
                for (shard, puts) in batch {
                    let list = all.entry(shard).or_default();
                    list.extend(puts);
                    list.sort_by(|a, b| seq_cmp(&a.sequence_number, &b.sequence_number));
                }
                next += n;
            }
            Ok(())
        });
        Self { stop, put, task }
    }

    /// Every record put so far, per shard in sequence order.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<Put>> {
        self.put.lock().unwrap().clone()
    }

    /// Tells how many records were put so far, from any task.
    pub fn counter(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let put = self.put.clone();
        move || put.lock().unwrap().values().map(Vec::len).sum()
    }

    /// Stops putting and returns every record put, per shard in sequence order.
    pub async fn finish(self) -> Result<BTreeMap<String, Vec<Put>>> {
        self.stop.cancel();
        let put = self.put.clone();
        within(60, "producer to stop", self.task).await???;
        let all = put.lock().unwrap().clone();
        Ok(all)
    }
}
