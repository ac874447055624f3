//! What this instance's readers know and nobody else does: per shard, how far behind the
//! tip it is and how many records it delivered. Readers report here on every page; the
//! lag gauges (per app and stream, largest and summed) and the published stats are read
//! from here.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

use tokio::time::Instant;

use crate::metrics as m;
use crate::store::GroupKey;

/// One local reader's figures.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ShardStat {
    /// Lease epoch the reader reads at.
    pub(crate) epoch: u64,
    /// `MillisBehindLatest` of its last page.
    pub(crate) behind_ms: i64,
    /// When that page arrived.
    pub(crate) fetched_at: Instant,
    /// Records delivered since the reader started.
    pub(crate) records: u64,
}

impl ShardStat {
    /// The lag now: a page that was behind the tip was that far behind when it came, and
    /// falls further behind while no newer page comes (a slow handler holds the reader
    /// back); a caught-up reader polls again within its idle interval.
    pub(crate) fn lag_ms(&self, now: Instant) -> i64 {
        if self.behind_ms <= 0 {
            return 0;
        }
        self.behind_ms + now.saturating_duration_since(self.fetched_at).as_millis() as i64
    }
}

type Table = BTreeMap<GroupKey, BTreeMap<String, ShardStat>>;

static LOCAL: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);

fn table() -> std::sync::MutexGuard<'static, Table> {
    LOCAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A reader got a page of `records` records, `behind_ms` behind the tip.
pub(crate) fn record(key: &GroupKey, shard: &str, epoch: u64, behind_ms: i64, records: usize) {
    let now = Instant::now();
    let mut t = table();
    let group = t.entry(key.clone()).or_default();
    let stat = group.entry(shard.to_owned()).or_insert(ShardStat { epoch, behind_ms, fetched_at: now, records: 0 });
    if stat.epoch != epoch {
        *stat = ShardStat { epoch, behind_ms, fetched_at: now, records: 0 };
    }
    stat.behind_ms = behind_ms;
    stat.fetched_at = now;
    stat.records += records as u64;
    // The gauges are set by `refresh_gauges` every second: computing them here made
    // every page of every reader cost O(shards of the group).
}

/// A reader at `epoch` stopped.
pub(crate) fn forget(key: &GroupKey, shard: &str, epoch: u64) {
    let mut t = table();
    let Some(group) = t.get_mut(key) else {
        return;
    };
    if group.get(shard).is_some_and(|s| s.epoch == epoch) {
        group.remove(shard);
    }
    if group.is_empty() {
        set_gauges(key, group, Instant::now());
        t.remove(key);
    }
}

/// Every local reader's figures, per group.
pub(crate) fn snapshot() -> Table {
    table().clone()
}

/// Largest and summed lag of a group's shards.
pub(crate) fn lag_max_sum<'a>(stats: impl IntoIterator<Item = &'a ShardStat>, now: Instant) -> (i64, i64) {
    stats.into_iter().map(|s| s.lag_ms(now)).fold((0, 0), |(max, sum), l| (max.max(l), sum + l))
}

fn set_gauges(key: &GroupKey, group: &BTreeMap<String, ShardStat>, now: Instant) {
    let (max, sum) = lag_max_sum(group.values(), now);
    let labels = [("app", key.app.clone()), ("stream", key.stream.clone())];
    metrics::gauge!(m::LAG_MAX, &labels).set(max as f64);
    metrics::gauge!(m::LAG_SUM, &labels).set(sum as f64);
}

/// Sets the lag gauges of every group again (the lag of a held-back reader grows with time).
pub(crate) fn refresh_gauges() {
    let now = Instant::now();
    let t = table();
    for (key, group) in t.iter() {
        set_gauges(key, group, now);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lag_grows_while_behind_and_is_zero_when_caught_up() {
        let key = GroupKey::new("lag-test", "s");
        record(&key, "a", 1, 500, 10);
        record(&key, "b", 1, 0, 5);
        tokio::time::advance(Duration::from_millis(300)).await;
        let now = Instant::now();
        let t = snapshot();
        let g = &t[&key];
        assert_eq!((g["a"].lag_ms(now), g["b"].lag_ms(now)), (800, 0));
        assert_eq!(lag_max_sum(g.values(), now), (800, 800));
        record(&key, "a", 1, 0, 3);
        assert_eq!(snapshot()[&key]["a"].records, 13);
        record(&key, "a", 2, 7, 1);
        assert_eq!((snapshot()[&key]["a"].records, snapshot()[&key]["a"].epoch), (1, 2), "a new epoch starts over");
        forget(&key, "a", 1);
        assert!(snapshot()[&key].contains_key("a"), "an older reader's end leaves the newer one");
        forget(&key, "a", 2);
        forget(&key, "b", 1);
        assert!(!snapshot().contains_key(&key));
    }
}
