//! DESIGN.md rule 8: a skewed wall clock changes nothing. Two instances share one Redis
//! store; one runs with its wall clock moved +60 s and the other −60 s (Debian's
//! `faketime` preload, monotonic clock untouched). After convergence no shard moves for
//! 30 s and no shard is ever held by two sessions; killing the +60 s instance moves its
//! shards to the other's sessions after the lease TTL, from their checkpoints.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::driver::{figure, DriverSession, Journal, Producer};
use common::*;

const APP: &str = "app";
const SHARDS: usize = 40;
const LEASE_TTL: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_secs(30);

/// The libfaketime preload library (Debian's `libfaketime`, installed by `.ci/run`).
fn libfaketime() -> Result<String> {
    let listed = std::process::Command::new("dpkg").args(["-L", "libfaketime"]).output();
    let from_dpkg = listed.ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout).lines().find(|l| l.ends_with("/libfaketime.so.1")).map(str::to_owned)
    });
    from_dpkg
        .or_else(|| {
            ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .map(str::to_owned)
        })
        .context("libfaketime.so.1 not found: apt-get install faketime")
}

/// The environment that moves a process's wall clock by `offset` (monotonic untouched).
fn skew_env(preload: &str, offset: &str) -> Vec<(String, String)> {
    [("LD_PRELOAD", preload), ("FAKETIME", offset), ("FAKETIME_DONT_FAKE_MONOTONIC", "1"), ("FAKETIME_NO_CACHE", "1")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_wall_clocks_neither_steal_nor_thrash() -> Result<()> {
    let preload = libfaketime()?;
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let stream = unique("skew");
    create_stream(&kinesis, &stream, SHARDS as i32).await?;
    let store = TestStore::redis();
    store
        .run(async {
            let args = ["--balance-interval", "1s", "--lease-ttl", "3s"];
            let ahead = skew_env(&preload, "+60s");
            let behind = skew_env(&preload, "-60s");
            let mut a = TestServer::start_with_env(&store.url(), Emulator::Kinesalite, &args, &pairs(&ahead)).await?;
            let b = TestServer::start_with_env(&store.url(), Emulator::Kinesalite, &args, &pairs(&behind)).await?;
            let mut client = b.client().await?;
            let req = kinesis_butler_proto::InitializeRequest { app: APP.into(), streams: vec![stream.clone()] };
            within(30, "Initialize", client.initialize(req)).await??;
            let all: BTreeSet<String> =
                describe(&mut client, APP, &stream).await?.leases.into_iter().map(|l| l.shard_id).collect();
            ensure!(all.len() == SHARDS, "{} leases", all.len());

            let producer = Producer::start(kinesis.clone(), &stream, 20, Duration::from_millis(250), 3000);
            let journal = Journal::default();
            let opening = [(&a, "a0"), (&a, "a1"), (&b, "b0"), (&b, "b1")]
                .map(|(server, label)| DriverSession::open(&server.addr, APP, &stream, label, &journal));
            let sessions: Vec<DriverSession> = futures::future::try_join_all(opening).await?;
            let started = Instant::now();
            journal.wait_until(60, "4 sessions holding 10 shards each", |d| d.balanced(&all, 10, 10)).await?;
            figure("skewed_converge_ms", started.elapsed().as_millis());

            // Quiet: not one assignment or revoke for 30 s.
            let settled = journal.read(|d| (d.segments.len(), d.revokes.len()));
            let moved = journal
                .wait_until(QUIET.as_secs(), "a shard to move", |d| (d.segments.len(), d.revokes.len()) != settled)
                .await;
            ensure!(moved.is_err(), "a shard moved between sessions with skewed clocks");
            ensure!(journal.read(|d| d.owners(&all)).is_some(), "every shard has exactly one holder");

            // Kill the instance that runs 60 s ahead: its shards move after the TTL.
            let (on_a, on_b): (Vec<DriverSession>, Vec<DriverSession>) =
                sessions.into_iter().partition(|s| s.label.starts_with('a'));
            let killed = Instant::now();
            a.kill();
            journal.wait_until(30, "b's sessions holding 20 shards each", |d| d.balanced(&all, 20, 20)).await?;
            let failover = killed.elapsed();
            figure("skewed_failover_ms", failover.as_millis());
            // A session is dead a TTL after its heartbeat was last seen to change, at most one
            // balance interval before the kill.
            ensure!(failover + Duration::from_secs(1) >= LEASE_TTL, "shards moved after {failover:?}, before the lease TTL");
            ensure!(failover <= LEASE_TTL + Duration::from_secs(4), "shards moved only after {failover:?}");
            ensure!(on_a.iter().all(DriverSession::ended), "the killed instance's sessions ended");

            let puts = producer.finish().await?;
            journal.wait_until(60, "every record put delivered", |d| d.has_all(&puts)).await?;
            let summary = journal.check(&puts)?;
            println!("clock skew: {summary:?}");
            for s in on_b {
                s.close().await;
            }
            Ok(())
        })
        .await?;
    let _ = kinesis.delete_stream().stream_name(&stream).send().await;
    Ok(())
}
