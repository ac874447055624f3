//! Helpers for tests of the client through a whole consumer: a handler that journals
//! what it saw, waits on the journal, test options. The same API as the server tests'
//! `common::client` (`server/tests/common/mod.rs`), which can include this file.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use futures::future::BoxFuture;
use kinesis_butler_client::{
    BackoffSettings, Batch, Consumer, ConsumerOptions, Handler, HandlerError, ShardInfo, StopReason,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::within;

/// One batch as a handler saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Which consumer (test label).
    pub consumer: String,
    pub shard_id: String,
    pub attempt: u32,
    pub sequences: Vec<String>,
    pub data: Vec<Vec<u8>>,
}

/// A shard start or stop hook call.
#[derive(Clone, Debug)]
pub enum ShardEvent {
    Started { consumer: String, shard: ShardInfo },
    Stopped { consumer: String, shard: ShardInfo, reason: StopReason },
}

/// What handlers saw, shared between consumers of one test; waiters wake on change.
#[derive(Clone)]
pub struct Journal {
    batches: Arc<Mutex<Vec<Seen>>>,
    events: Arc<Mutex<Vec<ShardEvent>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Journal {
    fn default() -> Self {
        Self { batches: Arc::default(), events: Arc::default(), changed: Arc::new(watch::channel(0).0) }
    }
}

impl Journal {
    /// Notes a batch `consumer`'s handler finished successfully.
    pub fn saw(&self, consumer: &str, batch: &Batch) {
        self.batches.lock().unwrap().push(Seen {
            consumer: consumer.into(),
            shard_id: batch.shard_id().into(),
            attempt: batch.attempt(),
            sequences: batch.records().iter().map(|r| r.sequence_number.clone()).collect(),
            data: batch.records().iter().map(|r| r.data.to_vec()).collect(),
        });
        self.changed.send_modify(|n| *n += 1);
    }

    /// Notes a hook call.
    pub fn event(&self, event: ShardEvent) {
        self.events.lock().unwrap().push(event);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Wakes waiters (after a handler finished, for conditions on "handled").
    pub fn touch(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn batches(&self) -> Vec<Seen> {
        self.batches.lock().unwrap().clone()
    }

    pub fn events(&self) -> Vec<ShardEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (bounded) until `done` holds for the journal; re-checked on every change.
    pub async fn wait_until(&self, secs: u64, what: &str, done: impl Fn(&Journal) -> bool) -> Result<()> {
        let mut rx = self.changed.subscribe();
        within(secs, what, async {
            loop {
                rx.borrow_and_update();
                if done(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
    }
}

/// Client logs on stderr when `KB_CLIENT_LOG` is set (e.g. `kinesis_butler_client=debug`).
pub fn init_client_logs() {
    if let Ok(filter) = std::env::var("KB_CLIENT_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Options for tests: fast retries and reconnects, a recognisable name.
pub fn test_options(name: &str, batch: u32) -> ConsumerOptions {
    init_client_logs();
    ConsumerOptions {
        client_name: name.into(),
        max_records_per_batch: batch,
        retry_backoff: BackoffSettings { initial: Duration::from_millis(10), max: Duration::from_millis(100) },
        reconnect_backoff: BackoffSettings { initial: Duration::from_millis(50), max: Duration::from_millis(500) },
        shutdown_timeout: Duration::from_secs(10),
        ..ConsumerOptions::default()
    }
}

/// What a test handler does before its batch counts as handled.
pub type Work = Arc<dyn Fn(Batch) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync>;

/// Work that succeeds at once.
pub fn no_work() -> Work {
    Arc::new(|_| Box::pin(async { Ok(()) }))
}

/// A test handler: runs `work`; on success notes the batch in the journal. Its
/// hooks note shard starts and stops.
pub struct Recorder {
    pub consumer: String,
    pub journal: Journal,
    pub work: Work,
}

impl Handler for Recorder {
    fn handle(&self, batch: Batch) -> BoxFuture<'static, Result<(), HandlerError>> {
        let work = (self.work)(batch.clone());
        let (journal, consumer) = (self.journal.clone(), self.consumer.clone());
        Box::pin(async move {
            work.await?;
            journal.saw(&consumer, &batch);
            Ok(())
        })
    }

    fn shard_started(&self, shard: &ShardInfo) -> BoxFuture<'static, ()> {
        self.journal.event(ShardEvent::Started { consumer: self.consumer.clone(), shard: shard.clone() });
        Box::pin(async {})
    }

    fn shard_stopped(&self, shard: &ShardInfo, reason: StopReason) -> BoxFuture<'static, ()> {
        self.journal.event(ShardEvent::Stopped { consumer: self.consumer.clone(), shard: shard.clone(), reason });
        Box::pin(async {})
    }
}

/// Runs a consumer in a task.
pub fn spawn(consumer: &Arc<Consumer>, handler: impl Handler) -> JoinHandle<Result<(), kinesis_butler_client::Error>> {
    let consumer = consumer.clone();
    tokio::spawn(async move { consumer.run(handler).await })
}

/// Stops a consumer and waits (bounded) for its `run` to return.
pub async fn stop(
    consumer: &Consumer,
    task: JoinHandle<Result<(), kinesis_butler_client::Error>>,
) -> Result<Result<(), kinesis_butler_client::Error>> {
    consumer.stop();
    Ok(within(30, "consumer to stop", task).await??)
}
