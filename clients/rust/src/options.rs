//! The consumer's settings: one plain struct with defaults, so that bindings can fill
//! it from keyword arguments or an options object.

use std::fmt;
use std::time::Duration;

pub use kinesis_butler_proto::backoff::BackoffSettings;

use crate::error::Error;

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

/// What happens to a batch whose handler still fails after every retry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Stop the consumer gracefully and return the handler's error from
    /// [`crate::Consumer::run`] (the default). The failed batch is not checkpointed, so
    /// it is delivered again to the next consumer.
    #[default]
    Stop,
    /// Log the error and go on as if the batch had been handled: it is checkpointed
    /// with the others and never delivered again.
    Skip,
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
    /// What to do with a batch that failed every retry.
    pub on_failure: FailurePolicy,
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
            on_failure: FailurePolicy::Stop,
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
            .field("on_failure", &self.on_failure)
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
    /// Checks the settings; called by [`crate::Consumer::new`].
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |m: &str| Err(Error::InvalidArgument(m.to_owned()));
        if self.max_concurrent_handlers == 0 {
            return invalid("max_concurrent_handlers must be at least 1");
        }
        if self.shard_queue_batches == 0 {
            return invalid("shard_queue_batches must be at least 1");
        }
        if self.max_records_per_batch > 10_000 {
            return invalid("max_records_per_batch must be at most 10000 (0 means the server's default)");
        }
        match self.checkpoint {
            CheckpointPolicy::EveryRecords(0) => {
                return invalid("CheckpointPolicy::EveryRecords needs at least 1 record")
            }
            CheckpointPolicy::Interval(d) if d.is_zero() => {
                return invalid("CheckpointPolicy::Interval needs a positive duration")
            }
            _ => {}
        }
        if let StartPosition::AtTimestamp { timestamp_ms } = self.start {
            if timestamp_ms <= 0 {
                return invalid("StartPosition::AtTimestamp needs a positive timestamp_ms");
            }
        }
        if self.handler_timeout.is_some_and(|d| d.is_zero()) {
            return invalid("handler_timeout must be positive (or None for no limit)");
        }
        if self.request_timeout.is_zero() {
            return invalid("request_timeout must be positive");
        }
        if self.max_reconnect_attempts == Some(0) || self.max_initial_connect_attempts == Some(0) {
            return invalid(
                "max_reconnect_attempts and max_initial_connect_attempts must be at least 1 (None: retry forever)",
            );
        }
        Ok(())
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
        ];
        for options in bad {
            let err = options.validate().expect_err("invalid");
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
        }
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
