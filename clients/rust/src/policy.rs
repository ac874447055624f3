//! Pure checkpoint bookkeeping of one shard: how far the handler got, how far the
//! store knows, and whether the policy wants a checkpoint now.

use std::cmp::Ordering;

use tokio::time::Instant;

use crate::options::CheckpointPolicy;

/// A record's place in its shard: sequence number, then sub-sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    /// Decimal sequence number (up to 128 bits).
    pub sequence: String,
    /// Position inside an aggregated record.
    pub sub_sequence: u64,
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.sequence.trim_start_matches('0'), other.sequence.trim_start_matches('0'));
        a.len().cmp(&b.len()).then_with(|| a.cmp(b)).then_with(|| self.sub_sequence.cmp(&other.sub_sequence))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Progress of one shard under one lease.
#[derive(Debug)]
pub(crate) struct Progress {
    /// The last record whose batch the handler finished.
    handled: Option<Position>,
    /// The last checkpoint stored by this lease.
    saved: Option<Position>,
    /// Records handled since the last stored checkpoint.
    unsaved_records: u64,
    /// When the oldest handled-but-unsaved batch was handled.
    unsaved_since: Option<Instant>,
}

impl Progress {
    /// Nothing handled yet.
    pub(crate) fn new() -> Self {
        Self { handled: None, saved: None, unsaved_records: 0, unsaved_since: None }
    }

    /// A batch ending at `last` with `records` records was handled at `now`.
    pub(crate) fn handled(&mut self, last: Position, records: u64, now: Instant) {
        if self.handled.as_ref().is_some_and(|h| *h >= last) {
            return;
        }
        self.handled = Some(last);
        self.unsaved_records += records;
        self.unsaved_since.get_or_insert(now);
    }

    /// The handled position not stored yet, if any.
    pub(crate) fn unsaved(&self) -> Option<&Position> {
        self.handled.as_ref().filter(|h| self.saved.as_ref().is_none_or(|s| s < *h))
    }

    /// The last checkpoint stored by this lease.
    pub(crate) fn saved_position(&self) -> Option<Position> {
        self.saved.clone()
    }

    /// Whether `position` is already stored (or behind what is).
    pub(crate) fn is_saved(&self, position: &Position) -> bool {
        self.saved.as_ref().is_some_and(|s| s >= position)
    }

    /// `position` was stored.
    pub(crate) fn saved(&mut self, position: Position) {
        if self.is_saved(&position) {
            return;
        }
        self.saved = Some(position);
        if self.unsaved().is_none() {
            self.unsaved_records = 0;
            self.unsaved_since = None;
        }
    }

    /// Whether `policy` wants the unsaved progress stored at `now`.
    pub(crate) fn is_due(&self, policy: CheckpointPolicy, now: Instant) -> bool {
        if self.unsaved().is_none() {
            return false;
        }
        match policy {
            CheckpointPolicy::EveryBatch => true,
            CheckpointPolicy::EveryRecords(n) => self.unsaved_records >= n,
            CheckpointPolicy::Interval(_) => self.deadline(policy).is_some_and(|d| d <= now),
            CheckpointPolicy::Manual => false,
        }
    }

    /// When a time-based policy wants the unsaved progress stored.
    pub(crate) fn deadline(&self, policy: CheckpointPolicy) -> Option<Instant> {
        match policy {
            CheckpointPolicy::Interval(every) => self.unsaved().and(self.unsaved_since).map(|t| t + every),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pos(seq: &str) -> Position {
        Position { sequence: seq.into(), sub_sequence: 0 }
    }

    #[test]
    fn positions_compare_as_numbers() {
        assert!(pos("9") < pos("10"));
        assert!(pos("0010") == pos("0010"));
        assert!(
            pos("49590338271490256608559692538361571095921575989136588898")
                > pos("4959033827149025660855969253836157109592157598913658889")
        );
        assert!(
            Position { sequence: "5".into(), sub_sequence: 2 } > Position { sequence: "5".into(), sub_sequence: 1 }
        );
    }

    #[test]
    fn every_batch_and_every_records() {
        let now = Instant::now();
        let mut p = Progress::new();
        assert!(!p.is_due(CheckpointPolicy::EveryBatch, now), "nothing handled");
        p.handled(pos("10"), 3, now);
        assert!(p.is_due(CheckpointPolicy::EveryBatch, now));
        assert!(!p.is_due(CheckpointPolicy::EveryRecords(5), now));
        assert!(!p.is_due(CheckpointPolicy::Manual, now));
        p.handled(pos("20"), 3, now);
        assert!(p.is_due(CheckpointPolicy::EveryRecords(5), now));
        p.saved(pos("20"));
        assert_eq!(p.unsaved(), None);
        assert!(!p.is_due(CheckpointPolicy::EveryBatch, now));
        // A count starts over after a checkpoint.
        p.handled(pos("30"), 4, now);
        assert!(!p.is_due(CheckpointPolicy::EveryRecords(5), now));
    }

    #[test]
    fn interval_counts_from_the_first_unsaved_batch() {
        let t0 = Instant::now();
        let policy = CheckpointPolicy::Interval(Duration::from_secs(5));
        let mut p = Progress::new();
        assert_eq!(p.deadline(policy), None);
        p.handled(pos("1"), 1, t0);
        p.handled(pos("2"), 1, t0 + Duration::from_secs(3));
        assert_eq!(p.deadline(policy), Some(t0 + Duration::from_secs(5)));
        assert!(!p.is_due(policy, t0 + Duration::from_secs(4)));
        assert!(p.is_due(policy, t0 + Duration::from_secs(5)));
        p.saved(pos("2"));
        assert_eq!(p.deadline(policy), None);
    }

    #[test]
    fn a_partial_manual_checkpoint_keeps_the_rest_unsaved() {
        let now = Instant::now();
        let mut p = Progress::new();
        p.handled(pos("10"), 2, now);
        p.saved(pos("5"));
        assert_eq!(p.unsaved(), Some(&pos("10")));
        assert!(p.is_saved(&pos("4")) && !p.is_saved(&pos("6")));
        p.saved(pos("3"));
        assert!(p.is_saved(&pos("5")), "never moves backwards");
    }
}
