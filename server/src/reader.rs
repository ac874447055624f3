//! One task per leased shard: polls Kinesis and pushes record batches into the owning
//! session's bounded outbox, so a slow client slows its own reads.

use std::time::Duration;

use kinesis_butler_proto as pb;
use pb::get_records_response::Event;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::kinesis::{IteratorStart, Kinesis, KinesisError};
use crate::metrics as m;

/// Kinesis allows 5 GetRecords calls per second per shard.
const MIN_CALL_SPACING: Duration = Duration::from_millis(200);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where a session's events go.
pub type Outbox = mpsc::Sender<Result<pb::GetRecordsResponse, tonic::Status>>;

/// Everything a shard reader needs.
pub struct ReaderSpec {
    /// App the shard is read for (a metrics label).
    pub app: String,
    /// Stream name.
    pub stream: String,
    /// Shard id.
    pub shard_id: String,
    /// Lease epoch the batches carry.
    pub epoch: u64,
    /// Where the first iterator starts.
    pub start: IteratorStart,
    /// Records per GetRecords call.
    pub batch_size: u32,
    /// Pause between calls once caught up.
    pub idle_interval: Duration,
    /// The `ShardAssigned` event sent before any batch.
    pub assigned: pb::ShardAssigned,
}

/// Exponential backoff with full jitter.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let cap = BACKOFF_BASE.saturating_mul(1 << self.attempt.min(10)).min(BACKOFF_MAX);
        self.attempt += 1;
        rand::rng().random_range(cap / 2..=cap)
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Reads the shard until it ends, the token is cancelled or the outbox closes.
pub async fn run(kinesis: Kinesis, spec: ReaderSpec, out: Outbox, cancel: CancellationToken) {
    let (stream, shard) = (spec.stream.as_str(), spec.shard_id.as_str());
    if !send(&out, &cancel, Event::ShardAssigned(spec.assigned.clone())).await {
        return;
    }
    info!(stream, shard, epoch = spec.epoch, start = ?spec.start, "shard reader started");
    let mut backoff = Backoff::default();
    let mut last_sequence: Option<String> = None;
    let mut iterator: Option<String> = None;
    let mut next_call = Instant::now();
    let labels = [("app", spec.app.clone()), ("stream", spec.stream.clone())];
    let shard_labels = [("app", spec.app.clone()), ("stream", spec.stream.clone()), ("shard", spec.shard_id.clone())];
    let behind_gauge = metrics::gauge!(m::MILLIS_BEHIND, &shard_labels);

    loop {
        if !sleep_until(&cancel, next_call).await {
            return;
        }
        let iter = match &iterator {
            Some(it) => it.clone(),
            None => {
                // After an expiry resume right after the last record delivered.
                let start = match &last_sequence {
                    Some(seq) => IteratorStart::AfterSequence(seq.clone()),
                    None => spec.start.clone(),
                };
                match kinesis.shard_iterator(stream, shard, &start).await {
                    Ok(it) => it,
                    Err(e) => {
                        next_call = Instant::now() + retry_delay(&mut backoff, &e, stream, shard);
                        continue;
                    }
                }
            }
        };
        let call_started = Instant::now();
        metrics::counter!(m::GET_RECORDS_CALLS, &labels).increment(1);
        let result = kinesis.get_records(&iter, spec.batch_size).await;
        if let Err(e) = &result {
            metrics::counter!(m::KINESIS_ERRORS, "kind" => e.kind()).increment(1);
        }
        let page = match result {
            Ok(page) => page,
            Err(KinesisError::ExpiredIterator) => {
                debug!(stream, shard, "shard iterator expired, getting a fresh one");
                iterator = None;
                next_call = call_started + MIN_CALL_SPACING;
                continue;
            }
            Err(e) => {
                next_call = Instant::now() + retry_delay(&mut backoff, &e, stream, shard);
                continue;
            }
        };
        backoff.reset();
        let full = page.records.len() as u32 >= spec.batch_size;
        behind_gauge.set(page.millis_behind_latest as f64);
        if let Some(last) = page.records.last() {
            let bytes: usize = page.records.iter().map(|r| r.data.as_ref().len()).sum();
            metrics::counter!(m::RECORDS, &labels).increment(page.records.len() as u64);
            metrics::counter!(m::BYTES, &labels).increment(bytes as u64);
            metrics::counter!(m::BATCHES, &labels).increment(1);
            last_sequence = Some(last.sequence_number.clone());
            let batch = pb::RecordBatch {
                stream: spec.stream.clone(),
                shard_id: spec.shard_id.clone(),
                lease_epoch: spec.epoch,
                millis_behind_latest: page.millis_behind_latest,
                records: page.records.into_iter().map(to_proto).collect(),
            };
            if !send(&out, &cancel, Event::Records(batch)).await {
                return;
            }
        }
        match page.next_iterator {
            Some(next) => iterator = Some(next),
            None => {
                info!(stream, shard, "reached the end of the closed shard");
                let ended =
                    pb::ShardEnded { stream: spec.stream.clone(), shard_id: spec.shard_id.clone(), lease_epoch: spec.epoch };
                send(&out, &cancel, Event::ShardEnded(ended)).await;
                return;
            }
        }
        // Poll again at once while behind; rest when caught up.
        let behind = full || page.millis_behind_latest > 0;
        next_call = if behind { call_started + MIN_CALL_SPACING } else { Instant::now() + spec.idle_interval.max(MIN_CALL_SPACING) };
    }
}

fn retry_delay(backoff: &mut Backoff, err: &KinesisError, stream: &str, shard: &str) -> Duration {
    let delay = backoff.next_delay();
    if err.is_retryable() {
        debug!(stream, shard, error = %err, ?delay, "Kinesis call failed, retrying");
    } else {
        // Not found or rejected: keep trying slowly; the lease stays ours and the
        // balancer's shard sync decides whether the shard still exists.
        warn!(stream, shard, error = %err, ?delay, "Kinesis call rejected, retrying");
    }
    delay
}

async fn sleep_until(cancel: &CancellationToken, at: Instant) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep_until(at) => true,
    }
}

/// Sends an event, waiting for room (backpressure) unless cancelled.
async fn send(out: &Outbox, cancel: &CancellationToken, event: Event) -> bool {
    let msg = Ok(pb::GetRecordsResponse { event: Some(event) });
    tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        sent = out.send(msg) => sent.is_ok(),
    }
}

fn to_proto(r: aws_sdk_kinesis::types::Record) -> pb::Record {
    pb::Record {
        approximate_arrival_timestamp_ms: r
            .approximate_arrival_timestamp
            .and_then(|t| t.to_millis().ok())
            .unwrap_or(0),
        sequence_number: r.sequence_number,
        sub_sequence_number: 0,
        partition_key: r.partition_key.unwrap_or_default(),
        data: r.data.into_inner(),
    }
}
