//! Enhanced fan-out on kinesis-local: records arrive through SubscribeToShard, every
//! one once and in order across re-subscriptions (a short test-only subscription
//! lifetime forces them); a closed shard ends (kinesis-local never ends its
//! subscription) and its children are read after the `shard_end` checkpoint.

mod common;

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use common::*;
use kinesis_butler_proto as pb;
use pb::get_records_response::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SUBSCRIPTIONS: &str = "kinesis_butler_fanout_subscriptions_total";

/// The sum of a counter over its labels, from the server's Prometheus endpoint.
async fn counter(metrics_addr: &str, name: &str) -> Result<f64> {
    let mut tcp = tokio::net::TcpStream::connect(metrics_addr).await?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn fan_out_server(store: &str, metrics_addr: &str) -> Result<TestServer> {
    TestServer::start(
        store,
        Emulator::KinesisLocal,
        &[
            "--retrieval-mode",
            "fan-out",
            "--fanout-subscription-lifetime",
            "2s",
            "--shard-sync-interval",
            "1s",
            "--metrics-listen",
            metrics_addr,
        ],
    )
    .await
}

fn sequences(got: BTreeMap<String, Vec<pb::Record>>) -> BTreeMap<String, Vec<String>> {
    got.into_iter().map(|(s, rs)| (s, rs.into_iter().map(|r| r.sequence_number).collect())).collect()
}

fn expected(put: BTreeMap<String, Vec<Put>>) -> BTreeMap<String, Vec<String>> {
    put.into_iter().map(|(s, ps)| (s, ps.into_iter().map(|p| p.sequence_number).collect())).collect()
}

#[tokio::test]
async fn records_arrive_through_subscriptions_across_resubscribes() -> Result<()> {
    let kinesis = kinesis_client(Emulator::KinesisLocal);
    let stream = unique("fanout");
    create_stream(&kinesis, &stream, 2).await?;
    let first = put_records(&kinesis, &stream, 0, 300).await?;

    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("butler.db").display());
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = fan_out_server(&store, &metrics_addr).await?;
    let mut client = server.client().await?;
    let mut session = open_session(&mut client, "app", &stream).await?;
    let got = session.collect(300, 60).await?;
    assert_eq!(sequences(got), expected(first), "first records once, in order");

    // The app's consumer was registered and is what delivered them.
    let arn = kinesis.describe_stream_summary().stream_name(&stream).send().await?;
    let arn = arn.stream_description_summary().context("summary")?.stream_arn().to_owned();
    let consumer =
        kinesis.describe_stream_consumer().stream_arn(&arn).consumer_name("kinesis-butler-app").send().await?;
    assert_eq!(consumer.consumer_description().context("consumer")?.consumer_status().as_str(), "ACTIVE");
    let get_records = counter(&metrics_addr, "kinesis_butler_get_records_calls_total").await?;
    assert_eq!(get_records, 0.0, "no GetRecords polling in fan-out mode");

    // Let every shard's subscription be renewed at least twice (lifetime 2 s), then put
    // more: they arrive after the re-subscriptions, none lost and none repeated.
    eventually(30, "re-subscriptions", || {
        let addr = metrics_addr.clone();
        async move { Ok(counter(&addr, SUBSCRIPTIONS).await? >= 6.0) }
    })
    .await?;
    let second = put_records(&kinesis, &stream, 300, 200).await?;
    let got = session.collect(200, 60).await?;
    assert_eq!(sequences(got), expected(second), "records after re-subscribing: once, in order");
    Ok(())
}

#[tokio::test]
async fn a_closed_shard_ends_under_fan_out() -> Result<()> {
    let kinesis = kinesis_client(Emulator::KinesisLocal);
    let stream = unique("fanout-split");
    create_stream(&kinesis, &stream, 1).await?;
    let parent = put_records(&kinesis, &stream, 0, 100).await?;
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await?;
    wait_active(&kinesis, &stream).await?;
    let children = put_records(&kinesis, &stream, 100, 100).await?;

    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("butler.db").display());
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = fan_out_server(&store, &metrics_addr).await?;
    let mut client = server.client().await?;
    let mut session = open_session(&mut client, "app", &stream).await?;

    let mut got: BTreeMap<String, Vec<pb::Record>> = BTreeMap::new();
    let mut ended_after = None;
    within(60, "parent, its end, then the children", async {
        while got.values().map(Vec::len).sum::<usize>() < 200 {
            let Some(pb::GetRecordsResponse { event: Some(event) }) = session.events.message().await? else {
                bail!("session ended");
            };
            match event {
                Event::Records(batch) => got.entry(batch.shard_id).or_default().extend(batch.records),
                Event::ShardEnded(e) => {
                    ended_after = Some(got.values().map(Vec::len).sum::<usize>());
                    session.checkpoint_shard_end(&mut client, &stream, e).await?;
                }
                _ => {}
            }
        }
        Ok(())
    })
    .await??;
    assert_eq!(ended_after, Some(100), "the parent ended after its 100 records, before any child record");
    let mut want = expected(parent);
    want.extend(expected(children));
    assert_eq!(sequences(got), want, "every record once, in order");
    Ok(())
}
