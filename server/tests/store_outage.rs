//! A Redis outage: the server runs on a private `redis-server` reached through a TCP
//! proxy of the test. Cutting the proxy (open connections closed, new ones refused) is
//! Redis stopping; restoring it is Redis starting again with its data intact (the
//! private server keeps nothing on disk, so a real restart would lose every lease).
//!
//! While the store is away the server keeps running and streaming records, reports the
//! outage in its log and turns gRPC health NOT_SERVING; checkpoints fail with
//! UNAVAILABLE and change nothing. Once the store is back, health is SERVING again
//! without a restart, records keep flowing, checkpoints succeed, and no lease or
//! checkpoint was lost or moved backwards.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::driver::figure;
use common::private_redis::PrivateRedis;
use common::tcp_proxy::Proxy;
use common::*;
use kinesis_butler_proto as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SERVICES: [&str; 2] = ["", "kinesis_butler.v1.Butler"];

async fn health_client(addr: &str) -> Result<HealthClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Channel::from_shared(addr.to_owned())?;
    Ok(HealthClient::new(within(10, "connecting for health", channel.connect()).await??))
}

/// Waits (bounded) until health reports `want` for both services, following the
/// health `Watch` streams.
async fn wait_health(addr: &str, want: ServingStatus, secs: u64) -> Result<()> {
    let mut health = health_client(addr).await?;
    within(secs, &format!("health {}", want.as_str_name()), async {
        for service in SERVICES {
            let req = HealthCheckRequest { service: service.into() };
            let mut updates = health.watch(req).await?.into_inner();
            loop {
                let status = updates.message().await?.context("health watch ended")?.status;
                if status == want as i32 {
                    break;
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await?
}

async fn health_now(addr: &str, service: &str) -> Result<i32> {
    let mut health = health_client(addr).await?;
    let req = HealthCheckRequest { service: service.into() };
    Ok(within(10, "health check", health.check(req)).await??.into_inner().status)
}

/// Owner, epoch and checkpoint of every lease.
async fn leases(
    client: &mut pb::butler_client::ButlerClient<tonic::transport::Channel>,
    stream: &str,
) -> Result<BTreeMap<String, (String, u64, String)>> {
    let req = pb::DescribeLeasesRequest { app: "app".into(), stream: stream.into() };
    let d = within(10, "DescribeLeases", client.describe_leases(req)).await??.into_inner();
    Ok(d.leases.into_iter().map(|l| (l.shard_id, (l.owner, l.epoch, l.checkpoint))).collect())
}

fn checkpoint_req(session: &RawSession, stream: &str, shard: &str, sequence: &str) -> pb::CheckpointRequest {
    pb::CheckpointRequest {
        session_id: session.id.clone(),
        stream: stream.into(),
        shard_id: shard.into(),
        lease_epoch: session.epochs[shard],
        sequence_number: sequence.into(),
        ..Default::default()
    }
}

/// The last record received per shard.
fn last_of(got: &BTreeMap<String, Vec<pb::Record>>) -> BTreeMap<String, String> {
    got.iter().filter_map(|(s, rs)| rs.last().map(|r| (s.clone(), r.sequence_number.clone()))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_survived_reported_and_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let redis = PrivateRedis::start(dir.path()).await?;
    let proxy = Proxy::start(redis.port).await?;
    let emulator = Emulator::Kinesalite;
    let kinesis = kinesis_client(emulator);
    let stream = unique("outage");
    create_stream(&kinesis, &stream, 2).await?;
    put_records(&kinesis, &stream, 0, 200).await?;

    let log = dir.path().join("server.log");
    let store = format!("redis://127.0.0.1:{}/", proxy.port);
    let mut server = TestServer::start_logged(&store, emulator, &[], &log).await?;
    wait_health(&server.addr, ServingStatus::Serving, 10).await?;
    let mut client = server.client().await?;
    let mut session = open_session(&mut client, "app", &stream).await?;
    let got = session.collect(200, 60).await?;
    for (shard, seq) in last_of(&got) {
        within(10, "checkpoint", client.checkpoint(checkpoint_req(&session, &stream, &shard, &seq))).await??;
    }
    let before = leases(&mut client, &stream).await?;
    ensure!(before.values().all(|(owner, _, cp)| *owner == session.id && !cp.is_empty()), "{before:?}");

    // Redis goes away: health NOT_SERVING within a bounded time, and the log says why.
    let cut = Instant::now();
    proxy.cut().await?;
    wait_health(&server.addr, ServingStatus::NotServing, 10).await?;
    figure("store_outage_detected_ms", cut.elapsed().as_millis());
    let text = std::fs::read_to_string(&log)?;
    ensure!(text.contains("lease store unreachable"), "the log reports the outage:\n{text}");

    // The server keeps running and streaming; a checkpoint fails clearly.
    put_records(&kinesis, &stream, 200, 50).await?;
    let during = session.collect(50, 30).await?;
    let (shard, seq) = last_of(&during).into_iter().next().context("records during the outage")?;
    let refused =
        within(30, "checkpoint during the outage", client.checkpoint(checkpoint_req(&session, &stream, &shard, &seq)))
            .await?;
    let status = refused.expect_err("a checkpoint cannot succeed while the store is away");
    ensure!(status.code() == Code::Unavailable, "checkpoint during the outage: {status:?}");
    ensure!(server.child.try_wait()?.is_none(), "the server is still running");

    // Redis is back after a few seconds (well within the lease TTL): SERVING again
    // without a restart.
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage itself, not a wait for an event
    let restored = Instant::now();
    proxy.restore().await?;
    wait_health(&server.addr, ServingStatus::Serving, 20).await?;
    figure("store_recovery_ms", restored.elapsed().as_millis());
    figure("store_outage_total_ms", cut.elapsed().as_millis());
    for service in SERVICES {
        ensure!(health_now(&server.addr, service).await? == ServingStatus::Serving as i32);
    }
    let text = std::fs::read_to_string(&log)?;
    ensure!(text.contains("lease store reachable again"), "the log reports the recovery:\n{text}");

    // Nothing was lost or moved backwards: same owner, same epoch, same checkpoints.
    let after = leases(&mut client, &stream).await?;
    ensure!(after == before, "leases changed during the outage:\n before {before:?}\n after {after:?}");

    // Records keep flowing and checkpoints succeed again.
    put_records(&kinesis, &stream, 250, 50).await?;
    let more = session.collect(50, 30).await?;
    let mut want = before.clone();
    for (shard, seq) in last_of(&during).into_iter().chain(last_of(&more)) {
        within(10, "checkpoint after the outage", client.checkpoint(checkpoint_req(&session, &stream, &shard, &seq)))
            .await??;
        want.get_mut(&shard).context("known shard")?.2 = seq;
    }
    let after = leases(&mut client, &stream).await?;
    ensure!(after == want, "checkpoints after the outage:\n want {want:?}\n got {after:?}");
    for (shard, (_, _, cp)) in &after {
        ensure!(seq_cmp(cp, &before[shard].2).is_ge(), "checkpoint of {shard} moved backwards");
    }
    ensure!(server.child.try_wait()?.is_none(), "the server is still running");
    within(30, "DeleteStream", kinesis.delete_stream().stream_name(&stream).send()).await??;
    for line in std::fs::read_to_string(&log)?.lines().filter(|l| l.contains("store")) {
        println!("server log: {line}");
    }
    Ok(())
}
