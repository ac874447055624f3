//! Exponential backoff with jitter, shared by the server (Kinesis retries) and the client
//! (handler retries, checkpoint retries, reconnects).

use std::time::Duration;

use rand::Rng;

/// An exponential backoff: delays double from `initial` up to `max`, with jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffSettings {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl BackoffSettings {
    /// 100 ms doubling up to 10 s: the server's retries of Kinesis calls.
    pub const KINESIS: BackoffSettings =
        BackoffSettings { initial: Duration::from_millis(100), max: Duration::from_secs(10) };
}

/// Delays that double from `initial` up to `max`; each delay is drawn uniformly from
/// the upper half of its ceiling, so that many clients retrying together spread out.
///
/// A `max` below `initial` is read as "never more than `initial`"; zero settings give
/// zero delays. [`Backoff::default`] uses [`BackoffSettings::KINESIS`].
#[derive(Clone, Debug)]
pub struct Backoff {
    settings: BackoffSettings,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BackoffSettings::KINESIS)
    }
}

impl Backoff {
    /// A backoff at its first attempt.
    pub fn new(settings: BackoffSettings) -> Self {
        Self { settings, attempt: 0 }
    }

    /// The largest delay the next call to [`Backoff::next_delay`] may return.
    pub fn ceiling(&self) -> Duration {
        let max = self.settings.max.max(self.settings.initial);
        self.settings.initial.saturating_mul(1u32 << self.attempt.min(20)).min(max)
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        if cap.is_zero() {
            return cap;
        }
        rand::rng().random_range(cap / 2..=cap)
    }

    /// Back to the first attempt (after a success).
    pub fn reset(&mut self) {
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

    #[test]
    fn the_default_is_the_servers_kinesis_backoff() {
        let mut b = Backoff::default();
        let ceilings: Vec<u64> = (0..9)
            .map(|_| {
                let cap = b.ceiling();
                b.next_delay();
                cap.as_millis() as u64
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
    }
}
