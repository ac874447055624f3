//! Checkpoint policies other than "every batch": a time-based policy stores progress
//! while the shard is idle; in manual mode only the handler's checkpoints are stored.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use common::client::{no_work, spawn, stop, test_options, Journal, Recorder, Work};
use common::*;
use kinesis_butler_client::{CheckpointPolicy, Consumer, ConsumerOptions, ErrorKind, HandlerError};

fn handled(j: &Journal) -> usize {
    j.batches().iter().map(|b| b.sequences.len()).sum()
}

#[tokio::test]
async fn interval_policy_checkpoints_an_idle_shard() -> Result<()> {
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let stream = unique("client-interval");
    create_stream(&kinesis, &stream, 2).await?;
    let put = put_records(&kinesis, &stream, 0, 400).await?;
    let dir = tempfile::tempdir()?;
    let server =
        TestServer::start(&format!("sqlite://{}", dir.path().join("b.db").display()), Emulator::Kinesalite, &[])
            .await?;

    let journal = Journal::default();
    let options = ConsumerOptions {
        checkpoint: CheckpointPolicy::Interval(Duration::from_millis(300)),
        ..test_options("interval", 50)
    };
    let consumer = Arc::new(Consumer::new(&server.addr, "app", [&stream], options)?);
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work: no_work() });
    journal.wait_until(60, "all records handled", |j| handled(j) >= 400).await?;

    // No batch follows the last one: only the timer can store it, while running.
    let client = server.client().await?;
    eventually(10, "the interval checkpoint of the last records", || {
        let (mut client, stream, put) = (client.clone(), stream.clone(), put.clone());
        async move {
            let d = describe(&mut client, "app", &stream).await?;
            Ok(d.leases.iter().all(|l| l.checkpoint == put[&l.shard_id].last().unwrap().sequence_number))
        }
    })
    .await?;
    stop(&consumer, task).await??;
    Ok(())
}

#[tokio::test]
async fn manual_policy_stores_only_the_handlers_checkpoints() -> Result<()> {
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let stream = unique("client-manual");
    create_stream(&kinesis, &stream, 1).await?;
    let put = put_records(&kinesis, &stream, 0, 100).await?.into_values().next().unwrap();
    let dir = tempfile::tempdir()?;
    let server =
        TestServer::start(&format!("sqlite://{}", dir.path().join("b.db").display()), Emulator::Kinesalite, &[])
            .await?;

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
    let consumer = Arc::new(Consumer::new(&server.addr, "app", [&stream], options)?);
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work });
    journal.wait_until(60, "all records handled", |j| handled(j) >= 100).await?;
    stop(&consumer, task).await??;

    // The stop stored nothing of its own: the last checkpoint is the handler's.
    let mut client = server.client().await?;
    let d = describe(&mut client, "app", &stream).await?;
    assert_eq!(d.leases[0].checkpoint, put[94].sequence_number);
    Ok(())
}
