//! Metric names, their descriptions, and the Prometheus exporter.

use std::net::SocketAddr;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Records delivered to sessions.
pub(crate) const RECORDS: &str = "kinesis_butler_records_delivered_total";
/// Payload bytes delivered to sessions.
pub(crate) const BYTES: &str = "kinesis_butler_bytes_delivered_total";
/// Record batches delivered.
pub(crate) const BATCHES: &str = "kinesis_butler_batches_delivered_total";
/// GetRecords calls made.
pub(crate) const GET_RECORDS_CALLS: &str = "kinesis_butler_get_records_calls_total";
/// Kinesis call failures by kind.
pub(crate) const KINESIS_ERRORS: &str = "kinesis_butler_kinesis_errors_total";
/// How far each shard's reader is behind the tip.
pub(crate) const MILLIS_BEHIND: &str = "kinesis_butler_millis_behind_latest";
/// Per app and stream: the largest lag of this instance's readers.
pub(crate) const LAG_MAX: &str = "kinesis_butler_lag_max_millis";
/// Per app and stream: the summed lag of this instance's readers.
pub(crate) const LAG_SUM: &str = "kinesis_butler_lag_sum_millis";
/// Leases held by this instance's sessions.
pub(crate) const LEASES_HELD: &str = "kinesis_butler_leases_held";
/// Live sessions on this instance.
pub(crate) const SESSIONS: &str = "kinesis_butler_sessions";
/// Shards revoked for rebalancing.
pub(crate) const REBALANCES: &str = "kinesis_butler_rebalances_total";
/// Time from a revoke to the release of the shard.
pub(crate) const HANDOFF_SECONDS: &str = "kinesis_butler_handoff_duration_seconds";
/// Checkpoints stored.
pub(crate) const CHECKPOINTS: &str = "kinesis_butler_checkpoints_total";
/// Checkpoints refused, by reason.
pub(crate) const CHECKPOINT_FAILURES: &str = "kinesis_butler_checkpoint_failures_total";
/// Checkpoint latency.
pub(crate) const CHECKPOINT_SECONDS: &str = "kinesis_butler_checkpoint_duration_seconds";
/// Store operation failures.
pub(crate) const STORE_ERRORS: &str = "kinesis_butler_store_errors_total";
/// 1 while the lease store answers, 0 while it does not.
pub(crate) const STORE_UP: &str = "kinesis_butler_store_up";

/// Installs the Prometheus exporter serving `/metrics` on `addr`.
pub(crate) fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new().with_http_listener(addr).install()?;
    describe();
    Ok(())
}

fn describe() {
    describe_counter!(RECORDS, Unit::Count, "Records delivered to sessions");
    describe_counter!(BYTES, Unit::Bytes, "Record payload bytes delivered to sessions");
    describe_counter!(BATCHES, Unit::Count, "Record batches delivered to sessions");
    describe_counter!(GET_RECORDS_CALLS, Unit::Count, "Kinesis GetRecords calls");
    describe_counter!(
        KINESIS_ERRORS,
        Unit::Count,
        "Kinesis call failures by kind (throttled, expired_iterator, transient, not_found, rejected)"
    );
    describe_gauge!(MILLIS_BEHIND, Unit::Milliseconds, "How far each shard reader is behind the tip of its shard");
    describe_gauge!(
        LAG_MAX,
        Unit::Milliseconds,
        "Largest millis behind latest of this instance's readers, per app and stream (max over instances for the app)"
    );
    describe_gauge!(
        LAG_SUM,
        Unit::Milliseconds,
        "Summed millis behind latest of this instance's readers, per app and stream (sum over instances for the app)"
    );
    describe_gauge!(LEASES_HELD, Unit::Count, "Leases held by this instance's sessions, per app and stream");
    describe_gauge!(SESSIONS, Unit::Count, "Live sessions on this instance");
    describe_counter!(REBALANCES, Unit::Count, "Shards revoked to rebalance");
    describe_histogram!(HANDOFF_SECONDS, Unit::Seconds, "Time from a rebalance revoke to the release of the shard");
    describe_counter!(CHECKPOINTS, Unit::Count, "Checkpoints stored");
    describe_counter!(CHECKPOINT_FAILURES, Unit::Count, "Checkpoints refused, by gRPC code");
    describe_histogram!(CHECKPOINT_SECONDS, Unit::Seconds, "Checkpoint latency, store round trip included");
    describe_counter!(STORE_ERRORS, Unit::Count, "Lease store operation failures");
    describe_gauge!(STORE_UP, Unit::Count, "1 while the lease store answers, 0 while it does not");
}
