//! Every lease transition, once, as a pure function of the lease as read.
//!
//! A function returns the lease as it should be written (the caller writes it with a
//! compare-and-set on the version it read), or `None` when the transition does not apply.
//! No backend repeats these rules; a backend only compares versions.

use super::{Checkpoint, Lease, ShardInfo, StoreError, StoreResult};

/// Shard-sync merge: the lease for a listed shard. A new shard gets a free lease; a known
/// one keeps owner, epoch, checkpoint and handoff, takes the listed parents, and stays
/// closed once closed. `None` when the stored lease already says all that.
pub fn merge_shard(existing: Option<&Lease>, shard: &ShardInfo) -> Option<Lease> {
    let Some(lease) = existing else {
        return Some(Lease::new(shard));
    };
    let closed = lease.closed || shard.closed;
    if lease.parent_shard_ids == shard.parent_shard_ids && lease.closed == closed {
        return None;
    }
    Some(Lease { parent_shard_ids: shard.parent_shard_ids.clone(), closed, ..lease.clone() })
}

/// Acquire: `owner` takes a lease that is free or whose owner is dead (in the caller's
/// view), if its epoch is still `expected_epoch` and the shard is not finished. The epoch
/// is bumped and a pending handoff cleared.
pub fn acquire(lease: &Lease, expected_epoch: u64, owner: &str, owner_dead: bool) -> Option<Lease> {
    let free = lease.owner.is_none() || owner_dead;
    if lease.epoch != expected_epoch || !free || lease.is_finished() {
        return None;
    }
    Some(Lease { owner: Some(owner.to_owned()), epoch: lease.epoch + 1, handoff_to: None, ..lease.clone() })
}

/// Handoff request: asks the owner of a held, unfinished lease at `epoch` to hand it to
/// session `to` on release. Not for a free lease or one `to` already owns.
pub fn request_handoff(lease: &Lease, epoch: u64, to: &str) -> Option<Lease> {
    let held_by_other = lease.owner.as_deref().is_some_and(|o| o != to);
    if lease.epoch != epoch || !held_by_other || lease.is_finished() {
        return None;
    }
    Some(Lease { handoff_to: Some(to.to_owned()), ..lease.clone() })
}

/// Checkpoint: `owner` stores `next` if it holds the lease at `epoch` and `next` does not
/// move backwards. Errors: [`StoreError::LeaseLost`], [`StoreError::Regression`].
pub fn checkpoint(lease: &Lease, owner: &str, epoch: u64, next: &Checkpoint) -> StoreResult<Lease> {
    if lease.owner.as_deref() != Some(owner) || lease.epoch != epoch {
        return Err(StoreError::LeaseLost {
            shard_id: lease.shard_id.clone(),
            session: owner.to_owned(),
            epoch,
            current_owner: lease.owner.clone(),
            current_epoch: lease.epoch,
        });
    }
    if lease.checkpoint.is_regressed_by(next) {
        return Err(StoreError::Regression {
            shard_id: lease.shard_id.clone(),
            stored: lease.checkpoint.as_text().to_owned(),
            requested: next.as_text().to_owned(),
        });
    }
    Ok(Lease { checkpoint: next.clone(), ..lease.clone() })
}

/// Release: `owner` gives up the lease it holds at `epoch`. It goes to the requested
/// handoff target unless the shard is finished, else it becomes free; the epoch is bumped
/// either way. `None` if `owner` does not hold it at `epoch`.
pub fn release(lease: &Lease, owner: &str, epoch: u64) -> Option<Lease> {
    if lease.owner.as_deref() != Some(owner) || lease.epoch != epoch {
        return None;
    }
    let next_owner = lease.handoff_to.clone().filter(|_| !lease.is_finished());
    Some(Lease { owner: next_owner, epoch: lease.epoch + 1, handoff_to: None, ..lease.clone() })
}

/// Drop session: a lease `session` owns becomes free (epoch + 1, handoff cleared); a
/// handoff to `session` is cleared (epoch kept). `None` when the lease does not name it.
pub fn drop_session(lease: &Lease, session: &str) -> Option<Lease> {
    if lease.owner.as_deref() == Some(session) {
        Some(Lease { owner: None, epoch: lease.epoch + 1, handoff_to: None, ..lease.clone() })
    } else if lease.handoff_to.as_deref() == Some(session) {
        Some(Lease { handoff_to: None, ..lease.clone() })
    } else {
        None
    }
}

/// Reset (replay): an operator moves the shard's checkpoint to `to`, backwards too. The
/// owner loses the lease at once (free, epoch + 1, so its checkpoints are fenced off and its
/// reader is stopped with `LEASE_LOST`), a pending handoff is cleared, and whoever acquires
/// the lease next reads right after `to`. A finished shard can be reset too (its children
/// are not: they keep what they had).
pub fn reset(lease: &Lease, to: &Checkpoint) -> Lease {
    Lease { owner: None, epoch: lease.epoch + 1, handoff_to: None, checkpoint: to.clone(), ..lease.clone() }
}

/// Stale-session cleanup: of the sessions an observer saw unchanged for the retention
/// (id, version seen), the ones whose records may be deleted. An instance never deletes
/// the records of its own sessions (their heartbeats may only have stalled with the
/// store). Each deletion is conditional on the version seen, and then frees the session's
/// leases with [`drop_session`], so a session that beat in between keeps everything.
pub fn stale_sessions(stale: &[(String, u64)], local_sessions: &[String]) -> Vec<(String, u64)> {
    stale.iter().filter(|(id, _)| !local_sessions.contains(id)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seqnum::SequenceNumber;
    use proptest::prelude::*;

    const BIG: &str = "49590338271490256608559692538361571095921575989136588898";

    fn shard(parents: &[&str], closed: bool) -> ShardInfo {
        ShardInfo { shard_id: "s0".into(), parent_shard_ids: parents.iter().map(|p| p.to_string()).collect(), closed }
    }

    fn lease(owner: Option<&str>, epoch: u64) -> Lease {
        Lease { owner: owner.map(str::to_owned), epoch, ..Lease::new(&shard(&[], false)) }
    }

    fn at(sequence: &str, sub_sequence: u64) -> Checkpoint {
        Checkpoint::At { sequence: SequenceNumber::parse(sequence).unwrap(), sub_sequence }
    }

    fn finished(owner: Option<&str>, epoch: u64) -> Lease {
        Lease { checkpoint: Checkpoint::ShardEnd, ..lease(owner, epoch) }
    }

    #[test]
    fn merge_creates_updates_and_keeps_progress() {
        let new = merge_shard(None, &shard(&["p"], false)).unwrap();
        assert_eq!(new, Lease { parent_shard_ids: vec!["p".into()], ..lease(None, 0) });
        assert_eq!(merge_shard(Some(&new), &shard(&["p"], false)), None, "nothing changed");

        let held = Lease { checkpoint: at("7", 1), handoff_to: Some("b".into()), ..lease(Some("a"), 3) };
        let closed = merge_shard(Some(&held), &shard(&[], true)).unwrap();
        assert_eq!(closed, Lease { closed: true, parent_shard_ids: vec![], ..held.clone() }, "progress kept");
        let reparented = merge_shard(Some(&closed), &shard(&["q"], false)).unwrap();
        assert!(reparented.closed, "a closed shard stays closed");
        assert_eq!(reparented.parent_shard_ids, ["q"]);
        assert_eq!(merge_shard(Some(&reparented), &shard(&["q"], false)), None);
    }

    #[test]
    fn acquire_takes_free_or_dead_leases_at_the_expected_epoch() {
        let free = Lease { handoff_to: Some("c".into()), ..lease(None, 4) };
        let won = acquire(&free, 4, "a", false).unwrap();
        assert_eq!((won.owner.as_deref(), won.epoch, won.handoff_to), (Some("a"), 5, None));
        assert_eq!(acquire(&free, 3, "a", false), None, "stale epoch");
        assert_eq!(acquire(&free, 5, "a", true), None, "future epoch");

        let held = lease(Some("a"), 5);
        assert_eq!(acquire(&held, 5, "b", false), None, "live owner");
        let taken = acquire(&held, 5, "b", true).unwrap();
        assert_eq!((taken.owner.as_deref(), taken.epoch), (Some("b"), 6));

        for owner in [None, Some("a")] {
            assert_eq!(acquire(&finished(owner, 2), 2, "b", true), None, "finished, owner {owner:?}");
        }
    }

    #[test]
    fn handoff_requests_need_a_live_unfinished_lease_of_another_session() {
        let held = lease(Some("a"), 2);
        assert_eq!(request_handoff(&held, 2, "b").unwrap().handoff_to.as_deref(), Some("b"));
        let asked = request_handoff(&held, 2, "b").unwrap();
        assert_eq!((asked.owner.as_deref(), asked.epoch), (Some("a"), 2), "owner and epoch kept");
        assert_eq!(request_handoff(&held, 1, "b"), None, "stale epoch");
        assert_eq!(request_handoff(&held, 2, "a"), None, "to its own owner");
        assert_eq!(request_handoff(&lease(None, 2), 2, "b"), None, "free lease");
        assert_eq!(request_handoff(&finished(Some("a"), 2), 2, "b"), None, "finished");
        let other = request_handoff(&asked, 2, "c").unwrap();
        assert_eq!(other.handoff_to.as_deref(), Some("c"), "a newer request replaces the older");
    }

    #[test]
    fn checkpoint_is_fenced_and_never_moves_backwards() {
        let held = Lease { checkpoint: at(BIG, 5), ..lease(Some("a"), 3) };
        assert_eq!(checkpoint(&held, "a", 3, &at(BIG, 6)).unwrap().checkpoint, at(BIG, 6));
        assert_eq!(checkpoint(&held, "a", 3, &at(BIG, 5)).unwrap(), held, "the same again");
        let lost = checkpoint(&held, "a", 2, &at(BIG, 6)).unwrap_err();
        assert!(
            matches!(&lost, StoreError::LeaseLost { session, epoch: 2, current_owner: Some(o), current_epoch: 3, .. }
                if session == "a" && o == "a"),
            "{lost:?}"
        );
        let lost = checkpoint(&held, "b", 3, &at(BIG, 6)).unwrap_err();
        assert!(matches!(lost, StoreError::LeaseLost { current_epoch: 3, .. }), "{lost:?}");
        let lost = checkpoint(&lease(None, 3), "a", 3, &at("1", 0)).unwrap_err();
        assert!(matches!(lost, StoreError::LeaseLost { current_owner: None, .. }), "{lost:?}");
        let back = checkpoint(&held, "a", 3, &at("9999", 0)).unwrap_err();
        assert!(
            matches!(&back, StoreError::Regression { stored, requested, .. } if stored == BIG && requested == "9999"),
            "{back:?}"
        );
        let ended = checkpoint(&held, "a", 3, &Checkpoint::ShardEnd).unwrap();
        assert!(ended.is_finished());
        assert!(checkpoint(&ended, "a", 3, &at(&format!("9{BIG}"), 0)).is_err(), "nothing after SHARD_END");
        assert!(checkpoint(&ended, "a", 3, &Checkpoint::ShardEnd).is_ok(), "SHARD_END again");
        assert!(checkpoint(&held, "a", 3, &Checkpoint::None).is_err(), "back to nothing");
    }

    fn digits() -> impl Strategy<Value = String> {
        // Mostly 56-digit numbers sharing a long prefix, plus short and zero-padded ones.
        prop_oneof![
            (0u64..1000).prop_map(|n| format!("{}{n:03}", &BIG[..53])),
            (0u64..100_000).prop_map(|n| n.to_string()),
            (0u64..1000).prop_map(|n| format!("000{n}")),
        ]
    }

    fn a_checkpoint() -> impl Strategy<Value = Checkpoint> {
        prop_oneof![
            1 => Just(Checkpoint::None),
            1 => Just(Checkpoint::ShardEnd),
            8 => (digits(), 0u64..4).prop_map(|(s, sub)| at(&s, sub)),
        ]
    }

    /// The order checkpoints must keep, written independently: None < numbers < SHARD_END,
    /// numbers by (value, sub-sequence), value by (length without leading zeros, digits).
    fn rank(c: &Checkpoint) -> (u8, usize, String, u64) {
        match c {
            Checkpoint::None => (0, 0, String::new(), 0),
            Checkpoint::At { sequence, sub_sequence } => {
                let t = sequence.as_str().trim_start_matches('0');
                (1, t.len(), t.to_owned(), *sub_sequence)
            }
            Checkpoint::ShardEnd => (2, 0, String::new(), 0),
        }
    }

    proptest! {
        #[test]
        fn checkpoint_ordering(stored in a_checkpoint(), next in a_checkpoint()) {
            let held = Lease { checkpoint: stored.clone(), ..lease(Some("a"), 1) };
            let result = checkpoint(&held, "a", 1, &next);
            // From None anything goes (the first checkpoint); otherwise never backwards.
            let allowed = stored == Checkpoint::None || rank(&next) >= rank(&stored);
            prop_assert_eq!(result.is_ok(), allowed, "{:?} -> {:?}: {:?}", stored, next, result);
            if let Ok(l) = result {
                prop_assert_eq!(l, Lease { checkpoint: next, ..held });
            } else {
                let is_regression = matches!(result, Err(StoreError::Regression { .. }));
                prop_assert!(is_regression);
            }
        }

        #[test]
        fn checkpoint_sequences_only_move_forward(steps in proptest::collection::vec(a_checkpoint(), 1..40)) {
            let mut l = lease(Some("a"), 1);
            let mut high: Option<Checkpoint> = None;
            for next in steps {
                if let Ok(stored) = checkpoint(&l, "a", 1, &next) {
                    if let Some(h) = &high {
                        prop_assert!(rank(&stored.checkpoint) >= rank(h), "{:?} after {:?}", stored.checkpoint, h);
                    }
                    high = Some(stored.checkpoint.clone()).filter(|c| *c != Checkpoint::None).or(high);
                    l = stored;
                }
            }
        }
    }

    #[test]
    fn release_hands_off_or_frees() {
        let held = Lease { checkpoint: at("5", 0), ..lease(Some("a"), 3) };
        assert_eq!(release(&held, "b", 3), None, "non-owner");
        assert_eq!(release(&held, "a", 2), None, "stale epoch");
        assert_eq!(release(&lease(None, 3), "a", 3), None, "free");
        let free = release(&held, "a", 3).unwrap();
        assert_eq!((free.owner, free.epoch, free.handoff_to, free.checkpoint), (None, 4, None, at("5", 0)));

        let asked = Lease { handoff_to: Some("b".into()), ..held.clone() };
        let moved = release(&asked, "a", 3).unwrap();
        assert_eq!((moved.owner.as_deref(), moved.epoch, moved.handoff_to), (Some("b"), 4, None));
        let ended = Lease { checkpoint: Checkpoint::ShardEnd, ..asked };
        let freed = release(&ended, "a", 3).unwrap();
        assert_eq!((freed.owner, freed.epoch, freed.handoff_to), (None, 4, None), "a finished lease is not handed on");
    }

    #[test]
    fn drop_session_frees_owned_leases_and_clears_handoffs_to_it() {
        let owned = Lease { handoff_to: Some("b".into()), ..lease(Some("a"), 3) };
        let freed = drop_session(&owned, "a").unwrap();
        assert_eq!((freed.owner, freed.epoch, freed.handoff_to), (None, 4, None));
        let cleared = drop_session(&owned, "b").unwrap();
        assert_eq!((cleared.owner.as_deref(), cleared.epoch, cleared.handoff_to), (Some("a"), 3, None));
        assert_eq!(drop_session(&owned, "c"), None);
        assert_eq!(drop_session(&lease(None, 1), "a"), None);
    }

    #[test]
    fn reset_frees_fences_and_moves_the_checkpoint_either_way() {
        let held = Lease { checkpoint: at(BIG, 2), handoff_to: Some("b".into()), ..lease(Some("a"), 7) };
        let back = reset(&held, &Checkpoint::None);
        assert_eq!(
            back,
            Lease { owner: None, epoch: 8, handoff_to: None, checkpoint: Checkpoint::None, ..held.clone() }
        );
        assert!(checkpoint(&back, "a", 7, &at(BIG, 3)).is_err(), "the old owner is fenced off");
        let ahead = reset(&held, &at(&format!("9{BIG}"), 0));
        assert_eq!((ahead.owner, ahead.epoch, ahead.checkpoint), (None, 8, at(&format!("9{BIG}"), 0)));
        let ended = reset(&finished(None, 3), &at("5", 0));
        assert_eq!((ended.epoch, ended.is_finished()), (4, false), "a finished shard is read again");
    }

    #[test]
    fn stale_cleanup_spares_local_sessions() {
        let stale = vec![("a".to_owned(), 4), ("b".to_owned(), 9)];
        assert_eq!(stale_sessions(&stale, &["a".to_owned()]), [("b".to_owned(), 9)]);
        assert_eq!(stale_sessions(&stale, &[]), stale);
    }
}
