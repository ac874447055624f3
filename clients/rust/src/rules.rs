//! Every rule on the consumer's settings, written once: the range of each count, the
//! bounds of durations, the backoff rule, the checkpoint either/or rule and the names of
//! the enums' values. Rust ([`crate::ConsumerOptions::validate`]) and the bindings
//! ([`crate::RawOptions`]) go through the same functions, so a value is accepted or
//! refused alike in every language, and the message names the option as the caller
//! spells it ([`Spelling`]).

use std::time::Duration;

use kinesis_butler_proto::backoff::BackoffSettings;

use crate::error::Error;
use crate::options::{CheckpointPolicy, StartPosition, UnknownValue};

/// How messages about settings spell option names (and the unit of durations).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spelling {
    /// snake_case, durations in seconds: Rust's fields and Python's keyword arguments
    /// (`max_records_per_batch`, `handler_timeout`, `retry_initial_delay`).
    #[default]
    Snake,
    /// camelCase, durations in milliseconds named with an `Ms` suffix: Node's options
    /// object (`maxRecordsPerBatch`, `handlerTimeoutMs`, `retryInitialDelayMs`).
    Camel,
}

/// An option's name in both spellings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Name {
    snake: &'static str,
    camel: &'static str,
}

impl Name {
    pub(crate) const fn new(snake: &'static str, camel: &'static str) -> Self {
        Self { snake, camel }
    }

    /// The name as `spelling` writes it.
    pub(crate) fn spelled(self, spelling: Spelling) -> &'static str {
        match spelling {
            Spelling::Snake => self.snake,
            Spelling::Camel => self.camel,
        }
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

/// A whole-number option and its inclusive range.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Count {
    name: Name,
    min: i64,
    max: i64,
}

const U32_MAX: i64 = u32::MAX as i64;

pub(crate) const MAX_RECORDS_PER_BATCH: Count =
    Count { name: Name::new("max_records_per_batch", "maxRecordsPerBatch"), min: 0, max: 10_000 };
pub(crate) const CHECKPOINT_EVERY_RECORDS: Count =
    Count { name: Name::new("checkpoint_every_records", "checkpointEveryRecords"), min: 1, max: U32_MAX };
pub(crate) const MAX_CONCURRENT_HANDLERS: Count =
    Count { name: Name::new("max_concurrent_handlers", "maxConcurrentHandlers"), min: 1, max: 1 << 20 };
pub(crate) const SHARD_QUEUE_BATCHES: Count =
    Count { name: Name::new("shard_queue_batches", "shardQueueBatches"), min: 1, max: 1 << 20 };
pub(crate) const HANDLER_RETRIES: Count =
    Count { name: Name::new("handler_retries", "handlerRetries"), min: 0, max: U32_MAX };
pub(crate) const MAX_ATTEMPTS: Count = Count { name: Name::new("max_attempts", "maxAttempts"), min: 1, max: U32_MAX };
pub(crate) const PARALLELIZATION_FACTOR: Count =
    Count { name: Name::new("parallelization_factor", "parallelizationFactor"), min: 1, max: 10 };
pub(crate) const MAX_RECONNECT_ATTEMPTS: Count =
    Count { name: Name::new("max_reconnect_attempts", "maxReconnectAttempts"), min: 1, max: U32_MAX };
pub(crate) const MAX_INITIAL_CONNECT_ATTEMPTS: Count =
    Count { name: Name::new("max_initial_connect_attempts", "maxInitialConnectAttempts"), min: 1, max: U32_MAX };

impl Count {
    /// `value` if it is within the range.
    pub(crate) fn check(self, value: i64, spelling: Spelling) -> Result<i64, Error> {
        if (self.min..=self.max).contains(&value) {
            return Ok(value);
        }
        Err(invalid(format!(
            "{} must be between {} and {}, not {value}",
            self.name.spelled(spelling),
            self.min,
            self.max
        )))
    }

    /// [`Count::check`] of a value of the settings' own (unsigned) type.
    pub(crate) fn check_unsigned(self, value: impl TryInto<i64>, spelling: Spelling) -> Result<(), Error> {
        self.check(value.try_into().unwrap_or(i64::MAX), spelling).map(drop)
    }
}

/// The longest duration accepted (about 31 years): later instants overflow clocks.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(1_000_000_000);

/// A duration option; `positive` ones must be more than zero.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Time {
    name: Name,
    positive: bool,
}

pub(crate) const CHECKPOINT_INTERVAL: Time =
    Time { name: Name::new("checkpoint_interval", "checkpointIntervalMs"), positive: true };
pub(crate) const RETRY_INITIAL_DELAY: Time =
    Time { name: Name::new("retry_initial_delay", "retryInitialDelayMs"), positive: true };
pub(crate) const RETRY_MAX_DELAY: Time = Time { name: Name::new("retry_max_delay", "retryMaxDelayMs"), positive: true };
pub(crate) const HANDLER_TIMEOUT: Time =
    Time { name: Name::new("handler_timeout", "handlerTimeoutMs"), positive: true };
pub(crate) const RECONNECT_INITIAL_DELAY: Time =
    Time { name: Name::new("reconnect_initial_delay", "reconnectInitialDelayMs"), positive: true };
pub(crate) const RECONNECT_MAX_DELAY: Time =
    Time { name: Name::new("reconnect_max_delay", "reconnectMaxDelayMs"), positive: true };
pub(crate) const REQUEST_TIMEOUT: Time =
    Time { name: Name::new("request_timeout", "requestTimeoutMs"), positive: true };
pub(crate) const MAX_RECORD_AGE: Time = Time { name: Name::new("max_record_age", "maxRecordAgeMs"), positive: true };
pub(crate) const SHUTDOWN_TIMEOUT: Time =
    Time { name: Name::new("shutdown_timeout", "shutdownTimeoutMs"), positive: false };

/// The unit a spelling gives durations in.
fn unit(spelling: Spelling) -> (&'static str, f64) {
    match spelling {
        Spelling::Snake => ("seconds", 1.0),
        Spelling::Camel => ("milliseconds", 1000.0),
    }
}

impl Time {
    /// A duration given as a number of the spelling's unit (seconds or milliseconds).
    pub(crate) fn of_number(self, value: f64, spelling: Spelling) -> Result<Duration, Error> {
        let (_, per_second) = unit(spelling);
        let seconds = value / per_second;
        if !seconds.is_finite() || seconds < 0.0 || seconds > MAX_DURATION.as_secs_f64() {
            return Err(self.refused(value, spelling));
        }
        self.check(Duration::from_secs_f64(seconds), spelling)
    }

    /// `value` if it is within the bounds.
    pub(crate) fn check(self, value: Duration, spelling: Spelling) -> Result<Duration, Error> {
        if value > MAX_DURATION || (self.positive && value.is_zero()) {
            return Err(self.refused(value.as_secs_f64() * unit(spelling).1, spelling));
        }
        Ok(value)
    }

    fn refused(self, value: f64, spelling: Spelling) -> Error {
        let (unit, per_second) = unit(spelling);
        let max = MAX_DURATION.as_secs_f64() * per_second;
        let name = self.name.spelled(spelling);
        invalid(if self.positive {
            format!("{name} must be more than 0 and at most {max} {unit}, not {value}")
        } else {
            format!("{name} must be from 0 to {max} {unit}, not {value}")
        })
    }
}

/// The two delays of a backoff.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BackoffRule {
    initial: Time,
    max: Time,
}

pub(crate) const RETRY_BACKOFF: BackoffRule = BackoffRule { initial: RETRY_INITIAL_DELAY, max: RETRY_MAX_DELAY };
pub(crate) const RECONNECT_BACKOFF: BackoffRule =
    BackoffRule { initial: RECONNECT_INITIAL_DELAY, max: RECONNECT_MAX_DELAY };

impl BackoffRule {
    /// Both delays more than zero, the first not above the largest.
    pub(crate) fn check(self, b: BackoffSettings, spelling: Spelling) -> Result<(), Error> {
        self.initial.check(b.initial, spelling)?;
        self.max.check(b.max, spelling)?;
        if b.max < b.initial {
            return Err(invalid(format!(
                "{} must not be less than {}",
                self.max.name.spelled(spelling),
                self.initial.name.spelled(spelling)
            )));
        }
        Ok(())
    }

    /// `default` with the delays given; an initial delay above the default largest one
    /// raises the largest to it when no largest was given.
    pub(crate) fn merge(
        self,
        default: BackoffSettings,
        initial: Option<Duration>,
        max: Option<Duration>,
        spelling: Spelling,
    ) -> Result<BackoffSettings, Error> {
        let mut b = default;
        if let Some(d) = initial {
            b.initial = d;
        }
        match max {
            Some(d) => b.max = d,
            None => b.max = b.max.max(b.initial),
        }
        self.check(b, spelling)?;
        Ok(b)
    }
}

pub(crate) const START: Name = Name::new("start", "start");
pub(crate) const CHECKPOINT: Name = Name::new("checkpoint", "checkpoint");
pub(crate) const ON_FAILURE: Name = Name::new("on_failure", "onFailure");

/// A value of an enum option by its name.
pub(crate) fn parse<T: std::str::FromStr<Err = UnknownValue>>(
    name: Name,
    value: &str,
    spelling: Spelling,
) -> Result<T, Error> {
    value.parse().map_err(|e: UnknownValue| invalid(format!("{} must be {e}", name.spelled(spelling))))
}

/// The start position: a name (`trim_horizon`, `latest`) or a time in milliseconds since
/// the Unix epoch (not both).
pub(crate) fn start(name: Option<&str>, timestamp_ms: Option<f64>, spelling: Spelling) -> Result<StartPosition, Error> {
    match (name, timestamp_ms) {
        (Some(_), Some(_)) => Err(invalid(format!("give {} as a name or a time, not both", START.spelled(spelling)))),
        (Some(name), None) => parse(START, name, spelling),
        (None, Some(ms)) if !ms.is_finite() => Err(start_refused(ms, spelling)),
        (None, Some(ms)) => {
            let position = StartPosition::AtTimestamp { timestamp_ms: ms.round() as i64 };
            check_start(position, spelling).map(|()| position)
        }
        (None, None) => Ok(StartPosition::default()),
    }
}

/// A time to start at must be after the Unix epoch.
pub(crate) fn check_start(position: StartPosition, spelling: Spelling) -> Result<(), Error> {
    match position {
        StartPosition::AtTimestamp { timestamp_ms } if timestamp_ms <= 0 => Err(start_refused(timestamp_ms, spelling)),
        _ => Ok(()),
    }
}

fn start_refused(timestamp_ms: impl std::fmt::Display, spelling: Spelling) -> Error {
    invalid(format!(
        "{} must be a time after 1970-01-01T00:00:00Z, not {timestamp_ms} ms since then",
        START.spelled(spelling)
    ))
}

/// The checkpoint policy from its mode (`batch`, `manual`) and at most one of "every N
/// records" and "every T".
pub(crate) fn checkpoint_policy(
    mode: Option<&str>,
    every_records: Option<i64>,
    interval: Option<Duration>,
    spelling: Spelling,
) -> Result<CheckpointPolicy, Error> {
    let mode = match mode {
        Some(mode) => parse(CHECKPOINT, mode, spelling)?,
        None => CheckpointPolicy::default(),
    };
    let (every, each) = (CHECKPOINT_EVERY_RECORDS.name.spelled(spelling), CHECKPOINT_INTERVAL.name.spelled(spelling));
    match (every_records, interval) {
        (Some(_), Some(_)) => Err(invalid(format!("give {every} or {each}, not both"))),
        (Some(_), None) | (None, Some(_)) if mode == CheckpointPolicy::Manual => Err(invalid(format!(
            "{} \"manual\" cannot be combined with {every} or {each}",
            CHECKPOINT.spelled(spelling)
        ))),
        (Some(n), None) => Ok(CheckpointPolicy::EveryRecords(CHECKPOINT_EVERY_RECORDS.check(n, spelling)? as u64)),
        (None, Some(d)) => Ok(CheckpointPolicy::Interval(CHECKPOINT_INTERVAL.check(d, spelling)?)),
        (None, None) => Ok(mode),
    }
}

/// `on_failure` by name (`stop`, `skip`, `kinesis:STREAM`, `file:PATH`) or as a callback (not both).
pub(crate) fn on_failure(
    name: Option<&str>,
    callback: Option<crate::DeadLetterCallback>,
    spelling: Spelling,
) -> Result<crate::FailurePolicy, Error> {
    match (name, callback) {
        (Some(_), Some(_)) => {
            Err(invalid(format!("give {} as a name or a callback, not both", ON_FAILURE.spelled(spelling))))
        }
        (Some(name), None) => parse(ON_FAILURE, name, spelling),
        (None, Some(c)) => Ok(crate::FailurePolicy::DeadLetter(crate::DeadLetterTarget::Callback(c))),
        (None, None) => Ok(crate::FailurePolicy::default()),
    }
}

/// The failure options together: counts and durations within bounds, and
/// `max_record_age` only where a too-old record has somewhere to go.
pub(crate) fn check_failure_handling(o: &crate::ConsumerOptions, spelling: Spelling) -> Result<(), Error> {
    if let Some(n) = o.max_attempts {
        MAX_ATTEMPTS.check_unsigned(n, spelling)?;
    }
    if let Some(d) = o.max_record_age {
        MAX_RECORD_AGE.check(d, spelling)?;
        if o.on_failure == crate::FailurePolicy::Stop {
            return Err(invalid(format!(
                "{} needs {} \"skip\" or a dead-letter destination (records too old have to go somewhere)",
                MAX_RECORD_AGE.name.spelled(spelling),
                ON_FAILURE.spelled(spelling)
            )));
        }
    }
    PARALLELIZATION_FACTOR.check_unsigned(o.parallelization_factor, spelling)
}

/// The policy's own values within their bounds.
pub(crate) fn check_checkpoint_policy(policy: CheckpointPolicy, spelling: Spelling) -> Result<(), Error> {
    match policy {
        CheckpointPolicy::EveryRecords(n) => CHECKPOINT_EVERY_RECORDS.check_unsigned(n, spelling),
        CheckpointPolicy::Interval(d) => CHECKPOINT_INTERVAL.check(d, spelling).map(drop),
        CheckpointPolicy::EveryBatch | CheckpointPolicy::Manual => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(result: Result<impl std::fmt::Debug, Error>) -> String {
        match result.expect_err("refused") {
            Error::InvalidArgument(m) => m,
            other => panic!("not an invalid argument: {other}"),
        }
    }

    #[test]
    fn counts_name_the_option_in_the_callers_spelling_with_one_text() {
        assert_eq!(MAX_RECORDS_PER_BATCH.check(10_000, Spelling::Snake).unwrap(), 10_000);
        assert_eq!(
            message(MAX_RECORDS_PER_BATCH.check(10_001, Spelling::Snake)),
            "max_records_per_batch must be between 0 and 10000, not 10001"
        );
        assert_eq!(
            message(MAX_RECORDS_PER_BATCH.check(10_001, Spelling::Camel)),
            "maxRecordsPerBatch must be between 0 and 10000, not 10001"
        );
        assert!(HANDLER_RETRIES.check(-1, Spelling::Snake).is_err());
        assert!(HANDLER_RETRIES.check(U32_MAX, Spelling::Snake).is_ok());
        assert!(MAX_CONCURRENT_HANDLERS.check((1 << 20) + 1, Spelling::Snake).is_err());
        assert!(MAX_INITIAL_CONNECT_ATTEMPTS.check_unsigned(0u32, Spelling::Snake).is_err());
        assert!(SHARD_QUEUE_BATCHES.check_unsigned(usize::MAX, Spelling::Snake).is_err());
    }

    #[test]
    fn durations_come_in_the_spellings_unit() {
        assert_eq!(HANDLER_TIMEOUT.of_number(1.5, Spelling::Snake).unwrap(), Duration::from_millis(1500));
        assert_eq!(HANDLER_TIMEOUT.of_number(1500.0, Spelling::Camel).unwrap(), Duration::from_millis(1500));
        assert_eq!(
            message(HANDLER_TIMEOUT.of_number(-1.0, Spelling::Snake)),
            "handler_timeout must be more than 0 and at most 1000000000 seconds, not -1"
        );
        assert_eq!(
            message(HANDLER_TIMEOUT.of_number(0.0, Spelling::Camel)),
            "handlerTimeoutMs must be more than 0 and at most 1000000000000 milliseconds, not 0"
        );
        assert_eq!(SHUTDOWN_TIMEOUT.of_number(0.0, Spelling::Snake).unwrap(), Duration::ZERO);
        assert!(SHUTDOWN_TIMEOUT.of_number(f64::NAN, Spelling::Snake).is_err());
        assert!(SHUTDOWN_TIMEOUT.of_number(f64::INFINITY, Spelling::Camel).is_err());
        assert!(SHUTDOWN_TIMEOUT.check(Duration::MAX, Spelling::Snake).is_err());
    }

    #[test]
    fn backoff_delays_are_positive_and_ordered() {
        let default = BackoffSettings { initial: Duration::from_millis(100), max: Duration::from_secs(5) };
        let s = Spelling::Snake;
        let merged = RETRY_BACKOFF.merge(default, Some(Duration::from_secs(9)), None, s).unwrap();
        assert_eq!(merged, BackoffSettings { initial: Duration::from_secs(9), max: Duration::from_secs(9) });
        let inverted = RETRY_BACKOFF.merge(default, Some(Duration::from_secs(2)), Some(Duration::from_secs(1)), s);
        assert_eq!(message(inverted), "retry_max_delay must not be less than retry_initial_delay");
        let camel =
            RECONNECT_BACKOFF.check(BackoffSettings { initial: Duration::from_secs(9), ..default }, Spelling::Camel);
        assert_eq!(message(camel), "reconnectMaxDelayMs must not be less than reconnectInitialDelayMs");
        assert!(RETRY_BACKOFF.check(BackoffSettings { initial: Duration::ZERO, ..default }, s).is_err());
    }

    #[test]
    fn checkpoint_either_or_rules() {
        let s = Spelling::Snake;
        assert_eq!(checkpoint_policy(None, None, None, s).unwrap(), CheckpointPolicy::EveryBatch);
        assert_eq!(checkpoint_policy(Some("manual"), None, None, s).unwrap(), CheckpointPolicy::Manual);
        assert_eq!(checkpoint_policy(Some("batch"), Some(5), None, s).unwrap(), CheckpointPolicy::EveryRecords(5));
        assert_eq!(
            message(checkpoint_policy(None, Some(5), Some(Duration::from_secs(1)), Spelling::Camel)),
            "give checkpointEveryRecords or checkpointIntervalMs, not both"
        );
        assert_eq!(
            message(checkpoint_policy(Some("manual"), None, Some(Duration::from_secs(1)), s)),
            "checkpoint \"manual\" cannot be combined with checkpoint_every_records or checkpoint_interval"
        );
        assert_eq!(
            message(checkpoint_policy(Some("sometimes"), None, None, s)),
            "checkpoint must be \"batch\" or \"manual\", not \"sometimes\""
        );
        assert!(checkpoint_policy(None, Some(0), None, s).is_err());
    }

    #[test]
    fn failure_options_have_their_bounds_and_fit_together() {
        let s = Spelling::Snake;
        let ok = crate::ConsumerOptions::default();
        assert!(check_failure_handling(&ok, s).is_ok());
        let aged = crate::ConsumerOptions { max_record_age: Some(Duration::from_secs(60)), ..ok.clone() };
        assert_eq!(
            message(check_failure_handling(&aged, Spelling::Camel)),
            "maxRecordAgeMs needs onFailure \"skip\" or a dead-letter destination (records too old have to go somewhere)"
        );
        let skip = crate::ConsumerOptions { on_failure: crate::FailurePolicy::Skip, ..aged };
        assert!(check_failure_handling(&skip, s).is_ok());
        let lanes = crate::ConsumerOptions { parallelization_factor: 11, ..ok.clone() };
        assert_eq!(
            message(check_failure_handling(&lanes, s)),
            "parallelization_factor must be between 1 and 10, not 11"
        );
        assert!(check_failure_handling(&crate::ConsumerOptions { max_attempts: Some(0), ..ok }, s).is_err());
        assert_eq!(
            on_failure(Some("kinesis:dlq"), None, s).unwrap(),
            crate::FailurePolicy::DeadLetter(crate::DeadLetterTarget::Kinesis { stream: "dlq".into() })
        );
        assert_eq!(
            message(on_failure(Some("later"), None, s)),
            "on_failure must be \"stop\", \"skip\", \"kinesis:STREAM\" or \"file:PATH\", not \"later\""
        );
    }

    #[test]
    fn start_is_a_name_or_a_time_after_the_epoch() {
        let s = Spelling::Snake;
        assert_eq!(start(None, None, s).unwrap(), StartPosition::TrimHorizon);
        assert_eq!(start(Some("latest"), None, s).unwrap(), StartPosition::Latest);
        assert_eq!(
            start(None, Some(1.7e12), s).unwrap(),
            StartPosition::AtTimestamp { timestamp_ms: 1_700_000_000_000 }
        );
        assert_eq!(
            message(start(Some("beginning"), None, s)),
            "start must be \"trim_horizon\" or \"latest\" (or a time), not \"beginning\""
        );
        assert!(start(None, Some(0.0), s).is_err());
        assert!(start(None, Some(f64::NAN), s).is_err());
        assert!(start(Some("latest"), Some(1.0), s).is_err());
    }
}
