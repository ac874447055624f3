//! Per-shard backpressure: a handler stuck on one shard does not stop the records of
//! the other shards. The stuck shard's queue stays bounded (its extra batches are
//! dropped); once the handler returns the shard is released and read again from its
//! checkpoint, so none of its records is lost either.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Result;
use kinesis_butler_client::{Consumer, ConsumerOptions, StopReason};
use support::client::{spawn, stop, test_options, Journal, Recorder, ShardEvent, Work};
use support::*;
use tokio::sync::watch;

#[tokio::test]
async fn a_stuck_handler_on_one_shard_does_not_stop_the_others() -> Result<()> {
    let stream = unique("client-stuck");
    let put = make_records(4, 800);
    let stuck = put.keys().next().expect("shards").clone();
    // Up to 4 batches beyond a shard's checkpoint: more than the stuck shard's queue
    // (2) and the batch in hand hold.
    let server = ScriptedButler::serving(&stream, &put, 4);

    // The first call on the stuck shard waits for the gate.
    let (gate, gate_rx) = watch::channel(false);
    let work: Work = {
        let stuck = stuck.clone();
        Arc::new(move |batch| {
            let mut gate = gate_rx.clone();
            let hold = batch.shard_id() == stuck;
            Box::pin(async move {
                if hold {
                    let _ = gate.wait_for(|open| *open).await;
                }
                Ok(())
            })
        })
    };
    let journal = Journal::default();
    let options = ConsumerOptions { shard_queue_batches: 2, ..test_options("stuck", 10) };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work });

    let handled_on = |j: &Journal, shard: &str| {
        j.batches()
            .iter()
            .filter(|b| b.shard_id == shard)
            .flat_map(|b| b.sequences.clone())
            .collect::<BTreeSet<_>>()
            .len()
    };
    let others: Vec<(String, usize)> =
        put.iter().filter(|(s, _)| **s != stuck).map(|(s, p)| (s.clone(), p.len())).collect();
    journal
        .wait_until(60, "every record of the other shards handled", |j| {
            others.iter().all(|(shard, n)| handled_on(j, shard) >= *n)
        })
        .await?;
    assert_eq!(handled_on(&journal, &stuck), 0, "the stuck shard handled nothing meanwhile");

    // Unstick: the queued batches are handled, the shard is released and read again.
    gate.send_replace(true);
    let stuck_len = put[&stuck].len();
    journal.wait_until(60, "every record of the stuck shard handled", |j| handled_on(j, &stuck) >= stuck_len).await?;
    stop(&consumer, task).await??;

    let released = journal.events().iter().any(
        |e| matches!(e, ShardEvent::Stopped { shard, reason: StopReason::Released, .. } if shard.shard_id == stuck),
    );
    assert!(released, "the overflowing shard was released: {:?}", journal.events());
    // In order, and nothing handled twice: dropped batches were never handled.
    for (shard, puts) in &put {
        let seqs: Vec<String> =
            journal.batches().into_iter().filter(|b| &b.shard_id == shard).flat_map(|b| b.sequences).collect();
        let want: Vec<String> = puts.iter().map(|p| p.sequence_number.clone()).collect();
        assert_eq!(seqs, want, "shard {shard}: every record once, in order");
    }
    Ok(())
}
