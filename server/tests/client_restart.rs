//! A server restart in the middle of a stream: the consumer reconnects with backoff and
//! resumes from the stored checkpoints; no record is lost, and only batches in flight
//! at the crash are delivered again.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Result;
use common::client::{no_work, spawn, stop, test_options, Journal, Recorder};
use common::*;
use kinesis_butler_client::Consumer;

#[tokio::test]
async fn a_server_restart_mid_stream_loses_nothing() -> Result<()> {
    let emulator = Emulator::KinesisLocal;
    let kinesis = kinesis_client(emulator);
    let stream = unique("client-restart");
    create_stream(&kinesis, &stream, 4).await?;
    let put = put_records(&kinesis, &stream, 0, 2000).await?;
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("butler.db").display());
    // A short lease TTL: the killed instance's leases are taken over soon after.
    let flags = ["--lease-ttl", "2s"];
    let mut server = TestServer::start(&store, emulator, &flags).await?;
    let port = server.port();

    let journal = Journal::default();
    // Small batches: reading everything takes a while at 5 reads per second per shard.
    let batch = 10;
    let consumer = Arc::new(Consumer::new(&server.addr, "app", [&stream], test_options("restart", batch))?);
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work: no_work() });

    let handled = |j: &Journal| j.batches().iter().map(|b| b.sequences.len()).sum::<usize>();
    journal.wait_until(60, "a quarter of the records handled", |j| handled(j) >= 500).await?;
    server.kill();
    let before = handled(&journal);
    assert!(before < 2000, "the restart happens mid-stream ({before} handled)");

    let server = TestServer::start_on(port, &store, emulator, &flags).await?;
    let distinct = |j: &Journal| j.batches().iter().flat_map(|b| b.sequences.clone()).collect::<BTreeSet<_>>().len();
    journal.wait_until(120, "every record handled after the restart", |j| distinct(j) >= 2000).await?;
    assert!(!task.is_finished(), "run kept going through the restart");
    stop(&consumer, task).await??;

    // Nothing lost.
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in journal.batches() {
        got.entry(b.shard_id).or_default().extend(b.sequences);
    }
    for (shard, puts) in &put {
        let seen: BTreeSet<&str> = got[shard].iter().map(String::as_str).collect();
        for p in puts {
            assert!(seen.contains(p.sequence_number.as_str()), "shard {shard}: record {} lost", p.sequence_number);
        }
        // Redelivery starts at the last checkpoint: at most the batch in flight at the
        // crash is handled twice.
        let dupes = got[shard].len() - seen.len();
        assert!(dupes <= batch as usize, "shard {shard}: {dupes} records handled twice");
        // After the restart the shard starts over in order, right after its checkpoint.
        let mut last: Option<&str> = None;
        let mut restarts = 0;
        for seq in &got[shard] {
            if let Some(prev) = last {
                if seq_cmp(prev, seq) != std::cmp::Ordering::Less {
                    restarts += 1;
                }
            }
            last = Some(seq);
        }
        assert!(restarts <= 1, "shard {shard}: went back {restarts} times");
    }

    let mut client = server.client().await?;
    let d = describe(&mut client, "app", &stream).await?;
    for lease in &d.leases {
        assert_eq!(lease.checkpoint, put[&lease.shard_id].last().unwrap().sequence_number);
    }
    Ok(())
}
