//! The one driver of the lease rules over any backend: read → rule → compare-and-set,
//! retried (a bounded number of times) when another writer got there first.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::combiner::Combiner;
use super::rules;
use super::Versioned;
use super::{Checkpoint, GroupKey, Lease, LeaseStore, LeaseWrite, SessionRecord, ShardInfo, StoreError, StoreResult};

/// How often one operation re-reads and retries after version conflicts before it gives up
/// with [`StoreError::Unavailable`].
pub const MAX_ATTEMPTS: usize = 16;

/// Lease operations over a [`LeaseStore`], each rule applied from [`rules`].
#[derive(Clone)]
pub struct Leases {
    store: Arc<dyn LeaseStore>,
    /// Single-lease writes of concurrent callers go to the store together.
    combiner: Arc<Combiner>,
}

fn contended(what: &str, group: &GroupKey) -> StoreError {
    StoreError::Unavailable(format!(
        "{what} for stream {} (app {}) kept conflicting with other writers ({MAX_ATTEMPTS} attempts)",
        group.stream, group.app
    ))
}

fn not_found(group: &GroupKey, shard_id: &str) -> StoreError {
    StoreError::NotFound { app: group.app.clone(), stream: group.stream.clone(), shard_id: shard_id.to_owned() }
}

impl Leases {
    /// A driver over `store`.
    pub fn new(store: Arc<dyn LeaseStore>) -> Self {
        Self { store, combiner: Arc::default() }
    }

    /// The backend.
    pub fn store(&self) -> &Arc<dyn LeaseStore> {
        &self.store
    }

    /// Reads all leases, lets `plan` name the writes, writes them; re-reads and re-plans
    /// while some conflicted. `plan` must return nothing once its changes are stored.
    async fn converge<F>(&self, g: &GroupKey, what: &str, plan: F) -> StoreResult<()>
    where
        F: Fn(&[Versioned<Lease>]) -> Vec<LeaseWrite> + Send,
    {
        for _ in 0..MAX_ATTEMPTS {
            let writes = plan(&self.store.read_leases(g).await?);
            if writes.is_empty() || self.store.write_leases(g, &writes).await?.iter().all(Option::is_some) {
                return Ok(());
            }
        }
        Err(contended(what, g))
    }

    /// Reads one lease, applies `rule` and writes the result; retried on a conflict.
    /// `NotFound` when the lease does not exist; `Ok(None)` when the rule does not apply.
    ///
    /// With a `hint` (the lease as the caller last saw it) the first attempt writes at the
    /// hint's version without reading: one call instead of two when the hint is current. A
    /// stale hint costs nothing but that call: its conflict, or the rule refusing it, leads
    /// to the usual read (the rule's answer on a stale hint is never returned).
    async fn update_one<F>(
        &self,
        g: &GroupKey,
        shard: &str,
        hint: Option<&Versioned<Lease>>,
        what: &str,
        rule: F,
    ) -> StoreResult<Option<Versioned<Lease>>>
    where
        F: Fn(&Lease) -> StoreResult<Option<Lease>> + Send,
    {
        if let Some(hint) = hint.filter(|h| h.value.shard_id == shard) {
            if let Ok(Some(next)) = rule(&hint.value) {
                let write = LeaseWrite { lease: next, expected: Some(hint.version) };
                if let Some(version) = self.combiner.write(&self.store, g, write.clone()).await? {
                    return Ok(Some(Versioned { version, value: write.lease }));
                }
            }
        }
        for _ in 0..MAX_ATTEMPTS {
            let current = self.store.read_lease(g, shard).await?.ok_or_else(|| not_found(g, shard))?;
            let Some(next) = rule(&current.value)? else {
                return Ok(None);
            };
            let write = LeaseWrite { lease: next, expected: Some(current.version) };
            if let Some(version) = self.combiner.write(&self.store, g, write.clone()).await? {
                return Ok(Some(Versioned { version, value: write.lease }));
            }
        }
        Err(contended(what, g))
    }

    /// One conditional write per item, at the version the caller read; at most one write per
    /// shard. Returns the new lease per item, or `None` where the rule refused or it conflicted.
    async fn write_as_read<T>(
        &self,
        g: &GroupKey,
        items: &[T],
        rule: impl Fn(&T) -> (&Versioned<Lease>, Option<Lease>),
    ) -> StoreResult<Vec<Option<Lease>>> {
        let mut shards = HashSet::new();
        let mut slots = Vec::with_capacity(items.len());
        let mut writes = Vec::new();
        for item in items {
            let (read, next) = rule(item);
            match next.filter(|_| shards.insert(read.value.shard_id.clone())) {
                Some(lease) => {
                    slots.push(Some(writes.len()));
                    writes.push(LeaseWrite { lease, expected: Some(read.version) });
                }
                None => slots.push(None),
            }
        }
        let stored = if writes.is_empty() { Vec::new() } else { self.store.write_leases(g, &writes).await? };
        Ok(slots.into_iter().map(|slot| slot.and_then(|i| stored[i].map(|_| writes[i].lease.clone()))).collect())
    }

    /// Creates leases for new shards and updates parents and closed state of known ones;
    /// owners, epochs, checkpoints and handoffs are kept ([`rules::merge_shard`]).
    pub async fn sync_shards(&self, g: &GroupKey, shards: &[ShardInfo]) -> StoreResult<()> {
        if shards.is_empty() {
            return Ok(());
        }
        let listed: BTreeMap<&str, &ShardInfo> = shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();
        self.converge(g, "sync_shards", |leases| {
            let stored: BTreeMap<&str, &Versioned<Lease>> =
                leases.iter().map(|l| (l.value.shard_id.as_str(), l)).collect();
            listed
                .iter()
                .filter_map(|(id, shard)| {
                    let existing = stored.get(id);
                    rules::merge_shard(existing.map(|l| &l.value), shard)
                        .map(|lease| LeaseWrite { lease, expected: existing.map(|l| l.version) })
                })
                .collect()
        })
        .await
    }

    /// Every lease of the group, in shard id order.
    pub async fn list(&self, g: &GroupKey) -> StoreResult<Vec<Versioned<Lease>>> {
        self.store.read_leases(g).await
    }

    /// One lease, if it exists.
    pub async fn get(&self, g: &GroupKey, shard: &str) -> StoreResult<Option<Versioned<Lease>>> {
        self.store.read_lease(g, shard).await
    }

    /// The group's lease generation (see [`LeaseStore::lease_generation`]).
    pub async fn generation(&self, g: &GroupKey) -> StoreResult<u64> {
        self.store.lease_generation(g).await
    }

    /// One round trip for many ([`rules::acquire`]): each item is (the lease as the caller
    /// read it, new owner, whether its current owner is dead in the caller's view). Returns
    /// the new lease per item, or `None` when it was not acquirable or changed since read.
    pub async fn acquire_many(
        &self,
        g: &GroupKey,
        wants: &[(Versioned<Lease>, String, bool)],
    ) -> StoreResult<Vec<Option<Lease>>> {
        self.write_as_read(g, wants, |(read, owner, dead)| {
            (read, rules::acquire(&read.value, read.value.epoch, owner, *dead))
        })
        .await
    }

    /// One round trip for many ([`rules::request_handoff`]): each item is (the lease as the
    /// caller read it, the session that should get it). Returns whether each was stored.
    pub async fn request_handoffs(&self, g: &GroupKey, wants: &[(Versioned<Lease>, String)]) -> StoreResult<Vec<bool>> {
        let done = self
            .write_as_read(g, wants, |(read, to)| (read, rules::request_handoff(&read.value, read.value.epoch, to)));
        Ok(done.await?.iter().map(Option::is_some).collect())
    }

    /// Stores a checkpoint if `owner` holds the lease at `epoch` and it does not move
    /// backwards ([`rules::checkpoint`]). `NotFound` if there is no lease.
    pub async fn checkpoint(
        &self,
        g: &GroupKey,
        shard: &str,
        owner: &str,
        epoch: u64,
        cp: &Checkpoint,
    ) -> StoreResult<()> {
        self.checkpoint_from(g, None, shard, owner, epoch, cp).await?;
        Ok(())
    }

    /// [`checkpoint`](Self::checkpoint) starting from the lease as the caller last saw it
    /// (see `update_one`'s hint); returns the lease as written.
    pub async fn checkpoint_from(
        &self,
        g: &GroupKey,
        hint: Option<&Versioned<Lease>>,
        shard: &str,
        owner: &str,
        epoch: u64,
        cp: &Checkpoint,
    ) -> StoreResult<Versioned<Lease>> {
        let written =
            self.update_one(g, shard, hint, "checkpoint", |l| rules::checkpoint(l, owner, epoch, cp).map(Some)).await?;
        written.ok_or_else(|| StoreError::Backend("checkpoint rule wrote nothing".into()))
    }

    /// Gives up a lease `owner` holds at `epoch` ([`rules::release`]): to the handoff target
    /// or free. Returns the lease as it now is, or `None` if it was not held so.
    pub async fn release(&self, g: &GroupKey, shard: &str, owner: &str, epoch: u64) -> StoreResult<Option<Lease>> {
        Ok(self.update_one(g, shard, None, "release", |l| Ok(rules::release(l, owner, epoch))).await?.map(|l| l.value))
    }

    /// A final checkpoint (if any, [`rules::checkpoint`]) and the release
    /// ([`rules::release`]) in one conditional write, as a client answers a revoke or ends
    /// a shard. A refused checkpoint is the error and nothing is released; `Ok(None)` when
    /// the lease was not held so.
    pub async fn checkpoint_and_release(
        &self,
        g: &GroupKey,
        shard: &str,
        owner: &str,
        epoch: u64,
        cp: Option<&Checkpoint>,
    ) -> StoreResult<Option<Lease>> {
        Ok(self.checkpoint_and_release_from(g, None, shard, owner, epoch, cp).await?.map(|l| l.value))
    }

    /// [`checkpoint_and_release`](Self::checkpoint_and_release) starting from the lease as
    /// the caller last saw it (see `update_one`'s hint); returns the lease as written.
    pub async fn checkpoint_and_release_from(
        &self,
        g: &GroupKey,
        hint: Option<&Versioned<Lease>>,
        shard: &str,
        owner: &str,
        epoch: u64,
        cp: Option<&Checkpoint>,
    ) -> StoreResult<Option<Versioned<Lease>>> {
        self.update_one(g, shard, hint, "release", |l| {
            let checkpointed = match cp {
                Some(cp) => rules::checkpoint(l, owner, epoch, cp)?,
                None => l.clone(),
            };
            Ok(rules::release(&checkpointed, owner, epoch))
        })
        .await
    }

    /// Moves a shard's checkpoint to `to`, backwards too, and frees the lease at a new epoch
    /// ([`rules::reset`]). Returns the lease as it was and as it now is. `NotFound` if there
    /// is no lease.
    pub async fn reset(&self, g: &GroupKey, shard: &str, to: &Checkpoint) -> StoreResult<(Lease, Lease)> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.store.read_lease(g, shard).await?.ok_or_else(|| not_found(g, shard))?;
            let write = LeaseWrite { lease: rules::reset(&current.value, to), expected: Some(current.version) };
            if self.store.write_leases(g, std::slice::from_ref(&write)).await?[0].is_some() {
                return Ok((current.value, write.lease));
            }
        }
        Err(contended("reset", g))
    }

    /// Deletes a session's record and frees its leases and handoffs ([`rules::drop_session`]).
    pub async fn drop_session(&self, g: &GroupKey, session: &str) -> StoreResult<()> {
        self.store.delete_session(g, session, None).await?;
        self.free_leases_of(g, &[session.to_owned()]).await
    }

    async fn free_leases_of(&self, g: &GroupKey, sessions: &[String]) -> StoreResult<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        self.converge(g, "drop_session", |leases| {
            leases
                .iter()
                .filter_map(|l| {
                    let mut next: Option<Lease> = None;
                    for s in sessions {
                        if let Some(n) = rules::drop_session(next.as_ref().unwrap_or(&l.value), s) {
                            next = Some(n);
                        }
                    }
                    next.map(|lease| LeaseWrite { lease, expected: Some(l.version) })
                })
                .collect()
        })
        .await
    }

    /// Stale-session cleanup ([`rules::stale_sessions`]): deletes each record still at the
    /// version seen, unless it is one of `local_sessions`, and frees the leases of those
    /// deleted. Returns the ids deleted.
    pub async fn remove_stale_sessions(
        &self,
        g: &GroupKey,
        stale: &[(String, u64)],
        local_sessions: &[String],
    ) -> StoreResult<Vec<String>> {
        let mut deleted = Vec::new();
        for (id, version) in rules::stale_sessions(stale, local_sessions) {
            if self.store.delete_session(g, &id, Some(version)).await? {
                deleted.push(id);
            }
        }
        self.free_leases_of(g, &deleted).await?;
        Ok(deleted)
    }

    /// Creates or replaces a session record.
    pub async fn put_session(&self, g: &GroupKey, s: &SessionRecord) -> StoreResult<()> {
        let mut expected = None;
        for _ in 0..MAX_ATTEMPTS {
            if self.store.write_session(g, s, expected).await?.is_some() {
                return Ok(());
            }
            let sessions = self.store.read_sessions(g).await?;
            expected = sessions.iter().find(|r| r.value.session_id == s.session_id).map(|r| r.version);
        }
        Err(contended("put_session", g))
    }

    /// Bumps the heartbeats of the named sessions (once each, even if named twice) in one
    /// round trip; returns the ids that have no record.
    pub async fn beat(&self, g: &GroupKey, ids: &[String]) -> StoreResult<Vec<String>> {
        let mut seen = HashSet::new();
        let ids: Vec<String> = ids.iter().filter(|id| seen.insert(id.as_str())).cloned().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.store.beat_sessions(g, &ids).await
    }

    /// Every session record of the group, in session id order.
    pub async fn sessions(&self, g: &GroupKey) -> StoreResult<Vec<Versioned<SessionRecord>>> {
        self.store.read_sessions(g).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn g() -> GroupKey {
        GroupKey::new("app", "stream")
    }

    fn shard(id: &str) -> ShardInfo {
        ShardInfo { shard_id: id.into(), parent_shard_ids: vec![], closed: false }
    }

    fn session(id: &str) -> SessionRecord {
        SessionRecord { session_id: id.into(), instance_id: "i".into(), client_name: id.into(), heartbeat: 0 }
    }

    fn leases() -> (Arc<MemoryStore>, Leases) {
        let store = Arc::new(MemoryStore::new());
        (store.clone(), Leases::new(store))
    }

    #[tokio::test]
    async fn sync_is_idempotent_and_keeps_versions_when_nothing_changed() {
        let (_, l) = leases();
        l.sync_shards(&g(), &[shard("b"), shard("a"), shard("a")]).await.unwrap();
        let first = l.list(&g()).await.unwrap();
        assert_eq!(
            first.iter().map(|v| (v.value.shard_id.as_str(), v.version)).collect::<Vec<_>>(),
            [("a", 1), ("b", 1)]
        );
        let generation = l.generation(&g()).await.unwrap();
        l.sync_shards(&g(), &[shard("a"), shard("b")]).await.unwrap();
        assert_eq!(l.list(&g()).await.unwrap(), first);
        assert_eq!(l.generation(&g()).await.unwrap(), generation, "no write, same generation");
    }

    #[tokio::test]
    async fn acquire_many_writes_once_per_shard_and_reports_conflicts() {
        let (_, l) = leases();
        l.sync_shards(&g(), &[shard("a"), shard("b")]).await.unwrap();
        let read = l.list(&g()).await.unwrap();
        let wants = vec![
            (read[0].clone(), "s1".to_owned(), false),
            (read[0].clone(), "s2".to_owned(), false),
            (read[1].clone(), "s2".to_owned(), false),
        ];
        let got = l.acquire_many(&g(), &wants).await.unwrap();
        assert_eq!(
            got.iter().map(|o| o.as_ref().map(|l| l.owner.clone().unwrap())).collect::<Vec<_>>(),
            [Some("s1".to_owned()), None, Some("s2".to_owned())]
        );
        // The same stale reads again: every one conflicts.
        assert!(l.acquire_many(&g(), &wants).await.unwrap().iter().all(Option::is_none));
    }

    #[tokio::test]
    async fn checkpoint_retries_over_a_concurrent_handoff_request() {
        let (_, l) = leases();
        l.sync_shards(&g(), &[shard("a")]).await.unwrap();
        let read = l.get(&g(), "a").await.unwrap().unwrap();
        let held = l.acquire_many(&g(), &[(read, "s1".into(), false)]).await.unwrap()[0].clone().unwrap();
        let read = l.get(&g(), "a").await.unwrap().unwrap();
        assert_eq!(l.request_handoffs(&g(), &[(read, "s2".into())]).await.unwrap(), [true]);
        let cp = Checkpoint::from_stored("42", 0).unwrap();
        l.checkpoint(&g(), "a", "s1", held.epoch, &cp).await.unwrap();
        let now = l.get(&g(), "a").await.unwrap().unwrap().value;
        assert_eq!((now.checkpoint, now.handoff_to.as_deref()), (cp, Some("s2")), "both changes kept");
    }

    #[tokio::test]
    async fn a_current_hint_saves_the_read_and_a_stale_one_is_never_believed() {
        let (_, l) = leases();
        l.sync_shards(&g(), &[shard("a")]).await.unwrap();
        let free = l.get(&g(), "a").await.unwrap().unwrap();
        let held = l.acquire_many(&g(), &[(free.clone(), "s1".into(), false)]).await.unwrap()[0].clone().unwrap();
        let current = l.get(&g(), "a").await.unwrap().unwrap();
        let cp = Checkpoint::from_stored("42", 0).unwrap();
        let written = l.checkpoint_from(&g(), Some(&current), "a", "s1", held.epoch, &cp).await.unwrap();
        assert_eq!((written.version, &written.value.checkpoint), (current.version + 1, &cp));
        assert_eq!(l.get(&g(), "a").await.unwrap().unwrap(), written, "the write is what the store holds");
        // The free lease as a hint: the rule refuses it (not s1's), yet the store says s1
        // holds it, so the checkpoint is stored after a read.
        let cp2 = Checkpoint::from_stored("43", 0).unwrap();
        let again = l.checkpoint_from(&g(), Some(&free), "a", "s1", held.epoch, &cp2).await.unwrap();
        assert_eq!(again.value.checkpoint, cp2);
        // Another session: refused after the read too.
        let err = l.checkpoint_from(&g(), Some(&written), "a", "s2", held.epoch, &cp2).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        // A stale hint on which the rule applies: its write conflicts, the read decides.
        let released = l.checkpoint_and_release_from(&g(), Some(&written), "a", "s1", held.epoch, None).await.unwrap();
        assert_eq!(released.map(|r| (r.value.owner, r.value.epoch)), Some((None, held.epoch + 1)));
    }

    #[tokio::test]
    async fn put_session_creates_then_replaces() {
        let (_, l) = leases();
        l.put_session(&g(), &session("s")).await.unwrap();
        let mut again = session("s");
        again.client_name = "renamed".into();
        l.put_session(&g(), &again).await.unwrap();
        let all = l.sessions(&g()).await.unwrap();
        assert_eq!(all, [Versioned { version: 2, value: again }]);
    }

    #[tokio::test]
    async fn stale_sessions_are_removed_only_at_the_version_seen() {
        let (_, l) = leases();
        l.sync_shards(&g(), &[shard("a")]).await.unwrap();
        for s in ["s1", "s2", "s3"] {
            l.put_session(&g(), &session(s)).await.unwrap();
        }
        let read = l.get(&g(), "a").await.unwrap().unwrap();
        l.acquire_many(&g(), &[(read, "s1".into(), false)]).await.unwrap();
        l.beat(&g(), &["s2".to_owned()]).await.unwrap();
        let stale = vec![("s1".to_owned(), 1), ("s2".to_owned(), 1), ("s3".to_owned(), 1)];
        let removed = l.remove_stale_sessions(&g(), &stale, &["s3".to_owned()]).await.unwrap();
        assert_eq!(removed, ["s1"], "s2 beat since, s3 is local");
        let lease = l.get(&g(), "a").await.unwrap().unwrap().value;
        assert_eq!((lease.owner, lease.epoch), (None, 2), "the removed session's lease is free");
    }
}
