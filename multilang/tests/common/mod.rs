//! Harness of the multilang tests: kinesalite (127.0.0.1:4620, or `KB_KINESALITE_ENDPOINT`),
//! the real `kinesis-butler` server binary on a SQLite store in a temp dir, the
//! `kinesis-butler-multilang` runner, and the KCL samples installed by
//! `scripts/kcl-samples.sh`. Every wait is bounded.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kinesis_butler_proto as pb;
use serde_json::Value;

#[path = "../../../server/tests/common/basics.rs"]
mod basics;
pub use basics::{create_stream, eventually, free_port, seq_cmp, unique, within};

pub fn kinesalite() -> String {
    basics::Emulator::Kinesalite.endpoint()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// `.tools/kcl-samples`, installed once per test process by `scripts/kcl-samples.sh`.
pub fn samples() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/kcl-samples.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/kcl-samples.sh");
        assert!(out.status.success(), "scripts/kcl-samples.sh failed");
        PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim())
    })
}

/// The directory of amazon-kclpy's sample and the PYTHONPATH that finds `amazon_kclpy`.
pub fn kclpy() -> (PathBuf, PathBuf) {
    let root = samples().join("python/amazon_kclpy-3.2.0");
    (root.join("samples"), root)
}

/// The directory of the aws-kcl basic sample consumer.
pub fn aws_kcl() -> PathBuf {
    samples().join("node/node_modules/aws-kcl/samples/basic_sample/consumer")
}

/// A Kinesis client for kinesalite.
pub fn kinesis_client() -> aws_sdk_kinesis::Client {
    basics::kinesis_client(basics::Emulator::Kinesalite)
}

/// Puts records `rec-<first+i>`; returns their sequence numbers by shard, in order.
pub async fn put_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    first: usize,
    count: usize,
) -> Result<BTreeMap<String, Vec<String>>> {
    let puts = basics::put_records(client, stream, first, count).await?;
    Ok(puts.into_iter().map(|(shard, puts)| (shard, puts.into_iter().map(|p| p.sequence_number).collect())).collect())
}

/// A process killed (SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (bounded) for the exit; returns whether it exited 0.
    pub async fn terminate(&mut self, secs: u64) -> Result<bool> {
        signal(self.pid(), "TERM");
        let child = &mut self.child;
        let status = within(secs, "process to exit after SIGTERM", async {
            loop {
                if let Some(status) = child.try_wait()? {
                    return Ok::<_, anyhow::Error>(status);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await??;
        Ok(status.success())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The runner's JSON log lines (their `fields`).
    pub fn events(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|mut v| v.get_mut("fields").map(Value::take))
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
}

/// The `kinesis-butler` server binary: `KB_SERVER_BIN`, or next to this test's `deps/`
/// directory (build it with `cargo build -p kinesis-butler --bin kinesis-butler`).
pub fn server_bin() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("KB_SERVER_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let path = exe.parent().and_then(Path::parent).map(|d| d.join("kinesis-butler")).context("target dir")?;
    if !path.exists() {
        bail!(
            "{} not found: run `cargo build -p kinesis-butler --bin kinesis-butler` first (or set KB_SERVER_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// The store of a test's server: SQLite in `dir`, or `KB_MULTILANG_TEST_STORE` (e.g.
/// `memory://`).
pub fn store_url(dir: &Path) -> String {
    std::env::var("KB_MULTILANG_TEST_STORE").unwrap_or_else(|_| format!("sqlite://{}", dir.join("butler.db").display()))
}

/// A Butler server on a SQLite store in `dir` (see [`store_url`]), reading kinesalite.
pub async fn start_server(dir: &Path, extra: &[&str]) -> Result<(Proc, String)> {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.join(format!("server-{port}.log"));
    let child = Command::new(server_bin()?)
        .args(["--listen", &listen, "--store", &store_url(dir)])
        .args(["--balance-interval", "200ms", "--idle-interval", "100ms", "--handoff-grace", "3s", "--lease-ttl", "5s"])
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_KINESIS", kinesalite())
        .env("RUST_LOG", std::env::var("KB_TEST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log)?))
        .spawn()
        .context("spawning kinesis-butler")?;
    let mut server = Proc { child, log };
    let addr = format!("http://{listen}");
    within(30, "server to accept connections", async {
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("server exited early: {status}");
            }
            if tokio::net::TcpStream::connect(&listen).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    Ok((server, addr))
}

/// Writes a properties file into `dir`.
pub fn properties(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing properties");
    path
}

/// Starts `kinesis-butler-multilang` with JSON logs written to `dir/<name>.log`.
pub fn start_runner(
    dir: &Path,
    name: &str,
    props: &Path,
    endpoint: &str,
    workdir: &Path,
    env: &[(&str, &str)],
) -> Result<Proc> {
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_kinesis-butler-multilang"))
        .arg("--properties")
        .arg(props)
        .args(["--endpoint", endpoint, "--log-format", "json"])
        .arg("--workdir")
        .arg(workdir)
        .args(["--restart-backoff", "200ms", "--restart-backoff-max", "2s", "--shutdown-timeout", "15s"])
        .env("RUST_LOG", "info")
        // The runner's children inherit these: Python writes its stderr at once.
        .env("PYTHONUNBUFFERED", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log)?))
        .spawn()
        .context("spawning kinesis-butler-multilang")?;
    Ok(Proc { child, log })
}

/// Sequence numbers amazon-kclpy's sample logged (on stderr, forwarded by the runner), by
/// shard, in the order seen.
pub fn kclpy_seen(runner: &Proc) -> BTreeMap<String, Vec<String>> {
    let mut text: BTreeMap<String, String> = BTreeMap::new();
    for e in runner.events() {
        if e["message"] == "child stderr" {
            let shard = e["shard"].as_str().unwrap_or_default().to_owned();
            text.entry(shard).or_default().push_str(e["stderr"].as_str().unwrap_or_default());
        }
    }
    text.into_iter().map(|(shard, t)| (shard, numbers_after(&t, "Sequence Number: "))).collect()
}

/// Sequence numbers the aws-kcl sample logged to `application.log`, by shard.
pub fn aws_kcl_seen(log_dir: &Path) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(log_dir.join("application.log")).unwrap_or_default();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        // "ShardID: %s, Record: %s, SeqenceNumber: %s, PartitionKey:%s"
        let Some(rest) = line.split("ShardID: ").nth(1) else { continue };
        let Some((shard, rest)) = rest.split_once(", Record: ") else { continue };
        if let Some(seq) = numbers_after(rest, "SeqenceNumber: ").first() {
            seen.entry(shard.to_owned()).or_default().push(seq.clone());
        }
    }
    seen
}

fn numbers_after(text: &str, marker: &str) -> Vec<String> {
    text.split(marker)
        .skip(1)
        .map(|s| s.chars().take_while(char::is_ascii_digit).collect::<String>())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Every lease of the app and stream: shard → (owner, checkpoint).
pub async fn leases(endpoint: &str, app: &str, stream: &str) -> Result<pb::DescribeLeasesResponse> {
    let mut client = within(10, "connect", pb::butler_client::ButlerClient::connect(endpoint.to_owned())).await??;
    let req = pb::DescribeLeasesRequest { app: app.into(), stream: stream.into() };
    Ok(within(10, "DescribeLeases", client.describe_leases(req)).await??.into_inner())
}

pub async fn checkpoints(endpoint: &str, app: &str, stream: &str) -> Result<BTreeMap<String, String>> {
    Ok(leases(endpoint, app, stream).await?.leases.into_iter().map(|l| (l.shard_id, l.checkpoint)).collect())
}

/// Waits until every shard's stored checkpoint is its last put record.
pub async fn wait_checkpointed(
    secs: u64,
    endpoint: &str,
    app: &str,
    stream: &str,
    puts: &BTreeMap<String, Vec<String>>,
) -> Result<()> {
    eventually(secs, "checkpoints to reach the last records", || async {
        let stored = checkpoints(endpoint, app, stream).await?;
        Ok(puts.iter().all(|(shard, seqs)| stored.get(shard) == seqs.last()))
    })
    .await
    .with_context(|| format!("expected the last records {puts:?}"))
}

/// Asserts that `seen` holds every record of `puts`, in order per shard, each shard's
/// sightings sorted (a restarted child may see a record again, never out of order
/// within one run of sightings after the restart point).
pub fn assert_all_seen(seen: &BTreeMap<String, Vec<String>>, puts: &BTreeMap<String, Vec<String>>) {
    for (shard, seqs) in puts {
        let got = seen.get(shard).cloned().unwrap_or_default();
        for seq in seqs {
            assert!(got.contains(seq), "shard {shard}: record {seq} never seen (saw {} records)", got.len());
        }
    }
}

/// Asserts that the first sightings of each shard's records follow the put order.
pub fn assert_in_order(seen: &BTreeMap<String, Vec<String>>) {
    for (shard, seqs) in seen {
        let mut firsts: Vec<&String> = Vec::new();
        for s in seqs {
            if !firsts.contains(&s) {
                firsts.push(s);
            }
        }
        assert!(firsts.windows(2).all(|w| seq_cmp(w[0], w[1]).is_lt()), "shard {shard}: records seen out of order");
    }
}
