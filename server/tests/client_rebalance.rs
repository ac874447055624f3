//! A rebalance during processing: a second consumer joins, the first hands shards over
//! with their final checkpoints, and no batch is handled by both.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use common::client::{spawn, stop, test_options, Journal, Recorder, ShardEvent, Work};
use common::*;
use kinesis_butler_client::{Consumer, StopReason};

#[tokio::test]
async fn a_second_consumer_takes_shards_over_at_their_final_checkpoints() -> Result<()> {
    let emulator = Emulator::KinesisLocal;
    let kinesis = kinesis_client(emulator);
    let stream = unique("client-rebalance");
    create_stream(&kinesis, &stream, 4).await?;
    let put = put_records(&kinesis, &stream, 0, 1600).await?;
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("butler.db").display());
    let server = TestServer::start(&store, emulator, &[]).await?;

    // Some work per batch, so that batches are in hand when the rebalance comes.
    let work: Work = Arc::new(|_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        })
    });
    let journal = Journal::default();
    let recorder = |name: &str| Recorder { consumer: name.into(), journal: journal.clone(), work: work.clone() };
    let a = Arc::new(Consumer::new(&server.addr, "app", [&stream], test_options("a", 20))?);
    let task_a = spawn(&a, recorder("a"));
    let handled = |j: &Journal| j.batches().iter().map(|b| b.sequences.len()).sum::<usize>();
    journal.wait_until(60, "the first consumer to be under way", |j| handled(j) >= 300).await?;

    let b = Arc::new(Consumer::new(&server.addr, "app", [&stream], test_options("b", 20))?);
    let task_b = spawn(&b, recorder("b"));
    let distinct = |j: &Journal| j.batches().iter().flat_map(|b| b.sequences.clone()).collect::<BTreeSet<_>>().len();
    journal.wait_until(120, "every record handled", |j| distinct(j) >= 1600).await?;
    stop(&a, task_a).await??;
    stop(&b, task_b).await??;

    let batches = journal.batches();
    let events = journal.events();
    let moved: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            ShardEvent::Started { consumer, shard } if consumer == "b" => Some(shard.shard_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(moved.len(), 2, "the second consumer took half of the 4 shards: {events:?}");

    for shard in &moved {
        // The first consumer gave the shard up for the rebalance…
        let reason = events.iter().find_map(|e| match e {
            ShardEvent::Stopped { consumer, shard: s, reason } if consumer == "a" && &s.shard_id == shard => {
                Some(*reason)
            }
            _ => None,
        });
        assert_eq!(reason, Some(StopReason::Rebalanced), "shard {shard}: {events:?}");
        // …with its final checkpoint: the second starts right after A's last record.
        let a_last = batches
            .iter()
            .filter(|b| b.consumer == "a" && &b.shard_id == shard)
            .flat_map(|b| b.sequences.last().cloned())
            .next_back()
            .unwrap_or_default();
        let b_start = events
            .iter()
            .find_map(|e| match e {
                ShardEvent::Started { consumer, shard: s } if consumer == "b" && &s.shard_id == shard => {
                    Some(s.checkpoint.clone())
                }
                _ => None,
            })
            .expect("started");
        assert_eq!(b_start, a_last, "shard {shard}: handed over at the last record A handled");
    }

    // No record (so no batch) handled by both, none twice, in order per shard.
    let mut by_shard: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for b in &batches {
        for s in &b.sequences {
            by_shard.entry(b.shard_id.clone()).or_default().push((s.clone(), b.consumer.clone()));
        }
    }
    for (shard, puts) in &put {
        let seqs: Vec<&str> = by_shard[shard].iter().map(|(s, _)| s.as_str()).collect();
        let want: Vec<&str> = puts.iter().map(|p| p.sequence_number.as_str()).collect();
        assert_eq!(seqs, want, "shard {shard}: every record once, in order, across both consumers");
        // Once B has it, A never handles it again.
        let consumers: Vec<&str> = by_shard[shard].iter().map(|(_, c)| c.as_str()).collect();
        let first_b = consumers.iter().position(|c| *c == "b").unwrap_or(consumers.len());
        assert!(consumers[first_b..].iter().all(|c| *c == "b"), "shard {shard}: {consumers:?}");
    }

    let mut client = server.client().await?;
    let d = describe(&mut client, "app", &stream).await?;
    for lease in &d.leases {
        assert_eq!(lease.checkpoint, put[&lease.shard_id].last().unwrap().sequence_number);
    }
    Ok(())
}
