//! One conformance suite for every store backend, driven through `Leases` (the one place
//! the lease rules run), each against a real server: memory, SQLite, Redis, Redis Cluster
//! and PostgreSQL (see `store_common`).

mod store_common;

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::future::join_all;
use kinesis_butler::seqnum::SequenceNumber;
use kinesis_butler::store::{
    self, Checkpoint, GroupKey, Lease, LeaseWrite, Leases, SessionRecord, ShardInfo, StoreError, Versioned,
};
use store_common::{cluster_url, run, Backend, Cleanup, OPEN_TIMEOUT, TEST_TIMEOUT};

const S0: &str = "shardId-000000000000";
const S1: &str = "shardId-000000000001";
const S2: &str = "shardId-000000000002";
const S3: &str = "shardId-000000000003";
const BIG: &str = "49590338271490256608559692538361571095921575989136588898";
const BIG_NEXT: &str = "49590338271490256608559692538361571095921575989136588899";

/// Expands the whole suite into a module per backend, so failures name the backend.
macro_rules! conformance_tests {
    ($backend:ident, $open:ident) => {
        mod $backend {
            conformance_tests!(@each $open:
                sync_shards_creates_and_updates,
                write_leases_is_compare_and_set,
                acquire_race_has_one_winner,
                checkpoint_is_fenced_by_owner_and_epoch,
                checkpoint_never_moves_backwards,
                leases_of_dead_owners_are_acquirable,
                finished_lease_is_never_acquirable,
                acquire_many_leases_in_one_call,
                release_frees_or_hands_off,
                sessions_put_beat_list_delete,
                drop_session_frees_leases_and_handoffs,
                stale_sessions_are_removed_at_the_version_seen,
                lease_generation_moves_with_lease_writes_only,
                changed_since_reads_hold_every_lease_written_since,
                liveness_follows_beats_on_the_observers_clock,
                ping_answers,
            );
        }
    };
    (@each $open:ident: $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::run(super::store_common::$open(), super::$test).await
            }
        )*
    };
}

conformance_tests!(memory, open_memory);
conformance_tests!(sqlite, open_sqlite);
conformance_tests!(redis, open_redis);
conformance_tests!(redis_cluster, open_redis_cluster);
conformance_tests!(postgres, open_postgres);
conformance_tests!(dynamodb, open_dynamodb);

// ---------------------------------------------------------------- helpers

fn group() -> GroupKey {
    GroupKey::new("app", "stream")
}

fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
    ShardInfo { shard_id: id.to_owned(), parent_shard_ids: parents.iter().map(|p| p.to_string()).collect(), closed }
}

fn at(sequence: &str, sub_sequence: u64) -> Checkpoint {
    Checkpoint::At { sequence: SequenceNumber::parse(sequence).unwrap(), sub_sequence }
}

fn session(id: &str, client_name: &str) -> SessionRecord {
    SessionRecord {
        session_id: id.to_owned(),
        instance_id: "instance-1".to_owned(),
        client_name: client_name.to_owned(),
        heartbeat: 0,
    }
}

async fn sync(l: &Leases, g: &GroupKey, ids: &[&str]) {
    let shards: Vec<ShardInfo> = ids.iter().map(|id| shard(id, &[], false)).collect();
    l.sync_shards(g, &shards).await.unwrap();
}

async fn read(l: &Leases, g: &GroupKey, shard_id: &str) -> Versioned<Lease> {
    l.get(g, shard_id).await.unwrap().unwrap_or_else(|| panic!("no lease {shard_id}"))
}

async fn lease(l: &Leases, g: &GroupKey, shard_id: &str) -> Lease {
    read(l, g, shard_id).await.value
}

/// Acquires with the lease as just read; `dead`: the caller judges its owner dead.
async fn try_take(l: &Leases, g: &GroupKey, shard_id: &str, owner: &str, dead: bool) -> Option<Lease> {
    let current = read(l, g, shard_id).await;
    l.acquire_many(g, &[(current, owner.to_owned(), dead)]).await.unwrap().remove(0)
}

async fn take(l: &Leases, g: &GroupKey, shard_id: &str, owner: &str) -> Lease {
    try_take(l, g, shard_id, owner, false).await.unwrap_or_else(|| panic!("{owner} could not acquire {shard_id}"))
}

async fn handoff(l: &Leases, g: &GroupKey, current: Versioned<Lease>, to: &str) -> bool {
    l.request_handoffs(g, &[(current, to.to_owned())]).await.unwrap()[0]
}

fn ids(sessions: &[Versioned<SessionRecord>]) -> Vec<&str> {
    sessions.iter().map(|s| s.value.session_id.as_str()).collect()
}

// ---------------------------------------------------------------- tests

async fn sync_shards_creates_and_updates(l: Leases) {
    let g = group();
    l.sync_shards(&g, &[]).await.unwrap();
    sync(&l, &g, &[S1, S0]).await;
    let leases = l.list(&g).await.unwrap();
    assert_eq!(leases.iter().map(|l| l.value.shard_id.as_str()).collect::<Vec<_>>(), [S0, S1], "shard id order");
    for v in &leases {
        let l = &v.value;
        assert_eq!(
            (v.version, l.owner.as_deref(), l.epoch, &l.checkpoint, l.closed),
            (1, None, 0, &Checkpoint::None, false)
        );
        assert!(l.parent_shard_ids.is_empty() && l.handoff_to.is_none());
    }

    take(&l, &g, S0, "a").await;
    l.checkpoint(&g, S0, "a", 1, &at("100", 2)).await.unwrap();
    l.sync_shards(&g, &[shard(S0, &[], true), shard(S1, &[], false), shard(S2, &[S0, S1], false)]).await.unwrap();
    let l0 = lease(&l, &g, S0).await;
    assert_eq!((l0.owner.as_deref(), l0.epoch), (Some("a"), 1), "owner kept");
    assert_eq!(l0.checkpoint, at("100", 2), "checkpoint kept");
    assert!(l0.closed, "closed updated");
    assert_eq!(read(&l, &g, S1).await.version, 1, "an unchanged lease is not rewritten");
    let l2 = lease(&l, &g, S2).await;
    assert_eq!(l2.parent_shard_ids, [S0, S1]);
    assert_eq!((l2.owner, l2.epoch, l2.closed), (None, 0, false));

    // Parents are replaced; a closed shard stays closed.
    l.sync_shards(&g, &[shard(S0, &["shardId-parent"], false)]).await.unwrap();
    let l0 = lease(&l, &g, S0).await;
    assert_eq!((l0.parent_shard_ids, l0.closed, l0.epoch), (vec!["shardId-parent".to_owned()], true, 1));
    assert_eq!(l.list(&g).await.unwrap().len(), 3);

    // Another app reading the same stream has its own leases.
    let other = GroupKey::new("other", "stream");
    assert!(l.list(&other).await.unwrap().is_empty());
    sync(&l, &other, &[S0]).await;
    assert_eq!(lease(&l, &other, S0).await.epoch, 0);
    assert_eq!(lease(&l, &g, S0).await.owner.as_deref(), Some("a"));
}

async fn write_leases_is_compare_and_set(l: Leases) {
    let (g, s) = (group(), l.store().clone());
    let new = |id: &str| Lease::new(&shard(id, &[], false));
    let w = |lease: Lease, expected| LeaseWrite { lease, expected };
    let got = s.write_leases(&g, &[w(new(S0), None), w(new(S1), Some(1))]).await.unwrap();
    assert_eq!(got, [Some(1), None], "create; update of a lease that does not exist");
    // Each shard at most once per call; each write stands on its own.
    let owned = Lease { owner: Some("x".into()), epoch: 7, ..new(S0) };
    let got = s.write_leases(&g, &[w(new(S1), Some(3)), w(owned.clone(), Some(1)), w(new(S2), None)]).await.unwrap();
    assert_eq!(got, [None, Some(2), Some(1)], "each write on its own");
    assert_eq!(s.write_leases(&g, &[w(new(S0), None)]).await.unwrap(), [None], "create of an existing lease");
    assert_eq!(s.write_leases(&g, &[w(new(S0), Some(1))]).await.unwrap(), [None], "stale version");
    assert_eq!(read(&l, &g, S0).await, Versioned { version: 2, value: owned }, "the refused writes changed nothing");
    assert_eq!(s.read_lease(&g, S1).await.unwrap(), None);
    assert!(s.write_leases(&g, &[]).await.unwrap().is_empty());
    assert_eq!(s.read_lease(&GroupKey::new("other", "stream"), S0).await.unwrap(), None, "groups apart (app)");
    assert_eq!(s.read_lease(&GroupKey::new("app", "stream2"), S0).await.unwrap(), None, "groups apart (stream)");
}

async fn acquire_race_has_one_winner(l: Leases) {
    let g = group();
    sync(&l, &g, &[S0]).await;
    for (round, dead) in [(0u64, false), (1, true)] {
        let current = read(&l, &g, S0).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let tasks = (0..16).map(|i| {
            let (l, g, barrier, current) = (l.clone(), g.clone(), barrier.clone(), current.clone());
            tokio::spawn(async move {
                let owner = format!("session-{round}-{i}");
                barrier.wait().await;
                let won = l.acquire_many(&g, &[(current, owner.clone(), dead)]).await.unwrap().remove(0);
                won.map(|l| (owner, l))
            })
        });
        let winners: Vec<_> = join_all(tasks).await.into_iter().filter_map(|r| r.unwrap()).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner, got {winners:?}");
        let (owner, won) = &winners[0];
        assert_eq!((won.owner.as_ref(), won.epoch), (Some(owner), round + 1));
        assert_eq!(&lease(&l, &g, S0).await, won, "stored lease is the winner's");
    }
}

async fn checkpoint_is_fenced_by_owner_and_epoch(l: Leases) {
    let g = group();
    sync(&l, &g, &[S0]).await;
    let err = l.checkpoint(&g, S0, "a", 0, &at("1", 0)).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { current_owner: None, .. }), "a free lease: {err:?}");
    take(&l, &g, S0, "a").await;
    l.checkpoint(&g, S0, "a", 1, &at("100", 0)).await.unwrap();

    let err = l.checkpoint(&g, S0, "a", 0, &at("200", 0)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::LeaseLost { shard_id, session, epoch: 0, current_owner: Some(o), current_epoch: 1 }
            if shard_id == S0 && session == "a" && o == "a"),
        "stale epoch: {err:?}"
    );
    let err = l.checkpoint(&g, S0, "b", 1, &at("200", 0)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::LeaseLost { session, epoch: 1, current_owner: Some(o), current_epoch: 1, .. }
            if session == "b" && o == "a"),
        "non-owner: {err:?}"
    );
    assert_eq!(lease(&l, &g, S0).await.checkpoint, at("100", 0), "refused checkpoints change nothing");

    let err = l.checkpoint(&g, "shardId-unknown", "a", 1, &at("200", 0)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { app, stream, shard_id }
            if app == "app" && stream == "stream" && shard_id == "shardId-unknown"),
        "unknown shard: {err:?}"
    );

    // After a release the old owner is fenced off, also at the new epoch.
    l.release(&g, S0, "a", 1).await.unwrap().unwrap();
    for epoch in [1, 2] {
        let err = l.checkpoint(&g, S0, "a", epoch, &at("200", 0)).await.unwrap_err();
        assert!(
            matches!(err, StoreError::LeaseLost { current_owner: None, current_epoch: 2, .. }),
            "released, epoch {epoch}: {err:?}"
        );
    }
    assert_eq!(lease(&l, &g, S0).await.checkpoint, at("100", 0));
}

async fn checkpoint_never_moves_backwards(l: Leases) {
    let g = group();
    sync(&l, &g, &[S0]).await;
    take(&l, &g, S0, "a").await;
    let cp = |c: Checkpoint| {
        let (l, g) = (l.clone(), g.clone());
        async move { l.checkpoint(&g, S0, "a", 1, &c).await }
    };
    let regression = |r: Result<(), StoreError>, stored: &str, requested: &str| match r {
        Err(StoreError::Regression { shard_id, stored: st, requested: rq }) => {
            assert_eq!((shard_id.as_str(), st.as_str(), rq.as_str()), (S0, stored, requested))
        }
        other => panic!("expected a regression from {stored:?} to {requested:?}, got {other:?}"),
    };

    cp(at(BIG, 5)).await.unwrap();
    // As strings "9999" > "4959…", as numbers it is far smaller.
    regression(cp(at("9999", 0)).await, BIG, "9999");
    regression(cp(at("18446744073709551615", 9)).await, BIG, "18446744073709551615");
    regression(cp(at(BIG, 4)).await, BIG, BIG);
    regression(cp(Checkpoint::None).await, BIG, "");
    assert_eq!(lease(&l, &g, S0).await.checkpoint, at(BIG, 5));
    cp(at(BIG, 5)).await.expect("the same checkpoint again");
    cp(at(BIG, 6)).await.expect("a higher sub-sequence");
    cp(at(BIG_NEXT, 0)).await.expect("a higher sequence number");
    regression(cp(at(BIG, 9)).await, BIG_NEXT, BIG);
    assert_eq!(lease(&l, &g, S0).await.checkpoint, at(BIG_NEXT, 0));
    cp(at(&format!("1{BIG}"), 0)).await.expect("a longer number");
    cp(Checkpoint::ShardEnd).await.expect("SHARD_END after a number");
    regression(cp(at(&format!("9{BIG}"), 0)).await, "SHARD_END", &format!("9{BIG}"));
    cp(Checkpoint::ShardEnd).await.expect("SHARD_END again");
    assert_eq!(lease(&l, &g, S0).await.checkpoint, Checkpoint::ShardEnd);
}

async fn leases_of_dead_owners_are_acquirable(l: Leases) {
    let g = group();
    sync(&l, &g, &[S0]).await;
    let stale = read(&l, &g, S0).await;
    take(&l, &g, S0, "a").await;
    assert!(try_take(&l, &g, S0, "b", false).await.is_none(), "live owner");
    let refused = l.acquire_many(&g, &[(stale, "b".to_owned(), true)]).await.unwrap();
    assert_eq!(refused, [None], "read before the owner took it");
    let won = try_take(&l, &g, S0, "b", true).await.expect("dead owner");
    assert_eq!((won.owner.as_deref(), won.epoch), (Some("b"), 2));
    assert_eq!(lease(&l, &g, S0).await, won);
    assert!(matches!(
        l.checkpoint(&g, S0, "a", 1, &at("1", 0)).await,
        Err(StoreError::LeaseLost { current_epoch: 2, .. })
    ));
    assert!(l.get(&g, "shardId-unknown").await.unwrap().is_none(), "unknown shard");
}

async fn finished_lease_is_never_acquirable(l: Leases) {
    let g = group();
    sync(&l, &g, &[S0, S1]).await;
    // Finished and released.
    take(&l, &g, S0, "a").await;
    l.checkpoint(&g, S0, "a", 1, &Checkpoint::ShardEnd).await.unwrap();
    let free = l.release(&g, S0, "a", 1).await.unwrap().unwrap();
    assert_eq!((free.owner, free.epoch), (None, 2));
    for dead in [false, true] {
        assert!(try_take(&l, &g, S0, "b", dead).await.is_none(), "finished, free");
    }
    // Finished and its owner dead.
    take(&l, &g, S1, "a").await;
    l.checkpoint(&g, S1, "a", 1, &Checkpoint::ShardEnd).await.unwrap();
    assert!(try_take(&l, &g, S1, "b", true).await.is_none(), "finished, owner dead");
    let l1 = lease(&l, &g, S1).await;
    assert_eq!((l1.owner.as_deref(), l1.epoch, l1.checkpoint), (Some("a"), 1, Checkpoint::ShardEnd));
}

async fn acquire_many_leases_in_one_call(l: Leases) {
    // More than the scripts' chunk size (1,000), so chunking is exercised.
    let g = group();
    let shard_ids: Vec<String> = (0..2500).map(|i| format!("shardId-{i:012}")).collect();
    let shards: Vec<ShardInfo> = shard_ids.iter().map(|id| shard(id, &[], false)).collect();
    l.sync_shards(&g, &shards).await.unwrap();
    let read_all = l.list(&g).await.unwrap();
    assert_eq!(read_all.len(), 2500);
    let wants: Vec<_> = read_all.iter().map(|v| (v.clone(), "a".to_owned(), false)).collect();
    let got = l.acquire_many(&g, &wants).await.unwrap();
    assert!(got.iter().all(|l| l.as_ref().is_some_and(|l| l.owner.as_deref() == Some("a") && l.epoch == 1)));
    assert!(l.acquire_many(&g, &wants).await.unwrap().iter().all(Option::is_none), "stale reads");

    // Every other lease re-read (and its owner judged dead): exactly those move to "b".
    let fresh = l.list(&g).await.unwrap();
    let mixed: Vec<_> = (0..2500)
        .map(|i| (if i % 2 == 0 { fresh[i].clone() } else { read_all[i].clone() }, "b".to_owned(), true))
        .collect();
    let got = l.acquire_many(&g, &mixed).await.unwrap();
    assert!(got.iter().enumerate().all(|(i, l)| l.is_some() == (i % 2 == 0)));
    let now = l.list(&g).await.unwrap();
    assert!(now.iter().enumerate().all(|(i, v)| {
        let (owner, epoch) = if i % 2 == 0 { ("b", 2) } else { ("a", 1) };
        v.value.owner.as_deref() == Some(owner) && v.value.epoch == epoch && v.version == epoch + 1
    }));
}

async fn release_frees_or_hands_off(l: Leases) {
    let g = group();
    sync(&l, &g, &[S0, S1, S2]).await;
    let held_a = take(&l, &g, S0, "a").await;
    assert!(l.release(&g, S0, "b", 1).await.unwrap().is_none(), "non-owner");
    assert!(l.release(&g, S0, "a", 0).await.unwrap().is_none(), "stale epoch");
    assert_eq!(lease(&l, &g, S0).await, held_a, "refused releases change nothing");

    let free = l.release(&g, S0, "a", 1).await.unwrap().expect("released");
    assert_eq!((free.owner.as_deref(), free.epoch, free.handoff_to.as_deref()), (None, 2, None));
    assert_eq!(lease(&l, &g, S0).await, free);
    assert!(l.release(&g, S0, "a", 1).await.unwrap().is_none(), "already released");

    // A graceful handoff.
    let stale = read(&l, &g, S0).await;
    take(&l, &g, S0, "a").await;
    let before = read(&l, &g, S0).await;
    assert!(!handoff(&l, &g, stale, "b").await, "read at an older epoch");
    assert_eq!(lease(&l, &g, S0).await.handoff_to, None);
    assert!(handoff(&l, &g, before.clone(), "b").await);
    assert!(!handoff(&l, &g, before, "c").await, "read before the first request");
    let asked = lease(&l, &g, S0).await;
    assert_eq!((asked.owner.as_deref(), asked.epoch, asked.handoff_to.as_deref()), (Some("a"), 3, Some("b")));
    l.checkpoint(&g, S0, "a", 3, &at("4", 0)).await.expect("the owner checkpoints while asked to hand off");
    let moved = l.release(&g, S0, "a", 3).await.unwrap().expect("handed off");
    assert_eq!((moved.owner.as_deref(), moved.epoch, moved.handoff_to.as_deref()), (Some("b"), 4, None));
    assert_eq!(moved.checkpoint, at("4", 0), "handed off at the last checkpoint");
    assert_eq!(lease(&l, &g, S0).await, moved);
    l.checkpoint(&g, S0, "b", 4, &at("5", 0)).await.expect("the new owner checkpoints");
    assert!(l.checkpoint(&g, S0, "a", 3, &at("6", 0)).await.is_err(), "the old owner is fenced");

    // No handoff of a free lease; a finished lease is freed, not handed.
    assert!(!handoff(&l, &g, read(&l, &g, S1).await, "b").await, "free lease");
    take(&l, &g, S2, "a").await;
    assert!(handoff(&l, &g, read(&l, &g, S2).await, "b").await);
    l.checkpoint(&g, S2, "a", 1, &Checkpoint::ShardEnd).await.unwrap();
    let ended = l.release(&g, S2, "a", 1).await.unwrap().unwrap();
    assert_eq!((ended.owner, ended.epoch, ended.handoff_to), (None, 2, None));
    let err = l.release(&g, "shardId-unknown", "a", 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "unknown shard: {err:?}");
}

async fn sessions_put_beat_list_delete(l: Leases) {
    let (g, s) = (group(), l.store().clone());
    let other = GroupKey::new("app", "other-stream");
    l.put_session(&g, &session("s2", "two")).await.unwrap();
    l.put_session(&g, &session("s1", "one")).await.unwrap();
    l.put_session(&other, &session("s9", "nine")).await.unwrap();
    let all = l.sessions(&g).await.unwrap();
    assert_eq!(
        all,
        [Versioned { version: 1, value: session("s1", "one") }, Versioned { version: 1, value: session("s2", "two") }]
    );

    let missing = l.beat(&g, &["s1".to_owned(), "ghost".to_owned(), "s9".to_owned()]).await.unwrap();
    assert_eq!(missing, ["ghost", "s9"], "beats create nothing, and stay in their group");
    assert!(l.beat(&g, &[]).await.unwrap().is_empty());
    l.beat(&g, &["s1".to_owned()]).await.unwrap();
    let all = l.sessions(&g).await.unwrap();
    assert_eq!(ids(&all), ["s1", "s2"]);
    assert_eq!((all[0].version, all[0].value.heartbeat), (3, 2));
    assert_eq!((all[1].version, all[1].value.heartbeat), (1, 0));

    let mut again = session("s2", "two: again");
    again.instance_id = "instance-2".to_owned();
    l.put_session(&g, &again).await.unwrap();
    assert_eq!(l.sessions(&g).await.unwrap()[1], Versioned { version: 2, value: again.clone() });
    assert_eq!(s.write_session(&g, &again, None).await.unwrap(), None, "create of an existing record");
    assert_eq!(s.write_session(&g, &again, Some(1)).await.unwrap(), None, "stale version");
    assert_eq!(s.write_session(&g, &again, Some(2)).await.unwrap(), Some(3));

    assert!(!s.delete_session(&g, "s2", Some(2)).await.unwrap(), "stale version");
    assert!(s.delete_session(&g, "s2", Some(3)).await.unwrap());
    assert!(!s.delete_session(&g, "s2", None).await.unwrap(), "already gone");
    assert!(s.delete_session(&g, "s1", None).await.unwrap());
    assert!(l.sessions(&g).await.unwrap().is_empty());
    assert_eq!(ids(&l.sessions(&other).await.unwrap()), ["s9"]);
    l.put_session(&g, &session("s3", "")).await.unwrap();
    assert_eq!(l.sessions(&g).await.unwrap()[0].value, session("s3", ""), "an empty client name kept");
}

async fn drop_session_frees_leases_and_handoffs(l: Leases) {
    let g = group();
    let other = GroupKey::new("other", "stream");
    sync(&l, &g, &[S0, S1, S2, S3]).await;
    sync(&l, &other, &[S0]).await;
    for id in ["s1", "s2"] {
        l.put_session(&g, &session(id, id)).await.unwrap();
    }
    take(&l, &g, S0, "s1").await;
    take(&l, &g, S1, "s1").await;
    take(&l, &g, S2, "s2").await;
    take(&l, &g, S3, "s2").await;
    take(&l, &other, S0, "s1").await;
    assert!(handoff(&l, &g, read(&l, &g, S2).await, "s1").await);
    assert!(handoff(&l, &g, read(&l, &g, S3).await, "s3").await);

    l.drop_session(&g, "s1").await.unwrap();
    let view: Vec<_> =
        l.list(&g).await.unwrap().into_iter().map(|v| (v.value.owner, v.value.epoch, v.value.handoff_to)).collect();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(view, [(None, 2, None), (None, 2, None), (some("s2"), 1, None), (some("s2"), 1, some("s3"))]);
    assert_eq!(ids(&l.sessions(&g).await.unwrap()), ["s2"]);
    assert!(matches!(
        l.checkpoint(&g, S0, "s1", 1, &at("1", 0)).await,
        Err(StoreError::LeaseLost { current_owner: None, current_epoch: 2, .. })
    ));
    let kept = lease(&l, &other, S0).await;
    assert_eq!((kept.owner.as_deref(), kept.epoch), (Some("s1"), 1), "other groups are untouched");

    l.drop_session(&g, "never-existed").await.unwrap();
    assert_eq!(l.list(&g).await.unwrap().len(), 4);
}

async fn stale_sessions_are_removed_at_the_version_seen(l: Leases) {
    let g = group();
    sync(&l, &g, &[S0, S1]).await;
    for id in ["s1", "s2", "s3"] {
        l.put_session(&g, &session(id, id)).await.unwrap();
    }
    take(&l, &g, S0, "s1").await;
    take(&l, &g, S1, "s2").await;
    let seen: Vec<(String, u64)> =
        l.sessions(&g).await.unwrap().iter().map(|s| (s.value.session_id.clone(), s.version)).collect();
    l.beat(&g, &["s2".to_owned()]).await.unwrap();
    let removed = l.remove_stale_sessions(&g, &seen, &["s3".to_owned()]).await.unwrap();
    assert_eq!(removed, ["s1"], "s2 beat in between; s3 is local");
    assert_eq!(ids(&l.sessions(&g).await.unwrap()), ["s2", "s3"]);
    let view: Vec<_> = l.list(&g).await.unwrap().into_iter().map(|v| (v.value.owner, v.value.epoch)).collect();
    assert_eq!(view, [(None, 2), (Some("s2".to_owned()), 1)]);
}

async fn lease_generation_moves_with_lease_writes_only(l: Leases) {
    let g = group();
    let g0 = l.generation(&g).await.unwrap();
    assert_eq!(g0, 0, "0 before the first write");
    sync(&l, &g, &[S0]).await;
    let g1 = l.generation(&g).await.unwrap();
    assert_ne!(g0, g1, "sync wrote a lease");
    l.put_session(&g, &session("s1", "one")).await.unwrap();
    l.beat(&g, &["s1".to_owned()]).await.unwrap();
    sync(&l, &g, &[S0]).await;
    let stale = read(&l, &g, S0).await;
    take(&l, &g, S0, "s1").await;
    let g2 = l.generation(&g).await.unwrap();
    assert_ne!(g1, g2, "an acquire is a lease write");
    assert!(l.acquire_many(&g, &[(stale, "s2".to_owned(), true)]).await.unwrap()[0].is_none());
    let conflicting = LeaseWrite { lease: Lease::new(&shard(S0, &[], false)), expected: Some(99) };
    assert_eq!(l.store().write_leases(&g, &[conflicting]).await.unwrap(), [None]);
    l.beat(&g, &["s1".to_owned()]).await.unwrap();
    assert_eq!(l.generation(&g).await.unwrap(), g2, "no lease written: sessions, refusals, no-op syncs");
    assert_eq!(l.generation(&GroupKey::new("app", "elsewhere")).await.unwrap(), 0);
}

async fn changed_since_reads_hold_every_lease_written_since(l: Leases) {
    let (g, store) = (group(), l.store().clone());
    assert_eq!(store.read_leases_since(&g, 0).await.unwrap(), (0, vec![]), "nothing written yet");
    sync(&l, &g, &[S0, S1, S2]).await;
    let (g1, all) = store.read_leases_since(&g, 0).await.unwrap();
    assert_eq!(all, l.list(&g).await.unwrap(), "since 0: every lease");
    assert_eq!(store.read_leases_since(&g, g1).await.unwrap(), (g1, vec![]), "nothing since");
    take(&l, &g, S1, "s1").await;
    sync(&l, &g, &[S0, S1, S2, S3]).await;
    let (g2, changed) = store.read_leases_since(&g, g1).await.unwrap();
    assert!(g2 > g1);
    let now = l.list(&g).await.unwrap();
    let ids: Vec<&str> = changed.iter().map(|v| v.value.shard_id.as_str()).collect();
    assert!(ids.contains(&S1) && ids.contains(&S3), "the acquired and the new lease: {ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in shard id order: {ids:?}");
    for lease in &changed {
        assert!(now.contains(lease), "as stored now: {lease:?}");
    }
    assert_eq!(store.read_leases_since(&g, g2).await.unwrap(), (g2, vec![]));
}

/// The old expiry-by-time cases as liveness by observation: what `Liveness` makes of this
/// backend's records, on explicit instants of the observer's monotonic clock.
async fn liveness_follows_beats_on_the_observers_clock(l: Leases) {
    use std::time::Duration;
    use tokio::time::Instant;
    let (g, ttl, secs) = (group(), Duration::from_secs(10), Duration::from_secs);
    for id in ["s1", "s2"] {
        l.put_session(&g, &session(id, id)).await.unwrap();
    }
    let mut live = kinesis_butler::coordination::liveness::Liveness::new(ttl);
    let t0 = Instant::now();
    live.observe(&l.sessions(&g).await.unwrap(), [], t0);
    assert!(live.is_alive("s1", t0) && live.is_alive("s2", t0), "first sight counts as a change");
    for round in 1..=3u64 {
        l.beat(&g, &["s1".to_owned()]).await.unwrap();
        live.observe(&l.sessions(&g).await.unwrap(), [], t0 + secs(6 * round));
    }
    let now = t0 + secs(18);
    assert!(live.is_alive("s1", now + secs(9)), "beaten every round");
    assert!(!live.is_alive("s2", now), "never beaten: dead after the TTL");
    assert_eq!(live.stale(now, secs(18)), [("s2".to_owned(), 1)], "a cleanup candidate at the version seen");

    // A dead owner's lease is acquirable; a live owner's is not.
    sync(&l, &g, &[S0, S1]).await;
    take(&l, &g, S0, "s1").await;
    take(&l, &g, S1, "s2").await;
    let leases = l.list(&g).await.unwrap();
    let wants: Vec<_> = leases
        .iter()
        .map(|v| {
            let dead = !live.is_alive(v.value.owner.as_deref().unwrap(), now);
            (v.clone(), "s3".to_owned(), dead)
        })
        .collect();
    let got = l.acquire_many(&g, &wants).await.unwrap();
    assert_eq!(got.iter().map(Option::is_some).collect::<Vec<_>>(), [false, true]);

    // A dropped session's record is gone: it is dead at once.
    l.drop_session(&g, "s1").await.unwrap();
    live.observe(&l.sessions(&g).await.unwrap(), [], now + secs(1));
    assert!(!live.is_alive("s1", now + secs(1)));
}

async fn ping_answers(l: Leases) {
    l.store().ping().await.unwrap();
}

// ---------------------------------------------------------------- opening

/// Opens `url` and expects it to fail.
async fn open_error(url: &str) -> StoreError {
    match tokio::time::timeout(OPEN_TIMEOUT, store::open(url)).await.expect("open timed out") {
        Ok(_) => panic!("{url} opened"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn unreachable_servers_are_unavailable_and_passwords_stay_secret() {
    for url in [
        "redis://:s3cret-pw@127.0.0.1:1/?prefix=x",
        "redis+cluster://:s3cret-pw@127.0.0.1:1,127.0.0.1:2/?prefix=x",
        "postgres://postgres:s3cret-pw@127.0.0.1:1/test?schema=x",
    ] {
        let err = open_error(url).await;
        assert!(matches!(err, StoreError::Unavailable(_)), "{url}: {err:?}");
        assert!(!err.to_string().contains("s3cret-pw"), "password in {err}");
    }
}

#[tokio::test]
async fn unsupported_options_are_clear_errors() {
    let err = open_error("postgres://postgres:s3cret-pw@127.0.0.1:5432/test?sslrootcert=/tmp/ca.pem").await;
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("sslmode=require")), "{err:?}");
    assert!(!err.to_string().contains("s3cret-pw"), "password in {err}");
    let err = open_error("redis://127.0.0.1:6379/?prefix={x}").await;
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let err = open_error(&format!("{}?prefix={{x}}", cluster_url())).await;
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let err = open_error("redis+cluster:///?prefix=x").await;
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("host:port")), "{err:?}");
    let err = open_error("mysql://u:s3cret-pw@h/db").await;
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("unsupported")), "{err:?}");
    assert!(!err.to_string().contains("s3cret-pw"), "password in {err}");
}

#[tokio::test]
async fn a_group_keeps_its_keys_in_one_cluster_slot() {
    // Groups whose tags hash to different nodes all work (their scripts touch two keys).
    let b = store_common::open_redis_cluster().await;
    let l = b.leases();
    let groups: Vec<GroupKey> = (0..12).map(|i| GroupKey::new(format!("app-{i}"), "stream")).collect();
    for g in &groups {
        sync(&l, g, &[S0]).await;
        take(&l, g, S0, "a").await;
    }
    let owners: BTreeSet<_> =
        join_all(groups.iter().map(|g| lease(&l, g, S0))).await.into_iter().map(|l| l.owner).collect();
    b.cleanup.run().await;
    assert_eq!(owners, BTreeSet::from([Some("a".to_owned())]));
}

// ---------------------------------------------------------------- watch and notify

/// A `notify` on one store handle wakes a `watch` on another (two connections, as two
/// instances would have), and only for the group watched.
async fn notify_wakes_another_handles_watch(a: store_common::Backend, b: store_common::Backend) {
    use futures::StreamExt;
    use std::time::Duration;
    let within = Duration::from_secs(10);
    let (g, other) = (group(), GroupKey::new("app", "another-stream"));
    let mut changes = a.store.watch(&g).expect("this backend can watch");
    tokio::time::timeout(within, changes.next()).await.expect("subscribed in time").expect("a first wake");
    b.store.notify(&other).await.unwrap();
    b.store.notify(&g).await.unwrap();
    tokio::time::timeout(within, changes.next()).await.expect("woken in time").expect("a wake");
    // The other group's notify did not wake it: nothing more is queued.
    let more = tokio::time::timeout(Duration::from_millis(200), changes.next()).await;
    assert!(more.is_err(), "woken without a notify of its group: {more:?}");
    drop(changes);
    a.cleanup.run().await;
}

/// Opens a backend and a second handle on the same data (`url_for` makes its URL from the
/// first one's prefix or schema), and runs the watch test on the two.
async fn watch_test(open: impl std::future::Future<Output = Backend>, url_for: impl Fn(&str) -> String) {
    let a = tokio::time::timeout(OPEN_TIMEOUT, open).await.expect("opened in time");
    let (Cleanup::Redis(name) | Cleanup::RedisCluster(name) | Cleanup::Postgres(name)) = &a.cleanup else {
        unreachable!("a backend with a server")
    };
    let b = store::open(&url_for(name)).await.expect("a second handle");
    let test = notify_wakes_another_handles_watch(a, Backend { store: b, cleanup: Cleanup::Nothing });
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("in time");
}

#[tokio::test]
async fn redis_notify_wakes_a_watch() {
    watch_test(store_common::open_redis(), |p| format!("{}?prefix={p}", store_common::REDIS_URL)).await
}

#[tokio::test]
async fn redis_cluster_notify_wakes_a_watch() {
    watch_test(store_common::open_redis_cluster(), |p| format!("{}?prefix={p}", cluster_url())).await
}

#[tokio::test]
async fn postgres_notify_wakes_a_watch() {
    watch_test(store_common::open_postgres(), |s| format!("{}?schema={s}", store_common::POSTGRES_URL)).await
}
