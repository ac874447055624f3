//! The Butler client's [`Handler`] that runs one MultiLangDaemon child per shard lease.
//!
//! The client does leases, checkpoints (manual policy: only the child's), handoffs,
//! retries and backoff; this handler turns its calls into protocol exchanges:
//! `shard_started` → start the child, `initialize`; each batch → `processRecords`
//! (answering the child's checkpoints through the batch's [`Checkpointer`]);
//! `shard_stopped` → `shutdownRequested` + `leaseLost`, `leaseLost` or `shardEnded`,
//! then stdin closed.
//!
//! A child that exits, breaks the protocol or does not answer within `timeoutInSeconds`
//! is killed and the batch fails; the client retries it with backoff, and the next
//! attempt starts a new child from the shard's last checkpoint: `initialize` at that
//! checkpoint, then every record delivered since (kept in memory, up to a bound), then
//! the batch. Other shards never notice.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use kinesis_butler_client::{Batch, Checkpointer, Handler, HandlerError, Record, ShardInfo, StopReason};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::child::{Child, ChildLabel};
use crate::protocol::{
    self, decide_checkpoint, errors, Action, CheckpointDecision, JsonRecord, Position, Reaction, ToChild,
};

/// Records (and payload bytes) kept per shard for replaying to a restarted child: those
/// delivered since its last checkpoint. Past either bound the oldest batches are dropped
/// (a restart then resumes after them; they stay unacknowledged in the store, so another
/// runner taking the shard reads them again).
const MAX_REPLAY_RECORDS: usize = 200_000;
const MAX_REPLAY_BYTES: usize = 64 << 20;

/// What every shard's child shares.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub command: Vec<String>,
    pub workdir: Option<PathBuf>,
    pub app: String,
    /// `timeoutInSeconds`.
    pub timeout: Option<Duration>,
    /// Bound on each step of stopping a child (its last answer, its exit).
    pub stop_grace: Duration,
    /// What `initialize` carries for a shard without a checkpoint (`TRIM_HORIZON`, `LATEST`).
    pub initial_position: &'static str,
}

type Key = (String, String, u64);

/// The handler given to the client.
#[derive(Clone)]
pub(crate) struct MultilangHandler {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    shards: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<ShardProcess>>>>,
}

impl MultilangHandler {
    pub(crate) fn new(settings: Settings) -> Self {
        Self { inner: Arc::new(Inner { settings, shards: Mutex::default() }) }
    }
}

fn key(shard: &ShardInfo) -> Key {
    (shard.stream.clone(), shard.shard_id.clone(), shard.lease_epoch)
}

impl Inner {
    fn shard(&self, info: &ShardInfo) -> Arc<tokio::sync::Mutex<ShardProcess>> {
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        shards
            .entry(key(info))
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(ShardProcess::new(&self.settings, info))))
            .clone()
    }

    fn take_shard(&self, info: &ShardInfo) -> Option<Arc<tokio::sync::Mutex<ShardProcess>>> {
        self.shards.lock().unwrap_or_else(|e| e.into_inner()).remove(&key(info))
    }
}

impl Handler for MultilangHandler {
    fn handle(&self, batch: Batch) -> BoxFuture<'static, Result<(), HandlerError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let shard = inner.shard(batch.shard());
            let mut process = shard.lock().await;
            process.process_batch(&inner.settings, &batch).await.map_err(HandlerError::msg)
        })
    }

    fn shard_started(&self, shard: &ShardInfo) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        let shard = shard.clone();
        Box::pin(async move {
            let process = inner.shard(&shard);
            let mut process = process.lock().await;
            if let Err(why) = process.start(&inner.settings).await {
                // The first batch starts it again (with backoff between attempts).
                process.failed(&why);
            }
        })
    }

    fn shard_stopped(&self, shard: &ShardInfo, reason: StopReason) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        let shard = shard.clone();
        Box::pin(async move {
            if let Some(process) = inner.take_shard(&shard) {
                process.lock().await.stop(&inner.settings, reason).await;
            }
        })
    }
}

/// One shard lease and its child.
struct ShardProcess {
    label: ChildLabel,
    child: Option<Child>,
    /// Where a new child starts: the lease's checkpoint, then the child's own.
    checkpoint: Option<Position>,
    /// The lease's checkpoint as the server gave it (a sequence number, or empty).
    lease_checkpoint: String,
    /// Batches the child answered whose records are not all checkpointed yet.
    pending: VecDeque<Arc<[Record]>>,
    pending_records: usize,
    pending_bytes: usize,
    /// The last record given to the current child.
    last_delivered: Option<Position>,
    /// From the latest batch: stores this lease's checkpoints.
    checkpointer: Option<Checkpointer>,
    /// The lease is released or lost: checkpoints now fail with `ShutdownException`.
    released: bool,
    starts: u32,
}

impl ShardProcess {
    fn new(settings: &Settings, info: &ShardInfo) -> Self {
        let lease_checkpoint = info.checkpoint.clone();
        let checkpoint = (!lease_checkpoint.is_empty() && lease_checkpoint.bytes().all(|b| b.is_ascii_digit()))
            .then(|| Position { sequence: lease_checkpoint.clone(), sub_sequence: 0 });
        Self {
            label: ChildLabel { app: settings.app.clone(), stream: info.stream.clone(), shard: info.shard_id.clone() },
            child: None,
            checkpoint,
            lease_checkpoint,
            pending: VecDeque::new(),
            pending_records: 0,
            pending_bytes: 0,
            last_delivered: None,
            checkpointer: None,
            released: false,
            starts: 0,
        }
    }

    fn failed(&mut self, why: &str) {
        let pid = self.child.as_ref().map_or(0, |c| c.pid);
        error!(app = %self.label.app, stream = %self.label.stream, shard = %self.label.shard, pid, error = %why,
            "record processor failed; it is restarted for this shard from its last checkpoint");
        if let Some(mut child) = self.child.take() {
            tokio::spawn(async move {
                if let Some(status) = child.kill().await {
                    debug!(pid = child.pid, %status, "failed child reaped");
                }
            });
        }
    }

    /// Starts a child: `initialize`, then the records delivered since the checkpoint.
    async fn start(&mut self, settings: &Settings) -> Result<(), String> {
        let child = Child::spawn(&settings.command, settings.workdir.as_deref(), &self.label)
            .map_err(|e| format!("cannot start {:?}: {e}", settings.command.join(" ")))?;
        self.starts += 1;
        info!(app = %self.label.app, stream = %self.label.stream, shard = %self.label.shard, pid = child.pid,
            start = self.starts, checkpoint = ?self.checkpoint.as_ref().map(|p| p.sequence.as_str()), "record processor started");
        self.child = Some(child);
        self.last_delivered = None;
        let (sequence_number, sub_sequence_number) = match &self.checkpoint {
            Some(p) => (Some(p.sequence.clone()), Some(p.sub_sequence)),
            None if self.lease_checkpoint.is_empty() => (Some(settings.initial_position.to_owned()), Some(0)),
            None => (Some(self.lease_checkpoint.clone()), Some(0)),
        };
        let init = ToChild::Initialize { shard_id: self.label.shard.clone(), sequence_number, sub_sequence_number };
        self.exchange(settings.timeout, Action::Initialize, &init).await?;
        // Replay what the previous child was given but did not checkpoint.
        let replay: Vec<Arc<[Record]>> = self.pending.iter().cloned().collect();
        for records in replay {
            let after = self.checkpoint.clone();
            let records: Vec<&Record> =
                records.iter().filter(|r| after.as_ref().is_none_or(|c| Position::of(r) > *c)).collect();
            if let Some(last) = records.last() {
                debug!(shard = %self.label.shard, records = records.len(), "replaying records to the restarted processor");
                let message = ToChild::ProcessRecords {
                    records: records.iter().map(|r| JsonRecord::from_record(r)).collect(),
                    millis_behind_latest: 0,
                };
                self.last_delivered = Some(Position::of(last));
                self.exchange(settings.timeout, Action::ProcessRecords, &message).await?;
            }
        }
        Ok(())
    }

    async fn process_batch(&mut self, settings: &Settings, batch: &Batch) -> Result<(), String> {
        self.checkpointer = Some(batch.checkpointer().clone());
        let result = self.try_batch(settings, batch).await;
        if let Err(why) = &result {
            self.failed(why);
        }
        result
    }

    async fn try_batch(&mut self, settings: &Settings, batch: &Batch) -> Result<(), String> {
        if self.child.is_none() {
            self.start(settings).await?;
        }
        let records = batch.shared_records();
        let Some(last) = records.last() else { return Ok(()) };
        let message = ToChild::ProcessRecords {
            records: records.iter().map(JsonRecord::from_record).collect(),
            millis_behind_latest: batch.millis_behind_latest(),
        };
        self.last_delivered = Some(Position::of(last));
        self.exchange(settings.timeout, Action::ProcessRecords, &message).await?;
        if self.checkpoint.as_ref().is_none_or(|c| Position::of(last) > *c) {
            self.pending_records += records.len();
            self.pending_bytes += payload_bytes(&records);
            self.pending.push_back(records);
            while self.pending.len() > 1
                && (self.pending_records > MAX_REPLAY_RECORDS || self.pending_bytes > MAX_REPLAY_BYTES)
            {
                let Some(dropped) = self.pending.pop_front() else { break };
                self.pending_records -= dropped.len();
                self.pending_bytes -= payload_bytes(&dropped);
                warn!(shard = %self.label.shard, records = dropped.len(),
                    "the processor has not checkpointed for a long time: a restart will not replay these records");
            }
        }
        Ok(())
    }

    /// Sends `message` and serves the child until it answers with its status.
    async fn exchange(&mut self, timeout: Option<Duration>, action: Action, message: &ToChild) -> Result<(), String> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let child = self.child.as_mut().ok_or("no record processor is running")?;
        child.send(message).await.map_err(|e| format!("cannot write {} to the processor: {e}", action.name()))?;
        loop {
            let child = self.child.as_mut().ok_or("no record processor is running")?;
            let line = match deadline {
                None => child.next_line().await,
                Some(at) => match tokio::time::timeout_at(at, child.next_line()).await {
                    Ok(line) => line,
                    Err(_) => {
                        return Err(format!(
                            "no answer to {} within {:?} (timeoutInSeconds)",
                            action.name(),
                            timeout.unwrap_or_default()
                        ))
                    }
                },
            };
            let line = match line {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => {
                    return Err(match child.exit_within(Duration::from_secs(1)).await {
                        Some(status) => format!("the processor exited ({status}) before answering {}", action.name()),
                        None => format!("the processor closed its stdout before answering {}", action.name()),
                    });
                }
            };
            match protocol::react(action, &line) {
                Reaction::Done => return Ok(()),
                Reaction::Ignore => {}
                Reaction::Skip(text) => {
                    warn!(app = %self.label.app, stream = %self.label.stream, shard = %self.label.shard,
                        line = %truncate(&text, 500), "the processor wrote a line that is not a protocol message; skipped")
                }
                Reaction::Violation(why) => return Err(why),
                Reaction::Checkpoint { sequence_number, sub_sequence_number } => {
                    let error = self.checkpoint(action, sequence_number.as_deref(), sub_sequence_number).await;
                    let answer = ToChild::Checkpoint { sequence_number, sub_sequence_number, error };
                    let child = self.child.as_mut().ok_or("no record processor is running")?;
                    child.send(&answer).await.map_err(|e| format!("cannot answer a checkpoint: {e}"))?;
                }
            }
        }
    }

    /// Serves one checkpoint request; returns the error name for the answer.
    async fn checkpoint(&mut self, action: Action, sequence: Option<&str>, sub: Option<u64>) -> Option<String> {
        let decision = decide_checkpoint(Some(action), sequence, sub, self.last_delivered.as_ref());
        let at = match decision {
            CheckpointDecision::Succeed => return None,
            CheckpointDecision::Refuse(name) => {
                warn!(shard = %self.label.shard, action = action.name(), ?sequence, error = name, "checkpoint refused");
                return Some(name.to_owned());
            }
            CheckpointDecision::Store(at) => at,
        };
        if self.released {
            return Some(errors::SHUTDOWN.to_owned());
        }
        let Some(checkpointer) = self.checkpointer.clone() else {
            return Some(errors::INVALID_STATE.to_owned());
        };
        match checkpointer.checkpoint_sequence(&at.sequence, at.sub_sequence).await {
            Ok(()) => {
                debug!(shard = %self.label.shard, sequence = %at.sequence, "checkpoint stored");
                if self.checkpoint.as_ref().is_none_or(|c| at > *c) {
                    self.checkpoint = Some(at.clone());
                }
                while let Some(front) = self.pending.front() {
                    match front.last() {
                        Some(last) if Position::of(last) > at => break,
                        _ => {
                            self.pending_records -= front.len();
                            self.pending_bytes -= payload_bytes(front);
                            self.pending.pop_front();
                        }
                    }
                }
                None
            }
            Err(e) => {
                let name = protocol::error_name(e.kind());
                warn!(shard = %self.label.shard, sequence = %at.sequence, error = %e, answer = name, "checkpoint failed");
                if name == errors::SHUTDOWN {
                    self.released = true;
                }
                Some(name.to_owned())
            }
        }
    }

    /// The end of the lease: tell the child why, then close its stdin.
    async fn stop(&mut self, settings: &Settings, reason: StopReason) {
        let actions: &[(Action, ToChild)] = match reason {
            // The lease is still held: the child's checkpoints are stored.
            StopReason::ConsumerStopped | StopReason::HandlerFailed => {
                &[(Action::ShutdownRequested, ToChild::ShutdownRequested), (Action::LeaseLost, ToChild::LeaseLost)]
            }
            // The client released the shard at the child's last checkpoint before this
            // hook runs: checkpoints now answer ShutdownException.
            StopReason::Rebalanced | StopReason::ServerShutdown | StopReason::Released => {
                self.released = true;
                &[(Action::ShutdownRequested, ToChild::ShutdownRequested), (Action::LeaseLost, ToChild::LeaseLost)]
            }
            StopReason::Ended => &[(Action::ShardEnded, ToChild::ShardEnded)],
            _ => {
                self.released = true;
                &[(Action::LeaseLost, ToChild::LeaseLost)]
            }
        };
        info!(app = %self.label.app, stream = %self.label.stream, shard = %self.label.shard, ?reason,
            "shard stopped; telling its record processor");
        if self.child.is_none() {
            return;
        }
        let bound = settings.timeout.map_or(settings.stop_grace, |t| t.min(settings.stop_grace));
        for (action, message) in actions {
            if let Err(why) = self.exchange(Some(bound), *action, message).await {
                warn!(shard = %self.label.shard, action = action.name(), error = %why, "the processor did not answer while stopping");
                break;
            }
        }
        if let Some(child) = self.child.take() {
            let pid = child.pid;
            let status = child.close(settings.stop_grace).await;
            info!(shard = %self.label.shard, pid, status = ?status.map(|s| s.to_string()), "record processor ended");
        }
    }
}

fn payload_bytes(records: &[Record]) -> usize {
    records.iter().map(|r| r.data.len()).sum()
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}
