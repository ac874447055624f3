//! One task per leased shard: reads Kinesis and pushes record batches into the owning
//! session's bounded outbox, so a slow client slows its own reads.
//!
//! Records are read by polling GetRecords (the default) or through an enhanced fan-out
//! subscription ([`crate::retrieval::fanout`]); both hand their records to a
//! [`Delivery`](crate::retrieval::delivery::Delivery), which de-aggregates KPL records,
//! drops what was already processed, cuts batches and remembers the last user record
//! delivered (see its module for the resume rule).

use kinesis_butler_proto as pb;
use pb::get_records_response::Event;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::coordination::session::Outbox;
use crate::metrics as m;
use crate::retrieval::delivery::{Delivery, ReaderSpec, MIN_CALL_SPACING};
use crate::retrieval::kinesis::KinesisError;
use crate::retrieval::retry::{back_off, Backoff};
use crate::retrieval::source::{ShardSource, Source};

/// Reads the shard until it ends, the token is cancelled or the outbox closes.
pub(crate) async fn run(kinesis: Source, spec: ReaderSpec, out: Outbox, cancel: CancellationToken) {
    let mut delivery = Delivery::new(&spec, out, cancel);
    if !delivery.send(Event::ShardAssigned(spec.assigned.clone())).await {
        return;
    }
    let (stream, shard) = (spec.stream.as_str(), spec.shard_id.as_str());
    info!(stream, shard, epoch = spec.epoch, start = ?spec.start, fanout = spec.fanout.is_some(), "shard reader started");
    let ended = match &spec.fanout {
        Some(fanout) => fanout.read(kinesis.as_ref(), &spec, &mut delivery).await,
        None => poll(kinesis.as_ref(), &spec, &mut delivery).await,
    };
    if ended {
        info!(stream, shard, "reached the end of the closed shard");
        delivery.send_ended().await;
    }
}

/// The longest rest between GetRecords calls on a shard that keeps returning nothing.
pub(crate) const MAX_IDLE_SPACING: std::time::Duration = std::time::Duration::from_secs(2);

/// The rest after a caught-up page: the idle interval, doubled for every four empty pages
/// in a row beyond the first four, up to [`MAX_IDLE_SPACING`] (never below the idle
/// interval or Kinesis's call spacing). An idle shard costs a call every 2 s instead of
/// two a second; a record arriving there waits at most that long.
pub(crate) fn idle_spacing(idle: std::time::Duration, empty_pages: u32) -> std::time::Duration {
    let base = idle.max(MIN_CALL_SPACING);
    let doublings = (empty_pages / 4).saturating_sub(1).min(8);
    (base * (1 << doublings)).min(MAX_IDLE_SPACING.max(base))
}

/// Polls GetRecords. Returns true at the end of a closed shard, false when stopped.
async fn poll(kinesis: &dyn ShardSource, spec: &ReaderSpec, delivery: &mut Delivery) -> bool {
    let (stream, shard) = (spec.stream.as_str(), spec.shard_id.as_str());
    let mut backoff = Backoff::default();
    let mut iterator: Option<String> = None;
    let mut next_call = Instant::now();
    let mut empty_pages = 0u32;
    let labels = [("app", spec.app.clone()), ("stream", spec.stream.clone())];

    loop {
        if !delivery.sleep_until(next_call).await {
            return false;
        }
        let iter = match &iterator {
            Some(it) => it.clone(),
            None => match delivery.open_iterator(kinesis).await {
                Ok(Some(it)) => it,
                Ok(None) => return true,
                Err(e) => {
                    if !back_off(delivery, &mut backoff, &e).await {
                        return false;
                    }
                    next_call = Instant::now();
                    continue;
                }
            },
        };
        if !delivery.wait_for_room().await {
            return false;
        }
        let call_started = Instant::now();
        metrics::counter!(m::GET_RECORDS_CALLS, &labels).increment(1);
        let page = match kinesis.get_records(&iter, spec.batch_size).await {
            Ok(page) => page,
            Err(KinesisError::ExpiredIterator) => {
                metrics::counter!(m::KINESIS_ERRORS, "kind" => KinesisError::ExpiredIterator.kind()).increment(1);
                debug!(stream, shard, "shard iterator expired, getting a fresh one");
                iterator = None;
                next_call = call_started + MIN_CALL_SPACING;
                continue;
            }
            Err(e) => {
                if !back_off(delivery, &mut backoff, &e).await {
                    return false;
                }
                next_call = Instant::now();
                continue;
            }
        };
        backoff.reset();
        let full = page.records.len() as u32 >= spec.batch_size;
        let got_records = !page.records.is_empty();
        if !delivery.deliver(page.records, page.millis_behind_latest).await {
            return false;
        }
        match page.next_iterator {
            Some(next) => iterator = Some(next),
            None => return true,
        }
        // Poll again at once while behind; rest when caught up, longer while the shard
        // keeps returning nothing.
        let behind = full || page.millis_behind_latest > 0;
        empty_pages = if got_records { 0 } else { empty_pages.saturating_add(1) };
        next_call = if behind {
            call_started + MIN_CALL_SPACING
        } else {
            Instant::now() + idle_spacing(spec.idle_interval, empty_pages)
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn empty_shards_are_polled_less_often_up_to_a_bound() {
        let idle = Duration::from_millis(500);
        assert_eq!(idle_spacing(idle, 0), idle);
        assert_eq!(idle_spacing(idle, 7), idle, "a few empty pages change nothing");
        assert_eq!(idle_spacing(idle, 8), idle * 2);
        assert_eq!(idle_spacing(idle, 12), idle * 4);
        assert_eq!(idle_spacing(idle, 1_000), MAX_IDLE_SPACING);
        assert_eq!(idle_spacing(Duration::from_secs(5), 1_000), Duration::from_secs(5), "never below the setting");
        assert_eq!(idle_spacing(Duration::ZERO, 0), MIN_CALL_SPACING);
    }
}
