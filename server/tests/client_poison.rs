//! Poison records through the real server and kinesalite: a record that fails every
//! attempt goes to a dead-letter Kinesis stream with its metadata while the other 499
//! are handled once and the checkpoint moves past it; bisect isolates an unnamed poison
//! record among 1,000 in at most 11 calls on the failing part; records older than
//! `max_record_age` go to the destination without a handler call; a dead-letter
//! destination that is unreachable for a while makes the shard wait and loses nothing;
//! per-key lanes keep each key's order and lose nothing across a server kill and restart.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::Result;
use common::client::{spawn, stop, test_options, Journal, Recorder, Work};
use common::*;
use kinesis_butler_client::{Batch, Consumer, ConsumerOptions, DeadLetterTarget, FailurePolicy, Handler, HandlerError};

/// The client's `kinesis:` destination finds the emulator through the standard AWS settings.
fn aws_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ENDPOINT_URL_KINESIS", Emulator::Kinesalite.endpoint());
    });
}

/// Reads every record of a one-shard stream from its start.
async fn read_all(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> Result<Vec<aws_sdk_kinesis::types::Record>> {
    let shards = kinesis.list_shards().stream_name(stream).send().await?;
    let shard = shards.shards()[0].shard_id().to_owned();
    let it = kinesis
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(&shard)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await?;
    let out = kinesis.get_records().shard_iterator(it.shard_iterator().unwrap_or_default()).send().await?;
    Ok(out.records().to_vec())
}

/// A server on a fresh SQLite store (in `dir`, removed on drop).
struct Served {
    server: TestServer,
    store: String,
    dir: tempfile::TempDir,
}

async fn serve(flags: &[&str]) -> Result<Served> {
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("butler.db").display());
    let server = TestServer::start(&store, Emulator::Kinesalite, flags).await?;
    Ok(Served { server, store, dir })
}

/// A fresh one-shard stream with `count` records `rec-<i>` (keys `pk-<i>`) put.
async fn one_shard(kinesis: &aws_sdk_kinesis::Client, prefix: &str, count: usize) -> Result<(String, Vec<Put>)> {
    let stream = unique(prefix);
    create_stream(kinesis, &stream, 1).await?;
    let put = put_records(kinesis, &stream, 0, count).await?.into_values().next().expect("one shard");
    Ok((stream, put))
}

/// A handler that handles (notes in the returned list) every record before `poison` and
/// fails naming it with `error`.
fn failing_at(poison: &str, error: &'static str) -> (impl Handler, Done) {
    let done: Done = Arc::default();
    let handler = {
        let (done, poison) = (done.clone(), poison.to_owned());
        move |batch: Batch| {
            let bad = batch.records().iter().find(|r| r.sequence_number == poison).cloned();
            let good = batch.records().iter().take_while(|r| r.sequence_number != poison);
            done.lock().unwrap().extend(good.map(|r| r.sequence_number.clone()));
            async move { bad.map_or(Ok(()), |r| Err(HandlerError::at(&r, error))) }
        }
    };
    (handler, done)
}

type Done = Arc<Mutex<Vec<String>>>;

/// Waits (bounded) until the stored checkpoint of the stream's shard is `at`.
async fn checkpoint_reaches(server: &TestServer, stream: &str, at: &str, secs: u64, what: &str) -> Result<()> {
    let client = server.client().await?;
    eventually(secs, what, || {
        let (mut client, stream, at) = (client.clone(), stream.to_owned(), at.to_owned());
        async move {
            let d = describe(&mut client, "app", &stream).await?;
            Ok(d.leases.first().is_some_and(|l| l.checkpoint == at))
        }
    })
    .await
}

fn sequences(put: &[Put]) -> Vec<String> {
    put.iter().map(|p| p.sequence_number.clone()).collect()
}

#[tokio::test]
async fn a_poison_record_of_500_goes_to_a_dead_letter_stream_and_the_others_are_handled_once() -> Result<()> {
    aws_env();
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let (stream, put) = one_shard(&kinesis, "poison", 500).await?;
    let dlq = unique("poison-dlq");
    create_stream(&kinesis, &dlq, 1).await?;
    let poison = put[137].sequence_number.clone();
    // Keeps the store's directory until the end of the test.
    let served = serve(&[]).await?;
    let server = &served.server;

    let (handler, done) = failing_at(&poison, "cannot parse record 137");
    let options = ConsumerOptions {
        max_attempts: Some(2),
        on_failure: FailurePolicy::DeadLetter(DeadLetterTarget::Kinesis { stream: dlq.clone() }),
        ..test_options("poison", 500)
    };
    let consumer = Arc::new(Consumer::new(&server.addr, "app", [&stream], options)?);
    let task = spawn(&consumer, handler);
    let last = put.last().unwrap().sequence_number.clone();
    let mut client = server.client().await?;
    checkpoint_reaches(server, &stream, &last, 60, "the checkpoint past the poison record").await?;
    assert!(!task.is_finished(), "the consumer keeps going");
    stop(&consumer, task).await??;

    let want: Vec<String> = put.iter().map(|p| p.sequence_number.clone()).filter(|s| *s != poison).collect();
    assert_eq!(*done.lock().unwrap(), want, "the other 499 once each, in order");
    let dead = read_all(&kinesis, &dlq).await?;
    assert_eq!(dead.len(), 1, "exactly the poison record is in the dead-letter stream");
    assert_eq!(dead[0].partition_key(), Some("pk-137"));
    let entry: serde_json::Value = serde_json::from_slice(dead[0].data().as_ref())?;
    assert_eq!(entry["sequence_number"], poison.as_str());
    assert_eq!((entry["app"].as_str(), entry["stream"].as_str()), (Some("app"), Some(stream.as_str())));
    assert_eq!(entry["attempts"], 2);
    assert_eq!(entry["error"], "cannot parse record 137");
    assert!(entry["shard_id"].as_str().is_some_and(|s| s.starts_with("shardId-")));
    assert!(entry["approximate_arrival_timestamp_ms"].as_i64().is_some_and(|t| t > 0));
    assert_eq!(entry["data"], "cmVjLTEzNw==", "rec-137 in base64");
    let d = describe(&mut client, "app", &stream).await?;
    assert_eq!(d.leases[0].checkpoint, last);
    Ok(())
}

#[tokio::test]
async fn bisect_isolates_one_poison_record_among_1000_in_at_most_11_calls_on_the_failing_part() -> Result<()> {
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let (stream, put) = one_shard(&kinesis, "poison-bisect", 1000).await?;
    let poison = put[737].sequence_number.clone();
    let served = serve(&[]).await?;
    let dlq = served.dir.path().join("dead.jsonl");

    // The sizes of the calls that held the poison record (every one of them fails, and
    // the handler does not say which record is bad).
    let failing: Arc<Mutex<Vec<usize>>> = Arc::default();
    let work: Work = {
        let (poison, failing) = (poison.clone(), failing.clone());
        Arc::new(move |batch: Batch| {
            let bad = batch.records().iter().any(|r| r.sequence_number == poison);
            if bad {
                failing.lock().unwrap().push(batch.records().len());
            }
            Box::pin(async move {
                if bad {
                    return Err(HandlerError::msg("something in here is bad"));
                }
                Ok(())
            })
        })
    };
    let options = ConsumerOptions {
        max_attempts: Some(1),
        bisect_on_error: true,
        on_failure: FailurePolicy::DeadLetter(DeadLetterTarget::File(dlq.clone())),
        ..test_options("bisect", 1000)
    };
    let consumer = Arc::new(Consumer::new(&served.server.addr, "app", [&stream], options)?);
    let journal = Journal::default();
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work });
    let last = put.last().unwrap().sequence_number.clone();
    checkpoint_reaches(&served.server, &stream, &last, 30, "the checkpoint at the end").await?;
    let stats = consumer.stats();
    stop(&consumer, task).await??;

    let failing = failing.lock().unwrap().clone();
    assert_eq!(failing.first(), Some(&1000), "the first failing call held all 1,000 records: {failing:?}");
    assert!(failing.len() <= 11, "{} calls on the failing part: {failing:?}", failing.len());
    assert!(failing.windows(2).all(|w| w[1] == w[0].div_ceil(2) || w[1] == w[0] / 2), "halves: {failing:?}");
    assert_eq!(failing.last(), Some(&1), "down to the poison record alone: {failing:?}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&dlq)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 1, "only the poison record given up: {lines:?}");
    assert_eq!(lines[0]["sequence_number"], poison.as_str());
    assert_eq!((lines[0]["reason"].as_str(), lines[0]["attempts"].as_u64()), (Some("handler_failed"), Some(1)));
    assert_eq!(lines[0]["error"], "something in here is bad");
    let mut got: Vec<String> = journal.batches().into_iter().flat_map(|b| b.sequences).collect();
    got.sort();
    let want: Vec<String> = sequences(&put).into_iter().filter(|s| *s != poison).collect();
    assert_eq!(got, want, "each of the other 999 once");
    assert_eq!(
        stats.bisect_steps,
        failing.len() as u64 - 1,
        "a split after every failing call but the last: {stats:?}"
    );
    assert_eq!((stats.dead_lettered, stats.records_handled), (1, 999), "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn records_older_than_max_record_age_go_to_the_destination_and_newer_ones_to_the_handler() -> Result<()> {
    aws_env();
    let max_age = Duration::from_secs(2);
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let (stream, old) = one_shard(&kinesis, "poison-age", 20).await?;
    let put_at = Instant::now();
    let dlq = unique("poison-age-dlq");
    create_stream(&kinesis, &dlq, 1).await?;
    // Keeps the store's directory until the end of the test.
    let served = serve(&[]).await?;
    let server = &served.server;
    // The records have to age: nothing to await but the clock.
    tokio::time::sleep((put_at + max_age + Duration::from_millis(300)).saturating_duration_since(Instant::now())).await;

    let options = ConsumerOptions {
        max_record_age: Some(max_age),
        on_failure: FailurePolicy::DeadLetter(DeadLetterTarget::Kinesis { stream: dlq.clone() }),
        ..test_options("age", 100)
    };
    let consumer = Arc::new(Consumer::new(&server.addr, "app", [&stream], options)?);
    let journal = Journal::default();
    let no_work: Work = Arc::new(|_| Box::pin(async { Ok(()) }));
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work: no_work });
    let last_old = old.last().unwrap().sequence_number.clone();
    checkpoint_reaches(server, &stream, &last_old, 30, "the checkpoint past the records too old").await?;
    assert!(journal.batches().is_empty(), "no handler call for records too old");

    let new = put_records(&kinesis, &stream, 20, 10).await?.into_values().next().expect("one shard");
    journal
        .wait_until(30, "the newer records handled", |j| {
            j.batches().iter().map(|b| b.sequences.len()).sum::<usize>() >= new.len()
        })
        .await?;
    let stats = consumer.stats();
    stop(&consumer, task).await??;

    let handled: Vec<String> = journal.batches().into_iter().flat_map(|b| b.sequences).collect();
    assert_eq!(handled, sequences(&new), "only the newer records, once each, in order");
    let dead = read_all(&kinesis, &dlq).await?;
    let entries: Vec<serde_json::Value> =
        dead.iter().map(|r| serde_json::from_slice(r.data().as_ref())).collect::<Result<_, _>>()?;
    let dead_seqs: Vec<String> =
        entries.iter().map(|e| e["sequence_number"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(dead_seqs, sequences(&old), "every record too old in the dead-letter stream, in order");
    for (e, record) in entries.iter().zip(&dead) {
        assert_eq!((e["reason"].as_str(), e["attempts"].as_u64()), (Some("too_old"), Some(0)), "{e}");
        assert!(e["error"].as_str().is_some_and(|t| t.contains("max_record_age")), "the error names the age: {e}");
        assert_eq!(record.partition_key(), e["partition_key"].as_str());
    }
    assert_eq!(entries[0]["data"], "cmVjLTA=", "rec-0 in base64");
    assert_eq!((stats.dead_lettered, stats.records_handled), (20, 10), "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_dead_letter_destination_makes_the_shard_wait_and_loses_nothing() -> Result<()> {
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let (stream, put) = one_shard(&kinesis, "poison-wait", 60).await?;
    let poison = put[20].sequence_number.clone();
    let served = serve(&[]).await?;
    let server = &served.server;
    // The file's directory does not exist yet: every write fails until it does.
    let dlq_dir = served.dir.path().join("later");
    let dlq = dlq_dir.join("dead.jsonl");

    let (handler, done) = failing_at(&poison, "poison");
    let options = ConsumerOptions {
        max_attempts: Some(1),
        on_failure: FailurePolicy::DeadLetter(DeadLetterTarget::File(dlq.clone())),
        ..test_options("poison-wait", 10)
    };
    let consumer = Arc::new(Consumer::new(&server.addr, "app", [&stream], options)?);
    let task = spawn(&consumer, handler);
    let mut client = server.client().await?;
    let before = put[19].sequence_number.clone();
    checkpoint_reaches(server, &stream, &before, 30, "the checkpoint right before the poison record").await?;
    // The shard waits: nothing after the poison record is handled, the checkpoint stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(done.lock().unwrap().len(), 20, "nothing after the poison record while the destination is down");
    assert_eq!(describe(&mut client, "app", &stream).await?.leases[0].checkpoint, before);
    assert!(consumer.stats().dead_lettered == 0);

    std::fs::create_dir_all(&dlq_dir)?;
    let last = put.last().unwrap().sequence_number.clone();
    checkpoint_reaches(server, &stream, &last, 30, "the checkpoint at the end once the destination is back").await?;
    stop(&consumer, task).await??;
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&dlq)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["sequence_number"], poison.as_str());
    let want: Vec<String> = put.iter().map(|p| p.sequence_number.clone()).filter(|s| *s != poison).collect();
    assert_eq!(*done.lock().unwrap(), want);
    Ok(())
}

#[tokio::test]
async fn lanes_keep_each_keys_order_and_lose_nothing_across_a_server_restart() -> Result<()> {
    let emulator = Emulator::Kinesalite;
    let kinesis = kinesis_client(emulator);
    let stream = unique("poison-lanes");
    create_stream(&kinesis, &stream, 1).await?;
    // 40 keys, 20 records each, put in rounds: key k's records in order.
    let mut entries = Vec::new();
    for round in 0..20 {
        for key in 0..40 {
            entries.push((format!("key-{key}"), format!("{key}:{round}")));
        }
    }
    for chunk in entries.chunks(400) {
        let records = chunk
            .iter()
            .map(|(k, d)| {
                aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                    .partition_key(k)
                    .data(aws_sdk_kinesis::primitives::Blob::new(d.clone()))
                    .build()
                    .expect("entry")
            })
            .collect::<Vec<_>>();
        kinesis.put_records().stream_name(&stream).set_records(Some(records)).send().await?;
    }
    let flags = ["--lease-ttl", "2s"];
    let Served { mut server, store, dir: _dir } = serve(&flags).await?;
    let port = server.port();

    // (key, round) in the order the handler saw them.
    let seen: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        move |batch: Batch| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let mut seen = seen.lock().unwrap();
                for r in batch.records() {
                    let text = std::str::from_utf8(&r.data).map_err(HandlerError::new)?;
                    let (key, round) = text.split_once(':').ok_or_else(|| HandlerError::msg("bad record"))?;
                    seen.push((key.to_owned(), round.parse().map_err(HandlerError::new)?));
                }
                Ok::<(), HandlerError>(())
            }
        }
    };
    let options = ConsumerOptions { parallelization_factor: 4, ..test_options("lanes", 20) };
    let consumer = Arc::new(Consumer::new(&server.addr, "app", [&stream], options)?);
    let task = spawn(&consumer, handler);
    let count = |s: &Mutex<Vec<(String, u32)>>| s.lock().unwrap().len();
    within(60, "a third of the records", async {
        while count(&seen) < 250 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    server.kill();
    let _server = TestServer::start_on(port, &store, emulator, &flags).await?;
    within(120, "every record after the restart", async {
        loop {
            let distinct: BTreeSet<(String, u32)> = seen.lock().unwrap().iter().cloned().collect();
            if distinct.len() >= 800 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    stop(&consumer, task).await??;

    // Each key in order, apart from one restart of redelivery from the checkpoint.
    let mut by_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (k, r) in seen.lock().unwrap().iter() {
        by_key.entry(k.clone()).or_default().push(*r);
    }
    assert_eq!(by_key.len(), 40);
    for (key, rounds) in &by_key {
        let distinct: BTreeSet<u32> = rounds.iter().copied().collect();
        assert_eq!(distinct.len(), 20, "{key}: nothing lost ({rounds:?})");
        let back = rounds.windows(2).filter(|w| w[1] <= w[0]).count();
        assert!(back <= 1, "{key} in order but for one redelivery: {rounds:?}");
    }
    Ok(())
}
