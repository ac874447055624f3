//! Backoff and the one place that logs a failed Kinesis call before a retry.

use std::time::Duration;

use rand::Rng;
use tracing::{debug, warn};

use crate::retrieval::kinesis::KinesisError;

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Exponential backoff with full jitter.
#[derive(Default)]
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The next delay: between half and all of base·2^attempt, capped.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let cap = BACKOFF_BASE.saturating_mul(1 << self.attempt.min(10)).min(BACKOFF_MAX);
        self.attempt += 1;
        rand::rng().random_range(cap / 2..=cap)
    }

    /// Back to the shortest delay after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}
/// Logs a failed Kinesis call and returns how long to wait before the next try.
pub(crate) fn retry_delay(backoff: &mut Backoff, err: &KinesisError, stream: &str, shard: &str) -> Duration {
    let delay = backoff.next_delay();
    if err.is_retryable() {
        debug!(stream, shard, error = %err, ?delay, "Kinesis call failed, retrying");
    } else {
        // Not found or rejected: keep trying slowly; the lease stays ours and the
        // balancer's shard sync decides whether the shard still exists.
        warn!(stream, shard, error = %err, ?delay, "Kinesis call rejected, retrying");
    }
    delay
}
