//! The whole-app view behind `/status.json`: built every second from the store (leases,
//! sessions, every instance's published figures) by the instance serving the page, with
//! the lease moves it saw between its reads and a short lag history per stream.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{stats_key, Published, STATS_RETENTION};
use crate::coordination::liveness::Liveness;
use crate::store::{GroupKey, Lease, Leases, StoreResult};

/// Moves kept per stream.
const MOVES_KEPT: usize = 50;
/// Lag samples kept per stream (one a second).
const HISTORY_KEPT: usize = 300;
/// A group nobody reads any more is shown this long after it was last seen read.
const GROUP_KEPT: Duration = Duration::from_secs(600);

/// `/status.json`.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Status {
    /// Format version of this document.
    pub(crate) version: u32,
    /// The instance that built it.
    pub(crate) instance_id: String,
    /// When it was built (this instance's wall clock, ms since the Unix epoch).
    pub(crate) generated_at_ms: i64,
    /// Instances publishing figures now.
    pub(crate) instances: Vec<String>,
    /// Every app and stream read anywhere (or by this instance), by app then stream.
    pub(crate) groups: Vec<GroupStatus>,
}

/// One app and stream.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct GroupStatus {
    pub(crate) app: String,
    pub(crate) stream: String,
    /// Largest and summed lag over the shards whose lag is known.
    pub(crate) lag_max_ms: i64,
    pub(crate) lag_sum_ms: i64,
    pub(crate) shards: Vec<ShardStatus>,
    pub(crate) sessions: Vec<SessionStatus>,
    /// Newest first.
    pub(crate) moves: Vec<Move>,
    /// Oldest first.
    pub(crate) lag_history: Vec<LagSample>,
}

/// One shard.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ShardStatus {
    pub(crate) shard_id: String,
    /// Session holding the lease (null when free or its owner is dead).
    pub(crate) owner: Option<String>,
    /// The owner's instance.
    pub(crate) instance: Option<String>,
    pub(crate) epoch: u64,
    /// Stored checkpoint: a sequence number, "SHARD_END", "0" (reset to the start) or "".
    pub(crate) checkpoint: String,
    pub(crate) closed: bool,
    pub(crate) handoff_to: Option<String>,
    /// Milliseconds behind the tip, from the reading instance (null when not read now).
    pub(crate) lag_ms: Option<i64>,
    pub(crate) records_per_second: Option<f64>,
}

/// One live session.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct SessionStatus {
    pub(crate) session_id: String,
    pub(crate) client_name: String,
    pub(crate) instance: String,
    pub(crate) shard_count: u32,
}

/// A lease that changed owner between two reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Move {
    /// When it was seen (this instance's wall clock, ms since the Unix epoch).
    pub(crate) at_ms: i64,
    pub(crate) shard_id: String,
    /// `join` (a free shard taken), `leave` (freed), `handoff` (from a live session),
    /// `failover` (from a dead one), `reset` (the checkpoint was moved back).
    pub(crate) kind: &'static str,
    pub(crate) from: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) epoch: u64,
}

/// The group's lag at one moment.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LagSample {
    pub(crate) at_ms: i64,
    pub(crate) max_ms: i64,
    pub(crate) sum_ms: i64,
}

/// The moves between two reads of a group's leases (pure). `alive` tells whether a
/// previous owner is still alive, to tell a handoff from a failover.
pub(crate) fn moves(prev: &[Lease], next: &[Lease], alive: &dyn Fn(&str) -> bool, at_ms: i64) -> Vec<Move> {
    let before: HashMap<&str, &Lease> = prev.iter().map(|l| (l.shard_id.as_str(), l)).collect();
    let mut out = Vec::new();
    for l in next {
        let Some(p) = before.get(l.shard_id.as_str()) else {
            continue;
        };
        if p.owner == l.owner && p.epoch == l.epoch {
            continue;
        }
        let reset = p.checkpoint.is_regressed_by(&l.checkpoint);
        let kind = match (&p.owner, &l.owner) {
            _ if reset => "reset",
            (None, Some(_)) => "join",
            (Some(_), None) => "leave",
            (Some(a), Some(b)) if a != b => {
                if alive(a) {
                    "handoff"
                } else {
                    "failover"
                }
            }
            _ => continue,
        };
        out.push(Move {
            at_ms,
            shard_id: l.shard_id.clone(),
            kind,
            from: p.owner.clone(),
            to: l.owner.clone(),
            epoch: l.epoch,
        });
    }
    out
}

struct Tracked {
    liveness: Liveness,
    last: Option<Vec<Lease>>,
    moves: VecDeque<Move>,
    history: VecDeque<LagSample>,
    seen_read: Instant,
}

/// Builds the status every second until `stop`; `local_groups` names the groups this
/// instance has sessions for.
pub(crate) async fn run(
    leases: Leases,
    instance_id: String,
    lease_ttl: Duration,
    stats_ttl: Duration,
    local_groups: Arc<dyn Fn() -> Vec<GroupKey> + Send + Sync>,
    out: Arc<Mutex<Arc<String>>>,
    stop: CancellationToken,
) {
    let mut stats_liveness = Liveness::new(stats_ttl);
    let mut tracked: BTreeMap<GroupKey, Tracked> = BTreeMap::new();
    loop {
        match build(&leases, &instance_id, lease_ttl, &mut stats_liveness, &mut tracked, local_groups()).await {
            Ok(status) => *out.lock().expect("status") = Arc::new(serde_json::to_string(&status).expect("json")),
            Err(e) => warn!(error = %e, "could not read the store for the status page"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn build(
    leases: &Leases,
    instance_id: &str,
    lease_ttl: Duration,
    stats_liveness: &mut Liveness,
    tracked: &mut BTreeMap<GroupKey, Tracked>,
    local_groups: Vec<GroupKey>,
) -> StoreResult<Status> {
    let now = Instant::now();
    let now_ms = crate::clock::now_ms();
    let records = leases.sessions(&stats_key()).await?;
    stats_liveness.observe(&records, std::iter::empty(), now);
    for (id, version) in stats_liveness.stale(now, STATS_RETENTION) {
        if leases.store().delete_session(&stats_key(), &id, Some(version)).await? {
            info!(instance = %id, "deleted the status figures of a gone instance");
        }
    }
    // (app, stream, shard, epoch) → (lag, records/s), from every live publication.
    let mut figures: HashMap<(GroupKey, String, u64), (i64, f64)> = HashMap::new();
    let mut instances = Vec::new();
    let mut read_groups: BTreeSet<GroupKey> = local_groups.into_iter().collect();
    for r in records.iter().filter(|r| stats_liveness.is_alive(&r.value.session_id, now)) {
        let Ok(p) = serde_json::from_str::<Published>(&r.value.client_name) else {
            continue;
        };
        instances.push(r.value.instance_id.clone());
        for g in p.groups {
            let key = GroupKey::new(g.app, g.stream);
            for s in g.shards {
                figures.insert((key.clone(), s.shard_id, s.epoch), (s.lag_ms, s.records_per_second));
            }
            read_groups.insert(key);
        }
    }
    for key in &read_groups {
        tracked
            .entry(key.clone())
            .or_insert_with(|| Tracked {
                liveness: Liveness::new(lease_ttl),
                last: None,
                moves: VecDeque::new(),
                history: VecDeque::new(),
                seen_read: now,
            })
            .seen_read = now;
    }
    tracked.retain(|_, t| now.duration_since(t.seen_read) < GROUP_KEPT);

    let mut groups = Vec::new();
    for (key, t) in tracked.iter_mut() {
        let all = leases.list(key).await?;
        let sessions = leases.sessions(key).await?;
        let owners = all.iter().filter_map(|l| l.value.owner.as_deref());
        t.liveness.observe(&sessions, owners, now);
        let alive: HashSet<&str> =
            sessions.iter().map(|s| s.value.session_id.as_str()).filter(|s| t.liveness.is_alive(s, now)).collect();
        let instance_of: HashMap<&str, &str> =
            sessions.iter().map(|s| (s.value.session_id.as_str(), s.value.instance_id.as_str())).collect();
        let current: Vec<Lease> = all.iter().map(|l| l.value.clone()).collect();
        if let Some(prev) = &t.last {
            for m in moves(prev, &current, &|s| alive.contains(s), now_ms) {
                t.moves.push_front(m);
            }
            t.moves.truncate(MOVES_KEPT);
        }
        t.last = Some(current);

        let mut shards = Vec::new();
        for l in all.iter().map(|l| &l.value) {
            let owner = l.owner.clone().filter(|o| alive.contains(o.as_str()));
            let fig = figures.get(&(key.clone(), l.shard_id.clone(), l.epoch)).filter(|_| owner.is_some());
            shards.push(ShardStatus {
                shard_id: l.shard_id.clone(),
                instance: owner.as_deref().and_then(|o| instance_of.get(o)).map(|i| i.to_string()),
                owner,
                epoch: l.epoch,
                checkpoint: l.checkpoint.as_text().to_owned(),
                closed: l.closed,
                handoff_to: l.handoff_to.clone(),
                lag_ms: fig.map(|f| f.0),
                records_per_second: fig.map(|f| f.1),
            });
        }
        let lags = shards.iter().filter_map(|s| s.lag_ms);
        let (lag_max_ms, lag_sum_ms) = lags.fold((0, 0), |(m, s), l| (m.max(l), s + l));
        t.history.push_back(LagSample { at_ms: now_ms, max_ms: lag_max_ms, sum_ms: lag_sum_ms });
        while t.history.len() > HISTORY_KEPT {
            t.history.pop_front();
        }
        let held = |id: &str| shards.iter().filter(|s| s.owner.as_deref() == Some(id)).count() as u32;
        let sessions = sessions
            .iter()
            .filter(|s| alive.contains(s.value.session_id.as_str()))
            .map(|s| SessionStatus {
                session_id: s.value.session_id.clone(),
                client_name: s.value.client_name.clone(),
                instance: s.value.instance_id.clone(),
                shard_count: held(&s.value.session_id),
            })
            .collect();
        groups.push(GroupStatus {
            app: key.app.clone(),
            stream: key.stream.clone(),
            lag_max_ms,
            lag_sum_ms,
            shards,
            sessions,
            moves: t.moves.iter().cloned().collect(),
            lag_history: t.history.iter().cloned().collect(),
        });
    }
    instances.sort();
    Ok(Status { version: 1, instance_id: instance_id.to_owned(), generated_at_ms: now_ms, instances, groups })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seqnum::SequenceNumber;
    use crate::store::{Checkpoint, ShardInfo};

    fn lease(id: &str, owner: Option<&str>, epoch: u64, cp: &str) -> Lease {
        let mut l = Lease::new(&ShardInfo { shard_id: id.into(), parent_shard_ids: vec![], closed: false });
        l.owner = owner.map(str::to_owned);
        l.epoch = epoch;
        if !cp.is_empty() {
            l.checkpoint = Checkpoint::At { sequence: SequenceNumber::parse(cp).unwrap(), sub_sequence: 0 };
        }
        l
    }

    #[test]
    fn classifies_moves() {
        let prev = vec![
            lease("a", None, 0, ""),
            lease("b", Some("s1"), 1, "5"),
            lease("c", Some("s1"), 1, "5"),
            lease("d", Some("s2"), 1, "5"),
            lease("e", Some("s1"), 1, "9"),
            lease("f", Some("s1"), 1, "9"),
        ];
        let next = vec![
            lease("a", Some("s1"), 1, ""),
            lease("b", None, 2, "5"),
            lease("c", Some("s3"), 2, "6"),
            lease("d", Some("s3"), 2, "5"),
            lease("e", None, 2, "0"),
            lease("f", Some("s1"), 1, "10"),
            lease("g", Some("s1"), 1, ""),
        ];
        let alive = |s: &str| s != "s2";
        let found = moves(&prev, &next, &alive, 7);
        let got: Vec<(&str, &str)> = found.iter().map(|m| (m.shard_id.as_str(), m.kind)).collect();
        assert_eq!(got, [("a", "join"), ("b", "leave"), ("c", "handoff"), ("d", "failover"), ("e", "reset")]);
    }
}
