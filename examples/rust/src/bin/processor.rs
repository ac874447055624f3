//! Counts records per shard through a Kinesis Butler server and prints the counts every
//! second. Stops cleanly on SIGINT or SIGTERM: batches in hand finish, progress is
//! checkpointed and the session is closed, so its shards move to other processors at
//! once.
//!
//! ```text
//! processor --endpoint http://127.0.0.1:50051 --app demo --stream demo
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use futures::future::BoxFuture;
use kinesis_butler_client::{
    Batch, CheckpointPolicy, Consumer, ConsumerOptions, Handler, HandlerError, ShardInfo, StopReason, TlsOptions,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(about = "Count records per shard through a Kinesis Butler server")]
struct Args {
    /// The Kinesis Butler server.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// The application (consumer group): processors of one app share the shards.
    #[arg(long, default_value = "demo")]
    app: String,
    /// Stream to read (repeat for several).
    #[arg(long = "stream", required = true)]
    streams: Vec<String>,
    /// Records per batch (0: the server's default).
    #[arg(long, default_value_t = 0)]
    batch_size: u32,
    /// Checkpoint every N records instead of after every batch.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Name shown by DescribeLeases.
    #[arg(long)]
    name: Option<String>,
    /// Bearer token, for a server started with --auth-token.
    #[arg(long, env = "KINESIS_BUTLER_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// PEM file of the CA that signed the server's certificate (https:// endpoints;
    /// the system roots otherwise).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
}

/// Records counted per stream/shard.
#[derive(Default)]
struct Counter {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl Counter {
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().expect("counts").clone()
    }
}

impl Handler for Counter {
    fn handle(&self, batch: Batch) -> BoxFuture<'static, Result<(), HandlerError>> {
        let key = format!("{}/{}", batch.stream(), batch.shard_id());
        *self.counts.lock().expect("counts").entry(key).or_default() += batch.records().len() as u64;
        Box::pin(async { Ok(()) })
    }

    fn shard_started(&self, shard: &ShardInfo) -> BoxFuture<'static, ()> {
        let after = if shard.checkpoint.is_empty() { "the start position" } else { &shard.checkpoint };
        println!("+ {}/{} (epoch {}), reading after {after}", shard.stream, shard.shard_id, shard.lease_epoch);
        Box::pin(async {})
    }

    fn shard_stopped(&self, shard: &ShardInfo, reason: StopReason) -> BoxFuture<'static, ()> {
        println!("- {}/{} (epoch {}): {reason:?}", shard.stream, shard.shard_id, shard.lease_epoch);
        Box::pin(async {})
    }
}

fn print_counts(counts: &BTreeMap<String, u64>) {
    let total: u64 = counts.values().sum();
    let shards: Vec<String> = counts.iter().map(|(shard, n)| format!("{shard}={n}")).collect();
    println!("total={total} | {}", shards.join(" "));
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,kinesis_butler_client=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let mut options = ConsumerOptions { max_records_per_batch: args.batch_size, ..ConsumerOptions::default() };
    if let Some(name) = args.name {
        options.client_name = name;
    }
    if let Some(n) = args.checkpoint_every {
        options.checkpoint = CheckpointPolicy::EveryRecords(n);
    }
    options.auth_token = args.auth_token;
    if let Some(path) = args.tls_ca {
        let pem = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        options.tls = Some(TlsOptions { ca_certificate_pem: Some(pem), ..TlsOptions::default() });
    }
    let consumer = Consumer::new(args.endpoint, args.app, args.streams, options)?;

    let stop = consumer.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!("stopping: finishing batches in hand, checkpointing, closing the session");
        stop.cancel();
    });

    let counter = Arc::new(Counter::default());
    let printer = {
        let counter = counter.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                print_counts(&counter.snapshot());
            }
        })
    };
    let result = consumer.run_shared(counter.clone()).await;
    printer.abort();
    print_counts(&counter.snapshot());
    match result {
        Ok(()) => {
            println!("stopped cleanly");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
