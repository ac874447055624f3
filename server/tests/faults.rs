//! Kinesis faults through the fault-injecting proxy (`common::fault_proxy`) in front of
//! kinesalite: throttled, failing, dropped and slow GetRecords calls and throttled
//! GetShardIterator calls are retried with backoff, nothing is skipped or repeated and
//! no error reaches the client; a shard that disappeared (past the retention period)
//! ends, so its children are read.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use common::fault_proxy::{Counts, FaultProxy, Faults};
use common::*;
use kinesis_butler_proto as pb;
use pb::butler_client::ButlerClient;
use pb::get_records_response::Event;
use tonic::transport::Channel;

/// A session asking for small batches, so reading takes many GetRecords calls.
async fn open_small_batches(client: &mut ButlerClient<Channel>, stream: &str, batch: u32) -> Result<RawSession> {
    let req = pb::GetRecordsRequest {
        app: "app".into(),
        streams: vec![stream.into()],
        max_records_per_batch: batch,
        client_name: "faults".into(),
        ..Default::default()
    };
    let mut events = within(30, "GetRecords to open", client.get_records(req)).await??.into_inner();
    match within(30, "SessionStarted", events.message()).await?? {
        Some(pb::GetRecordsResponse { event: Some(Event::SessionStarted(s)) }) => {
            Ok(RawSession { id: s.session_id, events, epochs: BTreeMap::new() })
        }
        other => bail!("expected SessionStarted first, got {other:?}"),
    }
}

#[tokio::test]
async fn throttled_and_failing_reads_lose_nothing() -> Result<()> {
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let stream = unique("faults");
    create_stream(&kinesis, &stream, 4).await?;
    let put = put_records(&kinesis, &stream, 0, 2000).await?;
    let total: usize = put.values().map(Vec::len).sum();

    // 20% of GetRecords throttled, 1 in 7 failing with a 500, 1 in 13 cut off, 1 in 11
    // slow; 1 in 4 GetShardIterator throttled.
    let faults = Faults {
        throttle_one_in: 5,
        fail_one_in: 7,
        drop_one_in: 13,
        delay_one_in: 11,
        delay: Duration::from_millis(300),
        limit_one_in: 4,
        ..Default::default()
    };
    let proxy = FaultProxy::start(&Emulator::Kinesalite.endpoint(), faults).await?;
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("butler.db").display());
    let server = fault_proxy::start_server_via(&proxy.endpoint, &store, &[]).await?;
    let mut client = server.client().await?;
    let mut session = open_small_batches(&mut client, &stream, 40).await?;
    // `collect` fails on any error status on the stream: none may reach the client.
    let got = session.collect(total, 120).await?;

    for (shard, puts) in &put {
        let seqs: Vec<&str> = got[shard].iter().map(|r| r.sequence_number.as_str()).collect();
        let want: Vec<&str> = puts.iter().map(|p| p.sequence_number.as_str()).collect();
        assert_eq!(seqs, want, "shard {shard}: every record once, in order, despite the faults");
    }

    let c = proxy.counts();
    let (attempts, ok) = (Counts::get(&c.get_records), Counts::get(&c.get_records_ok));
    let (throttled, failed, dropped) = (Counts::get(&c.throttled), Counts::get(&c.failed), Counts::get(&c.dropped));
    println!(
        "GetRecords: {attempts} attempts, {ok} answered, {throttled} throttled, {failed} failed, {dropped} dropped, \
         {} delayed; GetShardIterator: {} calls, {} throttled",
        Counts::get(&c.delayed),
        Counts::get(&c.shard_iterator),
        Counts::get(&c.limited)
    );
    assert!(ok >= (total / 40) as u64, "at least one call per batch of 40 records ({ok})");
    assert!(
        throttled >= attempts / 5 && throttled >= 5,
        "a fifth of the calls were throttled ({throttled}/{attempts})"
    );
    assert!(failed >= 1 && dropped >= 1, "some calls failed ({failed}) and lost their connection ({dropped})");
    assert!(Counts::get(&c.limited) >= 1, "some GetShardIterator calls were throttled");
    // Reads were slowed: every answered call cost more than one attempt on average,
    // and the rejected attempts were retried, not skipped.
    assert!(attempts >= ok + throttled + failed, "attempts {attempts} = answered {ok} + rejected");
    Ok(())
}

#[tokio::test]
async fn a_parent_past_retention_no_longer_blocks_its_children() -> Result<()> {
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let stream = unique("trimmed");
    create_stream(&kinesis, &stream, 1).await?;
    put_records(&kinesis, &stream, 0, 50).await?;
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await?;
    wait_active(&kinesis, &stream).await?;
    let children = put_records(&kinesis, &stream, 50, 200).await?;
    assert!(!children.contains_key("shardId-000000000000"), "new records go to the children");

    let proxy = FaultProxy::start(&Emulator::Kinesalite.endpoint(), Faults::default()).await?;
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("butler.db").display());
    let server = fault_proxy::start_server_via(&proxy.endpoint, &store, &["--shard-sync-interval", "1s"]).await?;
    let mut client = server.client().await?;
    // The app knew the parent (its lease exists, unread) ...
    within(
        10,
        "Initialize",
        client.initialize(pb::InitializeRequest { app: "app".into(), streams: vec![stream.clone()] }),
    )
    .await??;
    // ... and Kinesis forgot it: trimmed past the retention period.
    proxy.set_faults(Faults { hidden_shards: ["shardId-000000000000".to_owned()].into(), ..Default::default() });

    let mut session = open_session(&mut client, "app", &stream).await?;
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut parent_ended = false;
    let want: usize = children.values().map(Vec::len).sum();
    within(60, "the parent to end and the children to be read", async {
        while got.values().map(Vec::len).sum::<usize>() < want {
            let Some(pb::GetRecordsResponse { event: Some(event) }) = session.events.message().await? else {
                bail!("session ended");
            };
            match event {
                Event::ShardEnded(e) => {
                    assert_eq!(e.shard_id, "shardId-000000000000");
                    parent_ended = true;
                    session.checkpoint_shard_end(&mut client, &stream, e).await?;
                }
                Event::Records(batch) => {
                    got.entry(batch.shard_id).or_default().extend(batch.records.into_iter().map(|r| r.sequence_number));
                }
                _ => {}
            }
        }
        Ok(())
    })
    .await??;
    assert!(parent_ended, "the vanished parent was ended");
    assert!(!got.contains_key("shardId-000000000000"), "nothing read from the vanished parent");
    let want: BTreeMap<String, Vec<String>> =
        children.into_iter().map(|(s, puts)| (s, puts.into_iter().map(|p| p.sequence_number).collect())).collect();
    assert_eq!(got, want, "the children were read in full");
    assert!(Counts::get(&proxy.counts().hidden) >= 1);
    Ok(())
}
