//! What a group should do next, as a pure function of what it sees: the leases as the
//! store holds them, which sessions are alive, which sessions are local, which readers
//! run, and the time. The group worker ([`crate::coordination::group`]) performs the
//! actions; nothing here touches the store, Kinesis or a clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::coordination::balancer;
use crate::store::{Lease, Versioned};

/// A running shard reader, as the decision sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReaderView {
    /// The local session it reads for.
    pub session: String,
    /// The lease epoch it reads at.
    pub epoch: u64,
    /// When it was revoked (for a handoff or shutdown), if it was.
    pub revoked_at: Option<Instant>,
}

/// Everything a decision depends on.
#[derive(Debug)]
pub(crate) struct View<'a> {
    /// Every lease of the group, with the version it was read at.
    pub leases: &'a [Versioned<Lease>],
    /// Sessions judged alive (local ones included).
    pub live: &'a HashSet<String>,
    /// This instance's sessions of the group.
    pub local: &'a [String],
    /// Running readers by shard id.
    pub readers: &'a BTreeMap<String, ReaderView>,
    /// Now, on this instance's monotonic clock.
    pub now: Instant,
    /// How long a revoked shard waits for its client's release.
    pub handoff_grace: Duration,
    /// Shutting down: take nothing, start nothing.
    pub draining: bool,
    /// Shard → the highest epoch this instance gave up (stopped or released) at.
    pub given_up: &'a HashMap<String, GivenUp>,
    /// When the read of `leases` began: a release whose store call returned before it
    /// shows in it.
    pub leases_read_at: Instant,
    /// Where this instance starts among the free leases, as a fraction (see
    /// [`balancer::plan_from`]).
    pub free_start: (usize, usize),
}

/// A lease this instance gave up (a client's release, a revoke's grace, a session gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GivenUp {
    /// The epoch given up.
    pub epoch: u64,
    /// When the store call that released it returned (failed or not); `None` while it is
    /// in flight.
    pub settled_at: Option<Instant>,
}

/// Why a lease is released by the group itself (not by its client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReleaseCause {
    /// The shard was read to its end and checkpointed `SHARD_END`.
    Finished,
    /// The client did not answer a revoke within the handoff grace.
    GraceExpired,
    /// This instance gave the lease up at this epoch, yet a read shows it still held so:
    /// the release did not land (a store error or timeout), or the read predates it.
    Retry,
}

/// One step for the group worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Take a free lease (or one whose owner is dead) for a local session.
    Acquire {
        /// The lease as read (its version makes the write conditional).
        lease: Versioned<Lease>,
        /// The local session taking it.
        session: String,
        /// Whether the current owner is dead in this instance's view.
        owner_dead: bool,
    },
    /// Ask the owner of a live lease to hand it to a local session.
    RequestHandoff {
        /// The lease as read.
        lease: Versioned<Lease>,
        /// The local session asking.
        to: String,
    },
    /// Start reading a lease a local session holds.
    Start {
        /// The local session.
        session: String,
        /// The lease it holds.
        lease: Lease,
    },
    /// Tell the client to finish and release (a handoff was asked for).
    Revoke {
        /// Shard id.
        shard: String,
    },
    /// The lease is no longer this reader's: stop it at once.
    Stop {
        /// Shard id.
        shard: String,
    },
    /// Stop any reader and give the lease up in the store.
    Release {
        /// Shard id.
        shard: String,
        /// The holding session.
        session: String,
        /// The epoch it holds.
        epoch: u64,
        /// Why.
        cause: ReleaseCause,
    },
}

/// Whether the lease's owner is alive in this view.
fn owner_alive<'a>(lease: &'a Lease, live: &HashSet<String>) -> Option<&'a str> {
    lease.owner.as_deref().filter(|o| live.contains(*o))
}

/// The actions of one round, in the order they should be applied.
pub(crate) fn decide(view: &View<'_>) -> Vec<Action> {
    let mut actions = Vec::new();
    let plain: Vec<Lease> = view.leases.iter().map(|l| l.value.clone()).collect();
    if !view.draining {
        let live: HashSet<&str> = view.live.iter().map(String::as_str).collect();
        let plan = balancer::plan_from(&plain, &live, view.local, view.free_start);
        let index: HashMap<&str, &Versioned<Lease>> =
            view.leases.iter().map(|l| (l.value.shard_id.as_str(), l)).collect();
        let by_shard = |shard: &str| index.get(shard).map(|l| (*l).clone());
        for (shard, _, session) in plan.acquire {
            if let Some(lease) = by_shard(&shard) {
                let owner_dead = lease.value.owner.is_some();
                actions.push(Action::Acquire { lease, session, owner_dead });
            }
        }
        for (shard, _, to) in plan.handoff {
            if let Some(lease) = by_shard(&shard) {
                actions.push(Action::RequestHandoff { lease, to });
            }
        }
    }

    let mut keep = HashSet::new();
    let mut released = HashSet::new();
    for lease in view.leases.iter().map(|l| &l.value) {
        let Some(session) = owner_alive(lease, view.live).filter(|o| view.local.iter().any(|l| l == o)) else {
            continue;
        };
        let shard = lease.shard_id.as_str();
        if lease.is_finished() {
            released.insert(lease.shard_id.as_str());
            actions.push(Action::Release {
                shard: shard.to_owned(),
                session: session.to_owned(),
                epoch: lease.epoch,
                cause: ReleaseCause::Finished,
            });
            continue;
        }
        keep.insert(shard);
        let reader = view.readers.get(shard);
        match reader.filter(|r| r.session == session && r.epoch == lease.epoch) {
            Some(r) => {
                let handoff_live = lease.handoff_to.as_deref().is_some_and(|t| view.live.contains(t));
                match r.revoked_at {
                    None if handoff_live => actions.push(Action::Revoke { shard: shard.to_owned() }),
                    Some(at) if view.now.saturating_duration_since(at) >= view.handoff_grace => {
                        released.insert(shard);
                        actions.push(Action::Release {
                            shard: shard.to_owned(),
                            session: session.to_owned(),
                            epoch: lease.epoch,
                            cause: ReleaseCause::GraceExpired,
                        })
                    }
                    _ => {}
                }
            }
            None => {
                if reader.is_some() {
                    actions.push(Action::Stop { shard: shard.to_owned() });
                }
                match view.given_up.get(shard) {
                    _ if view.draining => {}
                    // Still held at the epoch given up, in a read made after the release
                    // returned: it did not land (a store error or timeout). Release again
                    // (refused if it did land); a restart would read a lease this instance
                    // left. Not while the release is in flight: hundreds of them queue
                    // behind each other when a session joins at scale.
                    Some(g) if g.epoch == lease.epoch && g.settled_at.is_some_and(|t| t <= view.leases_read_at) => {
                        released.insert(shard);
                        actions.push(Action::Release {
                            shard: shard.to_owned(),
                            session: session.to_owned(),
                            epoch: lease.epoch,
                            cause: ReleaseCause::Retry,
                        })
                    }
                    // The release is in flight, or this read is older than it (or than
                    // a later epoch given up): wait for a newer read.
                    Some(g) if g.epoch >= lease.epoch => {}
                    _ => actions.push(Action::Start { session: session.to_owned(), lease: lease.clone() }),
                }
            }
        }
    }
    for shard in view.readers.keys().filter(|s| !keep.contains(s.as_str())) {
        if !released.contains(shard.as_str()) {
            actions.push(Action::Stop { shard: shard.clone() });
        }
    }
    actions
}

/// Where an instance starts among free leases: the share of live sessions on instances
/// whose id sorts before its own, from the session records (instance id per session).
pub(crate) fn free_start<'a>(
    instance: &str,
    sessions: impl IntoIterator<Item = (&'a str, &'a str)>,
    live: &HashSet<String>,
) -> (usize, usize) {
    let (mut before, mut total) = (0, 0);
    for (session, owner_instance) in sessions {
        if live.contains(session) {
            total += 1;
            before += usize::from(owner_instance < instance);
        }
    }
    (before, total.max(1))
}

/// Whether an instance must stop its readers because it could not renew its sessions
/// for a whole TTL: other instances may already judge them dead and take their leases.
pub(crate) fn self_fenced(last_renewed: Option<Instant>, now: Instant, ttl: Duration) -> bool {
    last_renewed.is_some_and(|at| now.saturating_duration_since(at) >= ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Checkpoint;

    fn lease(id: usize, owner: Option<&str>, epoch: u64) -> Versioned<Lease> {
        Versioned {
            version: epoch + 1,
            value: Lease {
                shard_id: format!("shard-{id:04}"),
                owner: owner.map(str::to_owned),
                epoch,
                checkpoint: Checkpoint::None,
                parent_shard_ids: vec![],
                closed: false,
                handoff_to: None,
            },
        }
    }

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn reader(session: &str, epoch: u64, revoked_at: Option<Instant>) -> ReaderView {
        ReaderView { session: session.into(), epoch, revoked_at }
    }

    struct Case {
        leases: Vec<Versioned<Lease>>,
        live: HashSet<String>,
        local: Vec<String>,
        readers: BTreeMap<String, ReaderView>,
        now: Instant,
        draining: bool,
        given_up: HashMap<String, GivenUp>,
        leases_read_at: Instant,
    }

    impl Case {
        fn new(leases: Vec<Versioned<Lease>>, live: &[&str], local: &[&str]) -> Self {
            Self {
                leases,
                live: set(live),
                local: local.iter().map(|s| s.to_string()).collect(),
                readers: BTreeMap::new(),
                now: Instant::now(),
                draining: false,
                given_up: HashMap::new(),
                leases_read_at: Instant::now(),
            }
        }
        /// Marks `epoch` of shard-0000 given up, its release returned before the read.
        fn given_up(&mut self, epoch: u64) {
            let settled_at = Some(self.leases_read_at);
            self.given_up.insert("shard-0000".into(), GivenUp { epoch, settled_at });
        }
        fn decide(&self) -> Vec<Action> {
            decide(&View {
                leases: &self.leases,
                live: &self.live,
                local: &self.local,
                readers: &self.readers,
                now: self.now,
                handoff_grace: Duration::from_secs(5),
                draining: self.draining,
                given_up: &self.given_up,
                leases_read_at: self.leases_read_at,
                free_start: (0, 1),
            })
        }
    }

    #[test]
    fn an_instance_starts_at_the_share_of_live_sessions_before_it() {
        let records = [("a1", "i1"), ("a2", "i1"), ("b1", "i2"), ("c1", "i3"), ("dead", "i0")];
        let live = set(&["a1", "a2", "b1", "c1"]);
        assert_eq!(free_start("i1", records, &live), (0, 4));
        assert_eq!(free_start("i2", records, &live), (2, 4));
        assert_eq!(free_start("i3", records, &live), (3, 4));
        assert_eq!(free_start("i1", [], &live), (0, 1));
    }

    #[test]
    fn free_leases_are_acquired_and_held_ones_started() {
        let mut c = Case::new(vec![lease(0, None, 0), lease(1, Some("a"), 3)], &["a"], &["a"]);
        let actions = c.decide();
        assert!(matches!(&actions[0], Action::Acquire { session, owner_dead: false, .. } if session == "a"));
        assert!(actions.contains(&Action::Start { session: "a".into(), lease: c.leases[1].value.clone() }));
        c.readers.insert("shard-0001".into(), reader("a", 3, None));
        let actions = c.decide();
        assert_eq!(actions.len(), 1, "a running reader of a held lease needs nothing: {actions:?}");
    }

    #[test]
    fn a_lease_given_up_but_still_held_at_that_epoch_is_released_again() {
        let mut c = Case::new(vec![lease(0, Some("a"), 3)], &["a"], &["a"]);
        c.given_up(3);
        let release =
            Action::Release { shard: "shard-0000".into(), session: "a".into(), epoch: 3, cause: ReleaseCause::Retry };
        assert_eq!(c.decide(), [release]);
        c.given_up(4);
        assert!(c.decide().is_empty(), "a read older than the epoch given up: nothing");
        c.given_up(2);
        assert_eq!(c.decide(), [Action::Start { session: "a".into(), lease: c.leases[0].value.clone() }]);
        c.draining = true;
        c.given_up(3);
        assert!(c.decide().is_empty(), "draining: nothing started or released");
    }

    #[test]
    fn a_release_in_flight_or_newer_than_the_read_is_neither_made_again_nor_started() {
        let mut c = Case::new(vec![lease(0, Some("a"), 3)], &["a"], &["a"]);
        c.given_up.insert("shard-0000".into(), GivenUp { epoch: 3, settled_at: None });
        assert!(c.decide().is_empty(), "in flight: nothing");
        let later = Some(c.leases_read_at + Duration::from_millis(1));
        c.given_up.insert("shard-0000".into(), GivenUp { epoch: 3, settled_at: later });
        assert!(c.decide().is_empty(), "returned after the read began: the read may predate it");
    }

    #[test]
    fn a_lease_taken_by_another_session_stops_the_reader() {
        // Lease lost: the store shows another owner (or a newer epoch) than the reader's.
        let mut c = Case::new(vec![lease(0, Some("b"), 4)], &["a", "b"], &["a"]);
        c.readers.insert("shard-0000".into(), reader("a", 3, None));
        assert_eq!(c.decide(), vec![Action::Stop { shard: "shard-0000".into() }]);
        // Same owner, newer epoch (it was released and taken again): stop, then start anew.
        let mut c = Case::new(vec![lease(0, Some("a"), 5)], &["a"], &["a"]);
        c.readers.insert("shard-0000".into(), reader("a", 3, None));
        let actions = c.decide();
        assert_eq!(actions[0], Action::Stop { shard: "shard-0000".into() });
        assert!(matches!(&actions[1], Action::Start { lease, .. } if lease.epoch == 5));
    }

    #[test]
    fn a_live_handoff_revokes_once_then_releases_after_the_grace() {
        let mut l = lease(0, Some("a"), 2);
        l.value.handoff_to = Some("b".into());
        let mut c = Case::new(vec![l], &["a", "b"], &["a"]);
        c.readers.insert("shard-0000".into(), reader("a", 2, None));
        assert_eq!(c.decide(), vec![Action::Revoke { shard: "shard-0000".into() }]);
        let revoked = c.now;
        c.readers.insert("shard-0000".into(), reader("a", 2, Some(revoked)));
        c.now = revoked + Duration::from_secs(4);
        assert_eq!(c.decide(), vec![], "within the grace: wait for the client");
        c.now = revoked + Duration::from_secs(5);
        assert_eq!(
            c.decide(),
            vec![Action::Release {
                shard: "shard-0000".into(),
                session: "a".into(),
                epoch: 2,
                cause: ReleaseCause::GraceExpired
            }]
        );
    }

    #[test]
    fn a_handoff_to_a_session_that_left_revokes_nothing() {
        // The target left mid-handoff: no revoke is sent, the reader keeps going.
        let mut l = lease(0, Some("a"), 2);
        l.value.handoff_to = Some("gone".into());
        let mut c = Case::new(vec![l], &["a"], &["a"]);
        c.readers.insert("shard-0000".into(), reader("a", 2, None));
        assert_eq!(c.decide(), vec![]);
    }

    #[test]
    fn a_finished_lease_is_released_and_its_reader_not_stopped_twice() {
        let mut l = lease(0, Some("a"), 2);
        l.value.checkpoint = Checkpoint::ShardEnd;
        let mut c = Case::new(vec![l], &["a"], &["a"]);
        c.readers.insert("shard-0000".into(), reader("a", 2, None));
        assert_eq!(
            c.decide(),
            vec![Action::Release {
                shard: "shard-0000".into(),
                session: "a".into(),
                epoch: 2,
                cause: ReleaseCause::Finished
            }]
        );
    }

    #[test]
    fn leases_of_dead_owners_are_taken_and_live_ones_are_not() {
        let c = Case::new(vec![lease(0, Some("dead"), 1), lease(1, Some("b"), 1)], &["a", "b"], &["a"]);
        let actions = c.decide();
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert!(
            matches!(&actions[0], Action::Acquire { lease, owner_dead: true, .. } if lease.value.shard_id == "shard-0000")
        );
    }

    #[test]
    fn draining_takes_and_starts_nothing() {
        let mut c = Case::new(vec![lease(0, None, 0), lease(1, Some("a"), 1)], &["a"], &["a"]);
        c.draining = true;
        assert_eq!(c.decide(), vec![]);
    }

    #[test]
    fn readers_of_leases_no_longer_listed_stop() {
        let mut c = Case::new(vec![], &["a"], &["a"]);
        c.readers.insert("shard-0007".into(), reader("a", 1, None));
        assert_eq!(c.decide(), vec![Action::Stop { shard: "shard-0007".into() }]);
    }

    #[test]
    fn an_instance_that_cannot_renew_for_a_ttl_fences_itself() {
        // Store outage: renewals fail; after a whole TTL the readers must stop.
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        assert!(!self_fenced(None, t0, ttl), "never renewed yet: nothing held");
        assert!(!self_fenced(Some(t0), t0 + Duration::from_secs(9), ttl));
        assert!(self_fenced(Some(t0), t0 + ttl, ttl));
    }
}
