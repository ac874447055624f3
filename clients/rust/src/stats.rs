//! Counters of one consumer, and the snapshot [`crate::Consumer::stats`] returns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A snapshot of a consumer's counters (since it was made) and of its shards' lag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records the handler finished with (successfully handled).
    pub records_handled: u64,
    /// Handler calls that succeeded.
    pub batches_handled: u64,
    /// Checkpoints stored (by the policy, the handler, a release or a shard end).
    pub checkpoints: u64,
    /// Handler calls that were retries of a failed one.
    pub retries: u64,
    /// Sessions opened again after a lost one.
    pub reconnects: u64,
    /// Records a dead-letter destination accepted.
    pub dead_lettered: u64,
    /// Records given up with `on_failure = skip` (or older than `max_record_age`).
    pub skipped: u64,
    /// Failing batches split in halves by `bisect_on_error`.
    pub bisect_steps: u64,
    /// Handler calls that ran out of `handler_timeout`.
    pub handler_timeouts: u64,
    /// The shards this consumer holds now, by stream and shard id.
    pub shards: Vec<ShardStats>,
}

/// One shard held by the consumer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Stream name.
    pub stream: String,
    /// Shard id.
    pub shard_id: String,
    /// The lease epoch it is held at.
    pub lease_epoch: u64,
    /// How far the server's reader was behind the tip of the shard at the last batch,
    /// as Kinesis reports it (the server reports no record count).
    pub millis_behind_latest: i64,
    /// Records of this lease the handler finished with.
    pub records_handled: u64,
}

/// Which counter to bump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    Checkpoints,
    Retries,
    Reconnects,
    DeadLettered,
    Skipped,
    BisectSteps,
    HandlerTimeouts,
}

/// The live counters, shared by every task of a consumer.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    records_handled: AtomicU64,
    batches_handled: AtomicU64,
    checkpoints: AtomicU64,
    retries: AtomicU64,
    reconnects: AtomicU64,
    dead_lettered: AtomicU64,
    skipped: AtomicU64,
    bisect_steps: AtomicU64,
    handler_timeouts: AtomicU64,
    shards: Mutex<BTreeMap<(String, String), ShardStats>>,
}

impl Counters {
    fn cell(&self, counter: Counter) -> &AtomicU64 {
        match counter {
            Counter::Checkpoints => &self.checkpoints,
            Counter::Retries => &self.retries,
            Counter::Reconnects => &self.reconnects,
            Counter::DeadLettered => &self.dead_lettered,
            Counter::Skipped => &self.skipped,
            Counter::BisectSteps => &self.bisect_steps,
            Counter::HandlerTimeouts => &self.handler_timeouts,
        }
    }

    /// Adds `n` to `counter`.
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        self.cell(counter).fetch_add(n, Ordering::Relaxed);
    }

    /// A successful handler call of `records` records on a shard.
    pub(crate) fn handled(&self, stream: &str, shard_id: &str, records: u64) {
        self.batches_handled.fetch_add(1, Ordering::Relaxed);
        self.records(stream, shard_id, records);
    }

    /// Records handled (also those before a failed record a handler named).
    pub(crate) fn records(&self, stream: &str, shard_id: &str, records: u64) {
        self.records_handled.fetch_add(records, Ordering::Relaxed);
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shards.get_mut(&(stream.to_owned(), shard_id.to_owned())) {
            s.records_handled += records;
        }
    }

    /// A shard was assigned at `lease_epoch`.
    pub(crate) fn shard_assigned(&self, stream: &str, shard_id: &str, lease_epoch: u64) {
        let stats = ShardStats { stream: stream.into(), shard_id: shard_id.into(), lease_epoch, ..Default::default() };
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        shards.insert((stream.to_owned(), shard_id.to_owned()), stats);
    }

    /// A batch of the shard arrived with this lag.
    pub(crate) fn lag(&self, stream: &str, shard_id: &str, lease_epoch: u64, millis_behind_latest: i64) {
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shards.get_mut(&(stream.to_owned(), shard_id.to_owned())) {
            if s.lease_epoch == lease_epoch {
                s.millis_behind_latest = millis_behind_latest;
            }
        }
    }

    /// The shard's lease at `lease_epoch` ended here.
    pub(crate) fn shard_gone(&self, stream: &str, shard_id: &str, lease_epoch: u64) {
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let key = (stream.to_owned(), shard_id.to_owned());
        if shards.get(&key).is_some_and(|s| s.lease_epoch == lease_epoch) {
            shards.remove(&key);
        }
    }

    /// A consistent-enough snapshot (each counter read once).
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            records_handled: get(&self.records_handled),
            batches_handled: get(&self.batches_handled),
            checkpoints: get(&self.checkpoints),
            retries: get(&self.retries),
            reconnects: get(&self.reconnects),
            dead_lettered: get(&self.dead_lettered),
            skipped: get(&self.skipped),
            bisect_steps: get(&self.bisect_steps),
            handler_timeouts: get(&self.handler_timeouts),
            shards: self.shards.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_shards_come_and_go_by_epoch() {
        let c = Counters::default();
        c.shard_assigned("s", "a", 1);
        c.handled("s", "a", 5);
        c.handled("s", "zz", 2);
        c.add(Counter::Retries, 2);
        c.add(Counter::DeadLettered, 1);
        c.lag("s", "a", 1, 300);
        c.lag("s", "a", 0, 999); // an older lease: ignored
        let s = c.snapshot();
        assert_eq!((s.records_handled, s.batches_handled, s.retries, s.dead_lettered), (7, 2, 2, 1));
        assert_eq!(s.shards.len(), 1);
        assert_eq!((s.shards[0].millis_behind_latest, s.shards[0].records_handled), (300, 5));
        c.shard_gone("s", "a", 0);
        assert_eq!(c.snapshot().shards.len(), 1, "not that epoch");
        c.shard_gone("s", "a", 1);
        assert!(c.snapshot().shards.is_empty());
    }
}
