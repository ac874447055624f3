//! Handler failures: retried with backoff, the checkpoint moves only after success; a
//! batch that fails every retry stops the consumer with the error (a panic is an error
//! like any other), or is skipped with `FailurePolicy::Skip`.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use kinesis_butler_client::{Consumer, ConsumerOptions, ErrorKind, FailurePolicy, HandlerError};
use kinesis_butler_proto::butler_client::ButlerClient;
use support::butler::Put;
use support::client::{spawn, stop, test_options, Journal, Recorder, Work};
use support::*;
use tonic::transport::Channel;

/// A one-shard stream with `count` records, and a scripted server of them.
async fn one_shard(count: usize) -> Result<(String, Vec<Put>, ScriptedButler, ())> {
    let stream = unique("client-fail");
    let records = make_records(1, count);
    let server = ScriptedButler::serving(&stream, &records, 3);
    let put = records.into_values().next().expect("one shard");
    Ok((stream, put, server, ()))
}

/// A Butler client of the scripted server (for `DescribeLeases`).
fn butler_client(server: &ScriptedButler) -> ButlerClient<Channel> {
    ButlerClient::new(server.channel())
}

async fn stored_checkpoint(client: &ButlerClient<Channel>, stream: &str) -> Result<String> {
    let d = describe(&mut client.clone(), "app", stream).await?;
    Ok(d.leases.first().map(|l| l.checkpoint.clone()).unwrap_or_default())
}

#[tokio::test]
async fn a_batch_failing_twice_is_delivered_three_times_and_checkpointed_only_after_success() -> Result<()> {
    let (stream, put, server, _dir) = one_shard(100).await?;
    let first = put[0].sequence_number.clone();
    let first_batch_last = put[9].sequence_number.clone();
    let client = butler_client(&server);

    // What the stored checkpoint was at each call, keyed by (first record, attempt).
    let observed: Arc<Mutex<HashMap<(String, u32), String>>> = Arc::default();
    let work: Work = {
        let (observed, client, stream, first) = (observed.clone(), client.clone(), stream.clone(), first.clone());
        Arc::new(move |batch| {
            let (observed, client, stream, first) = (observed.clone(), client.clone(), stream.clone(), first.clone());
            Box::pin(async move {
                let checkpoint = stored_checkpoint(&client, &stream).await.map_err(HandlerError::msg)?;
                let head = batch.records()[0].sequence_number.clone();
                observed.lock().unwrap().insert((head.clone(), batch.attempt()), checkpoint);
                if head == first && batch.attempt() <= 2 {
                    return Err(HandlerError::msg(format!("planned failure {}", batch.attempt())));
                }
                Ok(())
            })
        })
    };
    let journal = Journal::default();
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], test_options("retry", 10))?);
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work });
    let handled = |j: &Journal| j.batches().iter().map(|b| b.sequences.len()).sum::<usize>();
    journal.wait_until(60, "all 100 records handled", |j| handled(j) >= 100).await?;
    stop(&consumer, task).await??;

    let observed = observed.lock().unwrap().clone();
    // The failing batch was handed over exactly three times, the others once.
    let attempts_of = |head: &str| observed.keys().filter(|(h, _)| h == head).count();
    assert_eq!(attempts_of(&first), 3, "{observed:?}");
    let batches = journal.batches();
    assert_eq!(batches.len(), 10, "ten batches of ten");
    assert_eq!(batches[0].attempt, 3, "the first batch succeeded on its third attempt");
    assert!(batches[1..].iter().all(|b| b.attempt == 1));
    for b in &batches[1..] {
        assert_eq!(attempts_of(&b.sequences[0]), 1);
    }
    // The checkpoint did not move while the batch failed, nor before its success…
    for attempt in 1..=3 {
        assert_eq!(observed[&(first.clone(), attempt)], "", "attempt {attempt} saw no checkpoint");
    }
    // …and it was stored right after the success, before the next batch.
    let second = batches[1].sequences[0].clone();
    assert_eq!(observed[&(second, 1)], first_batch_last, "checkpoint after the successful attempt");
    assert_eq!(stored_checkpoint(&client, &stream).await?, put.last().unwrap().sequence_number);
    Ok(())
}

#[tokio::test]
async fn a_panicking_handler_stops_the_consumer_with_a_handler_error_and_no_checkpoint() -> Result<()> {
    let (stream, _put, server, _dir) = one_shard(30).await?;
    let work: Work = Arc::new(|_| Box::pin(async { panic!("boom in the handler") }));
    let journal = Journal::default();
    let options = ConsumerOptions { handler_retries: 2, ..test_options("panic", 10) };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work });

    // `run` returns by itself: the panic is the consumer's error, not a crash.
    let err = within(60, "run to fail", task).await??.expect_err("the handler never succeeds");
    assert_eq!(err.kind(), ErrorKind::Handler, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("3 attempt(s)") && text.contains("panicked") && text.contains("boom in the handler"),
        "{text}"
    );
    assert!(journal.batches().is_empty());
    let client = butler_client(&server);
    assert_eq!(stored_checkpoint(&client, &stream).await?, "", "nothing checkpointed");
    // The failed consumer closed its session: the shard is free for the next one.
    server.wait_until(5, "the lease to be freed", |b| b.describe_now().leases.iter().all(|l| l.owner.is_empty())).await;
    Ok(())
}

#[tokio::test]
async fn skip_policy_logs_a_failing_batch_and_goes_on() -> Result<()> {
    let (stream, put, server, _dir) = one_shard(50).await?;
    let first = put[0].sequence_number.clone();
    let work: Work = Arc::new(move |batch| {
        let fail = batch.records()[0].sequence_number == first;
        Box::pin(async move {
            if fail {
                return Err(HandlerError::msg("poison batch"));
            }
            Ok(())
        })
    });
    let journal = Journal::default();
    let options = ConsumerOptions { handler_retries: 1, on_failure: FailurePolicy::Skip, ..test_options("skip", 10) };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work });
    let handled = |j: &Journal| j.batches().iter().map(|b| b.sequences.len()).sum::<usize>();
    journal.wait_until(60, "the 40 records after the poison batch handled", |j| handled(j) >= 40).await?;
    stop(&consumer, task).await??;

    let seqs: Vec<String> = journal.batches().into_iter().flat_map(|b| b.sequences).collect();
    let want: Vec<String> = put[10..].iter().map(|p| p.sequence_number.clone()).collect();
    assert_eq!(seqs, want, "everything after the skipped batch, once, in order");
    let client = butler_client(&server);
    assert_eq!(stored_checkpoint(&client, &stream).await?, put.last().unwrap().sequence_number);
    Ok(())
}
