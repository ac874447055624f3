//! Backends for the store test suites, each against a real server: memory, SQLite (a
//! temporary file), Redis on 127.0.0.1:6379 and the Redis Cluster on 127.0.0.1:7301-7303
//! (`scripts/services.sh` starts it; a key prefix per test) and PostgreSQL on
//! 127.0.0.1:5432, database `test` (a schema per test). A backend that cannot be reached
//! fails its tests.

#![allow(dead_code)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kinesis_butler::store::{self, LeaseStore, Leases};

pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";
pub const CLUSTER_NODES: [&str; 3] = ["127.0.0.1:7301", "127.0.0.1:7302", "127.0.0.1:7303"];
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A store opened for one test, and how to remove its data afterwards.
pub struct Backend {
    pub store: Arc<dyn LeaseStore>,
    pub cleanup: Cleanup,
}

impl Backend {
    pub fn leases(&self) -> Leases {
        Leases::new(self.store.clone())
    }
}

pub enum Cleanup {
    Nothing,
    Sqlite(tempfile::TempDir),
    Redis(String),
    RedisCluster(String),
    Postgres(String),
    DynamoDb(String),
}

pub fn unique() -> String {
    format!("kbt2_{}", uuid::Uuid::new_v4().simple())
}

pub fn cluster_url() -> String {
    format!("redis+cluster://{}/", CLUSTER_NODES.join(","))
}

pub async fn open_memory() -> Backend {
    Backend { store: store::open("memory://").await.expect("memory store"), cleanup: Cleanup::Nothing }
}

pub async fn open_sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("butler.db").display());
    let store = store::open(&url).await.expect("open sqlite store");
    Backend { store, cleanup: Cleanup::Sqlite(dir) }
}

pub async fn open_redis() -> Backend {
    let prefix = unique();
    let store =
        store::open(&format!("{REDIS_URL}?prefix={prefix}")).await.expect("Redis must be running on 127.0.0.1:6379");
    Backend { store, cleanup: Cleanup::Redis(prefix) }
}

pub async fn open_redis_cluster() -> Backend {
    let prefix = unique();
    let store = store::open(&format!("{}?prefix={prefix}", cluster_url()))
        .await
        .expect("a Redis Cluster must be running on 127.0.0.1:7301-7303 (scripts/services.sh starts it)");
    Backend { store, cleanup: Cleanup::RedisCluster(prefix) }
}

pub async fn open_postgres() -> Backend {
    let schema = unique();
    // Commits need not wait for the disk in tests (the suite is about semantics).
    let store = store::open(&format!("{POSTGRES_URL}?schema={schema}&options=-c%20synchronous_commit%3Doff"))
        .await
        .expect("PostgreSQL must be running on 127.0.0.1:5432 with database `test`");
    Backend { store, cleanup: Cleanup::Postgres(schema) }
}

/// The dynalite endpoint (`scripts/emulators.sh` starts it on 127.0.0.1:4630).
fn dynalite_endpoint() -> String {
    std::env::var("KB_DYNALITE_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4630".into())
}

pub async fn open_dynamodb() -> Backend {
    static ENV: std::sync::Once = std::sync::Once::new();
    ENV.call_once(|| {
        // Set before any store reads the environment.
        std::env::set_var("AWS_ENDPOINT_URL_DYNAMODB", dynalite_endpoint());
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    });
    let table = unique();
    let store = store::open(&format!("dynamodb://{table}"))
        .await
        .expect("dynalite must be running on 127.0.0.1:4630 (scripts/emulators.sh start dynalite)");
    Backend { store, cleanup: Cleanup::DynamoDb(table) }
}

/// Deletes the keys starting with `prefix` on one Redis server (one key a command, so
/// that it works on a cluster node too).
async fn delete_keys(url: &str, prefix: &str) {
    let client = ::redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
    for key in keys {
        ::redis::cmd("DEL").arg(key).query_async::<()>(&mut conn).await.unwrap();
    }
}

impl Cleanup {
    pub async fn run(self) {
        match self {
            Cleanup::Nothing | Cleanup::Sqlite(_) => {}
            Cleanup::Redis(prefix) => delete_keys(REDIS_URL, &prefix).await,
            Cleanup::RedisCluster(prefix) => {
                for node in CLUSTER_NODES {
                    delete_keys(&format!("redis://{node}/"), &prefix).await;
                }
            }
            Cleanup::Postgres(schema) => {
                let (client, conn) = tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
            }
            Cleanup::DynamoDb(table) => {
                let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
                let _ = aws_sdk_dynamodb::Client::new(&config).delete_table().table_name(&table).send().await;
            }
        }
    }
}

/// Opens a backend, runs one test on it with a time bound, and cleans up even on failure.
pub async fn run<T, F>(open: impl Future<Output = Backend>, test: T)
where
    T: FnOnce(Leases) -> F,
    F: Future<Output = ()>,
{
    let backend = tokio::time::timeout(OPEN_TIMEOUT, open).await.expect("opening timed out");
    let outcome = tokio::time::timeout(TEST_TIMEOUT, AssertUnwindSafe(test(backend.leases())).catch_unwind()).await;
    tokio::time::timeout(OPEN_TIMEOUT, backend.cleanup.run()).await.expect("cleanup timed out");
    match outcome {
        Err(_) => panic!("test did not finish within {TEST_TIMEOUT:?}"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Ok(Ok(())) => {}
    }
}
