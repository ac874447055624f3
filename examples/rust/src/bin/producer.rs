//! Puts numbered records into a Kinesis stream, creating the stream if needed.
//!
//! AWS settings come from the standard chain (AWS_REGION, credentials,
//! AWS_ENDPOINT_URL_KINESIS for a local emulator).
//!
//! ```text
//! producer --stream demo --shards 4 --count 2000 --rate 200
//! ```

use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Put numbered records into a Kinesis stream")]
struct Args {
    /// Stream name.
    #[arg(long, default_value = "demo")]
    stream: String,
    /// Shards to create the stream with, if it does not exist.
    #[arg(long, default_value_t = 4)]
    shards: i32,
    /// Records to put in all.
    #[arg(long, default_value_t = 2000)]
    count: u64,
    /// Records per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Bytes per record (padded after the record number).
    #[arg(long, default_value_t = 100)]
    size: usize,
}

async fn ensure_stream(client: &aws_sdk_kinesis::Client, args: &Args) -> Result<()> {
    let exists = client.describe_stream_summary().stream_name(&args.stream).send().await.is_ok();
    if !exists {
        client
            .create_stream()
            .stream_name(&args.stream)
            .shard_count(args.shards)
            .send()
            .await
            .context("CreateStream")?;
        println!("created stream {} with {} shards", args.stream, args.shards);
    }
    for _ in 0..300 {
        let summary = client.describe_stream_summary().stream_name(&args.stream).send().await?;
        if summary.stream_description_summary().map(|s| s.stream_status()) == Some(&StreamStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("stream {} did not become ACTIVE within 30 s", args.stream)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let client = aws_sdk_kinesis::Client::new(&config);
    ensure_stream(&client, &args).await?;

    let per_tick = (args.rate / 10).max(1);
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut next = 0u64;
    while next < args.count {
        ticker.tick().await;
        let end = (next + per_tick).min(args.count);
        let entries = (next..end)
            .map(|i| {
                let mut data = format!("record-{i:08}-").into_bytes();
                data.resize(args.size.max(data.len()), b'.');
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("key-{i}"))
                    .data(Blob::new(data))
                    .build()
                    .expect("partition key and data are set")
            })
            .collect::<Vec<_>>();
        let out = client.put_records().stream_name(&args.stream).set_records(Some(entries)).send().await?;
        if out.failed_record_count().unwrap_or(0) > 0 {
            // Throttled entries are put again on the next tick.
            let first_failed = out.records().iter().position(|r| r.error_code().is_some()).unwrap_or(0);
            next += first_failed as u64;
            continue;
        }
        next = end;
        if next % (args.rate.max(1) * 2) < per_tick || next == args.count {
            println!("put {next}/{} records", args.count);
        }
    }
    println!("producer done: {} records in stream {}", args.count, args.stream);
    Ok(())
}
