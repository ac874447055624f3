//! Runs record processors written for the KCL MultiLangDaemon (Python `amazon_kclpy`,
//! Node `aws-kcl`, Ruby, .NET, ...) unchanged, without a JVM: Kinesis Butler speaks the
//! MultiLangDaemon protocol to them.
//!
//! [`run`] reads the processor's own properties file ([`properties`]), opens a
//! Kinesis Butler session through the Rust client (which does leases, checkpoints and
//! handoffs) and, for every shard the server gives it, starts one child process
//! (`executableName`) and speaks the protocol ([`protocol`]) on its stdin/stdout:
//!
//! - shard assigned → `initialize`; each batch → `processRecords`, whose `checkpoint`
//!   requests are stored through the client (fenced by the lease epoch);
//! - runner stopping (SIGTERM) → `shutdownRequested` (checkpoints stored), `leaseLost`,
//!   then the session closes and the shards move at once;
//! - shard revoked by the server → `shutdownRequested` and `leaseLost` (the client has
//!   already released the shard at the child's last checkpoint); lease lost or
//!   connection lost → `leaseLost`; shard ended → `shardEnded` (`SHARD_END` is stored);
//! - a child that exits, breaks the protocol or does not answer within
//!   `timeoutInSeconds` is restarted for its shard only, with backoff, from the shard's
//!   last checkpoint (the records since are given again); its stderr is logged with the
//!   shard id.

#![warn(missing_docs)]

mod child;
mod error;
mod processor;
pub mod properties;
pub mod protocol;

use std::path::PathBuf;
use std::time::Duration;

use kinesis_butler_client::{
    BackoffSettings, CheckpointPolicy, Consumer, ConsumerOptions, FailurePolicy, StartPosition,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use error::MultilangError;
pub use properties::{MultilangConfig, Properties};

/// Options of `kinesis-butler multilang` (and of the `kinesis-butler-multilang` binary).
#[derive(clap::Args, Clone, Debug)]
pub struct MultilangArgs {
    /// The MultiLangDaemon properties file of the processor (executableName, streamName,
    /// applicationName, initialPositionInStream, timeoutInSeconds, ...).
    #[arg(long, env = "KINESIS_BUTLER_MULTILANG_PROPERTIES")]
    pub properties: PathBuf,
    /// The Kinesis Butler server, e.g. http://127.0.0.1:50051.
    #[arg(long, env = "KINESIS_BUTLER_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Working directory of the processes (default: this process's).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Bearer token for a server started with --auth-token.
    #[arg(long, env = "KINESIS_BUTLER_MULTILANG_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// On SIGTERM/SIGINT: how long batches in hand, the processors' final checkpoints
    /// and their exits may take in all.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// First delay before a failed processor is started again (doubles per failure).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub restart_backoff: Duration,
    /// Largest delay between restarts of a failing processor.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub restart_backoff_max: Duration,
}

/// Parses `500ms`, `10s`, `2m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 10s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?} is not a duration like 500ms, 10s or 2m")),
    }
}

/// Reads and checks the properties file named by `args`.
pub fn load_config(args: &MultilangArgs) -> Result<MultilangConfig, MultilangError> {
    let path = args.properties.display().to_string();
    let text = std::fs::read_to_string(&args.properties)
        .map_err(|source| MultilangError::ReadProperties { path: path.clone(), source })?;
    let props = properties::parse(&text)?;
    MultilangConfig::from_properties(&props)
}

/// Runs the processor of `args.properties` for every shard this runner is given by the
/// Butler server at `endpoint`, until `shutdown` is cancelled (then `Ok` once every
/// processor was asked to shut down and its final checkpoint stored) or the client
/// fails (e.g. the server stays unreachable, the stream does not exist).
pub async fn run(args: MultilangArgs, endpoint: String, shutdown: CancellationToken) -> Result<(), MultilangError> {
    let config = load_config(&args)?;
    if args.restart_backoff.is_zero() || args.restart_backoff_max < args.restart_backoff {
        return Err(MultilangError::InvalidArgument(
            "--restart-backoff must be positive and at most --restart-backoff-max".into(),
        ));
    }
    for key in &config.unknown_keys {
        warn!(app = %config.app, key = %key, "unknown key in the properties file; ignored");
    }
    for (key, why) in &config.ignored_keys {
        info!(app = %config.app, key = %key, why, "properties key has no effect here");
    }
    let options = ConsumerOptions {
        client_name: config.worker_id.clone().unwrap_or_else(|| format!("multilang-{}", std::process::id())),
        auth_token: args.auth_token.clone(),
        start: config.start,
        max_records_per_batch: config.max_records,
        checkpoint: CheckpointPolicy::Manual,
        // Every shard has its own process: no reason to make shards wait for each other.
        max_concurrent_handlers: 100_000,
        shard_queue_batches: 8,
        // A failed processor is restarted (by retrying its batch) until it succeeds or
        // the shard moves; the backoff grows to --restart-backoff-max.
        handler_retries: u32::MAX,
        retry_backoff: BackoffSettings { initial: args.restart_backoff, max: args.restart_backoff_max },
        on_failure: FailurePolicy::Stop,
        handler_timeout: None,
        shutdown_timeout: args.shutdown_timeout,
        ..ConsumerOptions::default()
    };
    let settings = processor::Settings {
        command: config.command.clone(),
        workdir: args.workdir.clone(),
        app: config.app.clone(),
        timeout: config.timeout,
        stop_grace: (args.shutdown_timeout / 3).max(Duration::from_millis(100)),
        initial_position: match config.start {
            StartPosition::TrimHorizon => "TRIM_HORIZON",
            StartPosition::Latest => "LATEST",
            StartPosition::AtTimestamp { .. } => "AT_TIMESTAMP",
        },
    };
    let consumer = Consumer::new(endpoint.clone(), config.app.clone(), [config.stream.clone()], options)?;
    info!(app = %config.app, stream = %config.stream, endpoint = %endpoint, command = %config.command.join(" "),
        "multilang runner starting");
    let stop = consumer.stop_token();
    let watcher = tokio::spawn(async move {
        shutdown.cancelled().await;
        stop.cancel();
    });
    let result = consumer.run(processor::MultilangHandler::new(settings)).await;
    watcher.abort();
    info!(app = %config.app, stream = %config.stream, ok = result.is_ok(), "multilang runner stopped");
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("1h").is_err() && parse_duration("ms").is_err());
    }
}
