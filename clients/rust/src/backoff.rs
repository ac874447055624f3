//! Exponential backoff with jitter, for handler retries, checkpoint retries and
//! reconnects.

use std::time::Duration;

use rand::Rng;

use crate::options::BackoffSettings;

/// Delays that double from `initial` up to `max`; each delay is drawn uniformly from
/// the upper half of its ceiling, so that many clients retrying together spread out.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    settings: BackoffSettings,
    attempt: u32,
}

impl Backoff {
    /// A backoff at its first attempt.
    pub(crate) fn new(settings: BackoffSettings) -> Self {
        Self { settings, attempt: 0 }
    }

    /// The largest delay the next call to [`Backoff::next_delay`] may return.
    pub(crate) fn ceiling(&self) -> Duration {
        let max = self.settings.max.max(self.settings.initial);
        self.settings.initial.saturating_mul(1u32 << self.attempt.min(20)).min(max)
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let cap = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        if cap.is_zero() {
            return cap;
        }
        rand::rng().random_range(cap / 2..=cap)
    }

    /// Back to the first attempt (after a success).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(initial_ms: u64, max_ms: u64) -> BackoffSettings {
        BackoffSettings { initial: Duration::from_millis(initial_ms), max: Duration::from_millis(max_ms) }
    }

    #[test]
    fn doubles_up_to_the_max_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(settings(100, 1000));
        let ceilings: Vec<u64> = (0..7)
            .map(|_| {
                let cap = b.ceiling();
                let d = b.next_delay();
                assert!(d >= cap / 2 && d <= cap, "{d:?} outside [{:?}, {cap:?}]", cap / 2);
                cap.as_millis() as u64
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn reset_starts_over_and_many_attempts_do_not_overflow() {
        let mut b = Backoff::new(settings(50, 60_000));
        for _ in 0..1000 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(50));
    }

    #[test]
    fn zero_and_inverted_settings() {
        assert_eq!(Backoff::new(settings(0, 0)).next_delay(), Duration::ZERO);
        // A max below the initial delay is read as "never more than initial".
        assert_eq!(Backoff::new(settings(500, 10)).ceiling(), Duration::from_millis(500));
    }
}
