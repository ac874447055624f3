//! `memory://`: the in-memory reference backend. Plain maps and versions behind a mutex;
//! the property tests compare every real backend with it, and unit tests of the
//! coordination layer can use it as a real [`LeaseStore`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{GroupKey, Lease, LeaseStore, LeaseWrite, SessionRecord, StoreResult, Versioned};

#[derive(Default)]
struct Group {
    leases: BTreeMap<String, Versioned<Lease>>,
    sessions: BTreeMap<String, Versioned<SessionRecord>>,
    generation: u64,
}

/// An in-memory lease store. Handles that share one `Arc<MemoryStore>` act as instances
/// sharing a store, `watch` and `notify` included.
#[derive(Default)]
pub struct MemoryStore {
    groups: Mutex<HashMap<GroupKey, Group>>,
    watchers: Mutex<HashMap<GroupKey, Vec<UnboundedSender<()>>>>,
    calls: AtomicU64,
    /// Lease writes still to fail (fault injection for tests).
    failing_writes: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many trait calls (round trips) were made so far: lets tests check a round's cost.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Makes the next `n` lease writes fail as unavailable, storing nothing: a store
    /// timeout or outage as a round sees it.
    pub fn fail_lease_writes(&self, n: u64) {
        self.failing_writes.store(n, Ordering::SeqCst);
    }

    fn with<T>(&self, group: &GroupKey, f: impl FnOnce(&mut Group) -> T) -> StoreResult<T> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(groups.entry(group.clone()).or_default()))
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn read_leases(&self, group: &GroupKey) -> StoreResult<Vec<Versioned<Lease>>> {
        self.with(group, |g| g.leases.values().cloned().collect())
    }

    async fn read_lease(&self, group: &GroupKey, shard_id: &str) -> StoreResult<Option<Versioned<Lease>>> {
        self.with(group, |g| g.leases.get(shard_id).cloned())
    }

    async fn write_leases(&self, group: &GroupKey, writes: &[LeaseWrite]) -> StoreResult<Vec<Option<u64>>> {
        let failing = self.failing_writes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(super::StoreError::Unavailable("memory store: injected lease write failure".into()));
        }
        self.with(group, |g| {
            let out: Vec<Option<u64>> = writes
                .iter()
                .map(|w| {
                    let current = g.leases.get(&w.lease.shard_id).map(|l| l.version);
                    if current != w.expected {
                        return None;
                    }
                    let version = current.unwrap_or(0) + 1;
                    g.leases.insert(w.lease.shard_id.clone(), Versioned { version, value: w.lease.clone() });
                    Some(version)
                })
                .collect();
            if out.iter().any(Option::is_some) {
                g.generation += 1;
            }
            out
        })
    }

    async fn lease_generation(&self, group: &GroupKey) -> StoreResult<u64> {
        self.with(group, |g| g.generation)
    }

    async fn read_sessions(&self, group: &GroupKey) -> StoreResult<Vec<Versioned<SessionRecord>>> {
        self.with(group, |g| g.sessions.values().cloned().collect())
    }

    async fn write_session(
        &self,
        group: &GroupKey,
        session: &SessionRecord,
        expected: Option<u64>,
    ) -> StoreResult<Option<u64>> {
        self.with(group, |g| {
            let current = g.sessions.get(&session.session_id).map(|s| s.version);
            if current != expected {
                return None;
            }
            let version = current.unwrap_or(0) + 1;
            g.sessions.insert(session.session_id.clone(), Versioned { version, value: session.clone() });
            Some(version)
        })
    }

    async fn beat_sessions(&self, group: &GroupKey, session_ids: &[String]) -> StoreResult<Vec<String>> {
        self.with(group, |g| {
            let mut missing = Vec::new();
            for id in session_ids {
                match g.sessions.get_mut(id) {
                    Some(s) => {
                        s.version += 1;
                        s.value.heartbeat += 1;
                    }
                    None => missing.push(id.clone()),
                }
            }
            missing
        })
    }

    async fn delete_session(&self, group: &GroupKey, session_id: &str, expected: Option<u64>) -> StoreResult<bool> {
        self.with(group, |g| match g.sessions.get(session_id) {
            Some(s) if expected.is_none_or(|v| v == s.version) => g.sessions.remove(session_id).is_some(),
            _ => false,
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Yields once at once (like the other backends when subscribed), then on every
    /// `notify` of the group on this store.
    fn watch(&self, group: &GroupKey) -> Option<BoxStream<'static, ()>> {
        let (tx, rx) = unbounded_channel();
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.entry(group.clone()).or_default().push(tx);
        Some(stream::once(async {}).chain(UnboundedReceiverStream::new(rx)).boxed())
    }

    async fn notify(&self, group: &GroupKey) -> StoreResult<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = watchers.get_mut(group) {
            list.retain(|tx| tx.send(()).is_ok());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ShardInfo;

    fn g() -> GroupKey {
        GroupKey::new("app", "stream")
    }

    fn lease(id: &str) -> Lease {
        Lease::new(&ShardInfo { shard_id: id.into(), parent_shard_ids: vec![], closed: false })
    }

    fn session(id: &str) -> SessionRecord {
        SessionRecord { session_id: id.into(), instance_id: "i".into(), client_name: String::new(), heartbeat: 0 }
    }

    #[tokio::test]
    async fn lease_writes_are_compare_and_set_on_the_version() {
        let m = MemoryStore::new();
        let w = |expected| LeaseWrite { lease: lease("a"), expected };
        assert_eq!(m.write_leases(&g(), &[w(None), w(Some(1))]).await.unwrap(), [Some(1), Some(2)]);
        assert_eq!(m.write_leases(&g(), &[w(None), w(Some(1))]).await.unwrap(), [None, None]);
        assert_eq!(m.lease_generation(&g()).await.unwrap(), 1, "one generation per call that wrote");
        assert_eq!(m.read_lease(&g(), "a").await.unwrap().unwrap().version, 2);
        assert_eq!(m.read_lease(&GroupKey::new("other", "stream"), "a").await.unwrap(), None, "groups apart");
    }

    #[tokio::test]
    async fn sessions_are_versioned_beaten_and_deleted() {
        let m = MemoryStore::new();
        assert_eq!(m.write_session(&g(), &session("a"), None).await.unwrap(), Some(1));
        assert_eq!(m.write_session(&g(), &session("a"), None).await.unwrap(), None);
        assert_eq!(m.beat_sessions(&g(), &["a".into(), "x".into()]).await.unwrap(), ["x"]);
        let a = &m.read_sessions(&g()).await.unwrap()[0];
        assert_eq!((a.version, a.value.heartbeat), (2, 1));
        assert!(!m.delete_session(&g(), "a", Some(1)).await.unwrap(), "stale version");
        assert!(m.delete_session(&g(), "a", Some(2)).await.unwrap());
        assert!(!m.delete_session(&g(), "a", None).await.unwrap(), "already gone");
        assert_eq!(m.calls(), 7);
    }

    #[tokio::test]
    async fn notify_wakes_the_watches_of_its_group() {
        let m = MemoryStore::new();
        let mut watch = m.watch(&g()).unwrap();
        let mut other = m.watch(&GroupKey::new("other", "stream")).unwrap();
        assert_eq!(watch.next().await, Some(()), "the first wake");
        assert_eq!(other.next().await, Some(()));
        m.notify(&g()).await.unwrap();
        assert_eq!(watch.next().await, Some(()));
        assert!(futures::FutureExt::now_or_never(other.next()).is_none(), "another group stays asleep");
        drop(watch);
        m.notify(&g()).await.unwrap();
        assert!(m.watchers.lock().unwrap()[&g()].is_empty(), "closed watches are forgotten");
    }
}
