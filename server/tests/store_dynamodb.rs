//! The DynamoDB lease store against dynalite (127.0.0.1:4630, `scripts/emulators.sh start
//! dynalite`; `KB_DYNALITE_ENDPOINT` overrides): the lease-model cases every backend must
//! pass, driven through `Leases`, plus what is DynamoDB's own (table creation, a table
//! that is not Butler's, `create=false`, corrupt items, paginated reads).
//!
//! `open_dynamodb` / `drop_table` are what a shared suite needs to run these on DynamoDB
//! too: a fresh table per test, deleted afterwards.

mod common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use futures::FutureExt;
use kinesis_butler::seqnum::SequenceNumber;
use kinesis_butler::store::{
    self, Checkpoint, GroupKey, Lease, LeaseStore, LeaseWrite, Leases, SessionRecord, ShardInfo, StoreError, Versioned,
};

const S0: &str = "shardId-000000000000";
const S1: &str = "shardId-000000000001";
const S2: &str = "shardId-000000000002";
const BIG: &str = "49590338271490256608559692538361571095921575989136588898";
const BIG_NEXT: &str = "49590338271490256608559692538361571095921575989136588899";

/// Sets the AWS settings a test process needs to reach dynalite (static credentials, a
/// region, the endpoint), once.
pub fn dynalite_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Set before any thread reads the environment (first thing in every test).
        std::env::set_var("AWS_ENDPOINT_URL_DYNAMODB", common::dynalite_endpoint());
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    });
}

/// A store on a fresh table of its own (created by the backend); returns it and the table.
pub async fn open_dynamodb() -> (Arc<dyn LeaseStore>, String) {
    dynalite_env();
    let table = common::unique("kbt");
    let store = store::open(&format!("dynamodb://{table}"))
        .await
        .expect("dynalite must be running on 127.0.0.1:4630 (scripts/emulators.sh start dynalite)");
    (store, table)
}

/// Deletes a test's table.
pub async fn drop_table(table: &str) {
    let _ = common::dynamodb_client().await.delete_table().table_name(table).send().await;
}

/// Opens a fresh store, runs `test` on it (bounded), drops the table even on failure.
async fn run<T, F>(test: T)
where
    T: FnOnce(Leases, Arc<dyn LeaseStore>, String) -> F,
    F: Future<Output = ()>,
{
    let (store, table) = tokio::time::timeout(Duration::from_secs(30), open_dynamodb()).await.expect("open in time");
    let body = test(Leases::new(store.clone()), store, table.clone());
    let outcome = tokio::time::timeout(Duration::from_secs(120), AssertUnwindSafe(body).catch_unwind()).await;
    drop_table(&table).await;
    match outcome {
        Err(_) => panic!("test did not finish within 120 s"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Ok(Ok(())) => {}
    }
}

fn g() -> GroupKey {
    GroupKey::new("app", "stream")
}

fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
    ShardInfo { shard_id: id.into(), parent_shard_ids: parents.iter().map(|p| p.to_string()).collect(), closed }
}

fn at(sequence: &str, sub_sequence: u64) -> Checkpoint {
    Checkpoint::At { sequence: SequenceNumber::parse(sequence).unwrap(), sub_sequence }
}

fn session(id: &str) -> SessionRecord {
    SessionRecord {
        session_id: id.into(),
        instance_id: "instance-1".into(),
        client_name: format!("c-{id}"),
        heartbeat: 0,
    }
}

async fn sync(l: &Leases, ids: &[&str]) {
    let shards: Vec<ShardInfo> = ids.iter().map(|id| shard(id, &[], false)).collect();
    l.sync_shards(&g(), &shards).await.unwrap();
}

async fn read(l: &Leases, id: &str) -> Versioned<Lease> {
    l.get(&g(), id).await.unwrap().unwrap_or_else(|| panic!("no lease {id}"))
}

async fn try_take(l: &Leases, id: &str, owner: &str, dead: bool) -> Option<Lease> {
    let current = read(l, id).await;
    l.acquire_many(&g(), &[(current, owner.into(), dead)]).await.unwrap().remove(0)
}

async fn take(l: &Leases, id: &str, owner: &str) -> Lease {
    try_take(l, id, owner, false).await.unwrap_or_else(|| panic!("{owner} could not acquire {id}"))
}

// ------------------------------------------------------------ the lease model

#[tokio::test]
async fn sync_shards_creates_and_updates() {
    run(|l, _, _| async move {
        sync(&l, &[S1, S0]).await;
        let leases = l.list(&g()).await.unwrap();
        assert_eq!(leases.iter().map(|v| v.value.shard_id.as_str()).collect::<Vec<_>>(), [S0, S1]);
        assert!(leases.iter().all(|v| v.version == 1 && v.value == Lease::new(&shard(&v.value.shard_id, &[], false))));
        take(&l, S0, "a").await;
        l.checkpoint(&g(), S0, "a", 1, &at(BIG, 2)).await.unwrap();
        l.sync_shards(&g(), &[shard(S0, &[], true), shard(S1, &[], false), shard(S2, &[S0, S1], false)]).await.unwrap();
        let l0 = read(&l, S0).await.value;
        assert_eq!((l0.owner.as_deref(), l0.epoch, &l0.checkpoint, l0.closed), (Some("a"), 1, &at(BIG, 2), true));
        assert_eq!(read(&l, S1).await.version, 1, "an unchanged lease is not rewritten");
        assert_eq!(read(&l, S2).await.value.parent_shard_ids, [S0, S1], "parents in order");
    })
    .await
}

#[tokio::test]
async fn write_leases_is_compare_and_set() {
    run(|_, store, _| async move {
        let lease = Lease::new(&shard(S0, &[], false));
        let w = |expected| LeaseWrite { lease: lease.clone(), expected };
        assert_eq!(store.write_leases(&g(), &[w(None)]).await.unwrap(), [Some(1)]);
        assert_eq!(store.write_leases(&g(), &[w(None)]).await.unwrap(), [None], "exists already");
        assert_eq!(store.write_leases(&g(), &[w(Some(1))]).await.unwrap(), [Some(2)]);
        assert_eq!(store.write_leases(&g(), &[w(Some(1))]).await.unwrap(), [None], "stale version");
        let other = LeaseWrite { lease: Lease::new(&shard(S1, &[], false)), expected: None };
        assert_eq!(store.write_leases(&g(), &[w(Some(2)), other]).await.unwrap(), [Some(3), Some(1)]);
        assert_eq!(store.read_lease(&GroupKey::new("other", "stream"), S0).await.unwrap(), None, "groups apart");
        assert_eq!(store.read_lease(&GroupKey::new("app", "stream2"), S0).await.unwrap(), None, "groups apart");
    })
    .await
}

#[tokio::test]
async fn acquire_race_has_one_winner() {
    run(|l, _, _| async move {
        sync(&l, &[S0]).await;
        let read_once = read(&l, S0).await;
        let racers = (0..8).map(|i| {
            let (l, read_once) = (l.clone(), read_once.clone());
            async move { l.acquire_many(&g(), &[(read_once, format!("s{i}"), false)]).await.unwrap().remove(0) }
        });
        let won: Vec<Lease> = futures::future::join_all(racers).await.into_iter().flatten().collect();
        assert_eq!(won.len(), 1, "exactly one winner: {won:?}");
        let now = read(&l, S0).await.value;
        assert_eq!((now.owner, now.epoch), (won[0].owner.clone(), 1));
    })
    .await
}

#[tokio::test]
async fn checkpoint_is_fenced_and_never_moves_backwards() {
    run(|l, _, _| async move {
        sync(&l, &[S0]).await;
        assert!(matches!(l.checkpoint(&g(), S0, "a", 0, &at("1", 0)).await, Err(StoreError::LeaseLost { .. })));
        take(&l, S0, "a").await;
        l.checkpoint(&g(), S0, "a", 1, &at(BIG, 1)).await.unwrap();
        l.checkpoint(&g(), S0, "a", 1, &at(BIG, 1)).await.unwrap();
        l.checkpoint(&g(), S0, "a", 1, &at(BIG_NEXT, 0)).await.unwrap();
        let back = l.checkpoint(&g(), S0, "a", 1, &at(BIG, 5)).await.unwrap_err();
        assert!(matches!(back, StoreError::Regression { .. }), "{back}");
        assert!(matches!(l.checkpoint(&g(), S0, "a", 2, &at(BIG_NEXT, 1)).await, Err(StoreError::LeaseLost { .. })));
        assert!(matches!(l.checkpoint(&g(), S0, "b", 1, &at(BIG_NEXT, 1)).await, Err(StoreError::LeaseLost { .. })));
        assert!(matches!(l.checkpoint(&g(), S2, "a", 1, &at("1", 0)).await, Err(StoreError::NotFound { .. })));
        assert_eq!(read(&l, S0).await.value.checkpoint, at(BIG_NEXT, 0), "only the valid ones stored");
        l.checkpoint(&g(), S0, "a", 1, &Checkpoint::ShardEnd).await.unwrap();
        assert!(read(&l, S0).await.value.is_finished());
    })
    .await
}

#[tokio::test]
async fn dead_owners_lose_leases_and_finished_leases_stay_put() {
    run(|l, _, _| async move {
        sync(&l, &[S0, S1]).await;
        take(&l, S0, "a").await;
        assert_eq!(try_take(&l, S0, "b", false).await, None, "live owner");
        let taken = try_take(&l, S0, "b", true).await.expect("dead owner");
        assert_eq!((taken.owner.as_deref(), taken.epoch), (Some("b"), 2));
        take(&l, S1, "a").await;
        l.checkpoint(&g(), S1, "a", 1, &Checkpoint::ShardEnd).await.unwrap();
        l.release(&g(), S1, "a", 1).await.unwrap();
        assert_eq!(try_take(&l, S1, "b", true).await, None, "finished");
    })
    .await
}

#[tokio::test]
async fn acquire_many_leases_in_one_call() {
    run(|l, _, _| async move {
        let ids: Vec<String> = (0..40).map(|i| format!("shardId-{i:012}")).collect();
        let shards: Vec<ShardInfo> = ids.iter().map(|id| shard(id, &[], false)).collect();
        l.sync_shards(&g(), &shards).await.unwrap();
        let all = l.list(&g()).await.unwrap();
        let wants: Vec<_> = all.iter().map(|v| (v.clone(), "a".to_owned(), false)).collect();
        let got = l.acquire_many(&g(), &wants).await.unwrap();
        assert!(got.iter().all(Option::is_some));
        assert!(l.list(&g()).await.unwrap().iter().all(|v| v.value.owner.as_deref() == Some("a") && v.version == 2));
        assert!(l.acquire_many(&g(), &wants).await.unwrap().iter().all(Option::is_none), "stale reads conflict");
    })
    .await
}

#[tokio::test]
async fn release_frees_or_hands_off() {
    run(|l, _, _| async move {
        sync(&l, &[S0, S1]).await;
        take(&l, S0, "a").await;
        assert_eq!(l.release(&g(), S0, "b", 1).await.unwrap(), None, "not the owner");
        let free = l.release(&g(), S0, "a", 1).await.unwrap().unwrap();
        assert_eq!((free.owner, free.epoch), (None, 2));
        take(&l, S1, "a").await;
        let current = read(&l, S1).await;
        assert_eq!(l.request_handoffs(&g(), &[(current, "b".into())]).await.unwrap(), [true]);
        l.checkpoint(&g(), S1, "a", 1, &at("5", 0)).await.unwrap();
        let moved = l.release(&g(), S1, "a", 1).await.unwrap().unwrap();
        assert_eq!(
            (moved.owner.as_deref(), moved.epoch, moved.handoff_to, moved.checkpoint),
            (Some("b"), 2, None, at("5", 0))
        );
    })
    .await
}

#[tokio::test]
async fn sessions_put_beat_list_delete() {
    run(|l, store, _| async move {
        for id in ["s2", "s1", "s3"] {
            l.put_session(&g(), &session(id)).await.unwrap();
        }
        let mut renamed = session("s1");
        renamed.client_name = String::new();
        l.put_session(&g(), &renamed).await.unwrap();
        let all = l.sessions(&g()).await.unwrap();
        assert_eq!(all.iter().map(|s| s.value.session_id.as_str()).collect::<Vec<_>>(), ["s1", "s2", "s3"]);
        assert_eq!(all[0], Versioned { version: 2, value: renamed.clone() }, "replaced, empty name kept");
        let missing = l.beat(&g(), &["s2".into(), "gone".into(), "s3".into(), "lost".into()]).await.unwrap();
        assert_eq!(missing, ["gone", "lost"], "in the order given");
        let all = l.sessions(&g()).await.unwrap();
        assert_eq!((all[1].version, all[1].value.heartbeat), (2, 1));
        assert_eq!(store.write_session(&g(), &session("s2"), Some(1)).await.unwrap(), None, "stale version");
        assert!(!store.delete_session(&g(), "s2", Some(1)).await.unwrap(), "stale version");
        assert!(store.delete_session(&g(), "s2", Some(2)).await.unwrap());
        assert!(!store.delete_session(&g(), "s2", None).await.unwrap(), "already gone");
        assert!(store.delete_session(&g(), "s3", None).await.unwrap());
        assert_eq!(l.sessions(&g()).await.unwrap().len(), 1);
        assert!(l.sessions(&GroupKey::new("app", "other")).await.unwrap().is_empty(), "groups apart");
    })
    .await
}

#[tokio::test]
async fn drop_session_frees_leases_and_handoffs() {
    run(|l, _, _| async move {
        sync(&l, &[S0, S1]).await;
        l.put_session(&g(), &session("a")).await.unwrap();
        take(&l, S0, "a").await;
        take(&l, S1, "b").await;
        let current = read(&l, S1).await;
        assert_eq!(l.request_handoffs(&g(), &[(current, "a".into())]).await.unwrap(), [true]);
        l.drop_session(&g(), "a").await.unwrap();
        let (l0, l1) = (read(&l, S0).await.value, read(&l, S1).await.value);
        assert_eq!((l0.owner, l0.epoch), (None, 2));
        assert_eq!((l1.owner.as_deref(), l1.epoch, l1.handoff_to), (Some("b"), 1, None));
        assert!(l.sessions(&g()).await.unwrap().is_empty());
    })
    .await
}

#[tokio::test]
async fn stale_sessions_are_removed_at_the_version_seen() {
    run(|l, _, _| async move {
        sync(&l, &[S0]).await;
        for s in ["s1", "s2", "s3"] {
            l.put_session(&g(), &session(s)).await.unwrap();
        }
        take(&l, S0, "s1").await;
        l.beat(&g(), &["s2".into()]).await.unwrap();
        let stale = [("s1".to_owned(), 1), ("s2".to_owned(), 1), ("s3".to_owned(), 1)];
        assert_eq!(l.remove_stale_sessions(&g(), &stale, &["s3".into()]).await.unwrap(), ["s1"]);
        let lease = read(&l, S0).await.value;
        assert_eq!((lease.owner, lease.epoch), (None, 2));
    })
    .await
}

#[tokio::test]
async fn lease_generation_moves_with_lease_writes_only() {
    run(|l, store, _| async move {
        assert_eq!(l.generation(&g()).await.unwrap(), 0, "0 before the first write");
        sync(&l, &[S0]).await;
        let g1 = l.generation(&g()).await.unwrap();
        assert!(g1 > 0);
        l.put_session(&g(), &session("a")).await.unwrap();
        l.beat(&g(), &["a".into()]).await.unwrap();
        sync(&l, &[S0]).await;
        assert_eq!(l.generation(&g()).await.unwrap(), g1, "sessions and no-op syncs do not move it");
        let stale = LeaseWrite { lease: Lease::new(&shard(S0, &[], false)), expected: Some(9) };
        assert_eq!(store.write_leases(&g(), &[stale]).await.unwrap(), [None]);
        assert_eq!(l.generation(&g()).await.unwrap(), g1, "a write that conflicted does not move it");
        take(&l, S0, "a").await;
        assert!(l.generation(&g()).await.unwrap() > g1);
        assert_eq!(l.generation(&GroupKey::new("app", "other")).await.unwrap(), 0, "per group");
    })
    .await
}

#[tokio::test]
async fn ping_answers() {
    run(|_, store, _| async move { store.ping().await.unwrap() }).await
}

// ------------------------------------------------------------ DynamoDB's own

#[tokio::test]
async fn reads_follow_query_pages() {
    // dynalite pages a Query at 1 MB like DynamoDB: ~1,500 leases with long parent lists
    // make several pages.
    run(|_, store, _| async move {
        let parents: Vec<String> = (0..40).map(|i| format!("shardId-parent-with-a-long-name-{i:06}")).collect();
        let writes: Vec<LeaseWrite> = (0..1500)
            .map(|i| LeaseWrite {
                lease: Lease {
                    parent_shard_ids: parents.clone(),
                    ..Lease::new(&shard(&format!("shardId-{i:012}"), &[], false))
                },
                expected: None,
            })
            .collect();
        for chunk in writes.chunks(250) {
            assert!(store.write_leases(&g(), chunk).await.unwrap().iter().all(Option::is_some));
        }
        let all = store.read_leases(&g()).await.unwrap();
        assert_eq!(all.len(), 1500, "every page read");
        assert!(all.windows(2).all(|w| w[0].value.shard_id < w[1].value.shard_id), "in shard id order");
    })
    .await
}

#[tokio::test]
async fn tables_are_created_checked_and_named_in_errors() {
    dynalite_env();
    let table = common::unique("kbt");
    let err = store::open(&format!("dynamodb://{table}?create=false")).await.err().expect("missing table refused");
    assert!(err.to_string().contains(&table) && err.to_string().contains("does not exist"), "{err}");

    // A table keyed like KCL's is not taken for Butler's.
    let client = common::dynamodb_client().await;
    common::create_kcl_like_table(&client, &table).await.unwrap();
    let err = store::open(&format!("dynamodb://{table}")).await.err().expect("foreign table refused");
    assert!(err.to_string().contains("not a Kinesis Butler lease table") && err.to_string().contains(&table), "{err}");
    drop_table(&table).await;

    let err = store::open("dynamodb://x").await.err().expect("short name refused");
    assert!(err.to_string().contains("invalid DynamoDB table name"), "{err}");
}

#[tokio::test]
async fn corrupt_items_are_errors_naming_table_and_item() {
    run(|l, store, table| async move {
        sync(&l, &[S0]).await;
        let client = common::dynamodb_client().await;
        client
            .update_item()
            .table_name(&table)
            .key("pk", AttributeValue::S("3:app:stream".into()))
            .key("sk", AttributeValue::S(format!("lease#{S0}")))
            .update_expression("SET epoch = :bad")
            .expression_attribute_values(":bad", AttributeValue::S("seven".into()))
            .send()
            .await
            .unwrap();
        let err = store.read_leases(&g()).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Backend(_)), "{text}");
        assert!(text.contains(&table) && text.contains(S0) && text.contains("epoch"), "{text}");
    })
    .await
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable() {
    dynalite_env();
    let port = common::free_port();
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("t", "t", None, None, "t"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .build();
    let store = store::dynamodb::DynamoStore::from_client(aws_sdk_dynamodb::Client::from_conf(config), "nowhere");
    let err = store.ping().await.unwrap_err();
    assert!(matches!(&err, StoreError::Unavailable(m) if m.contains("nowhere")), "{err}");
}

// ------------------------------------------------------------ real servers

/// Reads events of a raw session until `want` shards are assigned to it; returns their
/// checkpoints (as `ShardAssigned` told them), ignoring other events.
async fn assigned(
    s: &mut common::RawSession,
    want: usize,
    secs: u64,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    use kinesis_butler_proto::get_records_response::Event;
    let mut shards = std::collections::BTreeMap::new();
    common::within(secs, &format!("{want} shards assigned"), async {
        while shards.len() < want {
            match s.events.message().await? {
                Some(kinesis_butler_proto::GetRecordsResponse { event: Some(Event::ShardAssigned(a)) }) => {
                    s.epochs.insert(a.shard_id.clone(), a.lease_epoch);
                    shards.insert(a.shard_id, a.checkpoint);
                }
                Some(kinesis_butler_proto::GetRecordsResponse { event: Some(Event::ShardRevoked(r)) }) => {
                    shards.remove(&r.shard_id);
                }
                Some(_) => {}
                None => anyhow::bail!("session stream ended"),
            }
        }
        Ok(())
    })
    .await??;
    Ok(shards)
}

/// Two instances share one table; one is SIGKILLed; after the lease TTL its shards move
/// to the other instance's session, at the checkpoints the killed one stored.
#[tokio::test]
async fn sigkill_of_one_of_two_instances_moves_its_shards_after_the_ttl() -> anyhow::Result<()> {
    use common::*;
    let store = TestStore::dynamodb();
    store
        .run(async {
            let kinesis = kinesis_client(Emulator::Kinesalite);
            let stream = unique("dyn-kill");
            create_stream(&kinesis, &stream, 4).await?;
            let put = put_records(&kinesis, &stream, 0, 400).await?;
            let extra = ["--lease-ttl", "3s"];
            let mut a = TestServer::start(&store.url(), Emulator::Kinesalite, &extra).await?;
            let b = TestServer::start(&store.url(), Emulator::Kinesalite, &extra).await?;
            let (mut ca, mut cb) = (a.client().await?, b.client().await?);
            let mut sa = open_session(&mut ca, "app", &stream).await?;
            let held_a = assigned(&mut sa, 4, 30).await?;
            assert_eq!(held_a.len(), 4, "the first session takes every shard");
            let mut sb = open_session(&mut cb, "app", &stream).await?;
            // Balance: two shards move to b (a is told to give them up and does, after the
            // handoff grace, since this raw client never releases).
            let held_b = assigned(&mut sb, 2, 30).await?;
            // Checkpoint a's remaining two shards (still at the epochs a was given), then kill a.
            let mut stored = std::collections::BTreeMap::new();
            for shard in held_a.keys().filter(|s| !held_b.contains_key(*s)) {
                let puts = &put[shard];
                let seq = puts[puts.len() / 2].sequence_number.clone();
                let req = kinesis_butler_proto::CheckpointRequest {
                    session_id: sa.id.clone(),
                    stream: stream.clone(),
                    shard_id: shard.clone(),
                    lease_epoch: sa.epochs[shard],
                    sequence_number: seq.clone(),
                    ..Default::default()
                };
                within(10, "checkpoint", ca.checkpoint(req)).await??;
                stored.insert(shard.clone(), seq);
            }
            let killed_at = std::time::Instant::now();
            a.kill();
            let moved = assigned(&mut sb, 2, 30).await?;
            let waited = killed_at.elapsed();
            assert_eq!(moved, stored, "a's shards moved to b at a's checkpoints");
            assert!(waited >= Duration::from_secs(2), "not before the TTL ({waited:?})");
            let d = describe(&mut cb, "app", &stream).await?;
            assert!(d.leases.iter().all(|l| l.owner == sb.id), "b holds all four: {:?}", d.leases);
            within(30, "DeleteStream", kinesis.delete_stream().stream_name(&stream).send()).await??;
            Ok(())
        })
        .await
}
