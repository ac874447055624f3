//! The live status of every app and stream (issue 20): `/status.json` and the page at `/`
//! on `--http-listen`, and the lag gauges.
//!
//! Leases and sessions come from the store, so any instance shows the whole app. Lag and
//! records/s are known only where a shard is read: every instance publishes its readers'
//! figures every `--status-interval` as one small record per instance, stored with the
//! existing session primitives in the reserved group [`STATS_APP`]/[`STATS_STREAM`] (the
//! record's `client_name` holds the JSON, its heartbeat counts publications), so no backend
//! changed. A publication whose heartbeat did not change for a while is ignored, judged on
//! the reading instance's monotonic clock as sessions are; one unchanged for
//! [`STATS_RETENTION`] is deleted. Lease moves are found by diffing the owners between the
//! page server's own reads (every second). The JSON is documented in
//! `docs/status-and-replay.md`.

pub(crate) mod http;
pub(crate) mod local;
pub(crate) mod view;

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::store::{GroupKey, Leases, SessionRecord};

/// The reserved app of the per-instance stats records.
pub(crate) const STATS_APP: &str = "_kinesis_butler_status";
/// The reserved stream of the per-instance stats records.
pub(crate) const STATS_STREAM: &str = "_instances";
/// A stats record unchanged this long (a dead instance's) is deleted.
pub(crate) const STATS_RETENTION: Duration = Duration::from_secs(600);

/// The group key of the stats records.
pub(crate) fn stats_key() -> GroupKey {
    GroupKey::new(STATS_APP, STATS_STREAM)
}

/// One instance's published figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Published {
    /// Per app and stream read on the instance.
    pub(crate) groups: Vec<PublishedGroup>,
}

/// The figures of one app and stream on one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct PublishedGroup {
    pub(crate) app: String,
    pub(crate) stream: String,
    pub(crate) shards: Vec<PublishedShard>,
}

/// One reader's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct PublishedShard {
    pub(crate) shard_id: String,
    pub(crate) epoch: u64,
    pub(crate) lag_ms: i64,
    pub(crate) records_per_second: f64,
}

/// The local readers' figures now; records/s over the time since the previous call
/// (`prev` keeps the counts it saw).
pub(crate) fn collect(prev: &mut HashMap<(GroupKey, String, u64), (Instant, u64)>, now: Instant) -> Published {
    let mut next = HashMap::new();
    let mut groups = Vec::new();
    for (key, shards) in local::snapshot() {
        let mut out = Vec::new();
        for (shard, stat) in shards {
            let id = (key.clone(), shard.clone(), stat.epoch);
            let rate = match prev.get(&id) {
                Some((at, n)) if now > *at => {
                    stat.records.saturating_sub(*n) as f64 / now.duration_since(*at).as_secs_f64()
                }
                _ => 0.0,
            };
            next.insert(id, (now, stat.records));
            out.push(PublishedShard {
                shard_id: shard,
                epoch: stat.epoch,
                lag_ms: stat.lag_ms(now),
                records_per_second: (rate * 10.0).round() / 10.0,
            });
        }
        groups.push(PublishedGroup { app: key.app, stream: key.stream, shards: out });
    }
    *prev = next;
    Published { groups }
}

/// Refreshes the lag gauges every second and, unless `interval` is zero, publishes this
/// instance's figures every `interval` until `stop`; then deletes its record.
pub(crate) async fn publish(leases: Leases, instance_id: String, interval: Duration, stop: CancellationToken) {
    let key = stats_key();
    let mut prev = HashMap::new();
    let mut version: Option<u64> = None;
    let mut heartbeat = 0u64;
    let mut last_publish: Option<Instant> = None;
    let mut published_empty = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        local::refresh_gauges();
        let now = Instant::now();
        if interval.is_zero() || last_publish.is_some_and(|t| now.duration_since(t) < interval) {
            continue;
        }
        last_publish = Some(now);
        let figures = collect(&mut prev, now);
        if figures.groups.is_empty() && published_empty {
            continue;
        }
        published_empty = figures.groups.is_empty();
        heartbeat += 1;
        let record = SessionRecord {
            session_id: instance_id.clone(),
            instance_id: instance_id.clone(),
            client_name: serde_json::to_string(&figures).expect("serialisable"),
            heartbeat,
        };
        let store = leases.store();
        let written = match store.write_session(&key, &record, version).await {
            Ok(Some(v)) => Ok(Some(v)),
            // Created by an earlier run, or deleted as stale: take the version found.
            Ok(None) => match store.read_sessions(&key).await {
                Ok(all) => {
                    let found = all.iter().find(|r| r.value.session_id == instance_id).map(|r| r.version);
                    store.write_session(&key, &record, found).await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match written {
            Ok(v) => version = v,
            Err(e) => warn!(error = %e, "could not publish this instance's status figures"),
        }
    }
    if version.is_some() {
        let _ = leases.store().delete_session(&key, &instance_id, None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn collects_rates_per_reader() {
        let key = GroupKey::new("collect-test", "s");
        let mut prev = HashMap::new();
        local::record(&key, "a", 3, 0, 10);
        let first = collect(&mut prev, Instant::now());
        let mine = |p: &Published| p.groups.iter().find(|g| g.app == "collect-test").cloned().unwrap();
        assert_eq!(mine(&first).shards[0].records_per_second, 0.0, "no rate before a second look");
        tokio::time::advance(Duration::from_secs(2)).await;
        local::record(&key, "a", 3, 0, 50);
        let second = collect(&mut prev, Instant::now());
        assert_eq!(
            mine(&second).shards[0],
            PublishedShard { shard_id: "a".into(), epoch: 3, lag_ms: 0, records_per_second: 25.0 }
        );
        let json = serde_json::to_string(&second).unwrap();
        assert_eq!(serde_json::from_str::<Published>(&json).unwrap(), second);
        local::forget(&key, "a", 3);
    }
}
