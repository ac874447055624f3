//! Wiring a server instance together and serving it until a shutdown signal.

use std::future::Future;

use tracing::info;

use crate::butler::{Butler, ButlerSettings};
use crate::config::ServeConfig;
use crate::group::GroupSettings;
use crate::kinesis::Kinesis;
use crate::redact::redact_url;
use crate::service::ButlerService;
use crate::store;

/// Opens the store, connects to Kinesis and serves gRPC on `config.listen` until
/// `shutdown` completes.
pub async fn serve(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let store = store::open(&config.store).await?;
    let kinesis = Kinesis::from_env().await;
    let settings = ButlerSettings {
        group: GroupSettings {
            lease_ttl: config.lease_ttl,
            balance_interval: config.balance_interval,
            handoff_grace: config.handoff_grace,
            shard_sync_interval: config.shard_sync_interval,
            idle_interval: config.idle_interval,
        },
        batch_size: config.batch_size,
        session_buffer: config.session_buffer,
    };
    let core = Butler::new(store, kinesis, settings);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    info!(listen = %listener.local_addr()?, store = %redact_url(&config.store), instance = core.instance_id(),
        "kinesis-butler serving");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(ButlerService::new(core.clone()).into_server())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await?;
    core.shutdown();
    info!("kinesis-butler stopped");
    Ok(())
}
