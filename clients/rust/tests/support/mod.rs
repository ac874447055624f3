//! Test support of the client's integration tests: the scripted in-process Butler
//! ([`butler`]) and the journaling handler ([`client`]).

#![allow(dead_code)]

pub mod butler;
pub mod client;

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
pub use butler::{make_records, ScriptedButler};
use kinesis_butler_proto as pb;
use kinesis_butler_proto::butler_client::ButlerClient;
use tonic::transport::Channel;

/// Bounds a future; a hang fails the test with `what`.
pub async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), f).await.with_context(|| format!("timed out after {secs}s: {what}"))
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
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
