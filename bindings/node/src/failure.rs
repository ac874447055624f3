//! Failure handling as JavaScript sees it: what a handler's call resolved to (an error,
//! maybe naming the failed record), a function as the `onFailure` destination, and
//! `consumer.stats()`. Every rule is the client's.

use std::sync::Arc;

use futures::future::BoxFuture;
use kinesis_butler_client as kb;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunction;
use napi_derive::napi;

/// What `index.js` resolves a failed call to: the error text, and the failed record
/// when the handler named one (`error.record`, or resolved `{ failedRecord }`).
#[napi(object)]
pub struct CallFailure {
    pub message: String,
    pub failed_sequence_number: Option<String>,
    pub failed_sub_sequence_number: Option<f64>,
}

impl CallFailure {
    pub(crate) fn into_error(self) -> kb::HandlerError {
        match self.failed_sequence_number {
            Some(seq) => {
                let sub = self.failed_sub_sequence_number.unwrap_or(0.0).max(0.0) as u64;
                kb::HandlerError::at_sequence(&seq, sub, self.message)
            }
            None => kb::HandlerError::msg(self.message),
        }
    }
}

/// One given-up record, as the `onFailure` function receives it.
#[napi(object)]
pub struct DeadLetterInfo {
    pub app: String,
    pub stream: String,
    pub shard_id: String,
    pub sequence_number: String,
    pub sub_sequence_number: f64,
    pub partition_key: String,
    pub attempts: u32,
    pub error: String,
    /// `handler_failed` or `too_old`.
    pub reason: String,
    pub approximate_arrival_timestamp_ms: f64,
    pub data: Buffer,
}

/// The `onFailure` function as `index.js` passes it: resolves `null` once the entries
/// are stored, or the text of what it threw (the shard then waits and calls again).
pub type JsDeadLetter =
    ThreadsafeFunction<Vec<DeadLetterInfo>, Promise<Option<String>>, Vec<DeadLetterInfo>, Status, false>;

pub(crate) struct NodeDeadLetter {
    pub tsfn: Arc<JsDeadLetter>,
}

impl kb::DeadLetter for NodeDeadLetter {
    fn send(&self, entries: Vec<kb::DeadLetterEntry>) -> BoxFuture<'static, std::result::Result<(), kb::HandlerError>> {
        let tsfn = self.tsfn.clone();
        Box::pin(async move {
            let infos = entries
                .into_iter()
                .map(|e| DeadLetterInfo {
                    app: e.app,
                    stream: e.stream,
                    shard_id: e.shard_id,
                    sequence_number: e.sequence_number,
                    sub_sequence_number: e.sub_sequence_number as f64,
                    partition_key: e.partition_key,
                    attempts: e.attempts,
                    error: e.error,
                    reason: e.reason.as_str().to_owned(),
                    approximate_arrival_timestamp_ms: e.approximate_arrival_timestamp_ms as f64,
                    data: e.data.to_vec().into(),
                })
                .collect();
            let promise = tsfn
                .call_async_catch(infos)
                .await
                .map_err(|e| kb::HandlerError::msg(format!("calling onFailure failed: {}", e.reason)))?;
            match promise.await {
                Ok(None) => Ok(()),
                Ok(Some(thrown)) => Err(kb::HandlerError::msg(format!("onFailure threw: {thrown}"))),
                Err(e) => Err(kb::HandlerError::msg(e.reason)),
            }
        })
    }
}

/// One shard held by the consumer.
#[napi(object)]
pub struct ShardStatsInfo {
    pub stream: String,
    pub shard_id: String,
    pub lease_epoch: f64,
    pub millis_behind_latest: f64,
    pub records_handled: f64,
}

/// `consumer.stats()`: counters since the consumer was made, and its shards now.
#[napi(object)]
pub struct StatsInfo {
    pub records_handled: f64,
    pub batches_handled: f64,
    pub checkpoints: f64,
    pub retries: f64,
    pub reconnects: f64,
    pub dead_lettered: f64,
    pub skipped: f64,
    pub bisect_steps: f64,
    pub handler_timeouts: f64,
    pub shards: Vec<ShardStatsInfo>,
}

impl From<kb::Stats> for StatsInfo {
    fn from(s: kb::Stats) -> Self {
        StatsInfo {
            records_handled: s.records_handled as f64,
            batches_handled: s.batches_handled as f64,
            checkpoints: s.checkpoints as f64,
            retries: s.retries as f64,
            reconnects: s.reconnects as f64,
            dead_lettered: s.dead_lettered as f64,
            skipped: s.skipped as f64,
            bisect_steps: s.bisect_steps as f64,
            handler_timeouts: s.handler_timeouts as f64,
            shards: s
                .shards
                .into_iter()
                .map(|x| ShardStatsInfo {
                    stream: x.stream,
                    shard_id: x.shard_id,
                    lease_epoch: x.lease_epoch as f64,
                    millis_behind_latest: x.millis_behind_latest as f64,
                    records_handled: x.records_handled as f64,
                })
                .collect(),
        }
    }
}
