//! The `kinesis-butler` binary.

use clap::{Parser, Subcommand};
use kinesis_butler::config::{LogFormat, ServeConfig};
use tracing_subscriber::EnvFilter;

/// Kinesis Butler: consumes Amazon Kinesis Data Streams for processors in any language.
///
/// AWS settings come from the standard AWS chain: AWS_REGION, credentials, and
/// AWS_ENDPOINT_URL_KINESIS / AWS_ENDPOINT_URL for a local endpoint.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeConfig,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.serve.log_format);
    match cli.command {
        None | Some(Command::Serve) => kinesis_butler::server::serve(cli.serve, shutdown_signal()).await,
    }
}
