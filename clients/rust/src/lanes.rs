//! Per-key lanes of one shard (`parallelization_factor`): which lane a partition key
//! goes to, and where the shard's checkpoint may be while lanes run ahead of each other.
//! Pure; the shard worker drives the lanes.

use std::collections::BTreeMap;

use crate::policy::Position;

/// The lane of a partition key: FNV-1a of its bytes, modulo the lanes (stable across
/// processes and versions, so that a key keeps its lane after a restart).
pub(crate) fn lane_of(partition_key: &str, lanes: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in partition_key.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % lanes.max(1) as u64) as usize
}

/// The records of a shard taken in but not yet checkpointable: the checkpoint may move
/// only over the longest run of finished records from the oldest one.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// Every record taken in and not yet passed by the checkpoint: finished or not.
    open: BTreeMap<Position, bool>,
}

impl Tracker {
    /// Records were taken in (in any lane).
    pub(crate) fn take(&mut self, positions: impl IntoIterator<Item = Position>) {
        for p in positions {
            self.open.entry(p).or_insert(false);
        }
    }

    /// Records were finished (handled or given up).
    pub(crate) fn finish<'a>(&mut self, positions: impl IntoIterator<Item = &'a Position>) {
        for p in positions {
            if let Some(done) = self.open.get_mut(p) {
                *done = true;
            }
        }
    }

    /// Moves past the finished run at the front: its last position and length, if any.
    pub(crate) fn advance(&mut self) -> Option<(Position, u64)> {
        let mut last = None;
        let mut count = 0;
        while let Some(entry) = self.open.first_entry() {
            if !*entry.get() {
                break;
            }
            last = Some(entry.remove_entry().0);
            count += 1;
        }
        last.map(|p| (p, count))
    }

    /// Records taken in and not passed yet.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(seq: &str) -> Position {
        Position { sequence: seq.into(), sub_sequence: 0 }
    }

    #[test]
    fn keys_spread_over_lanes_and_keep_theirs() {
        let lanes: Vec<usize> = (0..40).map(|k| lane_of(&format!("key-{k}"), 4)).collect();
        for lane in 0..4 {
            assert!(lanes.contains(&lane), "lane {lane} gets keys: {lanes:?}");
        }
        assert_eq!(lane_of("key-7", 4), lanes[7]);
        assert_eq!(lane_of("anything", 1), 0);
    }

    #[test]
    fn the_checkpoint_is_at_the_lowest_unfinished_record_across_lanes() {
        let mut t = Tracker::default();
        t.take(["1", "2", "3", "10"].map(pos));
        t.finish(&[pos("2"), pos("3")]);
        assert_eq!(t.advance(), None, "1 is not finished: nothing may be checkpointed");
        t.finish(&[pos("1")]);
        assert_eq!(t.advance(), Some((pos("3"), 3)));
        assert_eq!(t.len(), 1);
        t.take([pos("11")]);
        t.finish(&[pos("11")]);
        assert_eq!(t.advance(), None, "10 holds it back");
        t.finish(&[pos("10")]);
        assert_eq!(t.advance(), Some((pos("11"), 2)));
        assert_eq!(t.len(), 0);
    }
}
