//! The consumer's settings: one plain struct with defaults, so that bindings can fill
//! it from keyword arguments or an options object.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use kinesis_butler_proto::backoff::BackoffSettings;

use crate::dead_letter::DeadLetterTarget;
use crate::error::Error;
use crate::rules::{self, Spelling};

/// Where to start reading a shard that has no checkpoint yet. Shards with a checkpoint
/// always resume right after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest record still in the shard.
    #[default]
    TrimHorizon,
    /// Only records put after the shard is first read.
    Latest,
    /// The first record at or after a time.
    AtTimestamp {
        /// Milliseconds since the Unix epoch.
        timestamp_ms: i64,
    },
}

/// When the consumer stores a checkpoint after the handler succeeded.
///
/// Whatever the policy, the consumer also checkpoints what was handled when a shard is
/// revoked, when it stops gracefully and at a shard's end; a record is never
/// checkpointed before its batch's handler returned `Ok`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckpointPolicy {
    /// After every successfully handled batch (the default).
    #[default]
    EveryBatch,
    /// Once at least this many records were handled since the last checkpoint.
    EveryRecords(u64),
    /// At most this long after a batch was handled.
    Interval(Duration),
    /// Never on its own: the handler checkpoints through [`crate::Batch::checkpointer`].
    /// On revoke or stop the shard is released at the handler's last checkpoint; at a
    /// shard's end the consumer still stores `SHARD_END` once every batch was handled
    /// (child shards can be read only then).
    Manual,
}

/// What happens to records the handler still fails on after every attempt (and to
/// records older than [`ConsumerOptions::max_record_age`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Stop the consumer gracefully and return the handler's error from
    /// [`crate::Consumer::run`] (the default). The failed batch is not checkpointed, so
    /// it is delivered again to the next consumer.
    #[default]
    Stop,
    /// Log the error and go on as if the batch had been handled: it is checkpointed
    /// with the others and never delivered again.
    Skip,
    /// Send each record to a dead-letter destination, with its failure metadata; the
    /// shard moves on only once the destination accepted them (it waits and tries
    /// again while the destination fails).
    DeadLetter(DeadLetterTarget),
}

/// A name that is none of an option's values (the error of the option enums' `FromStr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownValue {
    value: String,
    expected: &'static str,
}

impl UnknownValue {
    /// The name given.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, not {:?}", self.expected, self.value)
    }
}

impl std::error::Error for UnknownValue {}

fn unknown(value: &str, expected: &'static str) -> UnknownValue {
    UnknownValue { value: value.to_owned(), expected }
}

impl StartPosition {
    /// `trim_horizon`, `latest` or `at_timestamp`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StartPosition::TrimHorizon => "trim_horizon",
            StartPosition::Latest => "latest",
            StartPosition::AtTimestamp { .. } => "at_timestamp",
        }
    }
}

/// `trim_horizon` or `latest` (a time is given as [`StartPosition::AtTimestamp`]).
impl FromStr for StartPosition {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "trim_horizon" => Ok(StartPosition::TrimHorizon),
            "latest" => Ok(StartPosition::Latest),
            other => Err(unknown(other, "\"trim_horizon\" or \"latest\" (or a time)")),
        }
    }
}

impl CheckpointPolicy {
    /// `batch`, `records`, `interval` or `manual`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckpointPolicy::EveryBatch => "batch",
            CheckpointPolicy::EveryRecords(_) => "records",
            CheckpointPolicy::Interval(_) => "interval",
            CheckpointPolicy::Manual => "manual",
        }
    }
}

/// The modes without a value: `batch` or `manual` (the others are given by their
/// count or interval).
impl FromStr for CheckpointPolicy {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "batch" => Ok(CheckpointPolicy::EveryBatch),
            "manual" => Ok(CheckpointPolicy::Manual),
            other => Err(unknown(other, "\"batch\" or \"manual\"")),
        }
    }
}

impl FailurePolicy {
    /// `stop`, `skip` or `dead_letter`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FailurePolicy::Stop => "stop",
            FailurePolicy::Skip => "skip",
            FailurePolicy::DeadLetter(_) => "dead_letter",
        }
    }
}

/// `stop`, `skip`, `kinesis:STREAM` or `file:PATH`.
impl FromStr for FailurePolicy {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stop" => Ok(FailurePolicy::Stop),
            "skip" => Ok(FailurePolicy::Skip),
            other => DeadLetterTarget::parse(other)
                .map(FailurePolicy::DeadLetter)
                .ok_or_else(|| unknown(other, "\"stop\", \"skip\", \"kinesis:STREAM\" or \"file:PATH\"")),
        }
    }
}

/// TLS settings for an `https://` endpoint. With none, an `https://` endpoint is
/// verified against the system's root certificates. `Debug` leaves the key out.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM of the CA that signed the server's certificate (instead of the system roots).
    pub ca_certificate_pem: Option<String>,
    /// The name the server's certificate must carry, when not the endpoint's host.
    pub domain_name: Option<String>,
    /// PEM certificate chain presented to a server that requires client certificates
    /// (mutual TLS); needs `client_key_pem`.
    pub client_certificate_pem: Option<String>,
    /// PEM private key of `client_certificate_pem`.
    pub client_key_pem: Option<String>,
}

/// Settings of a [`crate::Consumer`]. Start from `ConsumerOptions::default()` and
/// override fields. `Debug` leaves the token out.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// Free-form name of this process, shown by `DescribeLeases` and in server logs.
    pub client_name: String,
    /// Sent as `authorization: Bearer <token>` on every call (servers started with
    /// `--auth-token`).
    pub auth_token: Option<String>,
    /// TLS settings; only with an `https://` endpoint (which uses TLS either way).
    pub tls: Option<TlsOptions>,
    /// Where shards without a checkpoint start.
    pub start: StartPosition,
    /// Upper bound on records per batch; 0 means the server's default.
    pub max_records_per_batch: u32,
    /// When to checkpoint after successful batches.
    pub checkpoint: CheckpointPolicy,
    /// How many handler calls may run at once over all shards (each shard runs one at
    /// a time, in order).
    pub max_concurrent_handlers: usize,
    /// Batches buffered per shard while its handler is busy. When a shard's buffer is
    /// full the consumer drops its further batches and releases the shard once the
    /// buffered ones are handled, so that they are read again from its checkpoint (see
    /// the crate documentation, "Backpressure").
    pub shard_queue_batches: usize,
    /// Retries of a failing batch before `on_failure` decides (0: no retry).
    pub handler_retries: u32,
    /// Delay between handler retries.
    pub retry_backoff: BackoffSettings,
    /// Handler calls of a failing record (or batch) before `on_failure` decides,
    /// counting the first; `None`: `handler_retries + 1`. Splits by `bisect_on_error`
    /// do not use attempts up; a call that names a later failed record (progress)
    /// starts the count again.
    pub max_attempts: Option<u32>,
    /// Records older than this (by their arrival time) when their turn comes are not
    /// handed to the handler but given to `on_failure` (which must be `skip` or a
    /// dead-letter destination). `None`: no limit.
    pub max_record_age: Option<Duration>,
    /// Splits a failing batch in halves (recursively) to isolate the failing record,
    /// when the handler did not name it.
    pub bisect_on_error: bool,
    /// What to do with records the handler failed on every attempt.
    pub on_failure: FailurePolicy,
    /// Lanes per shard, 1 to 10: a shard's records are split by partition key into this
    /// many lanes handled concurrently, each key in order; the shard's checkpoint is
    /// at the lowest record not yet handled in every lane.
    pub parallelization_factor: u32,
    /// A handler call that takes longer fails with a timeout error (and is retried like
    /// any failure). `None`: no limit.
    pub handler_timeout: Option<Duration>,
    /// Delay between reconnects when the server is unreachable or the session broke.
    pub reconnect_backoff: BackoffSettings,
    /// Consecutive failed connection attempts before [`crate::Consumer::run`] gives up
    /// with [`crate::ErrorKind::Connection`]. `None`: retry forever.
    pub max_reconnect_attempts: Option<u32>,
    /// Failed attempts to open the very first session before [`crate::Consumer::run`]
    /// gives up with [`crate::ErrorKind::Connection`], so that a wrong endpoint fails
    /// in seconds instead of retrying forever. Once a session was open, only
    /// `max_reconnect_attempts` applies. `None`: retry forever.
    pub max_initial_connect_attempts: Option<u32>,
    /// Limit on establishing a connection, and on each checkpoint call.
    pub request_timeout: Duration,
    /// On stop, how long batches in hand may take to finish before their handlers are
    /// dropped.
    pub shutdown_timeout: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            client_name: default_client_name(),
            auth_token: None,
            tls: None,
            start: StartPosition::TrimHorizon,
            max_records_per_batch: 0,
            checkpoint: CheckpointPolicy::EveryBatch,
            max_concurrent_handlers: 64,
            shard_queue_batches: 4,
            handler_retries: 3,
            retry_backoff: BackoffSettings { initial: Duration::from_millis(100), max: Duration::from_secs(5) },
            max_attempts: None,
            max_record_age: None,
            bisect_on_error: false,
            on_failure: FailurePolicy::Stop,
            parallelization_factor: 1,
            handler_timeout: None,
            reconnect_backoff: BackoffSettings { initial: Duration::from_millis(200), max: Duration::from_secs(10) },
            max_reconnect_attempts: None,
            max_initial_connect_attempts: Some(6),
            request_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_certificate_pem", &self.ca_certificate_pem.as_ref().map(|_| "<pem>"))
            .field("domain_name", &self.domain_name)
            .field("client_certificate_pem", &self.client_certificate_pem.as_ref().map(|_| "<pem>"))
            .field("client_key_pem", &self.client_key_pem.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl fmt::Debug for ConsumerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerOptions")
            .field("client_name", &self.client_name)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("start", &self.start)
            .field("max_records_per_batch", &self.max_records_per_batch)
            .field("checkpoint", &self.checkpoint)
            .field("max_concurrent_handlers", &self.max_concurrent_handlers)
            .field("shard_queue_batches", &self.shard_queue_batches)
            .field("handler_retries", &self.handler_retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("max_attempts", &self.max_attempts)
            .field("max_record_age", &self.max_record_age)
            .field("bisect_on_error", &self.bisect_on_error)
            .field("on_failure", &self.on_failure)
            .field("parallelization_factor", &self.parallelization_factor)
            .field("handler_timeout", &self.handler_timeout)
            .field("reconnect_backoff", &self.reconnect_backoff)
            .field("max_reconnect_attempts", &self.max_reconnect_attempts)
            .field("max_initial_connect_attempts", &self.max_initial_connect_attempts)
            .field("request_timeout", &self.request_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

fn default_client_name() -> String {
    format!("rust-client-{}", std::process::id())
}

impl ConsumerOptions {
    /// Checks the settings; called by [`crate::Consumer::new`]. Messages name the
    /// fields in snake_case (as [`ConsumerOptions::validate_as`] with [`Spelling::Snake`]).
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_as(Spelling::Snake)
    }

    /// Checks the settings, naming options in `spelling` (for bindings). The limits:
    /// `max_records_per_batch` 0 to 10000, `max_concurrent_handlers` and
    /// `shard_queue_batches` 1 to 2^20, every other count 1 (`handler_retries`: 0) to
    /// 2^32 - 1, durations at most 10^9 seconds and more than zero except
    /// `shutdown_timeout`, backoffs with `initial` not above `max`, a start time after
    /// the Unix epoch.
    pub fn validate_as(&self, spelling: Spelling) -> Result<(), Error> {
        rules::check_start(self.start, spelling)?;
        rules::MAX_RECORDS_PER_BATCH.check_unsigned(self.max_records_per_batch, spelling)?;
        rules::check_checkpoint_policy(self.checkpoint, spelling)?;
        rules::MAX_CONCURRENT_HANDLERS.check_unsigned(self.max_concurrent_handlers, spelling)?;
        rules::SHARD_QUEUE_BATCHES.check_unsigned(self.shard_queue_batches, spelling)?;
        rules::HANDLER_RETRIES.check_unsigned(self.handler_retries, spelling)?;
        rules::RETRY_BACKOFF.check(self.retry_backoff, spelling)?;
        rules::check_failure_handling(self, spelling)?;
        if let Some(d) = self.handler_timeout {
            rules::HANDLER_TIMEOUT.check(d, spelling)?;
        }
        rules::RECONNECT_BACKOFF.check(self.reconnect_backoff, spelling)?;
        if let Some(n) = self.max_reconnect_attempts {
            rules::MAX_RECONNECT_ATTEMPTS.check_unsigned(n, spelling)?;
        }
        if let Some(n) = self.max_initial_connect_attempts {
            rules::MAX_INITIAL_CONNECT_ATTEMPTS.check_unsigned(n, spelling)?;
        }
        rules::REQUEST_TIMEOUT.check(self.request_timeout, spelling)?;
        rules::SHUTDOWN_TIMEOUT.check(self.shutdown_timeout, spelling)?;
        Ok(())
    }
}

/// Settings as a binding receives them from its host language, before any rule was
/// applied: every field optional (`None`: the default), counts as whole numbers,
/// durations as numbers of the [`Spelling`]'s unit (seconds for `Snake`,
/// milliseconds for `Camel`), enums by name. [`RawOptions::into_options`] applies
/// every rule, so a binding only converts host types.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawOptions {
    /// [`ConsumerOptions::client_name`].
    pub client_name: Option<String>,
    /// [`ConsumerOptions::auth_token`].
    pub auth_token: Option<String>,
    /// [`ConsumerOptions::tls`].
    pub tls: Option<TlsOptions>,
    /// [`ConsumerOptions::start`] by name: `trim_horizon` or `latest`.
    pub start: Option<String>,
    /// [`ConsumerOptions::start`] as a time, in milliseconds since the Unix epoch.
    pub start_timestamp_ms: Option<f64>,
    /// [`ConsumerOptions::max_records_per_batch`].
    pub max_records_per_batch: Option<i64>,
    /// [`ConsumerOptions::checkpoint`]'s mode: `batch` or `manual`.
    pub checkpoint: Option<String>,
    /// [`CheckpointPolicy::EveryRecords`] (not with `checkpoint_interval` or manual).
    pub checkpoint_every_records: Option<i64>,
    /// [`CheckpointPolicy::Interval`] (not with `checkpoint_every_records` or manual).
    pub checkpoint_interval: Option<f64>,
    /// [`ConsumerOptions::max_concurrent_handlers`].
    pub max_concurrent_handlers: Option<i64>,
    /// [`ConsumerOptions::shard_queue_batches`].
    pub shard_queue_batches: Option<i64>,
    /// [`ConsumerOptions::handler_retries`].
    pub handler_retries: Option<i64>,
    /// [`ConsumerOptions::retry_backoff`]'s first delay; raises the default largest
    /// delay when above it and `retry_max_delay` is not given.
    pub retry_initial_delay: Option<f64>,
    /// [`ConsumerOptions::retry_backoff`]'s largest delay.
    pub retry_max_delay: Option<f64>,
    /// [`ConsumerOptions::on_failure`]: `stop`, `skip`, `kinesis:STREAM` or `file:PATH`.
    pub on_failure: Option<String>,
    /// [`ConsumerOptions::on_failure`] as the caller's own destination (not with `on_failure`).
    pub on_failure_callback: Option<crate::DeadLetterCallback>,
    /// [`ConsumerOptions::max_attempts`].
    pub max_attempts: Option<i64>,
    /// [`ConsumerOptions::max_record_age`].
    pub max_record_age: Option<f64>,
    /// [`ConsumerOptions::bisect_on_error`].
    pub bisect_on_error: Option<bool>,
    /// [`ConsumerOptions::parallelization_factor`].
    pub parallelization_factor: Option<i64>,
    /// [`ConsumerOptions::handler_timeout`].
    pub handler_timeout: Option<f64>,
    /// [`ConsumerOptions::reconnect_backoff`]'s first delay (as `retry_initial_delay`).
    pub reconnect_initial_delay: Option<f64>,
    /// [`ConsumerOptions::reconnect_backoff`]'s largest delay.
    pub reconnect_max_delay: Option<f64>,
    /// [`ConsumerOptions::max_reconnect_attempts`].
    pub max_reconnect_attempts: Option<i64>,
    /// [`ConsumerOptions::max_initial_connect_attempts`].
    pub max_initial_connect_attempts: Option<i64>,
    /// [`ConsumerOptions::request_timeout`].
    pub request_timeout: Option<f64>,
    /// [`ConsumerOptions::shutdown_timeout`].
    pub shutdown_timeout: Option<f64>,
}

impl RawOptions {
    /// The settings, every rule applied; errors are
    /// [`crate::ErrorKind::InvalidArgument`] naming the option in `spelling`.
    pub fn into_options(self, spelling: Spelling) -> Result<ConsumerOptions, Error> {
        let s = spelling;
        let time = |rule: rules::Time, value: Option<f64>| value.map(|v| rule.of_number(v, s)).transpose();
        let count = |rule: rules::Count, value: Option<i64>| value.map(|v| rule.check(v, s)).transpose();
        let defaults = ConsumerOptions::default();
        let checkpoint_interval = time(rules::CHECKPOINT_INTERVAL, self.checkpoint_interval)?;
        let options = ConsumerOptions {
            client_name: self.client_name.unwrap_or(defaults.client_name),
            auth_token: self.auth_token,
            tls: self.tls,
            start: rules::start(self.start.as_deref(), self.start_timestamp_ms, s)?,
            max_records_per_batch: count(rules::MAX_RECORDS_PER_BATCH, self.max_records_per_batch)?
                .map_or(defaults.max_records_per_batch, |n| n as u32),
            checkpoint: rules::checkpoint_policy(
                self.checkpoint.as_deref(),
                self.checkpoint_every_records,
                checkpoint_interval,
                s,
            )?,
            max_concurrent_handlers: count(rules::MAX_CONCURRENT_HANDLERS, self.max_concurrent_handlers)?
                .map_or(defaults.max_concurrent_handlers, |n| n as usize),
            shard_queue_batches: count(rules::SHARD_QUEUE_BATCHES, self.shard_queue_batches)?
                .map_or(defaults.shard_queue_batches, |n| n as usize),
            handler_retries: count(rules::HANDLER_RETRIES, self.handler_retries)?
                .map_or(defaults.handler_retries, |n| n as u32),
            retry_backoff: rules::RETRY_BACKOFF.merge(
                defaults.retry_backoff,
                time(rules::RETRY_INITIAL_DELAY, self.retry_initial_delay)?,
                time(rules::RETRY_MAX_DELAY, self.retry_max_delay)?,
                s,
            )?,
            on_failure: rules::on_failure(self.on_failure.as_deref(), self.on_failure_callback, s)?,
            max_attempts: count(rules::MAX_ATTEMPTS, self.max_attempts)?.map(|n| n as u32),
            max_record_age: time(rules::MAX_RECORD_AGE, self.max_record_age)?,
            bisect_on_error: self.bisect_on_error.unwrap_or(defaults.bisect_on_error),
            parallelization_factor: count(rules::PARALLELIZATION_FACTOR, self.parallelization_factor)?
                .map_or(defaults.parallelization_factor, |n| n as u32),
            handler_timeout: time(rules::HANDLER_TIMEOUT, self.handler_timeout)?.or(defaults.handler_timeout),
            reconnect_backoff: rules::RECONNECT_BACKOFF.merge(
                defaults.reconnect_backoff,
                time(rules::RECONNECT_INITIAL_DELAY, self.reconnect_initial_delay)?,
                time(rules::RECONNECT_MAX_DELAY, self.reconnect_max_delay)?,
                s,
            )?,
            max_reconnect_attempts: count(rules::MAX_RECONNECT_ATTEMPTS, self.max_reconnect_attempts)?
                .map(|n| n as u32)
                .or(defaults.max_reconnect_attempts),
            max_initial_connect_attempts: count(
                rules::MAX_INITIAL_CONNECT_ATTEMPTS,
                self.max_initial_connect_attempts,
            )?
            .map(|n| n as u32)
            .or(defaults.max_initial_connect_attempts),
            request_timeout: time(rules::REQUEST_TIMEOUT, self.request_timeout)?.unwrap_or(defaults.request_timeout),
            shutdown_timeout: time(rules::SHUTDOWN_TIMEOUT, self.shutdown_timeout)?
                .unwrap_or(defaults.shutdown_timeout),
        };
        options.validate_as(s)?;
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(ConsumerOptions::default().validate().is_ok());
        let bad = [
            ConsumerOptions { max_concurrent_handlers: 0, ..Default::default() },
            ConsumerOptions { shard_queue_batches: 0, ..Default::default() },
            ConsumerOptions { max_records_per_batch: 10_001, ..Default::default() },
            ConsumerOptions { checkpoint: CheckpointPolicy::EveryRecords(0), ..Default::default() },
            ConsumerOptions { checkpoint: CheckpointPolicy::Interval(Duration::ZERO), ..Default::default() },
            ConsumerOptions { start: StartPosition::AtTimestamp { timestamp_ms: 0 }, ..Default::default() },
            ConsumerOptions { handler_timeout: Some(Duration::ZERO), ..Default::default() },
            ConsumerOptions { max_reconnect_attempts: Some(0), ..Default::default() },
            ConsumerOptions { max_initial_connect_attempts: Some(0), ..Default::default() },
            ConsumerOptions { max_concurrent_handlers: (1 << 20) + 1, ..Default::default() },
            ConsumerOptions { request_timeout: Duration::ZERO, ..Default::default() },
            ConsumerOptions { shutdown_timeout: Duration::MAX, ..Default::default() },
            ConsumerOptions {
                retry_backoff: BackoffSettings { initial: Duration::from_secs(2), max: Duration::from_secs(1) },
                ..Default::default()
            },
            ConsumerOptions {
                reconnect_backoff: BackoffSettings { initial: Duration::ZERO, max: Duration::from_secs(1) },
                ..Default::default()
            },
        ];
        for options in bad {
            let err = options.validate().expect_err("invalid");
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
        }
    }

    #[test]
    fn enums_parse_and_print_their_names() {
        for p in [StartPosition::TrimHorizon, StartPosition::Latest] {
            assert_eq!(p.as_str().parse::<StartPosition>(), Ok(p));
        }
        assert_eq!(StartPosition::AtTimestamp { timestamp_ms: 1 }.as_str(), "at_timestamp");
        for p in [CheckpointPolicy::EveryBatch, CheckpointPolicy::Manual] {
            assert_eq!(p.as_str().parse::<CheckpointPolicy>(), Ok(p));
        }
        assert_eq!(CheckpointPolicy::EveryRecords(5).as_str(), "records");
        assert_eq!(CheckpointPolicy::Interval(Duration::from_secs(1)).as_str(), "interval");
        for p in [FailurePolicy::Stop, FailurePolicy::Skip] {
            assert_eq!(p.as_str().parse::<FailurePolicy>(), Ok(p));
        }
        let err = "ignore".parse::<FailurePolicy>().unwrap_err();
        assert_eq!(
            (err.value(), err.to_string().as_str()),
            ("ignore", "\"stop\", \"skip\", \"kinesis:STREAM\" or \"file:PATH\", not \"ignore\"")
        );
    }

    fn refused(raw: RawOptions, spelling: Spelling) -> String {
        match raw.into_options(spelling).expect_err("refused") {
            Error::InvalidArgument(m) => m,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn raw_options_apply_every_rule_with_the_callers_names() {
        let all = RawOptions {
            client_name: Some("me".into()),
            start: Some("latest".into()),
            max_records_per_batch: Some(100),
            checkpoint_interval: Some(2.0),
            max_concurrent_handlers: Some(4),
            shard_queue_batches: Some(2),
            handler_retries: Some(0),
            retry_initial_delay: Some(9.0),
            on_failure: Some("skip".into()),
            handler_timeout: Some(1.5),
            max_reconnect_attempts: Some(3),
            request_timeout: Some(5.0),
            shutdown_timeout: Some(0.0),
            ..RawOptions::default()
        };
        let o = all.into_options(Spelling::Snake).expect("valid");
        assert_eq!(o.client_name, "me");
        assert_eq!(o.start, StartPosition::Latest);
        assert_eq!(o.checkpoint, CheckpointPolicy::Interval(Duration::from_secs(2)));
        assert_eq!((o.max_concurrent_handlers, o.shard_queue_batches, o.handler_retries), (4, 2, 0));
        assert_eq!(o.retry_backoff, BackoffSettings { initial: Duration::from_secs(9), max: Duration::from_secs(9) });
        assert_eq!(o.on_failure, FailurePolicy::Skip);
        assert_eq!(o.handler_timeout, Some(Duration::from_millis(1500)));
        assert_eq!((o.max_reconnect_attempts, o.max_initial_connect_attempts), (Some(3), Some(6)));
        assert_eq!((o.request_timeout, o.shutdown_timeout), (Duration::from_secs(5), Duration::ZERO));
        let millis = RawOptions { handler_timeout: Some(1500.0), ..Default::default() };
        assert_eq!(millis.into_options(Spelling::Camel).unwrap().handler_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(RawOptions::default().into_options(Spelling::Camel).unwrap(), ConsumerOptions::default());

        // The same text in both spellings, but for the option's name.
        let cases = [
            (
                RawOptions { max_records_per_batch: Some(10_001), ..Default::default() },
                "max_records_per_batch",
                "maxRecordsPerBatch",
            ),
            (RawOptions { handler_retries: Some(-1), ..Default::default() }, "handler_retries", "handlerRetries"),
            (
                RawOptions { max_initial_connect_attempts: Some(0), ..Default::default() },
                "max_initial_connect_attempts",
                "maxInitialConnectAttempts",
            ),
            (RawOptions { on_failure: Some("ignore".into()), ..Default::default() }, "on_failure", "onFailure"),
            (
                RawOptions { checkpoint_every_records: Some(0), ..Default::default() },
                "checkpoint_every_records",
                "checkpointEveryRecords",
            ),
            (
                RawOptions { retry_initial_delay: Some(2.0), retry_max_delay: Some(1.0), ..Default::default() },
                "retry_max_delay",
                "retryMaxDelayMs",
            ),
        ];
        for (raw, snake, camel) in cases {
            let (s, c) = (refused(raw.clone(), Spelling::Snake), refused(raw, Spelling::Camel));
            assert!(s.starts_with(snake) && c.starts_with(camel), "{s} / {c}");
            assert_eq!(s.replace(snake, camel).replace("retry_initial_delay", "retryInitialDelayMs"), c, "one text");
        }
        let start = RawOptions { start_timestamp_ms: Some(-5.0), ..Default::default() };
        assert!(refused(start, Spelling::Camel).starts_with("start must be a time after 1970"));
    }

    #[test]
    fn debug_output_leaves_secrets_out() {
        let options = ConsumerOptions {
            auth_token: Some("s3cret-token".into()),
            tls: Some(TlsOptions { client_key_pem: Some("s3cret-key".into()), ..Default::default() }),
            ..Default::default()
        };
        let text = format!("{options:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("auth_token: Some(\"<redacted>\")"), "{text}");
    }
}
