//! Server configuration: command-line flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Options of `kinesis-butler serve` (also the default command).
#[derive(Args, Clone, Debug)]
pub struct ServeConfig {
    /// gRPC listen address.
    #[arg(long, env = "KINESIS_BUTLER_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Lease store URL: `sqlite://PATH` (embedded), `redis://HOST[:PORT][/DB]`, `rediss://…`,
    /// `postgres://USER@HOST/DB` (`?sslmode=require` for TLS).
    #[arg(long, env = "KINESIS_BUTLER_STORE", default_value = "sqlite://butler.db")]
    pub store: String,

    /// How long a lease stays valid without renewal; a crashed instance's shards are
    /// taken over after this.
    #[arg(long, env = "KINESIS_BUTLER_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// How often each app and stream is rebalanced and its leases renewed.
    #[arg(long, env = "KINESIS_BUTLER_BALANCE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub balance_interval: Duration,

    /// Pause between GetRecords calls on a shard that is caught up.
    #[arg(long, env = "KINESIS_BUTLER_IDLE_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub idle_interval: Duration,

    /// Records per batch when the client does not ask for fewer (Kinesis allows 10000).
    #[arg(long, env = "KINESIS_BUTLER_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub batch_size: u32,

    /// How long a revoked shard waits for the client's final checkpoint and release
    /// before it is handed over anyway.
    #[arg(long, env = "KINESIS_BUTLER_HANDOFF_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub handoff_grace: Duration,

    /// How often shards of each stream are listed again to find new ones.
    #[arg(long, env = "KINESIS_BUTLER_SHARD_SYNC_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub shard_sync_interval: Duration,

    /// How shards are read: `polling` (GetRecords, the default) or `fan-out` (enhanced
    /// fan-out: a stream consumer `kinesis-butler-<app>` is registered per app and
    /// stream, and shards are read with SubscribeToShard).
    #[arg(long, env = "KINESIS_BUTLER_RETRIEVAL_MODE", value_enum, default_value_t = RetrievalMode::Polling)]
    pub retrieval_mode: RetrievalMode,

    /// Fan-out only: how long one subscription is used before a new one is made
    /// (Kinesis ends them after 5 minutes). Shorter only for tests.
    #[arg(long, env = "KINESIS_BUTLER_FANOUT_SUBSCRIPTION_LIFETIME", default_value = "290s",
          value_parser = parse_duration, hide = true)]
    pub fanout_subscription_lifetime: Duration,

    /// Batches buffered per session before readers wait for the client (backpressure).
    #[arg(long, env = "KINESIS_BUTLER_SESSION_BUFFER", default_value_t = 16)]
    pub session_buffer: usize,

    /// On SIGTERM/SIGINT, how long to wait for clients' final checkpoints before the
    /// remaining leases are freed anyway.
    #[arg(long, env = "KINESIS_BUTLER_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Serve Prometheus metrics at http://ADDR/metrics (off when unset).
    #[arg(long, env = "KINESIS_BUTLER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve the live status page at http://ADDR/ and its JSON at /status.json (off when
    /// unset); the JSON needs the bearer token when one is set.
    #[arg(long, env = "KINESIS_BUTLER_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// How often this instance publishes its readers' lag and records/s to the store for
    /// every instance's status page (0s: never).
    #[arg(long, env = "KINESIS_BUTLER_STATUS_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub status_interval: Duration,

    /// PEM certificate chain for TLS on the gRPC listener (with --tls-key).
    #[arg(long, env = "KINESIS_BUTLER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS on the gRPC listener (with --tls-cert).
    #[arg(long, env = "KINESIS_BUTLER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    #[arg(long, env = "KINESIS_BUTLER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Shared bearer token every Butler call must present
    /// (`authorization: Bearer <token>`); off when unset.
    #[arg(long, env = "KINESIS_BUTLER_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// Benchmarks only: read an in-memory source of generated streams instead of Kinesis,
    /// `NAME=SHARDS[xRECORDS[xBYTES]]`, several separated by commas.
    #[arg(long, env = "KINESIS_BUTLER_MEMORY_SOURCE", hide = true)]
    pub memory_source: Option<String>,

    /// Log format.
    #[arg(long, env = "KINESIS_BUTLER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How shards are read.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetrievalMode {
    /// GetRecords polling, at most 5 calls a second per shard.
    Polling,
    /// Enhanced fan-out (SubscribeToShard), a dedicated 2 MB/s per shard and consumer.
    FanOut,
}

/// Log output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses `250ms`, `10s`, `2m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (num, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = num.parse().map_err(|_| format!("invalid duration {text:?}: use e.g. 500ms, 10s, 2m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("invalid duration unit in {text:?}: use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
