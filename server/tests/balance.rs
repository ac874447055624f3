//! Dynamic redistribution (DESIGN.md rule 4) on kinesis-local with 250 shards and the
//! Redis store, while records are put throughout:
//!
//! - one instance: 5 sessions converge to exactly 50 shards each; a 6th joins and all
//!   hold 41 or 42, with only shards of over-target sessions moved (to the new one); a
//!   session is closed and the others take its shards within 2 balancer intervals;
//! - two instances sharing Redis with sessions on both: the balance holds over the
//!   total; one instance is SIGKILLed and the sessions on the other read its shards again
//!   after the lease TTL, from their checkpoints; its old epochs are fenced in the store.
//!
//! Under all of it the journal checks one owner per epoch, no lost record, order, and
//! duplicates only after the last acknowledged checkpoint. Convergence and failover
//! times are printed as `FIGURE name=value` lines (`cargo test --test balance --
//! --nocapture`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::driver::{figure, DriverSession, Journal, JournalData, Producer};
use common::*;
use kinesis_butler::seqnum::SequenceNumber;
use kinesis_butler::store::{self, Checkpoint, GroupKey, StoreError};
use kinesis_butler_proto as pb;
use pb::shard_revoked::Reason;

const APP: &str = "app";
const SHARDS: usize = 250;
const BALANCE_INTERVAL: Duration = Duration::from_secs(1);
const LEASE_TTL: Duration = Duration::from_secs(3);

/// One 250-shard stream at a time keeps kinesis-local (and the tests beside) responsive.
static EMULATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Server flags: the default balance interval, a short lease TTL, and a caught-up shard
/// polled every 10 s: kinesis-local (one node process, shared with the other tests)
/// answers some 50–80 calls a second on 2 cores, and must still list shards promptly
/// when a session opens.
fn server_args() -> Vec<String> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    ["--balance-interval", &ms(BALANCE_INTERVAL), "--lease-ttl", &ms(LEASE_TTL), "--idle-interval", "10s"]
        .map(String::from)
        .to_vec()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Creates a 250-shard stream, runs `body` on it with a Redis store of its own, then
/// deletes both, also when the body failed.
async fn with_stream_and_store<F, Fut>(name: &str, body: F) -> Result<()>
where
    F: FnOnce(aws_sdk_kinesis::Client, String, TestStore) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let _one_at_a_time = EMULATOR.lock().await;
    let kinesis = kinesis_client(Emulator::KinesisLocal);
    let stream = unique(name);
    create_stream(&kinesis, &stream, SHARDS as i32).await?;
    let store = TestStore::redis();
    let outcome = store.run(body(kinesis.clone(), stream.clone(), store.clone())).await;
    let deleted = within(30, "DeleteStream", kinesis.delete_stream().stream_name(&stream).send()).await;
    outcome?;
    deleted?.context("DeleteStream")?;
    Ok(())
}

/// Every shard id of the stream (from the leases the server created).
async fn shard_ids(
    client: &mut pb::butler_client::ButlerClient<tonic::transport::Channel>,
    stream: &str,
) -> Result<BTreeSet<String>> {
    let req = pb::InitializeRequest { app: APP.into(), streams: vec![stream.into()] };
    within(30, "Initialize", client.initialize(req)).await??;
    let leases = describe_leases(client, stream).await?.leases;
    ensure!(leases.len() == SHARDS, "{} leases, want {SHARDS}", leases.len());
    Ok(leases.into_iter().map(|l| l.shard_id).collect())
}

async fn describe_leases(
    client: &mut pb::butler_client::ButlerClient<tonic::transport::Channel>,
    stream: &str,
) -> Result<pb::DescribeLeasesResponse> {
    let req = pb::DescribeLeasesRequest { app: APP.into(), stream: stream.into() };
    Ok(within(10, "DescribeLeases", client.describe_leases(req)).await??.into_inner())
}

/// The store agrees with what the sessions hold: the same owner for every shard, no
/// handoff pending, and matching per-session counts (bounded poll: the store's view is
/// not announced by an event).
async fn store_agrees(
    client: &mut pb::butler_client::ButlerClient<tonic::transport::Channel>,
    stream: &str,
    journal: &Journal,
    all: &BTreeSet<String>,
) -> Result<()> {
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let d = describe_leases(client, stream).await?;
        let store_owners: BTreeMap<String, String> =
            d.leases.iter().map(|l| (l.shard_id.clone(), l.owner.clone())).collect();
        let pending = d.leases.iter().filter(|l| !l.handoff_to.is_empty()).count();
        let client_owners = journal.read(|j| j.owners(all)).unwrap_or_default();
        let counts: BTreeMap<String, usize> =
            d.sessions.iter().map(|s| (s.session_id.clone(), s.shard_count as usize)).collect();
        let client_counts = journal.read(JournalData::counts);
        if store_owners == client_owners && pending == 0 && counts == client_counts {
            return Ok(());
        }
        last = format!("{pending} handoffs pending; store counts {counts:?}; client counts {client_counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the store's leases do not match what the sessions hold: {last}")
}

/// Shards whose owner differs between two views.
fn moved(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> BTreeMap<String, (String, String)> {
    before
        .iter()
        .filter(|(shard, owner)| after.get(*shard) != Some(owner))
        .map(|(shard, owner)| (shard.clone(), (owner.clone(), after.get(shard).cloned().unwrap_or_default())))
        .collect()
}

/// Runs the journal's checks and requires that handoffs were fenced-probed.
fn print_summary(test: &str, journal: &Journal, puts: &BTreeMap<String, Vec<Put>>) -> Result<()> {
    let summary = journal.check(puts)?;
    println!("{test}: {summary:?}");
    ensure!(summary.probes > 0, "no fencing probe was made");
    ensure!(summary.revokes.get("Rebalance").copied().unwrap_or(0) > 0, "no graceful handoff happened");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_five_sessions_then_a_sixth_then_one_leaves() -> Result<()> {
    with_stream_and_store("balance", |kinesis, stream, store| async move {
        let args = server_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = TestServer::start(&store.url(), Emulator::KinesisLocal, &args).await?;
        let mut client = server.client().await?;
        let all = shard_ids(&mut client, &stream).await?;
        let producer = Producer::start(kinesis, &stream, 25, Duration::from_millis(250), 9000);
        let journal = Journal::default();

        // Five sessions at once: exactly 50 each. Times count from the moment every
        // session was started (opening lists the stream's shards on the emulator).
        let opened = Instant::now();
        let labels: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
        let opening = labels.iter().map(|label| DriverSession::open(&server.addr, APP, &stream, label, &journal));
        let mut sessions: Vec<DriverSession> = futures::future::try_join_all(opening).await?;
        let started = Instant::now();
        figure("open_5_sessions_ms", ms(started - opened));
        let at = journal.wait_until(60, "5 sessions holding 50 shards each", |d| d.balanced(&all, 50, 50)).await?;
        figure("balance_5_sessions_250_shards_ms", ms(at - started));
        store_agrees(&mut client, &stream, &journal, &all).await?;

        // A sixth joins: 41 or 42 each, and only shards of the (over-target) old
        // sessions moved, all of them to the newcomer, each by a graceful handoff.
        // The readers are all running (they delivered what was put so far) before the
        // next session joins.
        let so_far = producer.snapshot();
        journal.wait_until(60, "records put so far delivered", |d| d.has_all(&so_far)).await?;
        let before = journal.read(|d| d.owners(&all)).context("owners")?;
        let (segments_before, revokes_before) = journal.read(|d| (d.segments.len(), d.revokes.len()));
        let opened = Instant::now();
        let sixth = DriverSession::open(&server.addr, APP, &stream, "s5", &journal).await?;
        let joined = Instant::now();
        figure("open_6th_session_ms", ms(joined - opened));
        let at = journal.wait_until(60, "6 sessions holding 41 or 42 shards", |d| d.balanced(&all, 41, 42)).await?;
        figure("balance_6th_session_joins_ms", ms(at - joined));
        store_agrees(&mut client, &stream, &journal, &all).await?;
        let after = journal.read(|d| d.owners(&all)).context("owners")?;
        let moves = moved(&before, &after);
        let counts = journal.read(JournalData::counts);
        ensure!(moves.values().all(|(_, to)| *to == sixth.id), "a shard moved between old sessions: {moves:?}");
        ensure!(
            moves.len() == counts[&sixth.id],
            "moves {} != the newcomer's {} shards",
            moves.len(),
            counts[&sixth.id]
        );
        ensure!(before.values().all(|owner| counts[owner] <= 50), "a giver was not over target");
        journal.read(|d| {
            ensure!(
                d.segments[segments_before..].iter().all(|s| s.session == sixth.id),
                "an old session got a new shard"
            );
            let revokes = &d.revokes[revokes_before..];
            ensure!(revokes.iter().all(|r| r.reason == Reason::Rebalance), "non-graceful revoke: {revokes:?}");
            ensure!(revokes.len() == moves.len(), "{} revokes for {} moves", revokes.len(), moves.len());
            Ok(())
        })?;
        sessions.push(sixth);

        // One session leaves: the others take its shards within 2 balancer intervals.
        let leaver = sessions.remove(0);
        let before = journal.read(|d| d.owners(&all)).context("owners")?;
        let orphans: BTreeSet<String> =
            before.iter().filter(|(_, o)| **o == leaver.id).map(|(s, _)| s.clone()).collect();
        let left = Instant::now();
        leaver.close().await;
        let at = journal.wait_until(30, "the leaver's shards taken", |d| d.owners(&all).is_some()).await?;
        let takeover = at - left;
        figure("takeover_after_session_close_ms", ms(takeover));
        ensure!(
            takeover <= 2 * BALANCE_INTERVAL,
            "{} shards of a closed session taken after {takeover:?}, more than 2 balancer intervals",
            orphans.len()
        );
        let at = journal.wait_until(30, "5 sessions holding 50 shards each", |d| d.balanced(&all, 50, 50)).await?;
        figure("rebalance_after_session_close_ms", ms(at - left));
        store_agrees(&mut client, &stream, &journal, &all).await?;
        let after = journal.read(|d| d.owners(&all)).context("owners")?;
        let moves = moved(&before, &after);
        ensure!(moves.keys().cloned().collect::<BTreeSet<_>>() == orphans, "only the leaver's shards move");

        // Every record put arrives; then the journal checks.
        let puts = producer.finish().await?;
        journal.wait_until(90, "every record put delivered", |d| d.has_all(&puts)).await?;
        for s in sessions {
            s.close().await;
        }
        print_summary("one instance", &journal, &puts)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_balance_over_the_total_and_fail_over() -> Result<()> {
    with_stream_and_store("failover", |kinesis, stream, store| async move {
        let args = server_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let a = TestServer::start(&store.url(), Emulator::KinesisLocal, &args).await?;
        let mut b = TestServer::start(&store.url(), Emulator::KinesisLocal, &args).await?;
        let mut client = a.client().await?;
        let all = shard_ids(&mut client, &stream).await?;
        let producer = Producer::start(kinesis, &stream, 25, Duration::from_millis(250), 9000);
        let journal = Journal::default();

        // Two sessions on a take everything; two more on b join, and the shards spread
        // to 62 or 63 each over the total, by handoffs across the instances.
        let opening = [(&a, "a0"), (&a, "a1")]
            .map(|(server, label)| DriverSession::open(&server.addr, APP, &stream, label, &journal));
        let mut sessions: Vec<DriverSession> = futures::future::try_join_all(opening).await?;
        journal.wait_until(60, "2 sessions on a holding 125 shards", |d| d.balanced(&all, 125, 125)).await?;
        let so_far = producer.snapshot();
        journal.wait_until(60, "records put so far delivered", |d| d.has_all(&so_far)).await?;
        let before = journal.read(|d| d.owners(&all)).context("owners")?;
        let opening = [(&b, "b0"), (&b, "b1")]
            .map(|(server, label)| DriverSession::open(&server.addr, APP, &stream, label, &journal));
        sessions.extend(futures::future::try_join_all(opening).await?);
        let started = Instant::now();
        let at = journal.wait_until(60, "4 sessions holding 62 or 63 shards", |d| d.balanced(&all, 62, 63)).await?;
        figure("balance_2_instances_2_sessions_join_ms", ms(at - started));
        store_agrees(&mut client, &stream, &journal, &all).await?;
        let after = journal.read(|d| d.owners(&all)).context("owners")?;
        let newcomers: BTreeSet<&str> = sessions[2..].iter().map(|s| s.id.as_str()).collect();
        let moves = moved(&before, &after);
        ensure!(
            moves.values().all(|(_, to)| newcomers.contains(to.as_str())),
            "only moves to the newcomers: {moves:?}"
        );
        let counts = journal.read(JournalData::counts);
        let taken: usize = newcomers.iter().map(|s| counts[*s]).sum();
        ensure!(moves.len() == taken, "{} moves for the newcomers' {taken} shards", moves.len());
        let instances: BTreeSet<String> =
            describe_leases(&mut client, &stream).await?.sessions.into_iter().map(|s| s.instance_id).collect();
        ensure!(instances.len() == 2, "sessions on {} instances, want 2", instances.len());

        // SIGKILL instance b: after the lease TTL its shards are read again by the
        // sessions on a, from their checkpoints.
        let (on_a, on_b): (Vec<DriverSession>, Vec<DriverSession>) =
            sessions.into_iter().partition(|s| s.label.starts_with('a'));
        let dead: BTreeSet<&str> = on_b.iter().map(|s| s.id.as_str()).collect();
        // Let b's sessions checkpoint under their current epochs first, so the takeover
        // has checkpoints to start from.
        journal
            .wait_until(60, "b's sessions checkpointing half their shards", |d| {
                let current: BTreeSet<(&str, u64)> = d
                    .held
                    .iter()
                    .filter(|(s, _)| dead.contains(s.as_str()))
                    .flat_map(|(_, held)| held.iter().map(|(shard, epoch)| (shard.as_str(), *epoch)))
                    .collect();
                let checkpointed: BTreeSet<(&str, u64)> = d
                    .checkpoints
                    .iter()
                    .filter(|c| c.error.is_none() && !c.sequence.is_empty())
                    .map(|c| (c.shard.as_str(), c.epoch))
                    .filter(|k| current.contains(k))
                    .collect();
                checkpointed.len() * 2 >= current.len()
            })
            .await?;
        let orphaned: BTreeMap<String, (String, u64)> = journal.read(|d| {
            d.held
                .iter()
                .filter(|(s, _)| dead.contains(s.as_str()))
                .flat_map(|(s, held)| held.iter().map(move |(shard, epoch)| (shard.clone(), (s.clone(), *epoch))))
                .collect()
        });
        let killed = Instant::now();
        b.kill();
        let at = journal
            .wait_until(30, "b's shards read again on a", |d| {
                orphaned
                    .keys()
                    .all(|shard| on_a.iter().any(|s| d.held.get(&s.id).is_some_and(|h| h.contains_key(shard))))
            })
            .await?;
        let failover = at - killed;
        figure("failover_after_instance_kill_ms", ms(failover));
        figure("failover_lease_ttl_ms", ms(LEASE_TTL));
        ensure!(
            failover <= LEASE_TTL + 3 * BALANCE_INTERVAL,
            "{} shards of a killed instance taken after {failover:?}",
            orphaned.len()
        );
        ensure!(on_b.iter().all(DriverSession::ended), "sessions on the killed instance ended");
        let at = journal.wait_until(30, "2 sessions holding 125 shards", |d| d.balanced(&all, 125, 125)).await?;
        figure("rebalance_after_instance_kill_ms", ms(at - killed));
        store_agrees(&mut client, &stream, &journal, &all).await?;

        // The dead sessions' epochs are fenced in the store itself.
        let direct = store::Leases::new(store::open(&store.url()).await?);
        let key = GroupKey::new(APP, &stream);
        let last_ok: BTreeMap<(String, u64), String> = journal.read(|d| {
            d.checkpoints
                .iter()
                .filter(|c| c.error.is_none() && !c.sequence.is_empty() && dead.contains(c.session.as_str()))
                .map(|c| ((c.shard.clone(), c.epoch), c.sequence.clone()))
                .collect()
        });
        let mut fenced = 0;
        for (shard, (session, epoch)) in &orphaned {
            let Some(sequence) = last_ok.get(&(shard.clone(), *epoch)) else {
                continue;
            };
            let cp = Checkpoint::At { sequence: SequenceNumber::parse(sequence)?, sub_sequence: 0 };
            match direct.checkpoint(&key, shard, session, *epoch, &cp).await {
                Err(StoreError::LeaseLost { current_epoch, .. }) if current_epoch > *epoch => fenced += 1,
                other => anyhow::bail!("checkpoint of {shard} by dead session {session} at epoch {epoch}: {other:?}"),
            }
        }
        ensure!(fenced > 0, "no checkpointed shard of the killed instance to probe");
        println!("fenced {fenced} epochs of the killed instance's sessions");

        let puts = producer.finish().await?;
        journal.wait_until(90, "every record put delivered", |d| d.has_all(&puts)).await?;
        for s in on_a {
            s.close().await;
        }
        print_summary("two instances", &journal, &puts)
    })
    .await
}

/// Opening a session never waits on a group's balancing work or on Kinesis: with two
/// instances reading a 250-shard stream (sessions on both, records put throughout), a
/// new session on either instance gets `SessionStarted` within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opens_at_once_while_two_instances_read() -> Result<()> {
    with_stream_and_store("opening", |kinesis, stream, store| async move {
        let args = server_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let a = TestServer::start(&store.url(), Emulator::KinesisLocal, &args).await?;
        let b = TestServer::start(&store.url(), Emulator::KinesisLocal, &args).await?;
        let mut client = a.client().await?;
        let all = shard_ids(&mut client, &stream).await?;
        let producer = Producer::start(kinesis, &stream, 25, Duration::from_millis(250), 9000);
        let journal = Journal::default();
        let opening = [(&a, "a0"), (&a, "a1"), (&b, "b0"), (&b, "b1")]
            .map(|(server, label)| DriverSession::open(&server.addr, APP, &stream, label, &journal));
        let mut sessions: Vec<DriverSession> = futures::future::try_join_all(opening).await?;
        journal.wait_until(60, "4 sessions holding 62 or 63 shards", |d| d.balanced(&all, 62, 63)).await?;
        let mut slowest = Duration::ZERO;
        for (server, label) in [(&b, "b2"), (&a, "a2")] {
            let started = Instant::now();
            let session = DriverSession::open(&server.addr, APP, &stream, label, &journal).await?;
            let took = started.elapsed();
            slowest = slowest.max(took);
            sessions.push(session);
        }
        figure("session_started_with_two_instances_ms", ms(slowest));
        ensure!(slowest <= Duration::from_secs(1), "a new session waited {slowest:?} for SessionStarted");
        journal.wait_until(60, "6 sessions holding 41 or 42 shards", |d| d.balanced(&all, 41, 42)).await?;
        store_agrees(&mut client, &stream, &journal, &all).await?;
        let puts = producer.finish().await?;
        journal.wait_until(90, "every record put delivered", |d| d.has_all(&puts)).await?;
        for s in sessions {
            s.close().await;
        }
        // One owner per epoch, fencing, nothing lost (no fencing probe is required here:
        // the handoffs may move only shards with nothing processed at their epoch).
        let summary = journal.check(&puts)?;
        println!("opening: {summary:?}");
        Ok(())
    })
    .await
}
