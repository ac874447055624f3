//! Enhanced fan-out: reading a shard through SubscribeToShard instead of polling.
//!
//! Each app has one registered stream consumer per stream, named
//! `kinesis-butler-<app>` (registered on first use, found again if it exists, never
//! deregistered by the server). A shard reader subscribes from where it stands (the
//! same resume rule as polling, see [`crate::retrieval::reader`]) and delivers every event's
//! records. It subscribes again, from the last user record delivered:
//! - before Kinesis ends the subscription (after 5 minutes), once the configured
//!   lifetime is over;
//! - when Kinesis ends it, at once;
//! - after an error, with exponential backoff and jitter (this also covers
//!   `ResourceInUseException` for a subscription made within 5 s of the previous one,
//!   and `LimitExceededException`), and after 30 s without any event.
//!
//! A closed shard ends when an event names child shards (Kinesis). Emulators may never
//! send that event, so when a subscription is idle (an event with no record and nothing
//! behind) the reader also asks GetRecords, at most every [`END_CHECK_INTERVAL`],
//! whether anything follows its position: nothing and no next iterator means the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::retrieval::delivery::{Delivery, ReaderSpec};
use crate::retrieval::kinesis::{IteratorStart, KinesisError};
use crate::retrieval::kpl::{self, Deaggregated};
use crate::retrieval::retry::{back_off, Backoff};
use crate::retrieval::source::ShardSource;
use crate::seqnum::SequenceNumber;

/// Prefix of the registered consumer names; the app name follows.
pub(crate) const CONSUMER_PREFIX: &str = "kinesis-butler-";
/// How often an idle subscription checks by GetRecords whether its closed shard ended.
pub(crate) const END_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Counter of SubscribeToShard subscriptions made (labels app, stream).
pub(crate) const SUBSCRIPTIONS: &str = "kinesis_butler_fanout_subscriptions_total";
/// Kinesis sends an event at least every few seconds; a silent subscription is stale.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long registration waits for a consumer to become ACTIVE.
const REGISTER_WAIT: Duration = Duration::from_secs(120);

type ConsumerKey = (String, String);

/// Enhanced fan-out for one server instance: settings and the registered consumers.
#[derive(Clone, Debug)]
pub(crate) struct FanOut {
    subscription_lifetime: Duration,
    consumers: Arc<Mutex<HashMap<ConsumerKey, Arc<OnceCell<String>>>>>,
}

impl FanOut {
    /// Fan-out whose subscriptions are renewed after `subscription_lifetime` (at most
    /// the 5 minutes Kinesis allows; tests use seconds).
    pub(crate) fn new(subscription_lifetime: Duration) -> Self {
        Self { subscription_lifetime, consumers: Arc::default() }
    }

    /// The consumer name of an app: `kinesis-butler-<app>`, with characters Kinesis
    /// does not allow in names replaced by `_`, at most 128 characters.
    pub(crate) fn consumer_name(app: &str) -> String {
        let mut name: String = CONSUMER_PREFIX.to_owned();
        name.extend(app.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '_' }));
        name.truncate(128);
        name
    }

    /// The ARN of the app's consumer on the stream, registering it on first use.
    async fn consumer_arn(&self, kinesis: &dyn ShardSource, app: &str, stream: &str) -> Result<String, KinesisError> {
        let cell =
            self.consumers.lock().expect("consumers").entry((app.to_owned(), stream.to_owned())).or_default().clone();
        let name = Self::consumer_name(app);
        cell.get_or_try_init(|| kinesis.register_consumer(stream, &name, REGISTER_WAIT)).await.cloned()
    }

    /// Reads the shard through subscriptions. Returns true at the end of a closed shard,
    /// false when stopped.
    pub(crate) async fn read(&self, kinesis: &dyn ShardSource, spec: &ReaderSpec, delivery: &mut Delivery) -> bool {
        let (stream, shard) = (spec.stream.as_str(), spec.shard_id.as_str());
        let mut backoff = Backoff::default();
        let mut last_end_check: Option<Instant> = None;
        loop {
            if delivery.cancel().is_cancelled() {
                return false;
            }
            let subscribed = match self.consumer_arn(kinesis, &spec.app, stream).await {
                Ok(arn) => kinesis.subscribe(&arn, shard, &delivery.next_start()).await,
                Err(e) => Err(e),
            };
            let mut subscription = match subscribed {
                Ok(s) => s,
                Err(KinesisError::NotFound(text)) => {
                    // The shard may be gone (past the retention period): polling's check.
                    match delivery.open_iterator(kinesis).await {
                        Ok(None) => return true,
                        _ => {
                            if !back_off(delivery, &mut backoff, &KinesisError::NotFound(text)).await {
                                return false;
                            }
                            continue;
                        }
                    }
                }
                Err(e) => {
                    if !back_off(delivery, &mut backoff, &e).await {
                        return false;
                    }
                    continue;
                }
            };
            metrics::counter!(SUBSCRIPTIONS, "app" => spec.app.clone(), "stream" => spec.stream.clone()).increment(1);
            debug!(stream, shard, position = ?delivery.position(), "subscribed to the shard");
            let renew_at = Instant::now() + self.subscription_lifetime;
            loop {
                let next = tokio::select! {
                    _ = delivery.cancel().cancelled() => return false,
                    _ = tokio::time::sleep_until(renew_at) => {
                        debug!(stream, shard, "renewing the subscription before Kinesis ends it");
                        break;
                    }
                    next = tokio::time::timeout(EVENT_TIMEOUT, subscription.next()) => next.unwrap_or_else(|_| {
                        Err(KinesisError::Transient(format!("no subscription event for {EVENT_TIMEOUT:?}")))
                    }),
                };
                let event = match next {
                    Ok(Some(event)) => event,
                    Ok(None) => {
                        debug!(stream, shard, "Kinesis ended the subscription");
                        break;
                    }
                    Err(e) => {
                        if !back_off(delivery, &mut backoff, &e).await {
                            return false;
                        }
                        break;
                    }
                };
                backoff.reset();
                let ended = !event.child_shards().is_empty();
                let behind = event.millis_behind_latest();
                let idle = event.records().is_empty() && behind == 0;
                let records = event.records;
                if !delivery.deliver(records, behind).await {
                    return false;
                }
                if ended {
                    return true;
                }
                if idle && last_end_check.is_none_or(|t| t.elapsed() >= END_CHECK_INTERVAL) {
                    last_end_check = Some(Instant::now());
                    match ended_by_polling(kinesis, stream, shard, delivery).await {
                        Ok(true) => {
                            info!(stream, shard, "closed shard fully read (checked by GetRecords)");
                            return true;
                        }
                        Ok(false) => {}
                        Err(e) => debug!(stream, shard, error = %e, "end-of-shard check failed"),
                    }
                }
            }
        }
    }
}

/// Whether the shard is closed and nothing follows the delivery's position: asks for a
/// page at the position; none of its records new and no next iterator means the end.
async fn ended_by_polling(
    kinesis: &dyn ShardSource,
    stream: &str,
    shard: &str,
    delivery: &Delivery,
) -> Result<bool, KinesisError> {
    let start = match delivery.position() {
        Some(p) => IteratorStart::AtSequence(p.sequence.to_string()),
        None => delivery.fresh_start(),
    };
    let iterator = match kinesis.shard_iterator(stream, shard, &start).await {
        Ok(it) => it,
        Err(e) => return Err(e),
    };
    let page = kinesis.get_records(&iterator, 10).await?;
    if page.next_iterator.is_some() {
        return Ok(false);
    }
    let Some(position) = delivery.position() else {
        return Ok(page.records.is_empty());
    };
    for record in &page.records {
        let Ok(seq) = SequenceNumber::parse(&record.sequence_number) else {
            warn!(stream, shard, sequence = %record.sequence_number, "unexpected sequence number from Kinesis");
            return Ok(false);
        };
        if seq > position.sequence {
            return Ok(false);
        }
        if seq == position.sequence {
            let last_sub = match kpl::deaggregate(record.data.as_ref()) {
                Deaggregated::Aggregate(users) => users.len() as u64 - 1,
                _ => 0,
            };
            if last_sub > position.sub_sequence {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::FanOut;

    #[test]
    fn consumer_names_are_valid_kinesis_names() {
        assert_eq!(FanOut::consumer_name("orders"), "kinesis-butler-orders");
        assert_eq!(FanOut::consumer_name("a b/ü"), "kinesis-butler-a_b__");
        assert_eq!(FanOut::consumer_name(&"x".repeat(300)).len(), 128);
    }
}
