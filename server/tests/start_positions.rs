//! Start positions for shards without a checkpoint, on kinesalite: AT_TIMESTAMP starts
//! at the first record at or after the time, LATEST skips what was there and reads
//! what comes next. (TRIM_HORIZON is the default every other test reads with.)

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use aws_sdk_kinesis::primitives::Blob;
use common::*;
use kinesis_butler_proto as pb;
use pb::butler_client::ButlerClient;
use pb::get_records_response::Event;
use pb::start_position::Kind;
use tonic::transport::Channel;

/// Hash keys that pick shard 0 or 1 of a 2-shard stream.
const SHARD_KEYS: [&str; 2] = ["1", "170141183460469231731687303715884105729"];

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn open_at(
    client: &mut ButlerClient<Channel>,
    app: &str,
    stream: &str,
    start: pb::StartPosition,
) -> Result<RawSession> {
    let req = pb::GetRecordsRequest {
        app: app.into(),
        streams: vec![stream.into()],
        start: Some(start),
        client_name: "start".into(),
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

/// Waits until the clock has passed `ms`, so records put next arrive after it.
async fn pass(ms: i64) {
    while now_ms() <= ms {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn at_timestamp_and_latest() -> Result<()> {
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let stream = unique("start");
    create_stream(&kinesis, &stream, 2).await?;
    put_records(&kinesis, &stream, 0, 200).await?;
    let cut = now_ms() + 5;
    pass(cut).await;
    let after = put_records(&kinesis, &stream, 200, 200).await?;

    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("butler.db").display());
    let server = TestServer::start(&store, Emulator::Kinesalite, &[]).await?;
    let mut client = server.client().await?;

    // AT_TIMESTAMP: exactly the records put after the cut.
    let start = pb::StartPosition { kind: Kind::AtTimestamp as i32, timestamp_ms: cut };
    let mut session = open_at(&mut client, "at-timestamp", &stream, start).await?;
    let got = session.collect(200, 60).await?;
    let got: BTreeMap<String, Vec<String>> =
        got.into_iter().map(|(s, rs)| (s, rs.into_iter().map(|r| r.sequence_number).collect())).collect();
    let want: BTreeMap<String, Vec<String>> =
        after.into_iter().map(|(s, ps)| (s, ps.into_iter().map(|p| p.sequence_number).collect())).collect();
    assert_eq!(got, want, "AT_TIMESTAMP starts at the first record at or after the time");
    drop(session);

    // LATEST: none of the 400 records there; new ones from when each reader began. New
    // records are put until both shards delivered one (the readers' start is not an
    // event the client sees), then every later one arrives in order.
    let start = pb::StartPosition { kind: Kind::Latest as i32, timestamp_ms: 0 };
    let session = open_at(&mut client, "latest", &stream, start).await?;
    // Batches through a channel, so waiting for one a short while is cancel-safe.
    let (tx, mut batches) = tokio::sync::mpsc::unbounded_channel();
    let mut events = session.events;
    let forward = tokio::spawn(async move {
        while let Ok(Some(pb::GetRecordsResponse { event: Some(event) })) = events.message().await {
            if let Event::Records(b) = event {
                if tx.send(b).is_err() {
                    return;
                }
            }
        }
    });
    let mut late: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut got: BTreeMap<String, Vec<pb::Record>> = BTreeMap::new();
    within(60, "new records on both shards", async {
        let mut i = 0;
        while got.len() < 2 || got.values().any(Vec::is_empty) {
            for key in SHARD_KEYS {
                let out = kinesis
                    .put_record()
                    .stream_name(&stream)
                    .partition_key("late")
                    .explicit_hash_key(key)
                    .data(Blob::new(format!("late-{i}")))
                    .send()
                    .await?;
                late.entry(out.shard_id().to_owned()).or_default().push(out.sequence_number().to_owned());
                i += 1;
            }
            match tokio::time::timeout(Duration::from_millis(300), batches.recv()).await {
                Ok(Some(b)) => got.entry(b.shard_id).or_default().extend(b.records),
                Ok(None) => bail!("session ended"),
                Err(_) => {}
            }
        }
        Ok(())
    })
    .await??;
    // Everything put so far that is not in yet follows.
    let got_before: usize = got.values().map(Vec::len).sum();
    let pending: usize = late
        .iter()
        .map(|(shard, seqs)| {
            let first = &got[shard][0].sequence_number;
            seqs.iter().skip_while(|s| *s != first).count() - got[shard].len()
        })
        .sum();
    within(30, "the rest of the new records", async {
        while got.values().map(Vec::len).sum::<usize>() < got_before + pending {
            let Some(b) = batches.recv().await else { bail!("session ended") };
            got.entry(b.shard_id).or_default().extend(b.records);
        }
        Ok(())
    })
    .await??;
    forward.abort();
    for (shard, records) in &got {
        let seqs: Vec<&String> = records.iter().map(|r| &r.sequence_number).collect();
        assert!(records.iter().all(|r| r.data.starts_with(b"late-")), "shard {shard}: nothing from before LATEST");
        let from = late[shard].iter().position(|s| s == seqs[0]).expect("a late record");
        let want: Vec<&String> = late[shard][from..].iter().collect();
        assert_eq!(seqs, want, "shard {shard}: every new record from the first one read, in order");
    }
    Ok(())
}
