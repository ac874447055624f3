//! Resharding: when a shard is split the client handles the parent to its end, stores
//! `SHARD_END`, and only then are the children read.

mod common;

use std::sync::Arc;

use anyhow::Result;
use common::client::{no_work, spawn, stop, test_options, Journal, Recorder, ShardEvent};
use common::*;
use kinesis_butler_client::{Consumer, StopReason};

#[tokio::test]
async fn a_split_parent_is_ended_before_its_children_are_read() -> Result<()> {
    let emulator = Emulator::KinesisLocal;
    let kinesis = kinesis_client(emulator);
    let stream = unique("client-split");
    create_stream(&kinesis, &stream, 1).await?;
    let before = put_records(&kinesis, &stream, 0, 100).await?;
    let parent = before.keys().next().expect("one shard").clone();
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("butler.db").display());
    let server = TestServer::start(&store, emulator, &["--shard-sync-interval", "500ms"]).await?;

    let journal = Journal::default();
    let consumer = Arc::new(Consumer::new(&server.addr, "app", [&stream], test_options("split", 25))?);
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work: no_work() });
    let handled = |j: &Journal| j.batches().iter().map(|b| b.sequences.len()).sum::<usize>();
    journal.wait_until(60, "the parent's records handled", |j| handled(j) >= 100).await?;

    // Split the shard in the middle of the hash key range, then write to the children.
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&parent)
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await?;
    wait_active(&kinesis, &stream).await?;
    let after = put_records(&kinesis, &stream, 100, 100).await?;
    assert!(!after.contains_key(&parent), "new records go to the children");
    journal.wait_until(90, "the children's records handled", |j| handled(j) >= 200).await?;
    stop(&consumer, task).await??;

    // Every batch of the parent was handled before any record of a child (rule 3: a
    // child is read only after its parent reached SHARD_END, which the client stores
    // after the parent's last batch).
    let order: Vec<String> = journal.batches().into_iter().map(|b| b.shard_id).collect();
    let last_parent = order.iter().rposition(|s| *s == parent).expect("parent batches");
    let first_child = order.iter().position(|s| *s != parent).expect("child batches");
    assert!(last_parent < first_child, "a child was handled before the parent's end: {order:?}");
    // The parent stopped as Ended: the SHARD_END checkpoint and its release succeed even
    // when a balancing round freed the finished lease in between.
    let events = journal.events();
    let parent_stop = events.iter().find_map(|e| match e {
        ShardEvent::Stopped { shard, reason, .. } if shard.shard_id == parent => Some(*reason),
        _ => None,
    });
    assert!(matches!(parent_stop, Some(StopReason::Ended)), "the parent was ended: {events:?}");
    // Every record once, in order per shard.
    for (shard, puts) in before.iter().chain(after.iter()) {
        let seqs: Vec<String> =
            journal.batches().into_iter().filter(|b| &b.shard_id == shard).flat_map(|b| b.sequences).collect();
        let want: Vec<String> = puts.iter().map(|p| p.sequence_number.clone()).collect();
        assert_eq!(seqs, want, "shard {shard}: every record once, in order");
    }
    let mut client = server.client().await?;
    let d = describe(&mut client, "app", &stream).await?;
    let parent_lease = d.leases.iter().find(|l| l.shard_id == parent).expect("parent lease");
    assert_eq!(parent_lease.checkpoint, "SHARD_END");
    Ok(())
}
