//! Time. Leases and sessions are judged on monotonic clocks (`tokio::time::Instant`,
//! which tests drive with `tokio::time::pause`); the wall clock is read only where
//! Kinesis itself speaks wall-clock time (`AT_TIMESTAMP`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
