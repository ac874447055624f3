//! The `kinesis-butler` binary.

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use kinesis_butler::cli::config::{LogFormat, ServeConfig};
use kinesis_butler::cli::{config_file, kcl, leases as leases_cli, multilang};
use tracing_subscriber::EnvFilter;

// Relaying multi-megabyte pages through glibc malloc spent a fifth of the server's CPU in
// page faults on fresh buffers and in free-list consolidation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Kinesis Butler: consumes Amazon Kinesis Data Streams for processors in any language.
///
/// AWS settings come from the standard AWS chain: AWS_REGION, credentials, and
/// AWS_ENDPOINT_URL_KINESIS / AWS_ENDPOINT_URL for a local endpoint.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML file with any of the serve options (keys are flag names); flags and
    /// environment variables override it.
    #[arg(long, env = "KINESIS_BUTLER_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    serve: ServeConfig,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve gRPC (the default).
    Serve(Box<ServeConfig>),
    /// Show the leases and sessions of one app and stream.
    Leases(leases_cli::LeasesArgs),
    /// Run KCL MultiLangDaemon record processors unchanged (their properties file).
    Multilang(multilang::MultilangCommand),
    /// Import a KCL lease table's checkpoints, or export them back to one.
    Kcl(kcl::KclArgs),
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
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

/// The command line with the config file's values inserted before the user's own
/// arguments, so that those override it.
fn effective_args() -> anyhow::Result<Vec<OsString>> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let Some(path) = config_file::config_path(&argv) else {
        return Ok(argv);
    };
    let serve_at = argv.iter().position(|a| a == "serve");
    if argv.iter().any(|a| a == "leases" || a == "multilang" || a == "kcl") {
        return Ok(argv);
    }
    let command = Cli::command();
    let injected = config_file::args_from_file(&path, &command)?;
    let split = serve_at.map_or(1, |i| i + 1);
    let mut out = argv[..split].to_vec();
    out.extend(injected);
    out.extend_from_slice(&argv[split..]);
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Both rustls providers are linked in (aws-sdk and tonic); pick one for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = effective_args()?;
    let matches = Cli::command().try_get_matches_from(args).unwrap_or_else(|e| e.exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Some(Command::Leases(args)) => {
            init_logs(LogFormat::Text);
            leases_cli::run(args).await
        }
        Some(Command::Multilang(cmd)) => {
            init_logs(LogFormat::Text);
            multilang::run(cmd, shutdown_signal()).await
        }
        Some(Command::Kcl(args)) => {
            init_logs(LogFormat::Text);
            kcl::run(args).await
        }
        Some(Command::Serve(serve)) => {
            init_logs(serve.log_format);
            kinesis_butler::server::serve(*serve, shutdown_signal()).await
        }
        None => {
            init_logs(cli.serve.log_format);
            kinesis_butler::server::serve(cli.serve, shutdown_signal()).await
        }
    }
}
