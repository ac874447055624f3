//! Liveness of sessions judged by observed change, on this instance's monotonic clock.
//!
//! Each round reads the group's session records and hands them to [`Liveness::observe`]
//! with the local `Instant`. A session is alive while its heartbeat (or record version)
//! changed within the TTL before now; a session first seen counts as changed then. No wall
//! clock is read, stored or compared, so a skewed clock on any instance changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{SessionRecord, Versioned};

/// What was last seen of one session.
#[derive(Clone, Debug)]
struct Seen {
    heartbeat: u64,
    version: u64,
    /// When the record was first seen with these values.
    since: Instant,
}

/// Observer of session heartbeats on a monotonic clock (pure: no I/O, no clock reads).
#[derive(Clone, Debug)]
pub struct Liveness {
    ttl: Duration,
    seen: HashMap<String, Seen>,
}

impl Liveness {
    /// An observer that declares a session dead after `ttl` without change.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, seen: HashMap::new() }
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Records what a read of the session records showed at `now` (ids absent from
    /// `sessions` are forgotten: a missing record is a dead session).
    pub fn observe(&mut self, sessions: &[Versioned<SessionRecord>], now: Instant) {
        let mut next = HashMap::with_capacity(sessions.len());
        for s in sessions {
            let (heartbeat, version) = (s.value.heartbeat, s.version);
            let since = match self.seen.get(&s.value.session_id) {
                Some(old) if old.heartbeat == heartbeat && old.version == version => old.since,
                _ => now,
            };
            next.insert(s.value.session_id.clone(), Seen { heartbeat, version, since });
        }
        self.seen = next;
    }

    /// Alive: seen, and its heartbeat changed within the TTL before `now`.
    pub fn is_alive(&self, session_id: &str, now: Instant) -> bool {
        self.seen.get(session_id).is_some_and(|s| now.saturating_duration_since(s.since) < self.ttl)
    }

    /// Sessions unchanged for at least `retention` before `now`, with the version seen
    /// (candidates for deleting their record), in id order.
    pub fn stale(&self, now: Instant, retention: Duration) -> Vec<(String, u64)> {
        let mut stale: Vec<(String, u64)> = self
            .seen
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.since) >= retention)
            .map(|(id, s)| (id.clone(), s.version))
            .collect();
        stale.sort();
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn rec(id: &str, heartbeat: u64, version: u64) -> Versioned<SessionRecord> {
        Versioned {
            version,
            value: SessionRecord {
                session_id: id.into(),
                instance_id: "i".into(),
                client_name: String::new(),
                heartbeat,
            },
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn first_sight_counts_as_a_change() {
        let t0 = Instant::now();
        let mut l = Liveness::new(TTL);
        assert!(!l.is_alive("a", t0), "never seen");
        l.observe(&[rec("a", 7, 3)], t0);
        assert!(l.is_alive("a", t0));
        assert!(l.is_alive("a", t0 + secs(9)));
        assert!(!l.is_alive("a", t0 + TTL), "unchanged for the TTL");
    }

    #[test]
    fn a_changing_heartbeat_keeps_a_session_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new(TTL);
        for i in 0..10 {
            l.observe(&[rec("a", i, i + 1), rec("b", 0, 1)], t0 + secs(i * 5));
        }
        let now = t0 + secs(45);
        assert!(l.is_alive("a", now + secs(9)));
        assert!(!l.is_alive("b", now), "b never changed since t0");
        assert!(!l.is_alive("a", now + TTL));
    }

    #[test]
    fn the_same_values_seen_again_do_not_reset_the_clock() {
        let t0 = Instant::now();
        let mut l = Liveness::new(TTL);
        l.observe(&[rec("a", 1, 1)], t0);
        l.observe(&[rec("a", 1, 1)], t0 + secs(8));
        assert!(!l.is_alive("a", t0 + secs(10)));
        // A replaced record (new version) is a change even with the same heartbeat.
        l.observe(&[rec("a", 1, 2)], t0 + secs(12));
        assert!(l.is_alive("a", t0 + secs(21)));
    }

    #[test]
    fn missing_records_are_dead_and_forgotten() {
        let t0 = Instant::now();
        let mut l = Liveness::new(TTL);
        l.observe(&[rec("a", 1, 1), rec("b", 1, 1)], t0);
        l.observe(&[rec("b", 2, 2)], t0 + secs(1));
        assert!(!l.is_alive("a", t0 + secs(1)), "record gone");
        // Reappearing counts as first sight.
        l.observe(&[rec("a", 1, 1)], t0 + secs(30));
        assert!(l.is_alive("a", t0 + secs(30)));
    }

    #[test]
    fn stale_lists_sessions_unchanged_for_the_retention() {
        let t0 = Instant::now();
        let mut l = Liveness::new(TTL);
        l.observe(&[rec("a", 1, 4), rec("b", 1, 1)], t0);
        l.observe(&[rec("a", 1, 4), rec("b", 2, 2)], t0 + secs(50));
        assert_eq!(l.stale(t0 + secs(60), secs(60)), [("a".to_owned(), 4)]);
        assert!(l.stale(t0 + secs(59), secs(60)).is_empty());
        assert_eq!(l.stale(t0 + secs(110), secs(60)), [("a".to_owned(), 4), ("b".to_owned(), 2)]);
    }
}
