//! The DynamoDB lease store against dynalite (127.0.0.1:4630, `scripts/emulators.sh start
//! dynalite`; `KB_DYNALITE_ENDPOINT` overrides): what is DynamoDB's own (table creation, a
//! table that is not Butler's, `create=false`, corrupt items, paginated reads). The
//! lease-model cases every backend must pass are in `store_conformance.rs`, which runs them
//! on DynamoDB too.
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
use kinesis_butler::store::{self, GroupKey, Lease, LeaseStore, LeaseWrite, Leases, ShardInfo, StoreError};

const S0: &str = "shardId-000000000000";

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

async fn sync(l: &Leases, ids: &[&str]) {
    let shards: Vec<ShardInfo> = ids.iter().map(|id| shard(id, &[], false)).collect();
    l.sync_shards(&g(), &shards).await.unwrap();
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
