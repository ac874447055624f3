//! Checkpoint policies other than "every batch": a time-based policy stores progress
//! while the shard is idle; in manual mode only the handler's checkpoints are stored.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use kinesis_butler_client::{CheckpointPolicy, Consumer, ConsumerOptions, ErrorKind, HandlerError};
use support::client::{no_work, spawn, stop, test_options, Journal, Recorder, Work};
use support::*;

fn handled(j: &Journal) -> usize {
    j.batches().iter().map(|b| b.sequences.len()).sum()
}

#[tokio::test]
async fn interval_policy_checkpoints_an_idle_shard() -> Result<()> {
    let stream = unique("client-interval");
    let put = make_records(2, 400);
    let server = ScriptedButler::serving(&stream, &put, 3);

    let journal = Journal::default();
    let options = ConsumerOptions {
        checkpoint: CheckpointPolicy::Interval(Duration::from_millis(300)),
        ..test_options("interval", 50)
    };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work: no_work() });
    journal.wait_until(60, "all records handled", |j| handled(j) >= 400).await?;

    // No batch follows the last one: only the timer can store it, while running.
    server
        .wait_until(10, "the interval checkpoint of the last records", |b| {
            let d = b.describe_now();
            d.leases.iter().all(|l| l.checkpoint == put[&l.shard_id].last().unwrap().sequence_number)
        })
        .await;
    stop(&consumer, task).await??;
    Ok(())
}

#[tokio::test]
async fn manual_policy_stores_only_the_handlers_checkpoints() -> Result<()> {
    let stream = unique("client-manual");
    let records = make_records(1, 100);
    let server = ScriptedButler::serving(&stream, &records, 3);
    let put = records.into_values().next().unwrap();

    // Each batch checkpoints its fifth record only.
    let work: Work = Arc::new(|batch| {
        Box::pin(async move {
            let bad = batch.checkpointer().checkpoint_sequence("not-a-number", 0).await.expect_err("rejected");
            assert_eq!(bad.kind(), ErrorKind::InvalidArgument);
            batch.checkpointer().checkpoint_at(&batch.records()[4]).await.map_err(HandlerError::new)?;
            Ok(())
        })
    });
    let journal = Journal::default();
    let options = ConsumerOptions { checkpoint: CheckpointPolicy::Manual, ..test_options("manual", 10) };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work });
    journal.wait_until(60, "all records handled", |j| handled(j) >= 100).await?;
    stop(&consumer, task).await??;

    // The stop stored nothing of its own: the last checkpoint is the handler's.
    let d = server.describe_now();
    assert_eq!(d.leases[0].checkpoint, put[94].sequence_number);
    Ok(())
}
