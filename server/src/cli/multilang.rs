//! `kinesis-butler multilang`: runs KCL MultiLangDaemon processors unchanged
//! (`kinesis-butler-multilang`), against a Butler server named by `--endpoint`, or with
//! none, against one started in this process on the embedded store, so that a single
//! process replaces the daemon and its JVM.

use std::time::Duration;

use clap::Parser;
use kinesis_butler_multilang::MultilangArgs;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cli::config::ServeConfig;

/// Options of `kinesis-butler multilang`.
#[derive(clap::Args, Clone, Debug)]
pub struct MultilangCommand {
    #[command(flatten)]
    runner: MultilangArgs,
    /// Without `--endpoint`: the store of the server started in this process.
    #[arg(long = "embedded-store", default_value = "sqlite://butler.db")]
    embedded_store: String,
}

/// Lets the embedded server take every default (and `KINESIS_BUTLER_*` variables) of
/// `kinesis-butler serve`.
#[derive(Parser)]
struct Embedded {
    #[command(flatten)]
    serve: ServeConfig,
}

/// Runs the processors until `shutdown` completes.
pub async fn run(
    cmd: MultilangCommand,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.cancel();
    });
    if let Some(endpoint) = cmd.runner.endpoint.clone() {
        return Ok(kinesis_butler_multilang::run(cmd.runner, endpoint, stop).await?);
    }
    // A free loopback port for the embedded server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let serve = Embedded::parse_from(["kinesis-butler", "--listen", &listen, "--store", &cmd.embedded_store]).serve;
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(crate::server::serve(serve, server_stop.clone().cancelled_owned()));
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while tokio::net::TcpStream::connect(&listen).await.is_err() {
            if server.is_finished() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if server.is_finished() || ready.is_err() {
        server_stop.cancel();
        return match server.await? {
            Err(e) => Err(e.context("the embedded server did not start")),
            Ok(()) => anyhow::bail!("the embedded server did not start within 30 s"),
        };
    }
    info!(%listen, store = %crate::redact::redact_url(&cmd.embedded_store), "embedded server started");
    let ran = kinesis_butler_multilang::run(cmd.runner, format!("http://{listen}"), stop).await;
    server_stop.cancel();
    server.await??;
    Ok(ran?)
}
