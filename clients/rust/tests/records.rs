//! The Rust client library against a scripted server: every record reaches the handler once,
//! in order per shard; checkpoints follow the policy; a stop checkpoints what was handled
//! and closes the session so its leases are free at once.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use kinesis_butler_client::{CheckpointPolicy, Consumer, ConsumerOptions, StopReason};
use support::client::{no_work, spawn, stop, test_options, Journal, Recorder, ShardEvent};
use support::*;

/// Handled sequence numbers per shard, in handling order.
fn handled(journal: &Journal) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for seen in journal.batches() {
        out.entry(seen.shard_id).or_default().extend(seen.sequences);
    }
    out
}

fn handled_count(journal: &Journal) -> usize {
    journal.batches().iter().map(|b| b.sequences.len()).sum()
}

async fn every_record_once(shards: usize, count: usize, batch: u32, policy: CheckpointPolicy) -> Result<()> {
    let stream = unique("client-all");
    let put = make_records(shards, count);
    let server = ScriptedButler::serving(&stream, &put, 3);

    let journal = Journal::default();
    let options = ConsumerOptions { checkpoint: policy, ..test_options("all", batch) };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work: no_work() });
    journal.wait_until(120, "every record handled", |j| handled_count(j) >= count).await?;
    stop(&consumer, task).await??;

    // Exactly once, in sequence order per shard, with the data as put.
    let got = handled(&journal);
    assert_eq!(got.len(), put.len(), "records of every shard handled");
    for (shard, puts) in &put {
        let want: Vec<&str> = puts.iter().map(|p| p.sequence_number.as_str()).collect();
        let seqs: Vec<&str> = got[shard].iter().map(String::as_str).collect();
        assert_eq!(seqs, want, "shard {shard}: every record once, in order");
    }
    let data: Vec<Vec<u8>> = journal.batches().into_iter().flat_map(|b| b.data).collect();
    let mut data: Vec<String> = data.into_iter().map(|d| String::from_utf8(d).expect("utf-8")).collect();
    data.sort();
    let mut want: Vec<String> = (0..count).map(|i| format!("rec-{i}")).collect();
    want.sort();
    assert_eq!(data, want, "payloads as put");

    // Every batch went through on its first attempt.
    assert!(journal.batches().iter().all(|b| b.attempt == 1));

    // Each shard was started once and stopped by the consumer's stop.
    let events = journal.events();
    let started = events.iter().filter(|e| matches!(e, ShardEvent::Started { .. })).count();
    assert_eq!(started, put.len(), "one start per shard: {events:?}");
    for e in &events {
        if let ShardEvent::Stopped { reason, .. } = e {
            assert_eq!(*reason, StopReason::ConsumerStopped, "{events:?}");
        }
    }

    // The stop stored the last record of every shard, whatever the policy.
    let described = server.describe_now();
    for lease in &described.leases {
        let last = &put[&lease.shard_id].last().expect("records").sequence_number;
        assert_eq!(&lease.checkpoint, last, "shard {}: final checkpoint", lease.shard_id);
    }
    // The session was closed: its leases are free without waiting for the lease TTL.
    server
        .wait_until(5, "the session's leases to be freed", |b| {
            let d = b.describe_now();
            d.sessions.is_empty() && d.leases.iter().all(|l| l.owner.is_empty())
        })
        .await;
    Ok(())
}

#[tokio::test]
async fn every_record_handled_once_in_order_and_checkpointed() -> Result<()> {
    every_record_once(4, 2000, 100, CheckpointPolicy::EveryBatch).await
}

#[tokio::test]
async fn volume_with_a_record_count_policy() -> Result<()> {
    every_record_once(8, 10_000, 500, CheckpointPolicy::EveryRecords(1000)).await
}
