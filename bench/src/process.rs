//! Server processes run by the benchmarks, and what /proc says about them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(50999)
}

/// Where a server's log goes: `KB_BENCH_LOG_DIR/server-PORT.log` when that is set (one
/// file per instance, to follow a handoff across them), else the bench's stderr.
fn log_file(port: u16) -> Result<Stdio> {
    match std::env::var_os("KB_BENCH_LOG_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            let path = Path::new(&dir).join(format!("server-{port}.log"));
            Ok(std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?.into())
        }
        None => Ok(Stdio::inherit()),
    }
}

/// A server process, killed on drop.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its gRPC endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Server {
    /// Starts `kinesis-butler` with Kinesis at `kinesis` (an endpoint URL) and the store URL,
    /// and waits until it listens.
    pub async fn start(bin_dir: &Path, kinesis: &str, store: &str, extra: &[&str]) -> Result<Self> {
        let port = free_port();
        let child = Command::new(bin_dir.join("kinesis-butler"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--store", store])
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_KINESIS", kinesis)
            // KB_BENCH_SERVER_LOG: a log filter for the servers (to look into a figure).
            .env("RUST_LOG", std::env::var("KB_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stderr(log_file(port)?)
            .spawn()
            .context("starting kinesis-butler (build it with cargo build --release)")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("server did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { child, endpoint: format!("http://127.0.0.1:{port}") })
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }

    /// Resident memory (VmRSS).
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
