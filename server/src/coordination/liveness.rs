//! Who is alive, judged by observed change on this instance's monotonic clock (as the
//! KCL judges leases): a session is alive while its heartbeat counter changed within the
//! TTL of when this instance saw it change. No wall clock is read or compared, so an
//! instance whose clock is off by minutes judges exactly as the others do.
//!
//! A session named by a lease but without a record (never seen yet, or deleted) starts
//! its clock when first noticed: it is dead only after a whole TTL without a record, so a
//! session whose record this instance has not read yet is never taken for dead.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::{SessionRecord, Versioned};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    /// Heartbeat and version of the record, or `None` while there is no record.
    beat: Option<(u64, u64)>,
    /// When this instance saw the heartbeat change (or first noticed the session).
    since: Instant,
}

/// The liveness view of one instance for one group.
#[derive(Debug)]
pub(crate) struct Liveness {
    ttl: Duration,
    seen: HashMap<String, Seen>,
}

impl Liveness {
    /// A view in which nothing is alive yet.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self { ttl, seen: HashMap::new() }
    }

    /// Takes in one read of the session records and the sessions the leases name.
    /// Sessions in neither are forgotten.
    pub(crate) fn observe<'a>(
        &mut self,
        records: &[Versioned<SessionRecord>],
        referenced: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) {
        let mut next = HashMap::with_capacity(records.len());
        for r in records {
            let beat = Some((r.value.heartbeat, r.version));
            let since = match self.seen.get(&r.value.session_id) {
                Some(s) if s.beat.map(|b| b.0) == Some(r.value.heartbeat) => s.since,
                _ => now,
            };
            next.insert(r.value.session_id.clone(), Seen { beat, since });
        }
        for id in referenced {
            if next.contains_key(id) {
                continue;
            }
            let since = match self.seen.get(id) {
                Some(s) if s.beat.is_none() => s.since,
                _ => now,
            };
            next.insert(id.to_owned(), Seen { beat: None, since });
        }
        self.seen = next;
    }

    /// Whether `session` is alive at `now`.
    pub(crate) fn is_alive(&self, session: &str, now: Instant) -> bool {
        self.seen.get(session).is_some_and(|s| now.saturating_duration_since(s.since) < self.ttl)
    }

    /// Every session alive at `now`.
    pub(crate) fn alive(&self, now: Instant) -> impl Iterator<Item = &String> + '_ {
        self.seen.iter().filter(move |(_, s)| now.saturating_duration_since(s.since) < self.ttl).map(|(id, _)| id)
    }

    /// Session records whose heartbeat has not changed for `retention`, with the version
    /// seen (delete them only at that version).
    pub(crate) fn stale(&self, now: Instant, retention: Duration) -> Vec<(String, u64)> {
        self.seen
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.since) >= retention)
            .filter_map(|(id, s)| s.beat.map(|(_, version)| (id.clone(), version)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, heartbeat: u64) -> Versioned<SessionRecord> {
        Versioned {
            version: heartbeat + 1,
            value: SessionRecord {
                session_id: id.into(),
                instance_id: "i".into(),
                client_name: String::new(),
                heartbeat,
            },
        }
    }

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn alive_while_the_heartbeat_changes_dead_a_ttl_after_it_stops() {
        let t0 = Instant::now();
        let mut l = Liveness::new(TTL);
        l.observe(&[rec("a", 1)], [], t0);
        assert!(l.is_alive("a", t0 + Duration::from_secs(9)), "first sight counts as a change");
        l.observe(&[rec("a", 2)], [], t0 + Duration::from_secs(9));
        assert!(l.is_alive("a", t0 + Duration::from_secs(18)));
        l.observe(&[rec("a", 2)], [], t0 + Duration::from_secs(18));
        assert!(!l.is_alive("a", t0 + Duration::from_secs(19)), "unchanged for a TTL since t0+9");
        assert_eq!(l.alive(t0 + Duration::from_secs(19)).count(), 0);
    }

    #[test]
    fn an_unknown_owner_gets_a_whole_ttl_before_it_is_dead() {
        let t0 = Instant::now();
        let mut l = Liveness::new(TTL);
        l.observe(&[], ["b"], t0);
        assert!(l.is_alive("b", t0 + Duration::from_secs(9)), "its record may not be read yet");
        l.observe(&[], ["b"], t0 + Duration::from_secs(5));
        assert!(!l.is_alive("b", t0 + TTL), "the clock is not restarted by noticing again");
        // Its record shows up: alive again from then.
        l.observe(&[rec("b", 7)], [], t0 + TTL);
        assert!(l.is_alive("b", t0 + TTL + Duration::from_secs(1)));
        assert!(!l.is_alive("never", t0));
    }

    #[test]
    fn stale_records_are_reported_with_their_version_and_forgotten_ones_dropped() {
        let t0 = Instant::now();
        let mut l = Liveness::new(TTL);
        l.observe(&[rec("a", 3), rec("b", 1)], ["c"], t0);
        let hour = Duration::from_secs(3600);
        l.observe(&[rec("a", 3), rec("b", 2)], ["c"], t0 + hour);
        assert_eq!(l.stale(t0 + hour, hour), vec![("a".to_string(), 4)], "c has no record to delete");
        l.observe(&[], [], t0 + hour);
        assert!(!l.is_alive("b", t0 + hour), "forgotten once neither listed nor referenced");
    }

    #[test]
    fn a_skewed_wall_clock_changes_nothing() {
        // Only instants and heartbeat counters enter the judgement: there is no wall-clock
        // input at all, so a skewed instance sees what the others see.
        let t0 = Instant::now();
        let mut a = Liveness::new(TTL);
        let mut b = Liveness::new(TTL);
        for step in 0..30u64 {
            let at = t0 + Duration::from_secs(step);
            a.observe(&[rec("x", step)], [], at);
            b.observe(&[rec("x", step)], [], at);
            assert_eq!(a.is_alive("x", at), b.is_alive("x", at));
        }
    }
}
