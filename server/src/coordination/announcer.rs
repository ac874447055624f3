//! A group's announcements to other instances (`LeaseStore::notify`), at most one in
//! flight: when a session joins at scale, hundreds of releases land within milliseconds,
//! and one notification each would queue hundreds of store calls (on PostgreSQL, NOTIFY
//! transactions that serialize at commit) in front of the very writes the handoff waits on.

use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::store::{GroupKey, LeaseStore};

/// Sends one notification for any number of changes made while one was in flight.
pub(crate) struct Announcer {
    store: Arc<dyn LeaseStore>,
    key: GroupKey,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// A notification is being sent.
    in_flight: bool,
    /// A change was made after the one in flight was sent: send one more.
    again: bool,
}

impl Announcer {
    /// An announcer for `key`'s changes.
    pub(crate) fn new(store: Arc<dyn LeaseStore>, key: GroupKey) -> Self {
        Self { store, key, state: Arc::default() }
    }

    /// Announces a change already written, without waiting: a notification that starts
    /// after this call is always sent (the one in flight may predate the change).
    pub(crate) fn later(&self) {
        {
            let mut state = self.state.lock().expect("announcer");
            if state.in_flight {
                state.again = true;
                return;
            }
            state.in_flight = true;
        }
        let (store, key, state) = (self.store.clone(), self.key.clone(), self.state.clone());
        tokio::spawn(async move {
            loop {
                notify(&*store, &key).await;
                let mut state = state.lock().expect("announcer");
                if !std::mem::take(&mut state.again) {
                    state.in_flight = false;
                    return;
                }
            }
        });
    }

    /// Announces a change and waits until the store took the notification.
    pub(crate) async fn now(&self) {
        notify(&*self.store, &self.key).await;
    }
}

async fn notify(store: &dyn LeaseStore, key: &GroupKey) {
    if let Err(e) = store.notify(key).await {
        warn!(app = %key.app, stream = %key.stream, error = %e, "could not announce a change");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;
    use crate::store::memory::MemoryStore;

    async fn received(watch: &mut futures::stream::BoxStream<'static, ()>) -> usize {
        let mut n = 0;
        while tokio::time::timeout(Duration::from_millis(50), watch.next()).await.is_ok_and(|x| x.is_some()) {
            n += 1;
        }
        n
    }

    #[tokio::test]
    async fn a_burst_is_two_notifications_and_a_later_change_one_more() {
        let store = Arc::new(MemoryStore::new());
        let key = GroupKey::new("app", "stream");
        let mut watch = store.watch(&key).expect("memory store pushes");
        assert_eq!(received(&mut watch).await, 1, "the subscription's first yield");
        let announcer = Announcer::new(store.clone(), key);
        // Without a yield in between: the first is in flight when the others come.
        for _ in 0..100 {
            announcer.later();
        }
        assert_eq!(received(&mut watch).await, 2, "the one in flight and one for the rest");
        announcer.later();
        assert_eq!(received(&mut watch).await, 1, "a change after the burst is announced");
        announcer.now().await;
        assert_eq!(received(&mut watch).await, 1);
    }
}
