//! Resharding on kinesis-local while a producer puts and a consumer reads: split one
//! shard, merge two (and UpdateShardCount); every record arrives, and for each
//! partition key every record of a parent shard arrives before any of its children's.
//! The same through a crash and restart of the server in the middle.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ScalingType};
use common::*;
use kinesis_butler_proto as pb;
use pb::butler_client::ButlerClient;
use pb::get_records_response::Event;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

const KEYS: usize = 40;
const APP: &str = "app";
/// Fast shard discovery, and fast takeover of a crashed instance's leases.
const SERVER_ARGS: &[&str] = &["--shard-sync-interval", "1s", "--lease-ttl", "2s"];

/// A record as put.
#[derive(Clone, Debug)]
struct Sent {
    id: String,
    key: String,
    shard: String,
}

/// A record as received, in global arrival order.
#[derive(Clone, Debug)]
struct Seen {
    id: String,
    key: String,
    shard: String,
    sequence: String,
}

#[derive(Default)]
struct Log {
    seen: Mutex<Vec<Seen>>,
    progress: Notify,
}

/// Puts `count` records with ids `first..first+count` over `KEYS` partition keys.
async fn produce(kinesis: &aws_sdk_kinesis::Client, stream: &str, first: usize, count: usize) -> Result<Vec<Sent>> {
    let mut sent = Vec::new();
    let mut pending: Vec<usize> = (first..first + count).collect();
    within(120, "putting records", async {
        while !pending.is_empty() {
            let chunk: Vec<usize> = pending.drain(..pending.len().min(100)).collect();
            let entries = chunk
                .iter()
                .map(|i| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(format!("key-{}", i % KEYS))
                        .data(Blob::new(format!("rec-{i}")))
                        .build()
                        .expect("entry")
                })
                .collect::<Vec<_>>();
            let out = kinesis.put_records().stream_name(stream).set_records(Some(entries)).send().await?;
            let mut retry = Vec::new();
            for (i, r) in chunk.iter().zip(out.records()) {
                match r.shard_id() {
                    Some(shard) if r.sequence_number().is_some() => sent.push(Sent {
                        id: format!("rec-{i}"),
                        key: format!("key-{}", i % KEYS),
                        shard: shard.to_owned(),
                    }),
                    // Failed entries go again, after the rest of this chunk, so a key's
                    // records stay in put order.
                    _ => retry.push(*i),
                }
            }
            if !retry.is_empty() {
                bail!("PutRecords failed {} entries; the emulator should not throttle", retry.len());
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    Ok(sent)
}

async fn wait_active(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> Result<()> {
    within(30, "stream to become ACTIVE again", async {
        loop {
            let d = kinesis.describe_stream_summary().stream_name(stream).send().await?;
            if d.stream_description_summary().map(|s| s.stream_status().as_str()) == Some("ACTIVE") {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?
}

/// Every shard with its parents and hash key range.
async fn shards(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> Result<Vec<aws_sdk_kinesis::types::Shard>> {
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let req = match &next {
            Some(t) => kinesis.list_shards().next_token(t),
            None => kinesis.list_shards().stream_name(stream),
        };
        let out = req.send().await?;
        all.extend(out.shards().iter().cloned());
        match out.next_token() {
            Some(t) => next = Some(t.to_owned()),
            None => return Ok(all),
        }
    }
}

fn is_open(s: &aws_sdk_kinesis::types::Shard) -> bool {
    s.sequence_number_range().and_then(|r| r.ending_sequence_number()).is_none()
}

/// Splits the first open shard in the middle of its hash key range.
async fn split_first(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> Result<String> {
    let all = shards(kinesis, stream).await?;
    let shard = all.iter().find(|s| is_open(s)).context("an open shard")?;
    let range = shard.hash_key_range().context("hash key range")?;
    let (lo, hi): (u128, u128) = (range.starting_hash_key().parse()?, range.ending_hash_key().parse()?);
    let middle = lo + (hi - lo) / 2 + 1;
    kinesis
        .split_shard()
        .stream_name(stream)
        .shard_to_split(shard.shard_id())
        .new_starting_hash_key(middle.to_string())
        .send()
        .await?;
    wait_active(kinesis, stream).await?;
    Ok(shard.shard_id().to_owned())
}

/// Merges the last two open shards (adjacent hash key ranges).
async fn merge_last_two(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> Result<()> {
    let mut open: Vec<_> = shards(kinesis, stream).await?.into_iter().filter(is_open).collect();
    open.sort_by_key(|s| s.hash_key_range().map(|r| r.starting_hash_key().parse::<u128>().unwrap_or(0)).unwrap_or(0));
    let [.., a, b] = open.as_slice() else { bail!("fewer than two open shards") };
    kinesis
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge(a.shard_id())
        .adjacent_shard_to_merge(b.shard_id())
        .send()
        .await?;
    wait_active(kinesis, stream).await
}

/// Reads a session until it ends: records go to the log; each batch is checkpointed;
/// each `ShardEnded` is answered with a `shard_end` checkpoint.
fn consume(
    mut client: ButlerClient<Channel>,
    mut session: RawSession,
    stream: String,
    log: Arc<Log>,
) -> JoinHandle<Result<()>> {
    tokio::spawn(async move {
        loop {
            let event = match session.events.message().await {
                Ok(Some(pb::GetRecordsResponse { event: Some(e) })) => e,
                Ok(_) => return Ok(()),
                // The server went away (the restart test kills it).
                Err(_) => return Ok(()),
            };
            let checkpoint = match event {
                Event::ShardAssigned(a) => {
                    session.epochs.insert(a.shard_id, a.lease_epoch);
                    None
                }
                Event::Records(batch) => {
                    let last = batch.records.last().cloned();
                    {
                        let mut seen = log.seen.lock().unwrap();
                        for r in &batch.records {
                            seen.push(Seen {
                                id: String::from_utf8_lossy(&r.data).into_owned(),
                                key: r.partition_key.clone(),
                                shard: batch.shard_id.clone(),
                                sequence: r.sequence_number.clone(),
                            });
                        }
                    }
                    log.progress.notify_waiters();
                    last.map(|r| pb::CheckpointRequest {
                        session_id: session.id.clone(),
                        stream: stream.clone(),
                        shard_id: batch.shard_id.clone(),
                        lease_epoch: batch.lease_epoch,
                        sequence_number: r.sequence_number,
                        sub_sequence_number: r.sub_sequence_number,
                        ..Default::default()
                    })
                }
                Event::ShardEnded(e) => Some(pb::CheckpointRequest {
                    session_id: session.id.clone(),
                    stream: stream.clone(),
                    shard_id: e.shard_id,
                    lease_epoch: e.lease_epoch,
                    shard_end: true,
                    ..Default::default()
                }),
                Event::ShardRevoked(r) => {
                    bail!("unexpected revoke in a single-session test: {r:?}")
                }
                Event::SessionStarted(_) => None,
            };
            if let Some(req) = checkpoint {
                if let Err(status) = within(30, "checkpoint", client.checkpoint(req)).await? {
                    bail!("checkpoint failed: {status}");
                }
            }
        }
    })
}

async fn start_consumer(server: &TestServer, stream: &str, log: &Arc<Log>) -> Result<JoinHandle<Result<()>>> {
    let mut client = server.client().await?;
    let session = open_session(&mut client, APP, stream).await?;
    Ok(consume(client, session, stream.to_owned(), log.clone()))
}

/// Waits until some record seen matches `found`.
async fn wait_seen(log: &Log, secs: u64, found: impl Fn(&Seen) -> bool) -> Result<()> {
    within(secs, "a record from a child shard", async {
        loop {
            let notified = log.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if log.seen.lock().unwrap().iter().any(&found) {
                return;
            }
            notified.await;
        }
    })
    .await
}

/// Waits until every record sent was seen, failing early if the consumer stops.
async fn wait_all_seen(log: &Log, sent: &[Sent], consumer: &mut JoinHandle<Result<()>>, secs: u64) -> Result<()> {
    let want: BTreeSet<&str> = sent.iter().map(|s| s.id.as_str()).collect();
    let outcome = within(secs, "every record to arrive", async {
        loop {
            if consumer.is_finished() {
                let result = consumer.await.map_err(anyhow::Error::from).and_then(|r| r);
                bail!("the consumer stopped early: {result:?}");
            }
            let notified = log.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let missing = {
                let seen = log.seen.lock().unwrap();
                let got: BTreeSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
                want.difference(&got).count()
            };
            if missing == 0 {
                return Ok(());
            }
            tokio::select! {
                _ = notified => {}
                // Wakes for a consumer that stops without progress.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    })
    .await;
    if let Ok(Err(e)) = outcome {
        return Err(e);
    }
    if outcome.is_err() {
        let seen = log.seen.lock().unwrap();
        let got: BTreeSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
        let missing: Vec<&Sent> = sent.iter().filter(|s| !got.contains(s.id.as_str())).collect();
        let mut by_shard: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &missing {
            *by_shard.entry(m.shard.as_str()).or_default() += 1;
        }
        bail!("{} of {} records never arrived; missing per shard: {by_shard:?}", missing.len(), sent.len());
    }
    Ok(())
}

/// Every record sent arrived on the shard it was put to, each shard in sequence order,
/// and for each key all of a parent's records arrived before any of its children's.
fn check(log: &Log, sent: &[Sent], all_shards: &[aws_sdk_kinesis::types::Shard], exactly_once: bool) -> Result<()> {
    let seen = log.seen.lock().unwrap();
    let placed: HashMap<&str, &Sent> = sent.iter().map(|s| (s.id.as_str(), s)).collect();
    for s in seen.iter() {
        let put = placed.get(s.id.as_str()).with_context(|| format!("unknown record {}", s.id))?;
        assert_eq!(
            (put.shard.as_str(), put.key.as_str()),
            (s.shard.as_str(), s.key.as_str()),
            "record {} arrived as put",
            s.id
        );
    }
    if exactly_once {
        let distinct: BTreeSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(distinct.len(), seen.len(), "no record twice without a restart");
    }
    // Per shard: first arrivals in sequence order.
    let mut firsts: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut once = BTreeSet::new();
    for s in seen.iter().filter(|s| once.insert(s.id.as_str())) {
        firsts.entry(s.shard.as_str()).or_default().push(s.sequence.as_str());
    }
    for (shard, seqs) in &firsts {
        assert!(seqs.windows(2).all(|w| seq_cmp(w[0], w[1]).is_lt()), "shard {shard}: records in sequence order");
    }
    // Per key: every arrival from a parent precedes every arrival from its child.
    let mut span: HashMap<(&str, &str), (usize, usize)> = HashMap::new();
    for (i, s) in seen.iter().enumerate() {
        let e = span.entry((s.key.as_str(), s.shard.as_str())).or_insert((i, i));
        e.1 = i;
    }
    let mut checked = 0;
    for child in all_shards {
        let parents = [child.parent_shard_id(), child.adjacent_parent_shard_id()];
        for parent in parents.into_iter().flatten() {
            for k in 0..KEYS {
                let key = format!("key-{k}");
                if let (Some(p), Some(c)) =
                    (span.get(&(key.as_str(), parent)), span.get(&(key.as_str(), child.shard_id())))
                {
                    assert!(
                        p.1 < c.0,
                        "{key}: parent {parent} record at {} after child {} record at {}",
                        p.1,
                        child.shard_id(),
                        c.0
                    );
                    checked += 1;
                }
            }
        }
    }
    let distinct = once.len();
    eprintln!(
        "{} arrivals, {distinct} distinct, {} shards read, {checked} parent/child key spans ordered",
        seen.len(),
        firsts.len()
    );
    assert!(checked >= KEYS / 2, "the order check covered keys in parents and children ({checked})");
    Ok(())
}

fn store_in(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("butler.db").display())
}

#[tokio::test]
async fn split_and_merge_while_reading() -> Result<()> {
    let kinesis = kinesis_client(Emulator::KinesisLocal);
    let stream = unique("reshard");
    create_stream(&kinesis, &stream, 3).await?;
    let dir = tempfile::tempdir()?;
    let server = TestServer::start(&store_in(&dir), Emulator::KinesisLocal, SERVER_ARGS).await?;
    let log = Arc::new(Log::default());
    let mut consumer = start_consumer(&server, &stream, &log).await?;

    let mut sent = produce(&kinesis, &stream, 0, 600).await?;
    split_first(&kinesis, &stream).await?;
    sent.extend(produce(&kinesis, &stream, 600, 600).await?);
    merge_last_two(&kinesis, &stream).await?;
    sent.extend(produce(&kinesis, &stream, 1200, 600).await?);

    wait_all_seen(&log, &sent, &mut consumer, 90).await?;
    let all = shards(&kinesis, &stream).await?;
    assert_eq!(all.len(), 3 + 2 + 1, "3 shards, 2 children of the split, 1 of the merge");
    check(&log, &sent, &all, true)?;
    consumer.abort();
    Ok(())
}

#[tokio::test]
async fn split_and_merge_through_a_server_restart() -> Result<()> {
    let kinesis = kinesis_client(Emulator::KinesisLocal);
    let stream = unique("reshard-restart");
    create_stream(&kinesis, &stream, 3).await?;
    let dir = tempfile::tempdir()?;
    let mut server = TestServer::start(&store_in(&dir), Emulator::KinesisLocal, SERVER_ARGS).await?;
    let log = Arc::new(Log::default());
    let consumer = start_consumer(&server, &stream, &log).await?;

    let mut sent = produce(&kinesis, &stream, 0, 600).await?;
    let parent = split_first(&kinesis, &stream).await?;
    let children: BTreeSet<String> = shards(&kinesis, &stream)
        .await?
        .iter()
        .filter(|s| s.parent_shard_id() == Some(parent.as_str()))
        .map(|s| s.shard_id().to_owned())
        .collect();
    // Crash in the middle: while records are put and the children are being read.
    let producer = {
        let (kinesis, stream) = (kinesis.clone(), stream.clone());
        tokio::spawn(async move { produce(&kinesis, &stream, 600, 600).await })
    };
    wait_seen(&log, 60, |s| children.contains(&s.shard)).await?;
    server.kill();
    // It ends with the stream, or with a checkpoint the crash cut off.
    let _ = within(30, "old consumer to stop", consumer).await?;
    sent.extend(within(120, "producer", producer).await???);
    let server = TestServer::start(&store_in(&dir), Emulator::KinesisLocal, SERVER_ARGS).await?;
    let mut consumer = start_consumer(&server, &stream, &log).await?;
    merge_last_two(&kinesis, &stream).await?;
    sent.extend(produce(&kinesis, &stream, 1200, 600).await?);

    wait_all_seen(&log, &sent, &mut consumer, 120).await?;
    let all = shards(&kinesis, &stream).await?;
    check(&log, &sent, &all, false)?;
    consumer.abort();
    Ok(())
}

#[tokio::test]
async fn update_shard_count_while_reading() -> Result<()> {
    let kinesis = kinesis_client(Emulator::KinesisLocal);
    let stream = unique("reshard-scale");
    create_stream(&kinesis, &stream, 2).await?;
    let dir = tempfile::tempdir()?;
    let server = TestServer::start(&store_in(&dir), Emulator::KinesisLocal, SERVER_ARGS).await?;
    let log = Arc::new(Log::default());
    let mut consumer = start_consumer(&server, &stream, &log).await?;

    let mut sent = produce(&kinesis, &stream, 0, 500).await?;
    kinesis
        .update_shard_count()
        .stream_name(&stream)
        .target_shard_count(3)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await?;
    wait_active(&kinesis, &stream).await?;
    sent.extend(produce(&kinesis, &stream, 500, 500).await?);

    wait_all_seen(&log, &sent, &mut consumer, 90).await?;
    let all = shards(&kinesis, &stream).await?;
    assert!(all.iter().filter(|s| is_open(s)).count() == 3, "3 open shards after scaling");
    check(&log, &sent, &all, true)?;
    consumer.abort();
    Ok(())
}
