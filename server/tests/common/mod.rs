//! Shared integration-test harness: real emulators, a real server process, a raw gRPC
//! client. Every wait is bounded.
#![allow(dead_code)]

pub mod driver;
pub mod fault_proxy;
pub mod private_redis;
pub mod tcp_proxy;

mod basics;
pub use basics::*;

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kinesis_butler_proto as pb;
use pb::butler_client::ButlerClient;
use pb::get_records_response::Event;
use tonic::transport::Channel;
use tonic::Streaming;

/// A `kinesis-butler` process on a free loopback port, killed on drop.
pub struct TestServer {
    pub addr: String,
    pub child: Child,
}

impl TestServer {
    pub async fn start(store: &str, emulator: Emulator, extra: &[&str]) -> Result<Self> {
        Self::start_on(free_port(), store, emulator, extra).await
    }

    pub async fn start_on(port: u16, store: &str, emulator: Emulator, extra: &[&str]) -> Result<Self> {
        Self::spawn(port, store, &emulator.endpoint(), extra, None).await
    }

    /// On `port`, reading Kinesis at `endpoint` (e.g. a proxy in front of an emulator),
    /// with the log written to `log` as in `start_logged`.
    pub async fn start_via(port: u16, store: &str, endpoint: &str, extra: &[&str], log: &Path) -> Result<Self> {
        Self::spawn(port, store, endpoint, extra, Some(log)).await
    }

    /// Like `start`, with the server's log (stderr, at `info` unless `KB_TEST_LOG` says
    /// otherwise) written to the file `log`, for tests that check what it reports.
    pub async fn start_logged(store: &str, emulator: Emulator, extra: &[&str], log: &Path) -> Result<Self> {
        Self::spawn(free_port(), store, &emulator.endpoint(), extra, Some(log)).await
    }

    async fn spawn(port: u16, store: &str, endpoint: &str, extra: &[&str], log: Option<&Path>) -> Result<Self> {
        Self::spawn_with_env(port, store, endpoint, extra, log, &[]).await
    }

    /// Like `start`, with extra environment variables for the server process (e.g. a
    /// `faketime` preload that moves its wall clock).
    pub async fn start_with_env(store: &str, emulator: Emulator, extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_with_env(free_port(), store, &emulator.endpoint(), extra, None, env).await
    }

    async fn spawn_with_env(
        port: u16,
        store: &str,
        endpoint: &str,
        extra: &[&str],
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let listen = format!("127.0.0.1:{port}");
        let default_level = if log.is_some() { "info" } else { "warn" };
        let stderr = match log {
            Some(path) => {
                Stdio::from(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?)
            }
            None => Stdio::inherit(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_kinesis-butler"))
            .args(["--listen", &listen, "--store", store])
            .args(["--balance-interval", "200ms", "--idle-interval", "100ms", "--handoff-grace", "2s"])
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_KINESIS", endpoint)
            .env("AWS_ENDPOINT_URL_DYNAMODB", dynalite_endpoint())
            .env("RUST_LOG", std::env::var("KB_TEST_LOG").unwrap_or_else(|_| default_level.into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(stderr)
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

/// The DynamoDB emulator (dynalite, `scripts/emulators.sh start dynalite`).
pub fn dynalite_endpoint() -> String {
    std::env::var("KB_DYNALITE_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4630".to_owned())
}

/// A DynamoDB client on dynalite.
pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(dynalite_endpoint())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Creates a table keyed like a KCL lease table (hash key `leaseKey`, S) and waits until
/// it is ACTIVE.
pub async fn create_kcl_like_table(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<()> {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("leaseKey").attribute_type(ScalarAttributeType::S).build()?,
        )
        .key_schema(KeySchemaElement::builder().attribute_name("leaseKey").key_type(KeyType::Hash).build()?)
        .send()
        .await
        .context("CreateTable on dynalite (scripts/emulators.sh start dynalite)")?;
    eventually(30, "table to become ACTIVE", || async {
        let out = client.describe_table().table_name(table).send().await?;
        Ok(out.table().and_then(|t| t.table_status()) == Some(&aws_sdk_dynamodb::types::TableStatus::Active))
    })
    .await
}

/// A shared lease store of one test: a Redis key prefix or a PostgreSQL schema of its
/// own on the servers every test uses (127.0.0.1:6379, 127.0.0.1:5432 database `test`),
/// or a DynamoDB table of its own on dynalite.
#[derive(Clone, Debug)]
pub enum TestStore {
    Redis { prefix: String },
    Postgres { schema: String },
    DynamoDb { table: String },
}

pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

impl TestStore {
    pub fn redis() -> Self {
        TestStore::Redis { prefix: format!("kbt_{}", uuid::Uuid::new_v4().simple()) }
    }

    pub fn postgres() -> Self {
        TestStore::Postgres { schema: format!("kbt_{}", uuid::Uuid::new_v4().simple()) }
    }

    pub fn dynamodb() -> Self {
        TestStore::DynamoDb { table: format!("kbt_{}", uuid::Uuid::new_v4().simple()) }
    }

    /// The `--store` URL.
    pub fn url(&self) -> String {
        match self {
            TestStore::Redis { prefix } => format!("{REDIS_URL}?prefix={prefix}"),
            TestStore::Postgres { schema } => format!("{POSTGRES_URL}?schema={schema}"),
            TestStore::DynamoDb { table } => format!("dynamodb://{table}"),
        }
    }

    /// Deletes the test's keys or schema.
    pub async fn cleanup(&self) -> Result<()> {
        within(30, "store cleanup", async {
            match self {
                TestStore::Redis { prefix } => {
                    let client = redis::Client::open(REDIS_URL)?;
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await?;
                    if !keys.is_empty() {
                        redis::cmd("DEL").arg(keys).query_async::<()>(&mut conn).await?;
                    }
                }
                TestStore::Postgres { schema } => {
                    let (client, conn) = tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls).await?;
                    tokio::spawn(conn);
                    client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await?;
                }
                TestStore::DynamoDb { table } => {
                    let _ = dynamodb_client().await.delete_table().table_name(table).send().await;
                }
            }
            Ok::<_, anyhow::Error>(())
        })
        .await?
    }

    /// Runs a test body, then cleans up, also when the body failed or panicked.
    pub async fn run<T>(&self, body: impl Future<Output = Result<T>>) -> Result<T> {
        use futures::FutureExt;
        let outcome = AssertUnwindSafe(body).catch_unwind().await;
        let cleaned = self.cleanup().await;
        match outcome {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(result) => {
                let value = result?;
                cleaned?;
                Ok(value)
            }
        }
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
    /// Stores `SHARD_END` for a shard that ended, which also releases it.
    pub async fn checkpoint_shard_end(
        &self,
        client: &mut ButlerClient<Channel>,
        stream: &str,
        ended: pb::ShardEnded,
    ) -> Result<()> {
        let req = pb::CheckpointRequest {
            session_id: self.id.clone(),
            stream: stream.into(),
            shard_id: ended.shard_id,
            lease_epoch: ended.lease_epoch,
            shard_end: true,
            ..Default::default()
        };
        within(10, "the SHARD_END checkpoint", client.checkpoint(req)).await??;
        Ok(())
    }

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

/// Every lease and live session of one app and stream.
pub async fn describe(
    client: &mut ButlerClient<Channel>,
    app: &str,
    stream: &str,
) -> Result<pb::DescribeLeasesResponse> {
    let req = pb::DescribeLeasesRequest { app: app.into(), stream: stream.into() };
    Ok(within(10, "DescribeLeases", client.describe_leases(req)).await??.into_inner())
}

/// Helpers for tests of the Rust client library (`kinesis-butler-client`).
#[path = "../../../clients/rust/tests/support/client.rs"]
pub mod client;
