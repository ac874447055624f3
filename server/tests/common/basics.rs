//! The parts of the integration-test harness that need no server: bounded waits, unique
//! names, a Kinesis client for an emulator, streams and records. Shared by the server's and
//! the multilang runner's tests (`#[path]`), so both speak of records the same way.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

/// Which emulator a test runs against.
#[derive(Clone, Copy, Debug)]
pub enum Emulator {
    KinesisLocal,
    Kinesalite,
}

impl Emulator {
    pub fn endpoint(self) -> String {
        let (var, default) = match self {
            Emulator::KinesisLocal => ("KB_KINESIS_LOCAL_ENDPOINT", "http://127.0.0.1:4610"),
            Emulator::Kinesalite => ("KB_KINESALITE_ENDPOINT", "http://127.0.0.1:4620"),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_owned())
    }
}

/// Bounds a future; a hang fails the test with `what`.
pub async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), f).await.with_context(|| format!("timed out after {secs}s: {what}"))
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

pub fn kinesis_client(emulator: Emulator) -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(emulator.endpoint())
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

/// Creates a stream and waits until it is ACTIVE.
pub async fn create_stream(client: &aws_sdk_kinesis::Client, name: &str, shards: i32) -> Result<()> {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .context("CreateStream (is the emulator running? scripts/emulators.sh start)")?;
    wait_active(client, name).await
}

/// Waits (bounded) until the stream is ACTIVE, as after a create, split or merge.
pub async fn wait_active(client: &aws_sdk_kinesis::Client, name: &str) -> Result<()> {
    within(30, "stream to become ACTIVE", async {
        loop {
            let d = client.describe_stream_summary().stream_name(name).send().await?;
            if d.stream_description_summary().map(|s| s.stream_status().as_str()) == Some("ACTIVE") {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?
}

/// A record as put: its shard and sequence number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Put {
    pub shard_id: String,
    pub sequence_number: String,
    pub data: Vec<u8>,
}

/// Puts `count` records `rec-<first+i>` and returns them grouped by shard in order.
pub async fn put_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    first: usize,
    count: usize,
) -> Result<BTreeMap<String, Vec<Put>>> {
    let mut by_shard: BTreeMap<String, Vec<Put>> = BTreeMap::new();
    let mut pending: Vec<usize> = (first..first + count).collect();
    within(120, "putting records", async {
        while !pending.is_empty() {
            let chunk: Vec<usize> = pending.drain(..pending.len().min(500)).collect();
            let entries = chunk
                .iter()
                .map(|i| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(format!("pk-{i}"))
                        .data(Blob::new(format!("rec-{i}")))
                        .build()
                        .expect("entry")
                })
                .collect::<Vec<_>>();
            let out = client.put_records().stream_name(stream).set_records(Some(entries)).send().await?;
            for (i, r) in chunk.iter().zip(out.records()) {
                match (r.shard_id(), r.sequence_number()) {
                    (Some(shard), Some(seq)) => by_shard.entry(shard.to_owned()).or_default().push(Put {
                        shard_id: shard.to_owned(),
                        sequence_number: seq.to_owned(),
                        data: format!("rec-{i}").into_bytes(),
                    }),
                    _ => pending.push(*i),
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    for puts in by_shard.values_mut() {
        puts.sort_by(|a, b| seq_cmp(&a.sequence_number, &b.sequence_number));
    }
    Ok(by_shard)
}

/// Compares decimal sequence numbers as numbers.
pub fn seq_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Polls `check` every 50 ms until it returns true. Only for server state that no
/// event announces (e.g. a lease freed after a session closed); bounded by `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    within(secs, what, async {
        loop {
            if check().await? {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?
}
