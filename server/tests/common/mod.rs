//! Shared integration-test harness: real emulators, a real server process, a raw gRPC
//! client. Every wait is bounded.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use kinesis_butler_proto as pb;
use pb::butler_client::ButlerClient;
use pb::get_records_response::Event;
use tonic::transport::Channel;
use tonic::Streaming;

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

/// A `kinesis-butler` process on a free loopback port, killed on drop.
pub struct TestServer {
    pub addr: String,
    pub child: Child,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl TestServer {
    pub async fn start(store: &str, emulator: Emulator, extra: &[&str]) -> Result<Self> {
        Self::start_on(free_port(), store, emulator, extra).await
    }

    pub async fn start_on(port: u16, store: &str, emulator: Emulator, extra: &[&str]) -> Result<Self> {
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_kinesis-butler"))
            .args(["--listen", &listen, "--store", store])
            .args(["--balance-interval", "200ms", "--idle-interval", "100ms", "--handoff-grace", "2s"])
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_KINESIS", emulator.endpoint())
            .env("RUST_LOG", std::env::var("KB_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .spawn()
            .context("spawning kinesis-butler")?;
        let mut server = TestServer { addr: format!("http://{listen}"), child };
        within(30, "server to accept connections", async {
            loop {
                if let Some(status) = server.child.try_wait()? {
                    bail!("server exited early: {status}");
                }
                if tokio::net::TcpStream::connect(&listen).await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await??;
        Ok(server)
    }

    pub async fn client(&self) -> Result<ButlerClient<Channel>> {
        Ok(ButlerClient::connect(self.addr.clone()).await?)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw session: the event stream plus what it has learnt.
pub struct RawSession {
    pub id: String,
    pub events: Streaming<pb::GetRecordsResponse>,
    /// shard → epoch currently assigned.
    pub epochs: BTreeMap<String, u64>,
}

pub async fn open_session(client: &mut ButlerClient<Channel>, app: &str, stream: &str) -> Result<RawSession> {
    let req = pb::GetRecordsRequest {
        app: app.into(),
        streams: vec![stream.into()],
        client_name: "test".into(),
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

impl RawSession {
    /// Receives events until `total` records arrived; returns them per shard in
    /// arrival order.
    pub async fn collect(&mut self, total: usize, secs: u64) -> Result<BTreeMap<String, Vec<pb::Record>>> {
        let mut got: BTreeMap<String, Vec<pb::Record>> = BTreeMap::new();
        let mut n = 0;
        within(secs, &format!("receiving {total} records"), async {
            while n < total {
                match self.events.message().await? {
                    Some(pb::GetRecordsResponse { event: Some(event) }) => match event {
                        Event::ShardAssigned(a) => {
                            self.epochs.insert(a.shard_id, a.lease_epoch);
                        }
                        Event::Records(batch) => {
                            n += batch.records.len();
                            got.entry(batch.shard_id).or_default().extend(batch.records);
                        }
                        _ => {}
                    },
                    Some(_) => bail!("empty event"),
                    None => bail!("session stream ended"),
                }
            }
            Ok(())
        })
        .await??;
        Ok(got)
    }
}
