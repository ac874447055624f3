//! Watches the lease store and reports it through gRPC health: `NOT_SERVING` while the
//! store is unreachable, `SERVING` again once it answers.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{error, info};

use crate::store::LeaseStore;

/// The fully qualified service name health is reported for (besides "").
pub(crate) const SERVICE_NAME: &str = "kinesis_butler.v1.Butler";

/// Pings the store every `interval` until `stop`, flipping health on each change.
pub(crate) async fn watch_store(
    store: Arc<dyn LeaseStore>,
    reporter: HealthReporter,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut up = true;
    loop {
        let ok = match tokio::time::timeout(interval.max(Duration::from_secs(1)), store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if up {
                    error!(error = %e, "lease store unreachable: health NOT_SERVING");
                }
                false
            }
            Err(_) => {
                if up {
                    error!("lease store ping timed out: health NOT_SERVING");
                }
                false
            }
        };
        if ok != up {
            up = ok;
            let status = if ok { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(SERVICE_NAME, status).await;
            metrics::gauge!(crate::metrics::STORE_UP).set(if ok { 1.0 } else { 0.0 });
            if ok {
                info!("lease store reachable again: health SERVING");
            }
        }
        if !ok {
            metrics::counter!(crate::metrics::STORE_ERRORS, "op" => "ping").increment(1);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
