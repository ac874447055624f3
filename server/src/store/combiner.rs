//! Group commit for single-lease writes: the checkpoints and releases that concurrent
//! callers make on one group go to the store together, in one `write_leases` call.
//!
//! Why: a backend that orders a group's writes (PostgreSQL's generation row, one Redis
//! shard) does one write per round trip and commit; at 10,000 shards the first checkpoint of
//! every shard alone was minutes of such writes queued behind each other. Batched, the
//! same writes cost one call per batch. Each write keeps its own compare-and-set outcome.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{GroupKey, LeaseStore, LeaseWrite, StoreError, StoreResult};

/// Most writes in one combined call.
const MAX_BATCH: usize = 1000;

type Reply = oneshot::Sender<StoreResult<Option<u64>>>;

/// The writes waiting per group, and a writer lock per group (whoever holds it writes
/// everything queued for the group, its own write included).
#[derive(Default)]
pub(crate) struct Combiner {
    pending: Mutex<HashMap<GroupKey, Vec<(LeaseWrite, Reply)>>>,
    writers: Mutex<HashMap<GroupKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl Combiner {
    /// Writes `write` (as `LeaseStore::write_leases` would, alone), possibly together with
    /// other callers' writes of the same group.
    pub(crate) async fn write(
        &self,
        store: &Arc<dyn LeaseStore>,
        g: &GroupKey,
        write: LeaseWrite,
    ) -> StoreResult<Option<u64>> {
        let (tx, mut rx) = oneshot::channel();
        self.pending.lock().expect("pending").entry(g.clone()).or_default().push((write, tx));
        let writer = self.writers.lock().expect("writers").entry(g.clone()).or_default().clone();
        loop {
            let writing = tokio::select! {
                biased;
                done = &mut rx => return done.unwrap_or_else(|_| Err(abandoned())),
                lock = writer.clone().lock_owned() => lock,
            };
            if let Ok(done) = rx.try_recv() {
                return done;
            }
            let batch = self.take(g);
            if batch.is_empty() {
                continue;
            }
            // On a task of its own: a caller that goes away (a client's checkpoint call
            // cancelled) must not abandon the other callers' writes in the batch.
            let (store, g) = (store.clone(), g.clone());
            let task = tokio::spawn(async move {
                let _writing = writing;
                let (writes, replies): (Vec<LeaseWrite>, Vec<Reply>) = batch.into_iter().unzip();
                match store.write_leases(&g, &writes).await {
                    Ok(stored) => {
                        for (reply, version) in replies.into_iter().zip(stored) {
                            let _ = reply.send(Ok(version));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            });
            let _ = task.await;
        }
    }

    /// Up to [`MAX_BATCH`] queued writes of `g`, each shard at most once (a second write
    /// of a shard waits for the next batch).
    fn take(&self, g: &GroupKey) -> Vec<(LeaseWrite, Reply)> {
        let mut pending = self.pending.lock().expect("pending");
        let Some(queue) = pending.get_mut(g) else { return Vec::new() };
        let mut shards = HashSet::new();
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for (write, reply) in queue.drain(..) {
            if batch.len() < MAX_BATCH && shards.insert(write.lease.shard_id.clone()) {
                batch.push((write, reply));
            } else {
                rest.push((write, reply));
            }
        }
        if rest.is_empty() {
            pending.remove(g);
        } else {
            *queue = rest;
        }
        batch
    }
}

/// The writer that held a write was cancelled before it answered (the write may or may
/// not be stored: a retry re-reads).
fn abandoned() -> StoreError {
    StoreError::Unavailable("a combined lease write was abandoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Lease, MemoryStore, ShardInfo};

    fn lease(i: usize) -> Lease {
        Lease::new(&ShardInfo { shard_id: format!("shardId-{i:012}"), parent_shard_ids: vec![], closed: false })
    }

    #[tokio::test]
    async fn concurrent_writes_share_store_calls_and_keep_their_own_outcomes() {
        let memory = Arc::new(MemoryStore::new());
        let store: Arc<dyn LeaseStore> = memory.clone();
        let g = GroupKey::new("app", "stream");
        let created: Vec<LeaseWrite> = (0..50).map(|i| LeaseWrite { lease: lease(i), expected: None }).collect();
        assert!(store.write_leases(&g, &created).await.unwrap().iter().all(Option::is_some));
        let before = memory.calls();

        let combiner = Combiner::default();
        let owned = |i: usize, expected| LeaseWrite { lease: Lease { owner: Some("s".into()), ..lease(i) }, expected };
        let mut writes: Vec<LeaseWrite> = (0..50).map(|i| owned(i, Some(1))).collect();
        writes.push(owned(7, Some(9)));
        writes.push(owned(3, Some(2)));
        let outcomes = futures::future::join_all(writes.into_iter().map(|w| combiner.write(&store, &g, w))).await;
        let outcomes: Vec<Option<u64>> = outcomes.into_iter().map(Result::unwrap).collect();
        assert!(outcomes[..50].iter().all(|v| *v == Some(2)), "each at its version: {outcomes:?}");
        assert_eq!(outcomes[50], None, "a stale write conflicts on its own");
        assert_eq!(outcomes[51], Some(3), "a second write of a shard goes in a later call, after the first");
        let calls = memory.calls() - before;
        assert!(calls <= 4, "52 writes in {calls} store calls");
        let stored = store.read_leases(&g).await.unwrap();
        assert!(stored.iter().all(|l| l.value.owner.as_deref() == Some("s")));
    }

    #[tokio::test]
    async fn a_failed_call_fails_every_write_in_it() {
        let memory = Arc::new(MemoryStore::new());
        let store: Arc<dyn LeaseStore> = memory.clone();
        let g = GroupKey::new("app", "stream");
        memory.fail_lease_writes(1);
        let err = Combiner::default().write(&store, &g, LeaseWrite { lease: lease(0), expected: None }).await;
        assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
        assert!(store.read_leases(&g).await.unwrap().is_empty());
    }
}
