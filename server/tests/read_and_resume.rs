//! The foundation flow on each emulator: read every record once in order, checkpoint
//! half of each shard, restart the server on the same store, and resume exactly after
//! the checkpoints. With the embedded file on both emulators, and with Redis, the Redis
//! Cluster, PostgreSQL and DynamoDB (a key prefix, schema or table per test, removed at
//! the end) on kinesalite.

mod common;

use std::collections::BTreeMap;

use anyhow::Result;
use common::*;
use kinesis_butler_proto as pb;

async fn read_checkpoint_restart_resume(emulator: Emulator, store: &str, extra: &[&str]) -> Result<()> {
    let kinesis = kinesis_client(emulator);
    let stream = unique("resume");
    create_stream(&kinesis, &stream, 4).await?;
    let put = put_records(&kinesis, &stream, 0, 2000).await?;
    assert_eq!(put.len(), 4, "records spread over all 4 shards");

    let mut server = TestServer::start(store, emulator, extra).await?;
    let mut client = server.client().await?;
    let mut session = open_session(&mut client, "app", &stream).await?;
    let got = session.collect(2000, 90).await?;

    // Exactly once, in sequence order, per shard.
    for (shard, puts) in &put {
        let seqs: Vec<&str> = got[shard].iter().map(|r| r.sequence_number.as_str()).collect();
        let want: Vec<&str> = puts.iter().map(|p| p.sequence_number.as_str()).collect();
        assert_eq!(seqs, want, "shard {shard}: every record once, in order");
        let data: Vec<&[u8]> = got[shard].iter().map(|r| &r.data[..]).collect();
        assert_eq!(data, puts.iter().map(|p| p.data.as_slice()).collect::<Vec<_>>());
    }

    // Checkpoint half of each shard.
    let mut expected_after: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (shard, puts) in &put {
        let half = puts.len() / 2;
        let req = pb::CheckpointRequest {
            session_id: session.id.clone(),
            stream: stream.clone(),
            shard_id: shard.clone(),
            lease_epoch: session.epochs[shard],
            sequence_number: puts[half - 1].sequence_number.clone(),
            ..Default::default()
        };
        within(10, "checkpoint", client.checkpoint(req)).await??;
        expected_after.insert(shard.clone(), puts[half..].iter().map(|p| p.sequence_number.clone()).collect());
    }

    // Restart on the same store: a new session gets exactly the records after them.
    drop(session);
    server.kill();
    let server = TestServer::start(store, emulator, extra).await?;
    let mut client = server.client().await?;
    let described = within(
        10,
        "describe",
        client.describe_leases(pb::DescribeLeasesRequest { app: "app".into(), stream: stream.clone() }),
    )
    .await??
    .into_inner();
    for lease in &described.leases {
        let puts = &put[&lease.shard_id];
        assert_eq!(lease.checkpoint, puts[puts.len() / 2 - 1].sequence_number, "checkpoint survived the restart");
    }
    let total: usize = expected_after.values().map(Vec::len).sum();
    let mut session = open_session(&mut client, "app", &stream).await?;
    let got = session.collect(total, 90).await?;
    let got: BTreeMap<String, Vec<String>> =
        got.into_iter().map(|(s, rs)| (s, rs.into_iter().map(|r| r.sequence_number).collect())).collect();
    assert_eq!(got, expected_after, "resumed exactly after the checkpoints");
    // Emulators keep every stream: free its shards (kinesis-local counts them against
    // its shard limit).
    within(30, "DeleteStream", kinesis.delete_stream().stream_name(&stream).send()).await??;
    Ok(())
}

async fn with_embedded_store(emulator: Emulator) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("butler.db").display());
    read_checkpoint_restart_resume(emulator, &store, &[]).await
}

#[tokio::test]
async fn kinesis_local_read_checkpoint_restart_resume() -> Result<()> {
    with_embedded_store(Emulator::KinesisLocal).await
}

#[tokio::test]
async fn kinesalite_read_checkpoint_restart_resume() -> Result<()> {
    with_embedded_store(Emulator::Kinesalite).await
}

// The killed server's leases are taken over after the lease TTL; a short one keeps
// these quick.

#[tokio::test]
async fn redis_read_checkpoint_restart_resume() -> Result<()> {
    let store = TestStore::redis();
    store.run(read_checkpoint_restart_resume(Emulator::Kinesalite, &store.url(), &["--lease-ttl", "3s"])).await
}

#[tokio::test]
async fn postgres_read_checkpoint_restart_resume() -> Result<()> {
    let store = TestStore::postgres();
    store.run(read_checkpoint_restart_resume(Emulator::Kinesalite, &store.url(), &["--lease-ttl", "3s"])).await
}

#[tokio::test]
async fn dynamodb_read_checkpoint_restart_resume() -> Result<()> {
    let store = TestStore::dynamodb();
    store.run(read_checkpoint_restart_resume(Emulator::Kinesalite, &store.url(), &["--lease-ttl", "3s"])).await
}

#[tokio::test]
async fn redis_cluster_read_checkpoint_restart_resume() -> Result<()> {
    const NODES: [&str; 3] = ["127.0.0.1:7301", "127.0.0.1:7302", "127.0.0.1:7303"];
    let prefix = format!("kbt_{}", uuid::Uuid::new_v4().simple());
    let url = format!("redis+cluster://{}/?prefix={prefix}", NODES.join(","));
    let outcome = read_checkpoint_restart_resume(Emulator::Kinesalite, &url, &["--lease-ttl", "3s"]).await;
    // The test's keys, on whichever node holds their slot (one key per DEL: a cluster
    // refuses multi-key commands across slots).
    for node in NODES {
        let mut conn = redis::Client::open(format!("redis://{node}/"))?.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await?;
        for key in keys {
            redis::cmd("DEL").arg(key).query_async::<()>(&mut conn).await?;
        }
    }
    outcome
}
