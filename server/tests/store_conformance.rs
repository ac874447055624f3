//! One conformance suite for every `LeaseStore` backend, each against a real server:
//! SQLite (a temporary file), Redis on 127.0.0.1:6379 (a key prefix per test) and
//! PostgreSQL on 127.0.0.1:5432, database `test` (a schema per test). A backend that cannot
//! be reached fails its tests.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::FutureExt;
use kinesis_butler::seqnum::SequenceNumber;
use kinesis_butler::store::{
    self, Checkpoint, GroupKey, HeldLease, Lease, LeaseStore, SessionRecord, ShardInfo, StoreError,
};

type Store = Arc<dyn LeaseStore>;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";
const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

const S0: &str = "shardId-000000000000";
const S1: &str = "shardId-000000000001";
const S2: &str = "shardId-000000000002";
const S3: &str = "shardId-000000000003";
const BIG: &str = "49590338271490256608559692538361571095921575989136588898";
const BIG_NEXT: &str = "49590338271490256608559692538361571095921575989136588899";

// ---------------------------------------------------------------- backends and harness

/// A store opened for one test, and how to remove its data afterwards.
struct Backend {
    store: Store,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(tempfile::TempDir),
    Redis(String),
    Postgres(String),
}

fn unique() -> String {
    format!("kbt_{}", uuid::Uuid::new_v4().simple())
}

async fn open_sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("butler.db").display());
    let store = store::open(&url).await.expect("open sqlite store");
    Backend { store, cleanup: Cleanup::Sqlite(dir) }
}

async fn open_redis() -> Backend {
    let prefix = unique();
    let store =
        store::open(&format!("{REDIS_URL}?prefix={prefix}")).await.expect("Redis must be running on 127.0.0.1:6379");
    Backend { store, cleanup: Cleanup::Redis(prefix) }
}

async fn open_postgres() -> Backend {
    let schema = unique();
    let store = store::open(&format!("{POSTGRES_URL}?schema={schema}"))
        .await
        .expect("PostgreSQL must be running on 127.0.0.1:5432 with database `test`");
    Backend { store, cleanup: Cleanup::Postgres(schema) }
}

impl Cleanup {
    async fn run(self) {
        match self {
            Cleanup::Sqlite(_dir) => {}
            Cleanup::Redis(prefix) => {
                let client = ::redis::Client::open(REDIS_URL).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let keys: Vec<String> =
                    ::redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
                if !keys.is_empty() {
                    ::redis::cmd("DEL").arg(keys).query_async::<()>(&mut conn).await.unwrap();
                }
            }
            Cleanup::Postgres(schema) => {
                let (client, conn) = tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
            }
        }
    }
}

/// Opens a backend, runs one test on it with a time bound, and cleans up even on failure.
async fn run<T, F>(open: impl Future<Output = Backend>, test: T)
where
    T: FnOnce(Store) -> F,
    F: Future<Output = ()>,
{
    let Backend { store, cleanup } = tokio::time::timeout(OPEN_TIMEOUT, open).await.expect("opening timed out");
    let outcome = tokio::time::timeout(TEST_TIMEOUT, AssertUnwindSafe(test(store)).catch_unwind()).await;
    tokio::time::timeout(OPEN_TIMEOUT, cleanup.run()).await.expect("cleanup timed out");
    match outcome {
        Err(_) => panic!("test did not finish within {TEST_TIMEOUT:?}"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Ok(Ok(())) => {}
    }
}

/// Expands the whole suite into a module per backend, so failures name the backend.
macro_rules! conformance_tests {
    ($backend:ident, $open:ident) => {
        mod $backend {
            conformance_tests!(@each $open:
                sync_shards_creates_and_updates,
                acquire_race_has_one_winner,
                checkpoint_is_fenced_by_owner_and_epoch,
                checkpoint_never_moves_backwards,
                expired_leases_are_acquirable,
                finished_lease_is_never_acquirable,
                renew_extends_held_and_reports_lost,
                renew_many_leases,
                release_frees_or_hands_off,
                sessions_put_renew_list,
                drop_session_frees_leases_and_handoffs,
                ping_answers,
            );
        }
    };
    (@each $open:ident: $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::run(super::$open(), super::$test).await
            }
        )*
    };
}

conformance_tests!(sqlite, open_sqlite);
conformance_tests!(redis, open_redis);
conformance_tests!(postgres, open_postgres);

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

fn held(shard_id: &str, owner: &str, epoch: u64) -> HeldLease {
    HeldLease { shard_id: shard_id.to_owned(), owner: owner.to_owned(), epoch }
}

fn session(id: &str, client_name: &str, expires_at_ms: i64) -> SessionRecord {
    SessionRecord {
        session_id: id.to_owned(),
        instance_id: "instance-1".to_owned(),
        client_name: client_name.to_owned(),
        expires_at_ms,
    }
}

async fn sync(s: &Store, g: &GroupKey, ids: &[&str]) {
    let shards: Vec<ShardInfo> = ids.iter().map(|id| shard(id, &[], false)).collect();
    s.sync_shards(g, &shards).await.unwrap();
}

async fn lease(s: &Store, g: &GroupKey, shard_id: &str) -> Lease {
    let leases = s.list_leases(g).await.unwrap();
    leases.into_iter().find(|l| l.shard_id == shard_id).unwrap_or_else(|| panic!("no lease {shard_id}"))
}

async fn take(s: &Store, g: &GroupKey, shard_id: &str, epoch: u64, owner: &str, expires_at_ms: i64) -> Lease {
    let l = s.acquire(g, shard_id, epoch, owner, 0, expires_at_ms).await.unwrap();
    l.unwrap_or_else(|| panic!("{owner} could not acquire {shard_id} at epoch {epoch}"))
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- tests

async fn sync_shards_creates_and_updates(s: Store) {
    let g = group();
    s.sync_shards(&g, &[]).await.unwrap();
    sync(&s, &g, &[S1, S0]).await;
    let leases = s.list_leases(&g).await.unwrap();
    assert_eq!(leases.iter().map(|l| l.shard_id.as_str()).collect::<Vec<_>>(), [S0, S1], "shard id order");
    for l in &leases {
        assert_eq!((l.owner.as_deref(), l.epoch, &l.checkpoint, l.closed), (None, 0, &Checkpoint::None, false));
        assert!(l.parent_shard_ids.is_empty() && l.handoff_to.is_none());
    }

    take(&s, &g, S0, 0, "a", 10_000).await;
    s.checkpoint(&g, S0, "a", 1, &at("100", 2)).await.unwrap();
    s.sync_shards(&g, &[shard(S0, &[], true), shard(S1, &[], false), shard(S2, &[S0, S1], false)]).await.unwrap();
    let l0 = lease(&s, &g, S0).await;
    assert_eq!((l0.owner.as_deref(), l0.epoch, l0.expires_at_ms), (Some("a"), 1, 10_000), "owner kept");
    assert_eq!(l0.checkpoint, at("100", 2), "checkpoint kept");
    assert!(l0.closed, "closed updated");
    let l2 = lease(&s, &g, S2).await;
    assert_eq!(l2.parent_shard_ids, [S0, S1]);
    assert_eq!((l2.owner, l2.epoch, l2.closed), (None, 0, false));

    // Parents are replaced; a closed shard stays closed.
    s.sync_shards(&g, &[shard(S0, &["shardId-parent"], false)]).await.unwrap();
    let l0 = lease(&s, &g, S0).await;
    assert_eq!((l0.parent_shard_ids, l0.closed, l0.epoch), (vec!["shardId-parent".to_owned()], true, 1));
    assert_eq!(s.list_leases(&g).await.unwrap().len(), 3);

    // Another app reading the same stream has its own leases.
    let other = GroupKey::new("other", "stream");
    assert!(s.list_leases(&other).await.unwrap().is_empty());
    sync(&s, &other, &[S0]).await;
    assert_eq!(lease(&s, &other, S0).await.epoch, 0);
    assert_eq!(lease(&s, &g, S0).await.owner.as_deref(), Some("a"));
}

async fn acquire_race_has_one_winner(s: Store) {
    let g = group();
    sync(&s, &g, &[S0]).await;
    for (round, now) in [(0u64, 0i64), (1, 20_000)] {
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let tasks = (0..16).map(|i| {
            let (s, g, barrier) = (s.clone(), g.clone(), barrier.clone());
            tokio::spawn(async move {
                let owner = format!("session-{round}-{i}");
                barrier.wait().await;
                s.acquire(&g, S0, round, &owner, now, now + 10_000).await.unwrap().map(|l| (owner, l))
            })
        });
        let winners: Vec<_> = join_all(tasks).await.into_iter().filter_map(|r| r.unwrap()).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner, got {winners:?}");
        let (owner, won) = &winners[0];
        assert_eq!((won.owner.as_ref(), won.epoch, won.expires_at_ms), (Some(owner), round + 1, now + 10_000));
        let stored = lease(&s, &g, S0).await;
        assert_eq!(&stored, won, "stored lease is the winner's");
    }
}

async fn checkpoint_is_fenced_by_owner_and_epoch(s: Store) {
    let g = group();
    sync(&s, &g, &[S0]).await;
    take(&s, &g, S0, 0, "a", 10_000).await;
    s.checkpoint(&g, S0, "a", 1, &at("100", 0)).await.unwrap();

    let err = s.checkpoint(&g, S0, "a", 0, &at("200", 0)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::LeaseLost { shard_id, session, epoch: 0, current_owner: Some(o), current_epoch: 1 }
            if shard_id == S0 && session == "a" && o == "a"),
        "stale epoch: {err:?}"
    );
    let err = s.checkpoint(&g, S0, "b", 1, &at("200", 0)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::LeaseLost { session, epoch: 1, current_owner: Some(o), current_epoch: 1, .. }
            if session == "b" && o == "a"),
        "non-owner: {err:?}"
    );
    assert_eq!(lease(&s, &g, S0).await.checkpoint, at("100", 0), "refused checkpoints change nothing");

    let err = s.checkpoint(&g, "shardId-unknown", "a", 1, &at("200", 0)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { app, stream, shard_id }
            if app == "app" && stream == "stream" && shard_id == "shardId-unknown"),
        "unknown shard: {err:?}"
    );

    // After a release the old owner is fenced off, also at the new epoch.
    s.release(&g, S0, "a", 1, 0).await.unwrap().unwrap();
    for epoch in [1, 2] {
        let err = s.checkpoint(&g, S0, "a", epoch, &at("200", 0)).await.unwrap_err();
        assert!(
            matches!(err, StoreError::LeaseLost { current_owner: None, current_epoch: 2, .. }),
            "released, epoch {epoch}: {err:?}"
        );
    }
    assert_eq!(lease(&s, &g, S0).await.checkpoint, at("100", 0));
}

async fn checkpoint_never_moves_backwards(s: Store) {
    let g = group();
    sync(&s, &g, &[S0]).await;
    take(&s, &g, S0, 0, "a", 10_000).await;
    let cp = |c: Checkpoint| {
        let s = s.clone();
        let g = g.clone();
        async move { s.checkpoint(&g, S0, "a", 1, &c).await }
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
    assert_eq!(lease(&s, &g, S0).await.checkpoint, at(BIG, 5));
    cp(at(BIG, 5)).await.expect("the same checkpoint again");
    cp(at(BIG, 6)).await.expect("a higher sub-sequence");
    cp(at(BIG_NEXT, 0)).await.expect("a higher sequence number");
    regression(cp(at(BIG, 9)).await, BIG_NEXT, BIG);
    assert_eq!(lease(&s, &g, S0).await.checkpoint, at(BIG_NEXT, 0));
    cp(at(&format!("1{BIG}"), 0)).await.expect("a longer number");
    cp(Checkpoint::ShardEnd).await.expect("SHARD_END after a number");
    regression(cp(at(&format!("9{BIG}"), 0)).await, "SHARD_END", &format!("9{BIG}"));
    cp(Checkpoint::ShardEnd).await.expect("SHARD_END again");
    assert_eq!(lease(&s, &g, S0).await.checkpoint, Checkpoint::ShardEnd);
}

async fn expired_leases_are_acquirable(s: Store) {
    let g = group();
    sync(&s, &g, &[S0]).await;
    assert!(s.acquire(&g, S0, 1, "a", 0, 1_000).await.unwrap().is_none(), "wrong epoch on a free lease");
    take(&s, &g, S0, 0, "a", 1_000).await;
    assert!(s.acquire(&g, S0, 1, "b", 999, 3_000).await.unwrap().is_none(), "live lease");
    assert!(s.acquire(&g, S0, 0, "b", 5_000, 7_000).await.unwrap().is_none(), "stale epoch");
    let l = s.acquire(&g, S0, 1, "b", 1_000, 3_000).await.unwrap().expect("expired at now");
    assert_eq!((l.owner.as_deref(), l.epoch, l.expires_at_ms), (Some("b"), 2, 3_000));
    assert_eq!(lease(&s, &g, S0).await, l);
    assert_eq!(s.renew(&g, &[held(S0, "a", 1)], 9_000).await.unwrap(), [S0], "old owner lost it");
    assert!(matches!(
        s.checkpoint(&g, S0, "a", 1, &at("1", 0)).await,
        Err(StoreError::LeaseLost { current_epoch: 2, .. })
    ));
    let err = s.acquire(&g, "shardId-unknown", 0, "a", 0, 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "unknown shard: {err:?}");
}

async fn finished_lease_is_never_acquirable(s: Store) {
    let g = group();
    sync(&s, &g, &[S0, S1]).await;
    // Finished and released.
    take(&s, &g, S0, 0, "a", 1_000).await;
    s.checkpoint(&g, S0, "a", 1, &Checkpoint::ShardEnd).await.unwrap();
    let free = s.release(&g, S0, "a", 1, 0).await.unwrap().unwrap();
    assert_eq!((free.owner, free.epoch), (None, 2));
    for now in [0, 1_000_000] {
        assert!(s.acquire(&g, S0, 2, "b", now, now + 1_000).await.unwrap().is_none(), "finished, free");
    }
    // Finished and expired.
    take(&s, &g, S1, 0, "a", 1_000).await;
    s.checkpoint(&g, S1, "a", 1, &Checkpoint::ShardEnd).await.unwrap();
    assert!(s.acquire(&g, S1, 1, "b", 5_000, 6_000).await.unwrap().is_none(), "finished, expired");
    let l1 = lease(&s, &g, S1).await;
    assert_eq!((l1.owner.as_deref(), l1.epoch, l1.checkpoint), (Some("a"), 1, Checkpoint::ShardEnd));
}

async fn renew_extends_held_and_reports_lost(s: Store) {
    let g = group();
    sync(&s, &g, &[S0, S1, S2]).await;
    for id in [S0, S1, S2] {
        take(&s, &g, id, 0, "a", 1_000).await;
    }
    // S1 is taken over after a release, S2 is re-acquired at a newer epoch.
    s.release(&g, S1, "a", 1, 0).await.unwrap().unwrap();
    take(&s, &g, S1, 2, "b", 4_000).await;
    let s2 = s.acquire(&g, S2, 1, "a", 2_000, 3_000).await.unwrap().unwrap();
    assert_eq!(s2.epoch, 2);

    let lost = s
        .renew(&g, &[held(S0, "a", 1), held(S1, "a", 1), held(S2, "a", 1), held("shardId-unknown", "a", 1)], 5_000)
        .await
        .unwrap();
    assert_eq!(lost.iter().cloned().collect::<BTreeSet<_>>(), set(&[S1, S2, "shardId-unknown"]));
    let leases = s.list_leases(&g).await.unwrap();
    let view: Vec<_> = leases.iter().map(|l| (l.owner.as_deref(), l.epoch, l.expires_at_ms)).collect();
    assert_eq!(view, [(Some("a"), 1, 5_000), (Some("b"), 3, 4_000), (Some("a"), 2, 3_000)]);

    assert!(s.renew(&g, &[], 6_000).await.unwrap().is_empty());
    assert!(s.renew(&g, &[held(S2, "a", 2), held(S0, "a", 1)], 7_000).await.unwrap().is_empty());
    assert_eq!(lease(&s, &g, S2).await.expires_at_ms, 7_000);
    assert_eq!(lease(&s, &g, S0).await.expires_at_ms, 7_000);
}

async fn renew_many_leases(s: Store) {
    let g = group();
    let ids: Vec<String> = (0..200).map(|i| format!("shardId-{i:012}")).collect();
    let shards: Vec<ShardInfo> = ids.iter().map(|id| shard(id, &[], false)).collect();
    s.sync_shards(&g, &shards).await.unwrap();
    for chunk in ids.chunks(25) {
        join_all(chunk.iter().map(|id| take(&s, &g, id, 0, "a", 1_000))).await;
    }
    let all: Vec<HeldLease> = ids.iter().map(|id| held(id, "a", 1)).collect();
    assert!(s.renew(&g, &all, 9_000).await.unwrap().is_empty());
    let leases = s.list_leases(&g).await.unwrap();
    assert_eq!(leases.len(), 200);
    assert!(leases.iter().all(|l| l.owner.as_deref() == Some("a") && l.epoch == 1 && l.expires_at_ms == 9_000));

    // Half of them named with a wrong owner: exactly those are lost and keep their expiry.
    let mixed: Vec<HeldLease> =
        ids.iter().enumerate().map(|(i, id)| held(id, if i % 2 == 0 { "a" } else { "z" }, 1)).collect();
    let lost: BTreeSet<String> = s.renew(&g, &mixed, 10_000).await.unwrap().into_iter().collect();
    assert_eq!(lost, ids.iter().skip(1).step_by(2).cloned().collect::<BTreeSet<_>>());
    let leases = s.list_leases(&g).await.unwrap();
    assert!(leases.iter().enumerate().all(|(i, l)| l.expires_at_ms == if i % 2 == 0 { 10_000 } else { 9_000 }));
}

async fn release_frees_or_hands_off(s: Store) {
    let g = group();
    sync(&s, &g, &[S0, S1, S2]).await;
    let held_a = take(&s, &g, S0, 0, "a", 1_000).await;
    assert!(s.release(&g, S0, "b", 1, 0).await.unwrap().is_none(), "non-owner");
    assert!(s.release(&g, S0, "a", 0, 0).await.unwrap().is_none(), "stale epoch");
    assert_eq!(lease(&s, &g, S0).await, held_a, "refused releases change nothing");

    let free = s.release(&g, S0, "a", 1, 0).await.unwrap().expect("released");
    assert_eq!((free.owner.as_deref(), free.epoch, free.expires_at_ms, free.handoff_to.as_deref()), (None, 2, 0, None));
    assert_eq!(lease(&s, &g, S0).await, free);
    assert!(s.release(&g, S0, "a", 1, 0).await.unwrap().is_none(), "already released");

    // A graceful handoff.
    take(&s, &g, S0, 2, "a", 1_000).await;
    assert!(!s.request_handoff(&g, S0, 2, "b").await.unwrap(), "stale epoch");
    assert_eq!(lease(&s, &g, S0).await.handoff_to, None);
    assert!(s.request_handoff(&g, S0, 3, "b").await.unwrap());
    let asked = lease(&s, &g, S0).await;
    assert_eq!((asked.owner.as_deref(), asked.epoch, asked.handoff_to.as_deref()), (Some("a"), 3, Some("b")));
    let moved = s.release(&g, S0, "a", 3, 7_000).await.unwrap().expect("handed off");
    assert_eq!(
        (moved.owner.as_deref(), moved.epoch, moved.expires_at_ms, moved.handoff_to.as_deref()),
        (Some("b"), 4, 7_000, None)
    );
    assert_eq!(lease(&s, &g, S0).await, moved);
    s.checkpoint(&g, S0, "b", 4, &at("5", 0)).await.expect("the new owner checkpoints");
    assert!(s.checkpoint(&g, S0, "a", 3, &at("6", 0)).await.is_err(), "the old owner is fenced");

    // No handoff of a free lease or an unknown shard; a finished lease is freed, not handed.
    assert!(!s.request_handoff(&g, S1, 0, "b").await.unwrap(), "free lease");
    assert!(!s.request_handoff(&g, "shardId-unknown", 0, "b").await.unwrap(), "unknown shard");
    take(&s, &g, S2, 0, "a", 1_000).await;
    assert!(s.request_handoff(&g, S2, 1, "b").await.unwrap());
    s.checkpoint(&g, S2, "a", 1, &Checkpoint::ShardEnd).await.unwrap();
    let ended = s.release(&g, S2, "a", 1, 7_000).await.unwrap().unwrap();
    assert_eq!((ended.owner, ended.epoch, ended.handoff_to), (None, 2, None));
    let err = s.release(&g, "shardId-unknown", "a", 1, 0).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "unknown shard: {err:?}");
}

async fn sessions_put_renew_list(s: Store) {
    let g = group();
    let other = GroupKey::new("app", "other-stream");
    s.put_session(&g, &session("s2", "two", 2_000)).await.unwrap();
    s.put_session(&g, &session("s1", "one", 1_000)).await.unwrap();
    s.put_session(&other, &session("s9", "nine", 5_000)).await.unwrap();
    assert_eq!(s.list_sessions(&g, 500).await.unwrap(), [session("s1", "one", 1_000), session("s2", "two", 2_000)]);
    assert_eq!(s.list_sessions(&g, 1_000).await.unwrap(), [session("s2", "two", 2_000)], "expired at now");

    s.renew_sessions(&g, &["s1".to_owned(), "ghost".to_owned()], 3_000).await.unwrap();
    s.renew_sessions(&g, &[], 4_000).await.unwrap();
    assert_eq!(s.list_sessions(&g, 2_500).await.unwrap(), [session("s1", "one", 3_000)], "renew creates nothing");

    let mut again = session("s2", "two again", 4_000);
    again.instance_id = "instance-2".to_owned();
    s.put_session(&g, &again).await.unwrap();
    assert_eq!(s.list_sessions(&g, 2_500).await.unwrap(), [session("s1", "one", 3_000), again]);
    assert_eq!(s.list_sessions(&other, 500).await.unwrap(), [session("s9", "nine", 5_000)]);
}

async fn drop_session_frees_leases_and_handoffs(s: Store) {
    let g = group();
    let other = GroupKey::new("other", "stream");
    sync(&s, &g, &[S0, S1, S2, S3]).await;
    sync(&s, &other, &[S0]).await;
    for id in ["s1", "s2"] {
        s.put_session(&g, &session(id, id, 10_000)).await.unwrap();
    }
    take(&s, &g, S0, 0, "s1", 10_000).await;
    take(&s, &g, S1, 0, "s1", 10_000).await;
    take(&s, &g, S2, 0, "s2", 10_000).await;
    take(&s, &g, S3, 0, "s2", 10_000).await;
    take(&s, &other, S0, 0, "s1", 10_000).await;
    assert!(s.request_handoff(&g, S2, 1, "s1").await.unwrap());
    assert!(s.request_handoff(&g, S3, 1, "s3").await.unwrap());

    s.drop_session(&g, "s1").await.unwrap();
    let view: Vec<_> = s.list_leases(&g).await.unwrap().into_iter().map(|l| (l.owner, l.epoch, l.handoff_to)).collect();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(view, [(None, 2, None), (None, 2, None), (some("s2"), 1, None), (some("s2"), 1, some("s3"))]);
    assert_eq!(lease(&s, &g, S0).await.expires_at_ms, 0);
    assert_eq!(s.list_sessions(&g, 0).await.unwrap(), [session("s2", "s2", 10_000)]);
    assert!(matches!(
        s.checkpoint(&g, S0, "s1", 1, &at("1", 0)).await,
        Err(StoreError::LeaseLost { current_owner: None, current_epoch: 2, .. })
    ));
    let kept = lease(&s, &other, S0).await;
    assert_eq!((kept.owner.as_deref(), kept.epoch), (Some("s1"), 1), "other groups are untouched");

    s.drop_session(&g, "never-existed").await.unwrap();
    assert_eq!(s.list_leases(&g).await.unwrap().len(), 4);
}

async fn ping_answers(s: Store) {
    s.ping().await.unwrap();
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
    for url in ["redis://:s3cret-pw@127.0.0.1:1/?prefix=x", "postgres://postgres:s3cret-pw@127.0.0.1:1/test?schema=x"] {
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
}
