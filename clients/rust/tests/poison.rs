//! Poison records against the scripted Butler: partial failure reports, manual
//! checkpoints that shrink the retry, bisect, `max_record_age`, a dead-letter
//! destination that must accept (and may be down for a while), handler timeouts that
//! never let two calls of one shard overlap, per-key lanes, and the counters.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use futures::future::BoxFuture;
use kinesis_butler_client::{
    Batch, Consumer, ConsumerOptions, DeadLetter, DeadLetterCallback, DeadLetterEntry, DeadLetterTarget, FailurePolicy,
    GiveUpReason, Handler, HandlerError,
};
use kinesis_butler_proto as pb;
use support::butler::Put;
use support::client::{spawn, stop, test_options, Journal, Recorder, Work};
use support::*;

/// A destination that keeps what it accepted; refuses the first `refusals` sends.
#[derive(Default)]
struct Kept {
    entries: Mutex<Vec<DeadLetterEntry>>,
    refusals: AtomicU32,
    sends: AtomicU32,
}

/// The destination of a test: shares its [`Kept`].
struct KeptBy(Arc<Kept>);

impl DeadLetter for KeptBy {
    fn send(&self, entries: Vec<DeadLetterEntry>) -> BoxFuture<'static, Result<(), HandlerError>> {
        let me = self.0.clone();
        Box::pin(async move {
            me.sends.fetch_add(1, Ordering::SeqCst);
            if me.refusals.load(Ordering::SeqCst) > 0 {
                me.refusals.fetch_sub(1, Ordering::SeqCst);
                return Err(HandlerError::msg("destination unreachable"));
            }
            me.entries.lock().unwrap().extend(entries);
            Ok(())
        })
    }
}

fn to(kept: &Arc<Kept>) -> FailurePolicy {
    FailurePolicy::DeadLetter(DeadLetterTarget::Callback(DeadLetterCallback(Arc::new(KeptBy(kept.clone())))))
}

fn one_shard(count: usize, window: usize) -> (String, Vec<Put>, ScriptedButler) {
    let stream = unique("poison");
    let records = make_records(1, count);
    let server = ScriptedButler::serving(&stream, &records, window);
    (stream, records.into_values().next().expect("one shard"), server)
}

async fn stored_checkpoint(server: &ScriptedButler, stream: &str) -> Result<String> {
    let mut client = pb::butler_client::ButlerClient::new(server.channel());
    let d = describe(&mut client, "app", stream).await?;
    Ok(d.leases.first().map(|l| l.checkpoint.clone()).unwrap_or_default())
}

fn handled(j: &Journal) -> Vec<String> {
    j.batches().into_iter().flat_map(|b| b.sequences).collect()
}

#[tokio::test]
async fn a_named_poison_record_is_dead_lettered_alone_and_the_rest_handled_once() -> Result<()> {
    let (stream, put, server) = one_shard(500, 2);
    let poison = put[137].sequence_number.clone();
    let before = put[136].sequence_number.clone();
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let work: Work = {
        let (poison, done) = (poison.clone(), done.clone());
        Arc::new(move |batch: Batch| {
            let bad = batch.records().iter().find(|r| r.sequence_number == poison).cloned();
            // What this call handles: every record before the poison one.
            let good = batch.records().iter().take_while(|r| r.sequence_number != poison);
            done.lock().unwrap().extend(good.map(|r| r.sequence_number.clone()));
            Box::pin(async move {
                match bad {
                    Some(r) => Err(HandlerError::at(&r, "cannot parse")),
                    None => Ok(()),
                }
            })
        })
    };
    let kept = Arc::new(Kept::default());
    let options = ConsumerOptions { max_attempts: Some(3), on_failure: to(&kept), ..test_options("poison", 500) };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let journal = Journal::default();
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work });
    let last = put.last().unwrap().sequence_number.clone();
    server
        .wait_until(10, "the checkpoint past the poison record", |s| {
            s.checkpoints().iter().any(|c| c.sequence_number == last)
        })
        .await;
    let stats = consumer.stats();
    stop(&consumer, task).await??;

    let want: Vec<String> = put.iter().map(|p| p.sequence_number.clone()).filter(|s| *s != poison).collect();
    assert_eq!(*done.lock().unwrap(), want, "every other record once, in order");
    assert_eq!(journal.batches().len(), 1, "one successful call: the records after the poison one");
    let entries = kept.entries.lock().unwrap().clone();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(
        (e.sequence_number.as_str(), e.app.as_str(), e.stream.as_str()),
        (poison.as_str(), "app", stream.as_str())
    );
    assert_eq!((e.attempts, e.reason, e.error.as_str()), (3, GiveUpReason::HandlerFailed, "cannot parse"));
    assert_eq!(e.data, put[137].data);
    // The checkpoint was stored right before the failed record before it was retried.
    let stored: Vec<String> = server.checkpoints().into_iter().map(|c| c.sequence_number).collect();
    assert!(stored.contains(&before), "{stored:?}");
    assert_eq!(stored_checkpoint(&server, &stream).await?, last);
    assert_eq!((stats.dead_lettered, stats.records_handled, stats.retries), (1, 499, 2), "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn a_manual_checkpoint_inside_a_failing_call_shrinks_the_retry() -> Result<()> {
    let (stream, put, server) = one_shard(20, 1);
    let calls: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let work: Work = {
        let calls = calls.clone();
        Arc::new(move |batch: Batch| {
            let calls = calls.clone();
            Box::pin(async move {
                calls.lock().unwrap().push(batch.records().iter().map(|r| r.sequence_number.clone()).collect());
                if batch.attempt() == 1 && batch.records().len() == 10 {
                    batch.checkpointer().checkpoint_at(&batch.records()[4]).await.map_err(HandlerError::new)?;
                    return Err(HandlerError::msg("failed after record 5"));
                }
                Ok(())
            })
        })
    };
    let options = ConsumerOptions { max_attempts: Some(5), ..test_options("manual-shrink", 10) };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let journal = Journal::default();
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work });
    // Both batches fail once after a checkpoint at their fifth record; the retries succeed.
    journal.wait_until(30, "both retries", |j| handled(j).len() >= 10).await?;
    stop(&consumer, task).await??;
    let calls = calls.lock().unwrap().clone();
    let seqs = |r: std::ops::Range<usize>| put[r].iter().map(|p| p.sequence_number.clone()).collect::<Vec<_>>();
    assert_eq!(calls[0], seqs(0..10));
    assert_eq!(calls[1], seqs(5..10), "the retry starts after the handler's checkpoint");
    assert_eq!(calls[2], seqs(10..20));
    assert_eq!(calls[3], seqs(15..20));
    Ok(())
}

#[tokio::test]
async fn bisect_isolates_one_poison_record_among_1000_in_at_most_11_calls_on_the_failing_part() -> Result<()> {
    let (stream, put, server) = one_shard(1000, 1);
    let poison = put[737].sequence_number.clone();
    let failing_calls = Arc::new(AtomicU32::new(0));
    let work: Work = {
        let (poison, failing_calls) = (poison.clone(), failing_calls.clone());
        Arc::new(move |batch: Batch| {
            let bad = batch.records().iter().any(|r| r.sequence_number == poison);
            if bad {
                failing_calls.fetch_add(1, Ordering::SeqCst);
            }
            Box::pin(async move {
                if bad {
                    return Err(HandlerError::msg("something in here is bad"));
                }
                Ok(())
            })
        })
    };
    let kept = Arc::new(Kept::default());
    let options = ConsumerOptions {
        max_attempts: Some(1),
        bisect_on_error: true,
        on_failure: to(&kept),
        ..test_options("bisect", 1000)
    };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let journal = Journal::default();
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work });
    journal.wait_until(30, "the 999 good records", |j| handled(j).len() >= 999).await?;
    let stats = consumer.stats();
    stop(&consumer, task).await??;
    assert!(
        failing_calls.load(Ordering::SeqCst) <= 11,
        "{} calls on the failing part",
        failing_calls.load(Ordering::SeqCst)
    );
    let entries = kept.entries.lock().unwrap().clone();
    assert_eq!(entries.iter().map(|e| e.sequence_number.clone()).collect::<Vec<_>>(), vec![poison.clone()]);
    let mut got = handled(&journal);
    got.sort();
    let want: Vec<String> = put.iter().map(|p| p.sequence_number.clone()).filter(|s| *s != poison).collect();
    assert_eq!(got, want, "each good record once");
    assert_eq!(stats.bisect_steps, 10, "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn records_older_than_max_record_age_go_to_the_destination_without_a_handler_call() -> Result<()> {
    // The scripted records arrived in 2023.
    let (stream, put, server) = one_shard(30, 2);
    let kept = Arc::new(Kept::default());
    let options = ConsumerOptions {
        max_record_age: Some(Duration::from_secs(3600)),
        on_failure: to(&kept),
        ..test_options("age", 10)
    };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let journal = Journal::default();
    let work: Work = Arc::new(|_| Box::pin(async { Ok(()) }));
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work });
    let last = put.last().unwrap().sequence_number.clone();
    server
        .wait_until(10, "the checkpoint at the end", |s| s.checkpoints().iter().any(|c| c.sequence_number == last))
        .await;
    stop(&consumer, task).await??;
    assert!(journal.batches().is_empty(), "no handler call for records too old");
    let entries = kept.entries.lock().unwrap().clone();
    assert_eq!(entries.len(), 30);
    assert!(entries.iter().all(|e| e.reason == GiveUpReason::TooOld && e.attempts == 0));
    assert_eq!(consumer.stats().dead_lettered, 30);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_destination_makes_the_shard_wait_and_loses_nothing() -> Result<()> {
    let (stream, put, server) = one_shard(40, 1);
    let poison = put[15].sequence_number.clone();
    let kept = Arc::new(Kept { refusals: AtomicU32::new(4), ..Kept::default() });
    let early = Arc::new(AtomicU32::new(0));
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let work: Work = {
        let (poison, kept, early) = (poison.clone(), kept.clone(), early.clone());
        let done = done.clone();
        Arc::new(move |batch: Batch| {
            let bad = batch.records().iter().find(|r| r.sequence_number == poison).cloned();
            let good = batch.records().iter().take_while(|r| r.sequence_number != poison);
            done.lock().unwrap().extend(good.map(|r| r.sequence_number.clone()));
            // Same-length decimals: text order is number order.
            if batch.records()[0].sequence_number > poison && kept.entries.lock().unwrap().is_empty() {
                early.fetch_add(1, Ordering::SeqCst);
            }
            Box::pin(async move { bad.map_or(Ok(()), |r| Err(HandlerError::at(&r, "poison"))) })
        })
    };
    let options = ConsumerOptions { max_attempts: Some(1), on_failure: to(&kept), ..test_options("dlq-down", 10) };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let journal = Journal::default();
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work });
    let last = put.last().unwrap().sequence_number.clone();
    server
        .wait_until(30, "the checkpoint at the end", |s| s.checkpoints().iter().any(|c| c.sequence_number == last))
        .await;
    stop(&consumer, task).await??;
    assert_eq!(kept.sends.load(Ordering::SeqCst), 5, "refused four times, accepted on the fifth");
    assert_eq!(kept.entries.lock().unwrap().len(), 1);
    let stored: Vec<String> = server.checkpoints().into_iter().map(|c| c.sequence_number).collect();
    assert!(stored.contains(&put[14].sequence_number), "checkpoint right before the poison: {stored:?}");
    assert_eq!(early.load(Ordering::SeqCst), 0, "nothing after the poison ran before the destination accepted it");
    let want: Vec<String> = put.iter().map(|p| p.sequence_number.clone()).filter(|s| *s != poison).collect();
    assert_eq!(*done.lock().unwrap(), want);
    assert_eq!(stored_checkpoint(&server, &stream).await?, last);
    Ok(())
}

/// A handler like a binding's: its call keeps running after the future is dropped
/// (on a thread of its own), so the client must wait for it.
struct Stubborn {
    running: Arc<AtomicU32>,
    max_seen: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
    cancelled_seen: Arc<AtomicU32>,
    sleep: Duration,
}

impl Handler for Stubborn {
    fn handle(&self, batch: Batch) -> BoxFuture<'static, Result<(), HandlerError>> {
        let (running, max_seen, calls, cancelled_seen, sleep) =
            (self.running.clone(), self.max_seen.clone(), self.calls.clone(), self.cancelled_seen.clone(), self.sleep);
        let call = calls.fetch_add(1, Ordering::SeqCst);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        // The work runs on its own thread: dropping the future would not stop it.
        std::thread::spawn(move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            max_seen.fetch_max(now, Ordering::SeqCst);
            if call == 0 {
                std::thread::sleep(sleep);
            }
            if batch.is_cancelled() {
                cancelled_seen.fetch_add(1, Ordering::SeqCst);
            }
            running.fetch_sub(1, Ordering::SeqCst);
            let _ = done_tx.send(());
        });
        Box::pin(async move {
            let _ = done_rx.await;
            Ok(())
        })
    }

    fn keeps_running_when_dropped(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_handler_taking_three_times_its_timeout_never_overlaps_its_retry() -> Result<()> {
    let (stream, _put, server) = one_shard(10, 1);
    let h = Stubborn {
        running: Arc::default(),
        max_seen: Arc::default(),
        calls: Arc::default(),
        cancelled_seen: Arc::default(),
        sleep: Duration::from_millis(600),
    };
    let (max_seen, calls, cancelled_seen) = (h.max_seen.clone(), h.calls.clone(), h.cancelled_seen.clone());
    let options = ConsumerOptions { handler_timeout: Some(Duration::from_millis(200)), ..test_options("timeout", 10) };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let task = {
        let consumer = consumer.clone();
        tokio::spawn(async move { consumer.run(h).await })
    };
    server
        .wait_until(10, "the batch checkpointed", |s| s.checkpoints().iter().any(|c| !c.sequence_number.is_empty()))
        .await;
    let stats = consumer.stats();
    stop(&consumer, task).await??;
    assert_eq!(max_seen.load(Ordering::SeqCst), 1, "never two calls of the shard at once");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the timed-out call, then the retry");
    assert_eq!(cancelled_seen.load(Ordering::SeqCst), 1, "the first call saw its cancellation");
    assert_eq!((stats.handler_timeouts, stats.retries), (1, 1), "{stats:?}");
    Ok(())
}

fn keyed(i: usize, keys: usize) -> pb::Record {
    pb::Record {
        sequence_number: format!("{:020}", i + 1),
        sub_sequence_number: 0,
        partition_key: format!("key-{}", i % keys),
        data: format!("{i}").into_bytes().into(),
        approximate_arrival_timestamp_ms: 0,
    }
}

#[tokio::test]
async fn lanes_keep_each_keys_order_and_checkpoint_only_what_every_lane_finished() -> Result<()> {
    let server = ScriptedButler::new();
    let seen: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let in_flight = Arc::new(AtomicU32::new(0));
    let max_in_flight = Arc::new(AtomicU32::new(0));
    let below_checkpoint = Arc::new(AtomicU32::new(0));
    let handler = {
        let (seen, in_flight, max_in_flight) = (seen.clone(), in_flight.clone(), max_in_flight.clone());
        let (server, below) = (server.clone(), below_checkpoint.clone());
        move |batch: Batch| {
            let (seen, in_flight, max_in_flight) = (seen.clone(), in_flight.clone(), max_in_flight.clone());
            // A record still to be handled must be above every stored checkpoint.
            let stored = server.checkpoints().iter().filter_map(|c| c.sequence_number.parse::<u64>().ok()).max();
            if batch.records().iter().any(|r| stored.is_some_and(|cp| r.sequence_number.parse::<u64>().unwrap() <= cp))
            {
                below.fetch_add(1, Ordering::SeqCst);
            }
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                for r in batch.records() {
                    seen.lock()
                        .unwrap()
                        .entry(r.partition_key.clone())
                        .or_default()
                        .push(r.sequence_number.parse().unwrap());
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<(), HandlerError>(())
            }
        }
    };
    let options = ConsumerOptions { parallelization_factor: 4, shard_queue_batches: 64, ..test_options("lanes", 10) };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", ["s"], options)?);
    let task = {
        let consumer = consumer.clone();
        tokio::spawn(async move { consumer.run(handler).await })
    };
    let session = server.session(0, 10).await;
    session.assign("s", "shard-1", 1, "");
    for b in 0..40 {
        session.records("s", "shard-1", 1, (b * 10..b * 10 + 10).map(|i| keyed(i, 40)).collect());
    }
    let last = format!("{:020}", 400);
    server
        .wait_until(20, "the last record checkpointed", |s| s.checkpoints().iter().any(|c| c.sequence_number == last))
        .await;
    stop(&consumer, task).await??;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 40);
    for (key, seqs) in &seen {
        assert_eq!(seqs.len(), 10, "{key}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{key} in order: {seqs:?}");
    }
    assert!(max_in_flight.load(Ordering::SeqCst) > 1, "lanes ran at once");
    assert_eq!(below_checkpoint.load(Ordering::SeqCst), 0, "no unhandled record was below the checkpoint");
    assert!(max_in_flight.load(Ordering::SeqCst) <= 4, "at most one call per lane");
    // Every stored checkpoint covered only finished records: they only move forward.
    let stored: Vec<u64> = server.checkpoints().into_iter().filter_map(|c| c.sequence_number.parse().ok()).collect();
    assert!(stored.windows(2).all(|w| w[0] <= w[1]), "{stored:?}");
    Ok(())
}
