//! The balancing decision, as a pure function of the store's view.
//!
//! With S readable shards and C live sessions every session converges to
//! floor(S/C) or ceil(S/C) shards. Free and expired leases are taken first, by local
//! sessions below the upper target. Then a local session asks for a handoff from a
//! session holding at least two more shards than it, so every move strictly reduces the
//! imbalance: moves are minimal, only sessions above their share give, nothing
//! oscillates. Each server instance plans only for its own sessions; the store's
//! compare-and-set settles races between instances.

use std::collections::{BTreeMap, HashSet};

use crate::store::{Lease, SessionRecord};

/// What one instance should do this round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Free or expired leases to acquire: (shard id, expected epoch, local session).
    pub acquire: Vec<(String, u64, String)>,
    /// Live leases to ask a handoff for: (shard id, epoch, local session).
    pub handoff: Vec<(String, u64, String)>,
}

/// Whether a lease may be read now: not finished, and every parent it names that is
/// still tracked has been read to its end.
pub fn readable_shards(leases: &[Lease]) -> Vec<&Lease> {
    let finished: BTreeMap<&str, bool> =
        leases.iter().map(|l| (l.shard_id.as_str(), l.is_finished())).collect();
    leases
        .iter()
        .filter(|l| !l.is_finished())
        .filter(|l| l.parent_shard_ids.iter().all(|p| finished.get(p.as_str()).copied().unwrap_or(true)))
        .collect()
}

/// Plans acquisitions and handoff requests for `local` sessions.
pub fn plan(leases: &[Lease], sessions: &[SessionRecord], local: &[String], now_ms: i64) -> Plan {
    let mut plan = Plan::default();
    let live: HashSet<&str> = sessions.iter().map(|s| s.session_id.as_str()).chain(local.iter().map(String::as_str)).collect();
    if live.is_empty() || local.is_empty() {
        return plan;
    }
    let readable = readable_shards(leases);
    let total = readable.len();
    let upper = total.div_ceil(live.len());

    // Projected holdings: leases held now, with pending handoffs counted at their target.
    let mut held: BTreeMap<&str, Vec<&Lease>> = live.iter().map(|s| (*s, Vec::new())).collect();
    let mut free = Vec::new();
    for lease in &readable {
        let owner = lease.owner.as_deref().filter(|_| lease.is_held(now_ms));
        match owner {
            None => free.push(*lease),
            Some(owner) => {
                let target = lease.handoff_to.as_deref().filter(|t| live.contains(t)).unwrap_or(owner);
                if let Some(list) = held.get_mut(target) {
                    list.push(lease);
                }
                // Leases of sessions that are not live (a dead instance) are neither
                // counted nor taken until they expire.
            }
        }
    }

    // 1. Free leases go to local sessions below the upper target, least loaded first.
    for lease in free {
        let Some(taker) = local
            .iter()
            .filter(|s| held[s.as_str()].len() < upper)
            .min_by_key(|s| (held[s.as_str()].len(), s.as_str()))
        else {
            break;
        };
        plan.acquire.push((lease.shard_id.clone(), lease.epoch, taker.clone()));
        held.get_mut(taker.as_str()).expect("live").push(lease);
    }

    // 2. Handoffs: the most loaded session gives to a local one with two fewer.
    while let Some(taker) = local.iter().min_by_key(|s| (held[s.as_str()].len(), s.as_str())) {
        let (donor, donor_count) = held
            .iter()
            .map(|(s, l)| (*s, l.iter().filter(|l| l.handoff_to.is_none()).count(), l.len()))
            .filter(|(s, movable, _)| *s != taker.as_str() && *movable > 0)
            .max_by_key(|(s, _, count)| (*count, std::cmp::Reverse(*s)))
            .map(|(s, _, count)| (s, count))
            .unwrap_or(("", 0));
        if donor_count < held[taker.as_str()].len() + 2 {
            break;
        }
        let list = held.get_mut(donor).expect("donor");
        // Give the highest shard id the donor holds that is not already moving.
        let pos = list.iter().rposition(|l| l.handoff_to.is_none()).expect("movable");
        let lease = list.remove(pos);
        plan.handoff.push((lease.shard_id.clone(), lease.epoch, taker.clone()));
        held.get_mut(taker.as_str()).expect("live").push(lease);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Checkpoint;

    fn lease(id: usize, owner: Option<&str>) -> Lease {
        Lease {
            shard_id: format!("shard-{id:04}"),
            owner: owner.map(str::to_owned),
            epoch: 1,
            expires_at_ms: if owner.is_some() { 10_000 } else { 0 },
            checkpoint: Checkpoint::None,
            parent_shard_ids: vec![],
            closed: false,
            handoff_to: None,
        }
    }

    fn sessions(ids: &[&str]) -> Vec<SessionRecord> {
        ids.iter()
            .map(|s| SessionRecord {
                session_id: s.to_string(),
                instance_id: "i".into(),
                client_name: String::new(),
                expires_at_ms: 10_000,
            })
            .collect()
    }

    /// Applies plans for every session (as if each were on its own instance) until stable.
    fn converge(leases: &mut [Lease], ids: &[&str]) -> usize {
        let all = sessions(ids);
        for round in 0..100 {
            let mut changed = false;
            for s in ids {
                let p = plan(leases, &all, &[s.to_string()], 0);
                for (shard, _, to) in p.acquire.iter().chain(&p.handoff) {
                    let l = leases.iter_mut().find(|l| &l.shard_id == shard).unwrap();
                    l.owner = Some(to.clone());
                    l.expires_at_ms = 10_000;
                    l.epoch += 1;
                    changed = true;
                }
            }
            if !changed {
                return round;
            }
        }
        panic!("did not converge");
    }

    fn counts(leases: &[Lease], ids: &[&str]) -> Vec<usize> {
        ids.iter().map(|s| leases.iter().filter(|l| l.owner.as_deref() == Some(*s)).count()).collect()
    }

    #[test]
    fn spreads_evenly_and_moves_only_from_over_target() {
        let mut leases: Vec<Lease> = (0..250).map(|i| lease(i, None)).collect();
        let five = ["a", "b", "c", "d", "e"];
        converge(&mut leases, &five);
        assert_eq!(counts(&leases, &five), vec![50; 5]);

        let before: Vec<_> = leases.iter().map(|l| l.owner.clone()).collect();
        let six = ["a", "b", "c", "d", "e", "f"];
        converge(&mut leases, &six);
        let c = counts(&leases, &six);
        assert!(c.iter().all(|n| *n == 41 || *n == 42), "{c:?}");
        let moved = leases.iter().zip(&before).filter(|(l, b)| &l.owner != *b).count();
        assert_eq!(moved, c[5], "only the new session's shards moved");
    }

    #[test]
    fn expired_and_dead_owner_leases() {
        let mut leases: Vec<Lease> = (0..4).map(|i| lease(i, Some("dead"))).collect();
        leases[0].expires_at_ms = 5;
        let p = plan(&leases, &sessions(&["a"]), &["a".into()], 100);
        assert_eq!(p.acquire.len(), 1, "only the expired lease is taken");
        assert!(p.handoff.is_empty(), "a dead session is not asked for a handoff");
    }

    #[test]
    fn children_wait_for_parents() {
        let mut leases: Vec<Lease> = (0..3).map(|i| lease(i, None)).collect();
        leases[2].parent_shard_ids = vec!["shard-0000".into()];
        assert_eq!(readable_shards(&leases).len(), 2);
        leases[0].checkpoint = Checkpoint::ShardEnd;
        let ids: Vec<_> = readable_shards(&leases).iter().map(|l| l.shard_id.clone()).collect();
        assert_eq!(ids, vec!["shard-0001", "shard-0002"]);
    }
}
