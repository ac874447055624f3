//! `kinesis-butler-multilang --properties app.properties --endpoint URL`: runs a KCL
//! MultiLangDaemon processor through a Kinesis Butler server (`kinesis-butler multilang`
//! also offers an embedded server).

use anyhow::{bail, Context};
use clap::Parser;
use kinesis_butler_multilang::{run, MultilangArgs};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "kinesis-butler-multilang",
    version,
    about = "Runs KCL MultiLangDaemon record processors over Kinesis Butler"
)]
struct Cli {
    #[command(flatten)]
    args: MultilangArgs,
    /// `text` or `json` (one object per line); the level is set with RUST_LOG.
    #[arg(long, env = "KINESIS_BUTLER_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() {
    if let Err(e) = real_main().await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format.as_str() {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => bail!("--log-format must be text or json, not {other:?}"),
    }
    let Some(endpoint) = cli.args.endpoint.clone() else {
        bail!("--endpoint is required (e.g. --endpoint http://127.0.0.1:50051)");
    };
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: asking every processor to shut down");
        signal.cancel();
    });
    run(cli.args, endpoint, shutdown).await.context("multilang runner failed")
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
