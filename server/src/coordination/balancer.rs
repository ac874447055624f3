//! The balancing decision, as a pure function of the store's view.
//!
//! With S readable shards and C live sessions every session converges to
//! floor(S/C) or ceil(S/C) shards. Free and expired leases are taken first, by local
//! sessions below the upper target. Then a local session below the upper target asks for
//! a handoff from a session holding at least two more shards than it, so every move
//! strictly reduces the imbalance: moves are minimal, only sessions above their share
//! give, nothing oscillates. Each server instance plans only for its own sessions; the
//! store's compare-and-set settles races between instances. (A local session that is
//! itself above target never takes: with sessions on other instances the least loaded
//! *local* session is not the least loaded one, and taking would move shards between
//! two over-target sessions.)

use std::collections::{BTreeMap, HashSet};

use crate::store::Lease;

/// What one instance should do this round.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Free or expired leases to acquire: (shard id, expected epoch, local session).
    pub acquire: Vec<(String, u64, String)>,
    /// Live leases to ask a handoff for: (shard id, epoch, local session).
    pub handoff: Vec<(String, u64, String)>,
}

/// Whether a lease may be read now: not finished, and every parent it names that is
/// still tracked has been read to its end.
pub(crate) fn readable_shards(leases: &[Lease]) -> Vec<&Lease> {
    let finished: BTreeMap<&str, bool> = leases.iter().map(|l| (l.shard_id.as_str(), l.is_finished())).collect();
    leases
        .iter()
        .filter(|l| !l.is_finished())
        .filter(|l| l.parent_shard_ids.iter().all(|p| finished.get(p.as_str()).copied().unwrap_or(true)))
        .collect()
}

/// Plans acquisitions and handoff requests for `local` sessions, given the sessions
/// judged alive (a lease is held while its owner is alive).
#[cfg(test)]
pub(crate) fn plan(leases: &[Lease], live: &HashSet<&str>, local: &[String]) -> Plan {
    plan_from(leases, live, local, (0, 1))
}

/// [`plan`], taking free leases from the fraction `start` = (n, d) of the free ones onwards
/// (wrapping round): instances that start together begin at different places (each at the
/// share of live sessions on instances before it), so their acquisitions do not collide
/// on the same first shards.
pub(crate) fn plan_from(leases: &[Lease], live: &HashSet<&str>, local: &[String], start: (usize, usize)) -> Plan {
    let mut plan = Plan::default();
    let live: HashSet<&str> = live.iter().copied().chain(local.iter().map(String::as_str)).collect();
    if live.is_empty() || local.is_empty() {
        return plan;
    }
    let readable = readable_shards(leases);
    let total = readable.len();
    let upper = total.div_ceil(live.len());
    // A handoff is pending only towards a live session: one asked for by a session that
    // died since is ignored (it is cleared when the lease next changes hands).
    let moving = |l: &Lease| l.handoff_to.as_deref().is_some_and(|t| live.contains(t));

    // Projected holdings: leases held now, with pending handoffs counted at their target.
    let mut held: BTreeMap<&str, Vec<&Lease>> = live.iter().map(|s| (*s, Vec::new())).collect();
    let mut free: Vec<&Lease> = Vec::new();
    for lease in &readable {
        let owner = lease.owner.as_deref().filter(|o| live.contains(o));
        match owner {
            None => free.push(*lease),
            Some(owner) => {
                let target = lease.handoff_to.as_deref().filter(|t| live.contains(t)).unwrap_or(owner);
                if let Some(list) = held.get_mut(target) {
                    list.push(lease);
                }
                // Held by a live session other than those counted: cannot happen, as
                // `held` has every live session.
            }
        }
    }

    // 1. Free leases go to local sessions below the upper target, least loaded first.
    if !free.is_empty() {
        let n = free.len();
        free.rotate_left((n * start.0.min(start.1) / start.1.max(1)) % n);
    }
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

    // 2. Handoffs: the most loaded session gives to a local one below the upper target
    //    with two fewer. A donor's projected holdings include handoffs still pending
    //    towards it; when the target dropped since they were asked for (more sessions
    //    joined), one of those is redirected first: the shard has not moved yet, so the
    //    redirect costs nothing, where completing it would move the shard twice. A
    //    pending handoff is never redirected to the lease's own owner.
    //    Per session, how many of its projected leases are a pending handoff towards it
    //    from `owner` (only those are not movable to `owner`), kept as shards move.
    let mut pending_from: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for (s, list) in &held {
        for l in list.iter().filter(|l| moving(l)) {
            *pending_from.entry(*s).or_default().entry(l.owner.as_deref().unwrap_or("")).or_default() += 1;
        }
    }
    while let Some(taker) =
        local.iter().filter(|s| held[s.as_str()].len() < upper).min_by_key(|s| (held[s.as_str()].len(), s.as_str()))
    {
        let movable = |l: &Lease| !moving(l) || l.owner.as_deref() != Some(taker.as_str());
        let unmovable = |s: &str| pending_from.get(s).and_then(|m| m.get(taker.as_str())).copied().unwrap_or(0);
        let (donor, donor_count) = held
            .iter()
            .map(|(s, l)| (*s, l.len() - unmovable(s), l.len()))
            .filter(|(s, movable, _)| *s != taker.as_str() && *movable > 0)
            .max_by_key(|(s, _, count)| (*count, std::cmp::Reverse(*s)))
            .map(|(s, _, count)| (s, count))
            .unwrap_or(("", 0));
        if donor_count < held[taker.as_str()].len() + 2 {
            break;
        }
        let list = held.get_mut(donor).expect("donor");
        // Redirect the highest pending shard id, else give the highest one it holds.
        let pos = list
            .iter()
            .rposition(|l| moving(l) && movable(l))
            .or_else(|| list.iter().rposition(|l| !moving(l)))
            .expect("movable");
        let lease = list.remove(pos);
        if moving(lease) {
            let owner = lease.owner.as_deref().unwrap_or("");
            if let Some(n) = pending_from.get_mut(donor).and_then(|m| m.get_mut(owner)) {
                *n -= 1;
            }
            *pending_from.entry(taker.as_str()).or_default().entry(owner).or_default() += 1;
        }
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
            checkpoint: Checkpoint::None,
            parent_shard_ids: vec![],
            closed: false,
            handoff_to: None,
        }
    }

    fn sessions<'a>(ids: &[&'a str]) -> HashSet<&'a str> {
        ids.iter().copied().collect()
    }

    /// Applies plans for every session (as if each were on its own instance) until stable.
    fn converge(leases: &mut [Lease], ids: &[&str]) -> usize {
        let all = sessions(ids);
        for round in 0..100 {
            let mut changed = false;
            for s in ids {
                let p = plan(leases, &all, &[s.to_string()]);
                for (shard, _, to) in p.acquire.iter().chain(&p.handoff) {
                    let l = leases.iter_mut().find(|l| &l.shard_id == shard).unwrap();
                    l.owner = Some(to.clone());
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
    fn over_target_local_sessions_do_not_take_from_each_other() {
        // Instance A's a0 and a1 held everything; instance B's b0 and b1 joined and B
        // has asked a0 for 25 shards so far. A's own plan must not move shards between
        // its two sessions, which are both far above the target of 63.
        let mut leases: Vec<Lease> = (0..250).map(|i| lease(i, Some(if i < 125 { "a0" } else { "a1" }))).collect();
        for l in leases.iter_mut().take(25) {
            l.handoff_to = Some("b0".into());
        }
        let all = sessions(&["a0", "a1", "b0", "b1"]);
        let p = plan(&leases, &all, &["a0".into(), "a1".into()]);
        assert_eq!(p, Plan::default(), "no move between over-target sessions");
        // B's plan moves shards only to its own sessions, from both of A's.
        let p = plan(&leases, &all, &["b0".into(), "b1".into()]);
        assert!(p.acquire.is_empty());
        assert!(p.handoff.iter().all(|(_, _, to)| to == "b0" || to == "b1"));
        assert_eq!(p.handoff.len() + 25, 124, "B's sessions end at 62 each, A's at 63");
    }

    #[test]
    fn pending_handoffs_beyond_a_lowered_target_are_redirected() {
        // a0 and a1 held everything. b0 joined alone (target 84 of 250 over 3 sessions)
        // and asked for 84 shards; then b1 joined (target 63). b1 takes b0's excess by
        // redirecting pending handoffs, so no shard moves twice and a0 and a1 give only
        // what they must.
        let mut leases: Vec<Lease> = (0..250).map(|i| lease(i, Some(if i < 125 { "a0" } else { "a1" }))).collect();
        for l in leases.iter_mut().filter(|l| l.shard_id.as_str() < "shard-0042") {
            l.handoff_to = Some("b0".into());
        }
        for l in leases.iter_mut().skip(125).take(42) {
            l.handoff_to = Some("b0".into());
        }
        let all = sessions(&["a0", "a1", "b0", "b1"]);
        let p = plan(&leases, &all, &["b0".into(), "b1".into()]);
        assert!(p.handoff.iter().all(|(_, _, to)| to == "b1"), "{p:?}");
        let redirected = p
            .handoff
            .iter()
            .filter(|(shard, _, _)| leases.iter().any(|l| &l.shard_id == shard && l.handoff_to.is_some()))
            .count();
        assert_eq!(redirected, 84 - 63, "b0's excess is redirected");
        assert_eq!(p.handoff.len() + 84 - redirected, 125, "a0 and a1 give exactly half of all");
        // And A plans nothing for its two sessions.
        assert_eq!(plan(&leases, &all, &["a0".into(), "a1".into()]), Plan::default());
    }

    #[test]
    fn a_handoff_to_a_dead_session_does_not_pin_the_lease() {
        // b1 asked for every shard of b0, then died (its record expired): b0's leases
        // are movable again for a, the only other live session.
        let mut leases: Vec<Lease> = (0..4).map(|i| lease(i, Some("b0"))).collect();
        for l in &mut leases {
            l.handoff_to = Some("b1".into());
        }
        let p = plan(&leases, &sessions(&["a", "b0"]), &["a".into()]);
        assert_eq!(p.handoff.len(), 2, "{p:?}");
    }

    #[test]
    fn dead_owner_leases_are_free() {
        // A lease is held while its owner is alive: a dead session's leases are taken
        // (up to the target), and a dead session is never asked for a handoff.
        let mut leases: Vec<Lease> = (0..4).map(|i| lease(i, Some("dead"))).collect();
        leases.push(lease(4, Some("b")));
        let p = plan(&leases, &sessions(&["a", "b"]), &["a".into()]);
        assert_eq!(p.acquire.len(), 3, "a takes dead leases up to ceil(5/2): {p:?}");
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

    #[test]
    fn instances_start_at_their_share_of_the_free_leases() {
        let leases: Vec<Lease> = (0..9).map(|i| lease(i, None)).collect();
        let all = sessions(&["a", "b", "c"]);
        let first = |start| plan_from(&leases, &all, &["b".into()], start).acquire[0].0.clone();
        assert_eq!(first((0, 3)), "shard-0000");
        assert_eq!(first((1, 3)), "shard-0003");
        assert_eq!(first((2, 3)), "shard-0006");
        let p = plan_from(&leases, &all, &["c".into()], (2, 3));
        let ids: Vec<&str> = p.acquire.iter().map(|a| a.0.as_str()).collect();
        assert_eq!(ids, ["shard-0006", "shard-0007", "shard-0008"], "its upper share, from its place");
        assert_eq!(plan_from(&leases, &all, &["c".into()], (7, 0)).acquire.len(), 3, "a bad fraction is harmless");
    }
}
