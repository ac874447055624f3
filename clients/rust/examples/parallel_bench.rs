//! `parallelization_factor` figure for `make bench`: records/s of one shard whose
//! handler waits 10 ms per call, at factor 1 and at factor 4, against the in-process
//! scripted Butler (the client's own work only: no Kinesis, no network).
//!
//!   cargo run --release -p kinesis-butler-client --example parallel_bench [-- RECORDS]
//!
//! Prints one line per factor and the ratio; exits with 1 when factor 4 is below 3×
//! factor 1.

#[path = "../tests/support/butler.rs"]
mod butler;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kinesis_butler_client::{Batch, Consumer, ConsumerOptions, HandlerError};

const BATCH: u32 = 10;
const CALL: Duration = Duration::from_millis(10);

async fn records_per_second(factor: u32, count: usize) -> anyhow::Result<f64> {
    let stream = format!("bench-lanes-{factor}");
    let records = butler::make_records(1, count);
    let server = butler::ScriptedButler::serving(&stream, &records, 64);
    let options = ConsumerOptions {
        client_name: format!("bench-{factor}"),
        max_records_per_batch: BATCH,
        parallelization_factor: factor,
        shard_queue_batches: 64,
        ..ConsumerOptions::default()
    };
    let consumer = Arc::new(Consumer::with_channel(server.channel(), "app", [&stream], options)?);
    let handled = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
    let handler = {
        let handled = handled.clone();
        move |batch: Batch| {
            let (handled, done_tx) = (handled.clone(), done_tx.clone());
            async move {
                tokio::time::sleep(CALL).await;
                if handled.fetch_add(batch.records().len(), Ordering::SeqCst) + batch.records().len() >= count {
                    if let Some(tx) = done_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                }
                Ok::<(), HandlerError>(())
            }
        }
    };
    let started = Instant::now();
    let task = {
        let consumer = consumer.clone();
        tokio::spawn(async move { consumer.run(handler).await })
    };
    tokio::time::timeout(Duration::from_secs(300), done_rx).await??;
    let elapsed = started.elapsed();
    consumer.stop();
    tokio::time::timeout(Duration::from_secs(30), task).await???;
    Ok(count as f64 / elapsed.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(4_000);
    let one = records_per_second(1, count).await?;
    let four = records_per_second(4, count).await?;
    let ratio = four / one;
    println!("parallelization_factor 1: {one:.0} records/s (a 10 ms handler, batches of {BATCH})");
    println!("parallelization_factor 4: {four:.0} records/s");
    println!("parallelization_factor 4 / 1: {ratio:.2}x (want >= 3)");
    if ratio < 3.0 {
        std::process::exit(1);
    }
    Ok(())
}
