//! What a shard reader has delivered, and the means to deliver more: shared by polling
//! and fan-out, it de-aggregates KPL records, drops what was already processed, cuts
//! batches and remembers the last user record delivered.
//!
//! Records are read by polling GetRecords (the default) or through an enhanced fan-out
//! subscription ([`crate::retrieval::fanout`]); both hand their records to a `Delivery`, which
//! de-aggregates KPL records ([`crate::retrieval::kpl`]), drops what was already processed, cuts
//! batches and remembers the last user record delivered.
//!
//! # Resuming
//!
//! A checkpoint `(sequence, sub)` means "processed up to and including user record
//! `sub` of the Kinesis record `sequence`" (a plain record is user record 0 of itself).
//! A reader resumes with an `AT_SEQUENCE_NUMBER` iterator at `sequence` and drops every
//! user record whose `(sequence, sub-sequence)` is at or below the checkpoint: the
//! rest of a half-processed aggregate is delivered, and a plain (or malformed, so
//! delivered raw) record at `sequence` is not delivered again. Records after
//! `sequence` pass untouched. The same rule restarts an expired iterator or a
//! subscription from the last user record delivered, so nothing is skipped or repeated.
use std::cmp::Ordering;
use std::time::Duration;

use kinesis_butler_proto as pb;
use pb::get_records_response::Event;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::coordination::session::Outbox;
use crate::metrics as m;
use crate::retrieval::kinesis::{IteratorStart, KinesisError};
use crate::retrieval::kpl::{self, Deaggregated};
use crate::retrieval::source::ShardSource;
use crate::seqnum::SequenceNumber;

/// Kinesis allows 5 GetRecords calls per second per shard.
pub(crate) const MIN_CALL_SPACING: Duration = Duration::from_millis(200);
/// How far before the moment a `LATEST` iterator was taken a refreshed one starts, so
/// that clock differences cannot lose records put right after the session began.
const LATEST_MARGIN_MS: i64 = 1000;

/// A user record in a shard: a Kinesis sequence number and a sub-sequence number (the
/// index inside a KPL aggregate, 0 for a plain record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    /// Sequence number of the Kinesis record.
    pub sequence: SequenceNumber,
    /// Index of the user record inside it.
    pub sub_sequence: u64,
}

/// Where a reader begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// No checkpoint: a fresh iterator position.
    Fresh(IteratorStart),
    /// Right after this checkpoint (see the module docs for the rule).
    After(Position),
}

/// Everything a shard reader needs.
pub(crate) struct ReaderSpec {
    /// App the shard is read for (a metrics label).
    pub app: String,
    /// Stream name.
    pub stream: String,
    /// Shard id.
    pub shard_id: String,
    /// Lease epoch the batches carry.
    pub epoch: u64,
    /// Where reading starts.
    pub start: StartAt,
    /// Records per GetRecords call, and at most this many user records per batch (a page
    /// is one batch unless de-aggregation makes it longer, so that a processor's per-shard
    /// queue takes a page whole).
    pub batch_size: u32,
    /// Pause between calls once caught up.
    pub idle_interval: Duration,
    /// The `ShardAssigned` event sent before any batch.
    pub assigned: pb::ShardAssigned,
    /// Read through enhanced fan-out subscriptions instead of polling.
    pub fanout: Option<crate::retrieval::fanout::FanOut>,
}
/// What a shard reader has delivered, and the means to deliver more.
pub(crate) struct Delivery {
    stream: String,
    shard_id: String,
    epoch: u64,
    batch_size: usize,
    out: Outbox,
    cancel: CancellationToken,
    /// Where to start while nothing was delivered.
    fresh: IteratorStart,
    /// The last user record delivered (or the checkpoint it started after).
    position: Option<Position>,
    /// Drop user records at or below this one (set when re-reading at `position`).
    skip_through: Option<Position>,
    labels: [(&'static str, String); 2],
    behind_gauge: metrics::Gauge,
    /// The group, for the status figures (`crate::status::local`).
    group: crate::store::GroupKey,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        crate::status::local::forget(&self.group, &self.shard_id, self.epoch);
    }
}

impl Delivery {
    pub(crate) fn new(spec: &ReaderSpec, out: Outbox, cancel: CancellationToken) -> Self {
        let (fresh, position) = match &spec.start {
            StartAt::Fresh(start) => (start.clone(), None),
            StartAt::After(p) => (IteratorStart::TrimHorizon, Some(p.clone())),
        };
        let shard_labels =
            [("app", spec.app.clone()), ("stream", spec.stream.clone()), ("shard", spec.shard_id.clone())];
        Self {
            stream: spec.stream.clone(),
            shard_id: spec.shard_id.clone(),
            epoch: spec.epoch,
            batch_size: spec.batch_size.max(1) as usize,
            out,
            cancel,
            fresh,
            position,
            skip_through: None,
            labels: [("app", spec.app.clone()), ("stream", spec.stream.clone())],
            behind_gauge: metrics::gauge!(m::MILLIS_BEHIND, &shard_labels),
            group: crate::store::GroupKey::new(&spec.app, &spec.stream),
        }
    }

    /// The cancellation token of the reader.
    pub(crate) fn stream(&self) -> &str {
        &self.stream
    }

    pub(crate) fn shard_id(&self) -> &str {
        &self.shard_id
    }

    pub(crate) fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The last user record delivered, if any.
    pub(crate) fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// Where the next iterator or subscription starts: at the last user record
    /// delivered (dropping it and what came before it again), else the fresh start.
    pub(crate) fn next_start(&mut self) -> IteratorStart {
        match &self.position {
            Some(p) => {
                self.skip_through = Some(p.clone());
                IteratorStart::AtSequence(p.sequence.to_string())
            }
            None => {
                let start = self.fresh.clone();
                if start == IteratorStart::Latest {
                    // A later restart must not jump to a newer tip and lose what was
                    // put in between.
                    self.fresh = IteratorStart::AtTimestamp(crate::clock::now_ms() - LATEST_MARGIN_MS);
                }
                start
            }
        }
    }

    /// Where reading would start while nothing was delivered (no side effects).
    pub(crate) fn fresh_start(&self) -> IteratorStart {
        self.fresh.clone()
    }

    /// A fresh shard iterator at [`Self::next_start`]; `Ok(None)` when Kinesis no longer
    /// knows the shard while still listing the stream: a closed shard trimmed past the
    /// retention period, which has nothing left to read (its children must not wait).
    pub(crate) async fn open_iterator(&mut self, kinesis: &dyn ShardSource) -> Result<Option<String>, KinesisError> {
        let start = self.next_start();
        match kinesis.shard_iterator(&self.stream, &self.shard_id, &start).await {
            Ok(it) => Ok(Some(it)),
            Err(KinesisError::NotFound(text)) => {
                let shards = kinesis.list_shards(&self.stream).await?;
                if shards.iter().any(|s| s.shard_id == self.shard_id) {
                    Err(KinesisError::NotFound(text))
                } else {
                    warn!(stream = %self.stream, shard = %self.shard_id,
                        "shard is no longer listed (past the retention period); treating it as ended");
                    Ok(None)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// How many user records at `sequence` to drop: `Some(sub)` drops sub-sequences up
    /// to `sub`; `None` keeps them all.
    fn drop_through(&mut self, sequence: &str) -> Option<u64> {
        let through = self.skip_through.as_ref()?;
        let seq = match SequenceNumber::parse(sequence) {
            Ok(s) => s,
            Err(e) => {
                warn!(stream = %self.stream, shard = %self.shard_id, error = %e, "unexpected sequence number from Kinesis");
                self.skip_through = None;
                return None;
            }
        };
        match seq.cmp(&through.sequence) {
            Ordering::Less => Some(u64::MAX),
            Ordering::Equal => Some(through.sub_sequence),
            Ordering::Greater => {
                self.skip_through = None;
                None
            }
        }
    }

    /// De-aggregates `records`, drops what was delivered before, and sends the rest in
    /// batches of at most `batch_size` user records. Returns false if the session went
    /// away or the reader was cancelled.
    pub(crate) async fn deliver(&mut self, records: Vec<aws_sdk_kinesis::types::Record>, millis_behind: i64) -> bool {
        self.behind_gauge.set(millis_behind as f64);
        crate::status::local::record(&self.group, &self.shard_id, self.epoch, millis_behind, records.len());
        let mut users = Vec::with_capacity(records.len());
        for record in records {
            let drop_through = self.drop_through(&record.sequence_number);
            match drop_through {
                None => expand(record, &self.stream, &self.shard_id, &mut users),
                Some(limit) => {
                    let mut these = Vec::new();
                    expand(record, &self.stream, &self.shard_id, &mut these);
                    users.extend(these.into_iter().filter(|u| u.sub_sequence_number > limit));
                }
            }
        }
        let mut users = users.into_iter().peekable();
        while users.peek().is_some() {
            let batch: Vec<pb::Record> = users.by_ref().take(self.batch_size).collect();
            let last = batch.last().expect("non-empty");
            let position = SequenceNumber::parse(&last.sequence_number)
                .map(|sequence| Position { sequence, sub_sequence: last.sub_sequence_number })
                .ok();
            let bytes: usize = batch.iter().map(|r| r.data.len()).sum();
            metrics::counter!(m::RECORDS, &self.labels).increment(batch.len() as u64);
            metrics::counter!(m::BYTES, &self.labels).increment(bytes as u64);
            metrics::counter!(m::BATCHES, &self.labels).increment(1);
            let batch = pb::RecordBatch {
                stream: self.stream.clone(),
                shard_id: self.shard_id.clone(),
                lease_epoch: self.epoch,
                millis_behind_latest: millis_behind,
                records: batch,
            };
            if !self.send(Event::Records(batch)).await {
                return false;
            }
            if position.is_some() {
                self.position = position;
            }
        }
        true
    }

    /// Sends `ShardEnded`.
    pub(crate) async fn send_ended(&self) {
        let ended =
            pb::ShardEnded { stream: self.stream.clone(), shard_id: self.shard_id.clone(), lease_epoch: self.epoch };
        self.send(Event::ShardEnded(ended)).await;
    }

    /// Sends an event, waiting for room (backpressure) unless cancelled.
    pub(crate) async fn send(&self, event: Event) -> bool {
        let msg = Ok(pb::GetRecordsResponse { event: Some(event) });
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => false,
            sent = self.out.send(msg) => sent.is_ok(),
        }
    }

    /// Waits until the session has room for a batch; false if cancelled or gone. Readers
    /// fetch their next page only then, so a slow processor holds back whole pages in
    /// Kinesis rather than in server memory.
    pub(crate) async fn wait_for_room(&self) -> bool {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => false,
            permit = self.out.reserve() => permit.is_ok(),
        }
    }

    /// Sleeps until `at`; false if cancelled first.
    pub(crate) async fn sleep_until(&self, at: Instant) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep_until(at) => true,
        }
    }
}

/// Appends the user records of one Kinesis record: its KPL user records, or itself.
fn expand(r: aws_sdk_kinesis::types::Record, stream: &str, shard: &str, users: &mut Vec<pb::Record>) {
    let arrival = r.approximate_arrival_timestamp.and_then(|t| t.to_millis().ok()).unwrap_or(0);
    let data = r.data.into_inner();
    match kpl::deaggregate(&data) {
        Deaggregated::Aggregate(records) => {
            users.extend(records.into_iter().map(|u| pb::Record {
                sequence_number: r.sequence_number.clone(),
                sub_sequence_number: u.sub_sequence_number,
                partition_key: u.partition_key,
                data: u.data.into(),
                approximate_arrival_timestamp_ms: arrival,
            }));
            return;
        }
        Deaggregated::Malformed(e) => {
            warn!(stream, shard, sequence = %r.sequence_number, error = %e,
                "malformed KPL aggregate; delivering the raw record");
        }
        Deaggregated::Plain => {}
    }
    users.push(pb::Record {
        sequence_number: r.sequence_number,
        sub_sequence_number: 0,
        partition_key: r.partition_key.unwrap_or_default(),
        data: data.into(),
        approximate_arrival_timestamp_ms: arrival,
    });
}
#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::Record;
    use tokio::sync::mpsc;

    fn record(seq: &str, data: &[u8]) -> Record {
        Record::builder().sequence_number(seq).partition_key("outer").data(Blob::new(data)).build().unwrap()
    }

    fn delivery(
        start: StartAt,
        batch_size: u32,
    ) -> (Delivery, mpsc::Receiver<Result<pb::GetRecordsResponse, tonic::Status>>) {
        let (tx, rx) = mpsc::channel(100);
        let spec = ReaderSpec {
            app: "a".into(),
            stream: "s".into(),
            shard_id: "shard-0".into(),
            epoch: 1,
            start,
            batch_size,
            idle_interval: Duration::from_millis(100),
            assigned: pb::ShardAssigned::default(),
            fanout: None,
        };
        (Delivery::new(&spec, tx, CancellationToken::new()), rx)
    }

    fn received(
        rx: &mut mpsc::Receiver<Result<pb::GetRecordsResponse, tonic::Status>>,
    ) -> Vec<Vec<(String, u64, Vec<u8>)>> {
        let mut batches = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            if let Some(Event::Records(b)) = msg.unwrap().event {
                batches.push(
                    b.records
                        .into_iter()
                        .map(|r| (r.sequence_number, r.sub_sequence_number, r.data.to_vec()))
                        .collect(),
                );
            }
        }
        batches
    }

    fn pos(seq: &str, sub: u64) -> Position {
        Position { sequence: SequenceNumber::parse(seq).unwrap(), sub_sequence: sub }
    }

    fn page() -> Vec<Record> {
        vec![
            record("10", b"plain-10"),
            record("11", &kpl::aggregate(&[("a", b"u0"), ("b", b"u1"), ("a", b"u2")])),
            record("12", b"plain-12"),
        ]
    }

    #[tokio::test]
    async fn deaggregates_and_cuts_batches() {
        let (mut d, mut rx) = delivery(StartAt::Fresh(IteratorStart::TrimHorizon), 2);
        assert_eq!(d.next_start(), IteratorStart::TrimHorizon);
        assert!(d.deliver(page(), 0).await);
        let got = received(&mut rx);
        let flat: Vec<(String, u64)> = got.iter().flatten().map(|(s, n, _)| (s.clone(), *n)).collect();
        let want: Vec<(String, u64)> =
            [("10", 0), ("11", 0), ("11", 1), ("11", 2), ("12", 0)].iter().map(|(s, n)| (s.to_string(), *n)).collect();
        assert_eq!(flat, want);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1], "batches of at most 2");
        assert_eq!(d.position(), Some(&pos("12", 0)));
    }

    #[tokio::test]
    async fn resumes_inside_an_aggregate_without_skips_or_repeats() {
        let (mut d, mut rx) = delivery(StartAt::After(pos("11", 1)), 100);
        assert_eq!(d.next_start(), IteratorStart::AtSequence("11".into()));
        // AT_SEQUENCE_NUMBER 11 returns 11 and 12.
        assert!(d.deliver(page().split_off(1), 0).await);
        let got: Vec<(String, u64)> = received(&mut rx).into_iter().flatten().map(|(s, n, _)| (s, n)).collect();
        assert_eq!(got, vec![("11".to_string(), 2), ("12".to_string(), 0)]);
    }

    #[tokio::test]
    async fn a_plain_checkpointed_record_is_not_redelivered() {
        let (mut d, mut rx) = delivery(StartAt::After(pos("10", 0)), 100);
        assert_eq!(d.next_start(), IteratorStart::AtSequence("10".into()));
        assert!(d.deliver(page(), 0).await);
        let got: Vec<(String, u64)> = received(&mut rx).into_iter().flatten().map(|(s, n, _)| (s, n)).collect();
        assert_eq!(got.first(), Some(&("11".to_string(), 0)));
        assert_eq!(got.len(), 4);
        // A later page equal to the skipped sequence is not filtered any more.
        assert!(d.skip_through.is_none());
    }

    #[tokio::test]
    async fn the_last_user_record_of_an_aggregate_ends_it() {
        let (mut d, mut rx) = delivery(StartAt::After(pos("11", 2)), 100);
        d.next_start();
        assert!(d.deliver(page().split_off(1), 0).await);
        let got: Vec<(String, u64)> = received(&mut rx).into_iter().flatten().map(|(s, n, _)| (s, n)).collect();
        assert_eq!(got, vec![("12".to_string(), 0)]);
    }

    #[tokio::test]
    async fn malformed_aggregates_are_delivered_raw() {
        let mut bad = kpl::aggregate(&[("a", b"x")]);
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        let (mut d, mut rx) = delivery(StartAt::Fresh(IteratorStart::TrimHorizon), 100);
        assert!(d.deliver(vec![record("5", &bad)], 0).await);
        let got = received(&mut rx);
        assert_eq!(got, vec![vec![("5".to_string(), 0, bad)]]);
    }

    #[tokio::test]
    async fn refresh_after_latest_does_not_jump_ahead() {
        let (mut d, _rx) = delivery(StartAt::Fresh(IteratorStart::Latest), 100);
        assert_eq!(d.next_start(), IteratorStart::Latest);
        assert!(matches!(d.next_start(), IteratorStart::AtTimestamp(_)));
    }
}
