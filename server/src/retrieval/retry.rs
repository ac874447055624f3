//! The one way a shard reader recovers from a failed Kinesis call: count it, log it,
//! back off with jitter, and stop if the reader is cancelled meanwhile.

use tokio::time::Instant;
use tracing::{debug, warn};

pub(crate) use kinesis_butler_proto::backoff::Backoff;

use crate::metrics as m;
use crate::retrieval::delivery::Delivery;
use crate::retrieval::kinesis::KinesisError;

/// Counts and logs a failed call, then waits out the backoff. Returns false when the
/// reader was cancelled while waiting.
pub(crate) async fn back_off(delivery: &Delivery, backoff: &mut Backoff, err: &KinesisError) -> bool {
    metrics::counter!(m::KINESIS_ERRORS, "kind" => err.kind()).increment(1);
    let delay = backoff.next_delay();
    let (stream, shard) = (delivery.stream(), delivery.shard_id());
    if err.is_retryable() {
        debug!(stream, shard, error = %err, ?delay, "Kinesis call failed, retrying");
    } else {
        // Not found or rejected: keep trying slowly; the lease stays ours and the
        // balancer's shard sync decides whether the shard still exists.
        warn!(stream, shard, error = %err, ?delay, "Kinesis call rejected, retrying");
    }
    delivery.sleep_until(Instant::now() + delay).await
}
