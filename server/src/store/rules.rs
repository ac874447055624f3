//! The lease rules every backend applies, written once for the backends that read and
//! write a lease inside a transaction (the Redis backend repeats them in Lua).

use super::{Checkpoint, GroupKey, Lease, StoreError, StoreResult};

/// Whether a lease read at `now_ms` may be acquired by a caller expecting `expected_epoch`.
pub(crate) fn acquirable(lease: &Lease, expected_epoch: u64, now_ms: i64) -> bool {
    lease.epoch == expected_epoch && !lease.is_held(now_ms) && !lease.is_finished()
}

/// Checks a checkpoint request against the stored lease.
pub(crate) fn checkpoint_allowed(
    group: &GroupKey,
    lease: &Lease,
    owner: &str,
    epoch: u64,
    next: &Checkpoint,
) -> StoreResult<()> {
    let _ = group;
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
    Ok(())
}

/// The lease after `owner` releases it at `epoch`, or `None` if `owner` does not hold it.
/// A requested handoff goes to its target; else the lease becomes free.
pub(crate) fn released(lease: &Lease, owner: &str, epoch: u64, expires_at_ms: i64) -> Option<Lease> {
    if lease.owner.as_deref() != Some(owner) || lease.epoch != epoch {
        return None;
    }
    let mut next = lease.clone();
    next.epoch += 1;
    match next.handoff_to.take() {
        Some(to) if !lease.is_finished() => {
            next.owner = Some(to);
            next.expires_at_ms = expires_at_ms;
        }
        _ => {
            next.owner = None;
            next.expires_at_ms = 0;
        }
    }
    Some(next)
}
