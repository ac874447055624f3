//! Wiring a server instance together and serving it until a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::api::auth::TokenCheck;
use crate::api::health;
use crate::api::service::ButlerService;
use crate::cli::config::ServeConfig;
use crate::coordination::butler::{Butler, ButlerSettings};
use crate::coordination::group::GroupSettings;
use crate::redact::redact_url;
use crate::retrieval::kinesis::Kinesis;
use crate::{metrics, store};

/// Concurrent HTTP/2 streams per client connection; a client queues calls beyond it.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// The server's HTTP/2 connection window (h2's small-frame budget is half of it).
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// The listener's TLS settings, if a certificate is configured.
fn tls_config(config: &ServeConfig) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use anyhow::Context;
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |p: &std::path::PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// Opens the store, connects to Kinesis and serves gRPC on `config.listen` until
/// `shutdown` completes; then drains gracefully (revokes every shard, waits for final checkpoints, frees the rest).
pub async fn serve(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_listen {
        metrics::install(addr)?;
        info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let store = store::open(&config.store).await?;
    let kinesis: crate::retrieval::source::Source = match &config.memory_source {
        Some(spec) => crate::retrieval::memory::MemorySource::from_spec(spec).map_err(anyhow::Error::msg)?,
        None => Arc::new(Kinesis::from_env().await),
    };
    let settings = ButlerSettings {
        group: GroupSettings {
            lease_ttl: config.lease_ttl,
            balance_interval: config.balance_interval,
            handoff_grace: config.handoff_grace,
            shard_sync_interval: config.shard_sync_interval,
            idle_interval: config.idle_interval,
            fanout: (config.retrieval_mode == crate::cli::config::RetrievalMode::FanOut)
                .then(|| crate::retrieval::fanout::FanOut::new(config.fanout_subscription_lifetime)),
        },
        batch_size: config.batch_size,
        session_buffer: config.session_buffer,
    };
    let core = Butler::new(store.clone(), kinesis, settings);

    let status_stop = CancellationToken::new();
    tokio::spawn(crate::status::publish(
        core.leases().clone(),
        core.instance_id().to_owned(),
        config.status_interval,
        status_stop.clone(),
    ));
    if let Some(addr) = config.http_listen {
        let status = Arc::new(std::sync::Mutex::new(Arc::new(String::from("{}"))));
        let groups_of = core.clone();
        let local_groups: Arc<dyn Fn() -> Vec<store::GroupKey> + Send + Sync> =
            Arc::new(move || groups_of.group_keys());
        // A publication is stale after a few missed intervals.
        let stats_ttl = (config.status_interval * 4).max(Duration::from_secs(10));
        tokio::spawn(crate::status::view::run(
            core.leases().clone(),
            core.instance_id().to_owned(),
            config.lease_ttl,
            stats_ttl,
            local_groups,
            status.clone(),
            status_stop.clone(),
        ));
        let token = config.auth_token.clone().filter(|t| !t.is_empty()).map(|t| Arc::new(t.into_bytes()));
        crate::status::http::serve(addr, crate::status::http::HttpState { status, token }, status_stop.clone()).await?;
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<kinesis_butler_proto::butler_server::ButlerServer<ButlerService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kinesis_butler_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let watcher_stop = CancellationToken::new();
    tokio::spawn(health::watch_store(store, health_reporter, Duration::from_secs(1), watcher_stop.clone()));

    // The listener keeps serving during the drain so clients can send final checkpoints.
    let drained = CancellationToken::new();
    let (drain_core, drain_done, grace) = (core.clone(), drained.clone(), config.shutdown_grace);
    tokio::spawn(async move {
        shutdown.await;
        info!(?grace, "draining: revoking every shard for final checkpoints");
        drain_core.drain(grace).await;
        drain_done.cancel();
    });

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    info!(listen = %listener.local_addr()?, store = %redact_url(&config.store), instance = core.instance_id(),
        tls = config.tls_cert.is_some(), mutual_tls = config.tls_client_ca.is_some(),
        token = config.auth_token.is_some(), "kinesis-butler serving");
    // h2 cuts a connection (GOAWAY ENHANCE_YOUR_CALM, "too_many_data_frames") when the
    // small DATA frames it holds unread cost more than half its connection window; a
    // processor's burst of checkpoints and releases (one tiny frame each, thousands at once
    // after a rebalance at scale) reached that while the server was busy, ending every
    // session on the connection. A bound on concurrent streams and a large window keep
    // an honest client's frames well within the budget (1,024 × 256 B ≪ 4 MiB).
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls_config(&config)? {
        builder = builder.tls_config(tls)?;
    }
    let token = TokenCheck::new(config.auth_token.clone());
    let butler = tonic::service::interceptor::InterceptedService::new(
        ButlerService::new(core.clone()).into_server(),
        move |req| token.check(req),
    );
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(butler)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            drained.cancelled_owned(),
        )
        .await?;
    watcher_stop.cancel();
    status_stop.cancel();
    info!("kinesis-butler stopped");
    Ok(())
}
