//! Helpers of the unit tests: a handler that records what it was given and can be told
//! to fail or to wait, and batches.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use kinesis_butler_proto as pb;
use tokio::sync::watch;

use crate::error::HandlerError;
use crate::handler::{Batch, Handler, ShardInfo, StopReason};
use crate::scripted;

/// A handler call or hook, as the handler saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Started { shard_id: String, epoch: u64 },
    Batch { shard_id: String, epoch: u64, attempt: u32, sequences: Vec<String> },
    Stopped { shard_id: String, epoch: u64, reason: StopReason },
}

/// Records every call; fails the first `failures` attempts of each batch; while `gate`
/// is closed (false), a batch call waits for it.
pub(crate) struct Recording {
    pub calls: Arc<Mutex<Vec<Call>>>,
    pub changed: watch::Sender<u64>,
    pub failures: u32,
    pub gate: watch::Receiver<bool>,
}

impl Recording {
    /// A handler that succeeds at once, and the sender of its gate (open).
    pub(crate) fn new(failures: u32) -> (Self, watch::Sender<bool>) {
        let (gate_tx, gate) = watch::channel(true);
        let handler = Self { calls: Arc::default(), changed: watch::channel(0).0, failures, gate };
        (handler, gate_tx)
    }

    /// The calls so far.
    pub(crate) fn calls(calls: &Mutex<Vec<Call>>) -> Vec<Call> {
        calls.lock().unwrap().clone()
    }

    fn note(calls: &Mutex<Vec<Call>>, changed: &watch::Sender<u64>, call: Call) {
        calls.lock().unwrap().push(call);
        changed.send_modify(|n| *n += 1);
    }
}

/// Waits (bounded) until `done` holds for the calls; panics with `what` on timeout.
pub(crate) async fn wait_calls(
    calls: &Mutex<Vec<Call>>,
    changed: &watch::Sender<u64>,
    what: &str,
    done: impl Fn(&[Call]) -> bool,
) {
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        scripted::until(changed.subscribe(), || done(&calls.lock().unwrap())),
    );
    waited.await.unwrap_or_else(|_| panic!("timed out: {what}: {:?}", calls.lock().unwrap()));
}

impl Handler for Recording {
    fn handle(&self, batch: Batch) -> BoxFuture<'static, Result<(), HandlerError>> {
        let (calls, changed, mut gate, failures) =
            (self.calls.clone(), self.changed.clone(), self.gate.clone(), self.failures);
        Box::pin(async move {
            let call = Call::Batch {
                shard_id: batch.shard_id().into(),
                epoch: batch.shard().lease_epoch,
                attempt: batch.attempt(),
                sequences: batch.records().iter().map(|r| r.sequence_number.clone()).collect(),
            };
            Recording::note(&calls, &changed, call);
            let _ = gate.wait_for(|open| *open).await;
            if batch.attempt() <= failures {
                return Err(HandlerError::msg(format!("planned failure {}", batch.attempt())));
            }
            Ok(())
        })
    }

    fn shard_started(&self, shard: &ShardInfo) -> BoxFuture<'static, ()> {
        let call = Call::Started { shard_id: shard.shard_id.clone(), epoch: shard.lease_epoch };
        Recording::note(&self.calls, &self.changed, call);
        Box::pin(async {})
    }

    fn shard_stopped(&self, shard: &ShardInfo, reason: StopReason) -> BoxFuture<'static, ()> {
        let call = Call::Stopped { shard_id: shard.shard_id.clone(), epoch: shard.lease_epoch, reason };
        Recording::note(&self.calls, &self.changed, call);
        Box::pin(async {})
    }
}

/// A batch of records with these sequence numbers.
pub(crate) fn batch(stream: &str, shard_id: &str, epoch: u64, sequences: &[&str]) -> pb::RecordBatch {
    pb::RecordBatch {
        stream: stream.into(),
        shard_id: shard_id.into(),
        lease_epoch: epoch,
        records: sequences.iter().map(|s| scripted::record(s, s.as_bytes().to_vec())).collect(),
        millis_behind_latest: 0,
    }
}

/// What a checkpoint request stored, in short: (shard, epoch, sequence, shard_end, release).
pub(crate) fn short(c: &pb::CheckpointRequest) -> (String, u64, String, bool, bool) {
    (c.shard_id.clone(), c.lease_epoch, c.sequence_number.clone(), c.shard_end, c.release)
}
