//! Failure handling of one run of records (a batch, or a lane's share of batches):
//! attempts with backoff, partial failure reports, manual checkpoints that shrink the
//! retry, bisect, `max_record_age`, and the `on_failure` policy (stop, skip, a
//! dead-letter destination that must accept before the shard moves on).
//!
//! The decisions are pure functions (unit-tested below); [`Attempts::run`] applies them.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::checkpointer::{Checkpointer, ShardLease, Target};
use crate::dead_letter::{DeadLetter, DeadLetterEntry, GiveUpReason};
use crate::error::{ErrorKind, HandlerError};
use crate::handler::{Batch, Handler, Record, StopReason};
use crate::options::{CheckpointPolicy, ConsumerOptions, FailurePolicy};
use crate::policy::Position;
use crate::shard_worker::Control;
use crate::stats::{Counter, Counters};
use kinesis_butler_proto::backoff::Backoff;

/// A record's position.
pub(crate) fn position(r: &Record) -> Position {
    Position { sequence: r.sequence_number.clone(), sub_sequence: r.sub_sequence_number }
}

/// Where the records after a stored checkpoint begin: the first index past `saved`.
pub(crate) fn first_unsaved(records: &[Record], saved: Option<&Position>) -> usize {
    match saved {
        None => 0,
        Some(saved) => records.iter().position(|r| position(r) > *saved).unwrap_or(records.len()),
    }
}

/// How many records at the front arrived before `now_ms - max_age_ms` (records of a
/// shard arrive in order; only a front run is given up, so that progress stays contiguous).
pub(crate) fn too_old_prefix(records: &[Record], now_ms: i64, max_age_ms: Option<i64>) -> usize {
    match max_age_ms {
        None => 0,
        Some(age) => records.iter().take_while(|r| r.approximate_arrival_timestamp_ms < now_ms - age).count(),
    }
}

/// The index of the record the handler named as failed, if it is in `records`.
pub(crate) fn failed_index(records: &[Record], failed: Option<(&str, u64)>) -> Option<usize> {
    let (seq, sub) = failed?;
    let at = Position { sequence: seq.to_owned(), sub_sequence: sub };
    records.iter().position(|r| position(r) == at)
}

/// What to do after a failed call on a run of `len` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Call again with the same records, after a backoff.
    Retry,
    /// Split the records in halves, first half first (no attempt used up).
    Split,
    /// Give up on the first `n` records (to `on_failure`).
    GiveUp(usize),
}

/// The decision after failed attempt `attempt` (1-based) of a run of `len` records
/// starting at the failed record when `named` (the handler said which one failed).
pub(crate) fn after_failure(len: usize, named: bool, attempt: u32, max_attempts: u32, bisect: bool) -> Next {
    if !named && bisect && len > 1 {
        return Next::Split;
    }
    if attempt < max_attempts {
        return Next::Retry;
    }
    Next::GiveUp(if named { 1 } else { len })
}

/// How a run of records ended.
pub(crate) enum Outcome {
    /// Every record was handled or given up as the policy says.
    Done,
    /// A signal ended the shard's work first (between calls).
    Interrupted(StopReason),
    /// `on_failure = stop`: records failed every attempt.
    Failed { attempts: u32, error: HandlerError },
}

/// Everything a run of records needs from its shard worker.
pub(crate) struct Attempts<'a> {
    pub app: &'a str,
    pub lease: &'a Arc<ShardLease>,
    pub handler: &'a Arc<dyn Handler>,
    pub options: &'a ConsumerOptions,
    pub slots: &'a Arc<Semaphore>,
    pub stats: &'a Counters,
    pub dead_letter: Option<&'a Arc<dyn DeadLetter>>,
    /// Cancelled at the shutdown deadline: calls in hand are cancelled.
    pub expire: &'a CancellationToken,
}

impl Attempts<'_> {
    fn max_attempts(&self) -> u32 {
        self.options.max_attempts.unwrap_or_else(|| self.options.handler_retries.saturating_add(1))
    }

    /// Handles `records` in order. `done` is called with each run of records that is
    /// finished with (handled or given up), in order, before the next call.
    pub(crate) async fn run(
        &self,
        records: Arc<[Record]>,
        millis_behind: i64,
        control: &mut watch::Receiver<Control>,
        done: &(dyn Fn(&[Record]) + Sync),
    ) -> Outcome {
        let max_attempts = self.max_attempts();
        let max_age_ms = self.options.max_record_age.map(|d| d.as_millis() as i64);
        let mut parts: VecDeque<Arc<[Record]>> = VecDeque::from([records]);
        let mut attempt = 0u32;
        let mut backoff = Backoff::new(self.options.retry_backoff);
        while let Some(mut part) = parts.pop_front() {
            // A manual checkpoint (during an earlier call) shrinks what is left.
            let skip = first_unsaved(&part, self.lease.progress().saved_position().as_ref());
            if skip > 0 {
                part = part[skip..].into();
            }
            let old = too_old_prefix(&part, now_ms(), max_age_ms);
            if old > 0 {
                let age = self.options.max_record_age.unwrap_or_default();
                let why = format!("older than max_record_age ({age:?}) when its turn came");
                if let Some(reason) = self.give_up(&part[..old], 0, &why, GiveUpReason::TooOld, control).await {
                    return Outcome::Interrupted(reason);
                }
                done(&part[..old]);
                part = part[old..].into();
            }
            if part.is_empty() {
                attempt = 0;
                continue;
            }
            attempt += 1;
            let slot = tokio::select! {
                biased;
                reason = interruption(control) => return Outcome::Interrupted(reason),
                slot = self.slots.clone().acquire_owned() => slot,
            };
            if attempt > 1 {
                self.stats.add(Counter::Retries, 1);
            }
            let last = part.last().map(position).expect("not empty");
            let batch = Batch {
                shard: self.lease.shard().clone(),
                records: part.clone(),
                millis_behind_latest: millis_behind,
                attempt,
                checkpointer: Checkpointer::new(self.lease.clone(), last),
                cancel: self.expire.child_token(),
            };
            let result = call_handler(self.handler.as_ref(), batch, self.options.handler_timeout, self.stats).await;
            drop(slot);
            let error = match result {
                Ok(()) => {
                    let shard = self.lease.shard();
                    self.stats.handled(&shard.stream, &shard.shard_id, part.len() as u64);
                    done(&part);
                    attempt = 0;
                    backoff.reset();
                    continue;
                }
                Err(error) => error,
            };
            let named = failed_index(&part, error.failed_record());
            if let Some(at) = named.filter(|&at| at > 0) {
                // Progress: what came before the failed record is done; count again from it.
                let shard = self.lease.shard();
                self.stats.records(&shard.stream, &shard.shard_id, at as u64);
                done(&part[..at]);
                if let Some(reason) = self.store_handled().await {
                    return Outcome::Interrupted(reason);
                }
                part = part[at..].into();
                attempt = 1;
            }
            let next = after_failure(part.len(), named.is_some(), attempt, max_attempts, self.options.bisect_on_error);
            match next {
                Next::Split => {
                    self.stats.add(Counter::BisectSteps, 1);
                    let half = part.len().div_ceil(2);
                    warn!(records = part.len(), first = %part[0].sequence_number, error = %error,
                        "handler failed; splitting the batch in halves (bisect_on_error)");
                    parts.push_front(part[half..].into());
                    parts.push_front(part[..half].into());
                    attempt = 0;
                    continue;
                }
                Next::Retry => {
                    let delay = backoff.next_delay();
                    warn!(attempt, max_attempts, error = %error, first = %part[0].sequence_number, ?delay,
                        "handler failed, retrying");
                    parts.push_front(part);
                    tokio::select! {
                        biased;
                        reason = interruption(control) => return Outcome::Interrupted(reason),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Next::GiveUp(n) => {
                    if self.options.on_failure == FailurePolicy::Stop {
                        error!(attempts = attempt, error = %error, sequence = %part[0].sequence_number,
                            records = n, "handler failed on every attempt; stopping the consumer");
                        return Outcome::Failed { attempts: attempt, error };
                    }
                    let text = error.to_string();
                    if let Some(reason) =
                        self.give_up(&part[..n], attempt, &text, GiveUpReason::HandlerFailed, control).await
                    {
                        return Outcome::Interrupted(reason);
                    }
                    done(&part[..n]);
                    if n < part.len() {
                        parts.push_front(part[n..].into());
                    }
                    attempt = 0;
                    backoff.reset();
                }
            }
        }
        Outcome::Done
    }

    /// Stores the handled progress now (a partial failure), unless checkpoints are manual.
    async fn store_handled(&self) -> Option<StopReason> {
        if self.options.checkpoint == CheckpointPolicy::Manual {
            return None;
        }
        match self.lease.store(Target::Handled, false).await {
            Ok(()) => None,
            Err(e) if e.kind() == ErrorKind::LeaseLost => Some(StopReason::LeaseLost),
            Err(e) => {
                warn!(error = %e, "checkpoint before the failed record failed; the next one carries it");
                None
            }
        }
    }

    /// Gives `records` up by the policy: skip (logged) or to the destination, which must
    /// accept them (tried again with backoff until it does or a signal ends the work).
    async fn give_up(
        &self,
        records: &[Record],
        attempts: u32,
        error_text: &str,
        reason: GiveUpReason,
        control: &mut watch::Receiver<Control>,
    ) -> Option<StopReason> {
        let shard = self.lease.shard();
        let (first, last) = (&records[0].sequence_number, &records[records.len() - 1].sequence_number);
        let Some(destination) = self.dead_letter else {
            error!(stream = %shard.stream, shard = %shard.shard_id, sequence = %first, last = %last,
                records = records.len(), attempts, reason = reason.as_str(), error = %error_text,
                "giving up on records: skipped (on_failure = skip)");
            self.stats.add(Counter::Skipped, records.len() as u64);
            return None;
        };
        let entries: Vec<DeadLetterEntry> = records
            .iter()
            .map(|r| DeadLetterEntry {
                app: self.app.to_owned(),
                stream: shard.stream.clone(),
                shard_id: shard.shard_id.clone(),
                sequence_number: r.sequence_number.clone(),
                sub_sequence_number: r.sub_sequence_number,
                partition_key: r.partition_key.clone(),
                attempts,
                error: error_text.to_owned(),
                reason,
                approximate_arrival_timestamp_ms: r.approximate_arrival_timestamp_ms,
                data: r.data.clone(),
            })
            .collect();
        let mut backoff = Backoff::new(self.options.retry_backoff);
        loop {
            let sent = AssertUnwindSafe(destination.send(entries.clone())).catch_unwind().await;
            let failure = match sent {
                Ok(Ok(())) => {
                    error!(stream = %shard.stream, shard = %shard.shard_id, sequence = %first, last = %last,
                        records = records.len(), attempts, reason = reason.as_str(), error = %error_text,
                        "giving up on records: sent to the dead-letter destination");
                    self.stats.add(Counter::DeadLettered, records.len() as u64);
                    return None;
                }
                Ok(Err(e)) => e.to_string(),
                Err(panic) => panicked(panic).to_string(),
            };
            let delay = backoff.next_delay();
            warn!(stream = %shard.stream, shard = %shard.shard_id, sequence = %first, error = %failure, ?delay,
                "the dead-letter destination did not accept the records; the shard waits and tries again");
            tokio::select! {
                biased;
                reason = interruption(control) => return Some(reason),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Waits for a signal that interrupts the shard's work.
pub(crate) async fn interruption(control: &mut watch::Receiver<Control>) -> StopReason {
    match control.wait_for(|c| c.interruption().is_some()).await {
        Ok(c) => c.interruption().unwrap_or(StopReason::Disconnected),
        Err(_) => StopReason::Disconnected,
    }
}

/// Runs the handler on one batch: a panic or a timeout is an error like any other. On a
/// timeout (or the shutdown deadline) the batch's token is cancelled; a handler that
/// keeps running when dropped is then awaited, so that no retry overlaps it.
pub(crate) async fn call_handler(
    handler: &dyn Handler,
    batch: Batch,
    timeout: Option<Duration>,
    stats: &Counters,
) -> Result<(), HandlerError> {
    let cancel = batch.cancel.clone();
    let where_ = (batch.shard.stream.clone(), batch.shard.shard_id.clone());
    let future = match std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(batch))) {
        Ok(future) => future,
        Err(panic) => return Err(panicked(panic)),
    };
    let mut guarded = AssertUnwindSafe(future).catch_unwind();
    let why = tokio::select! {
        outcome = &mut guarded => return outcome.unwrap_or_else(|panic| Err(panicked(panic))),
        _ = sleep_for(timeout) => {
            stats.add(Counter::HandlerTimeouts, 1);
            format!("the handler did not finish within {:?} (handler_timeout)", timeout.unwrap_or_default())
        }
        _ = cancel.cancelled() => "the handler was cancelled at the shutdown deadline (shutdown_timeout)".to_owned(),
    };
    cancel.cancel();
    if handler.keeps_running_when_dropped() {
        warn!(stream = %where_.0, shard = %where_.1, reason = %why,
            "handler call cancelled; waiting for it to return before the shard goes on");
        let _ = guarded.await;
    }
    Err(HandlerError::msg(why))
}

async fn sleep_for(limit: Option<Duration>) {
    match limit {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn panicked(payload: Box<dyn Any + Send>) -> HandlerError {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a payload that is not text)".into());
    HandlerError::msg(format!("the handler panicked: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(seq: &str, arrival: i64) -> Record {
        Record {
            sequence_number: seq.into(),
            sub_sequence_number: 0,
            partition_key: "k".into(),
            data: Bytes::new(),
            approximate_arrival_timestamp_ms: arrival,
        }
    }

    #[test]
    fn decisions_after_a_failure() {
        // Unnamed failures bisect while more than one record is left, without using attempts.
        assert_eq!(after_failure(1000, false, 1, 1, true), Next::Split);
        assert_eq!(after_failure(1, false, 1, 3, true), Next::Retry);
        assert_eq!(after_failure(1, false, 3, 3, true), Next::GiveUp(1));
        // Without bisect the whole run is given up once the attempts are used.
        assert_eq!(after_failure(10, false, 2, 3, false), Next::Retry);
        assert_eq!(after_failure(10, false, 3, 3, false), Next::GiveUp(10));
        // A named record: only it is given up, the rest goes on.
        assert_eq!(after_failure(10, true, 3, 3, true), Next::GiveUp(1));
        assert_eq!(after_failure(10, true, 1, 3, true), Next::Retry);
    }

    #[test]
    fn bisect_isolates_one_of_a_thousand_in_eleven_calls_on_the_failing_part() {
        // Simulate: the part holding record 737 fails; count the calls on failing parts.
        let poison = 737usize;
        let (mut lo, mut hi, mut failing_calls) = (0usize, 1000usize, 0);
        loop {
            failing_calls += 1;
            match after_failure(hi - lo, false, 1, 1, true) {
                Next::Split => {
                    let half = (hi - lo).div_ceil(2);
                    if poison < lo + half {
                        hi = lo + half
                    } else {
                        lo += half
                    }
                }
                Next::GiveUp(1) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((lo, hi), (poison, poison + 1));
        assert!(failing_calls <= 11, "{failing_calls}");
    }

    #[test]
    fn shrinking_by_checkpoint_age_and_named_record() {
        let records = vec![rec("1", 100), rec("2", 200), rec("10", 300)];
        assert_eq!(first_unsaved(&records, None), 0);
        assert_eq!(first_unsaved(&records, Some(&Position { sequence: "2".into(), sub_sequence: 0 })), 2);
        assert_eq!(first_unsaved(&records, Some(&Position { sequence: "99".into(), sub_sequence: 0 })), 3);
        assert_eq!(too_old_prefix(&records, 1000, Some(750)), 2);
        assert_eq!(too_old_prefix(&records, 1000, None), 0);
        assert_eq!(failed_index(&records, Some(("10", 0))), Some(2));
        assert_eq!(failed_index(&records, Some(("10", 1))), None);
        assert_eq!(failed_index(&records, None), None);
    }
}
