//! `make bench`: measures the server against a baseline in the same run and prints a
//! table (also written to `bench-results/bench.md`).
//!
//! 1. Relay ceiling: a fake in-memory Kinesis source; a direct aws-sdk-kinesis read loop
//!    vs. the server relaying to a Rust client (and Python / Node batch handlers when
//!    their packages are installed), plus the server's CPU time per million records.
//! 2. kinesalite end to end: records/s through the server vs. a direct read, and
//!    put-to-handler latency p50/p99 vs. a direct polling loop.
//! 3. Cost: server resident memory with 1,000 leased shards idle, and store operations
//!    per second per shard in steady state (Redis store).
//! 4. DynamoDB cost: writes per shard per second in steady state with the `dynamodb://`
//!    store on dynalite (counted by a proxy), against KCL's one renewal per lease every
//!    ~3.3 s.
//! 5. Scale: 10,000 shards on the in-memory source, 3 instances, 30 sessions, on Redis and
//!    PostgreSQL: converge, join, leave, cross-instance handoff, RSS, idle CPU and store
//!    commands per shard per second, against the targets (`bench --only scale --shards N`
//!    for a quick run).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use clap::Parser;
use kinesis_butler_bench::fake_kinesis::{self, FakeStream};
use kinesis_butler_bench::process::Server;
use kinesis_butler_client::{Batch, Consumer, ConsumerOptions, HandlerError};

// One allocator for everything this binary measures: the source, the direct read loop and
// the Rust reader process (the server and the bindings use mimalloc too).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Kinesis Butler benchmarks")]
struct Args {
    /// Directory of the release binaries (kinesis-butler).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// kinesalite endpoint.
    #[arg(long, default_value = "http://127.0.0.1:4620")]
    kinesalite: String,
    /// Records per relay run, of each record size (100 B and 1 KB).
    #[arg(long, default_value_t = 1_000_000)]
    relay_records: usize,
    /// Shards of the relay source (the server reads each at most 5 times a second).
    #[arg(long, default_value_t = 16)]
    relay_shards: usize,
    /// Runs of each relay reader; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    /// Python interpreter with the kinesis_butler package installed (skipped if absent).
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// Where the table is written.
    #[arg(long, default_value = "bench-results/bench.md")]
    out: PathBuf,
    /// dynalite endpoint (the DynamoDB store's cost section).
    #[arg(long, default_value = "127.0.0.1:4630")]
    dynalite: String,
    /// Shards of the scale section's stream.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    shards: u64,
    /// Server instances of the scale section.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Sessions of the scale section (one more joins).
    #[arg(long, default_value_t = 30)]
    sessions: usize,
    /// Stores of the scale section (redis, postgres).
    #[arg(long, value_delimiter = ',', default_value = "redis,postgres")]
    scale_stores: Vec<String>,
    /// PostgreSQL server for the scale section (a database of its own is created).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    /// Only run these sections (relay, kinesalite, cost, dynamodb, scale); all when empty.
    #[arg(long)]
    only: Vec<String>,
    /// Internal: be the Rust reader process (`--read ENDPOINT,APP,STREAM,EXPECT`), like
    /// the Python and Node readers, so that no reader shares a process with the source.
    #[arg(long, hide = true)]
    read: Option<String>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

/// The first iterator of a shard.
async fn shard_iterator(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shard: &str,
    kind: ShardIteratorType,
) -> Result<String> {
    let out = client.get_shard_iterator().stream_name(stream).shard_id(shard).shard_iterator_type(kind).send().await?;
    Ok(out.shard_iterator.unwrap_or_default())
}

/// Counts records as they arrive. The rate is steady-state: records after the first batch
/// over the time from the first batch to the last, so that one-off start-up work (leases,
/// connections, iterators) is reported apart, as the time to the first record.
struct Progress {
    started: Instant,
    first: Option<(Instant, usize)>,
    last: Instant,
    count: usize,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Self { started: now, first: None, last: now, count: 0 }
    }

    /// Records `n` records that just arrived; returns the total so far.
    fn add(&mut self, n: usize) -> usize {
        if n > 0 {
            let now = Instant::now();
            self.first.get_or_insert((now, n));
            self.last = now;
            self.count += n;
        }
        self.count
    }

    /// (steady-state records/s, seconds to the first record).
    fn rate(&self) -> Result<(f64, f64)> {
        let Some((first, first_n)) = self.first else { bail!("no record arrived") };
        let secs = (self.last - first).as_secs_f64();
        if secs <= 0.0 {
            bail!("every record came in one batch; read more records");
        }
        Ok(((self.count - first_n) as f64 / secs, (first - self.started).as_secs_f64()))
    }
}

/// Reads every shard of `stream` to its current end with GetRecords, at most 5 calls a
/// second per shard as Kinesis allows; returns (steady-state records/s, seconds to the
/// first record).
async fn direct_read(client: &aws_sdk_kinesis::Client, stream: &str, expect: usize) -> Result<(f64, f64)> {
    let shards = client.list_shards().stream_name(stream).send().await?;
    let progress = Arc::new(Mutex::new(Progress::new()));
    let mut tasks = Vec::new();
    for shard in shards.shards() {
        let (client, stream, shard, progress) =
            (client.clone(), stream.to_owned(), shard.shard_id().to_owned(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut it = shard_iterator(&client, &stream, &shard, ShardIteratorType::TrimHorizon).await?;
            loop {
                let call = Instant::now();
                let out = client.get_records().shard_iterator(&it).limit(10_000).send().await?;
                progress.lock().expect("progress").add(out.records().len());
                if out.records().is_empty() && out.millis_behind_latest().unwrap_or(0) == 0 {
                    return Ok::<_, anyhow::Error>(());
                }
                it = out.next_shard_iterator.unwrap_or_default();
                tokio::time::sleep_until((call + Duration::from_millis(200)).into()).await;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let progress = progress.lock().expect("progress");
    if progress.count < expect {
        bail!("direct read got {} of {expect} records", progress.count);
    }
    progress.rate()
}

/// Reads `expect` records through the server with the Rust client in a process of its
/// own (this binary with `--read`); returns its [`Reading`] and the server's CPU seconds.
fn rust_client_read(server: &Server, stream: &str, expect: usize, app: &str) -> Result<(Reading, f64)> {
    let cpu_before = server.cpu_seconds();
    let reading = script_read(
        Command::new(std::env::current_exe()?)
            .arg("--read")
            .arg(format!("{},{app},{stream},{expect}", server.endpoint)),
    )?;
    Ok((reading, server.cpu_seconds() - cpu_before))
}

/// The `--read` process: reads `expect` records with a Rust batch handler and prints
/// `records_per_sec=` and `first_record_secs=` (see [`Progress`]).
async fn rust_reader(spec: &str) -> Result<()> {
    let [endpoint, app, stream, expect] = spec.split(',').collect::<Vec<_>>()[..] else {
        bail!("--read ENDPOINT,APP,STREAM,EXPECT");
    };
    let expect: usize = expect.parse()?;
    let options =
        ConsumerOptions { max_records_per_batch: 10_000, shard_queue_batches: 8, ..ConsumerOptions::default() };
    let consumer = Consumer::new(endpoint, app, [stream.to_owned()], options)?;
    let stop = consumer.stop_token();
    let progress = Arc::new(Mutex::new(Progress::new()));
    let p = progress.clone();
    let handler = move |batch: Batch| {
        let bytes: usize = batch.records().iter().map(|r| r.data.len()).sum();
        std::hint::black_box(bytes);
        if p.lock().expect("progress").add(batch.records().len()) >= expect {
            stop.cancel();
        }
        async { Ok::<(), HandlerError>(()) }
    };
    tokio::time::timeout(Duration::from_secs(600), consumer.run(handler)).await.context("read timed out")??;
    let progress = progress.lock().expect("progress");
    if progress.count < expect {
        bail!("read {} of {expect} records", progress.count);
    }
    let (rps, first) = progress.rate()?;
    println!("records_per_sec={rps:.1}");
    println!("first_record_secs={first:.3}");
    Ok(())
}

/// Reads `expect` records of `stream` with the Python and the Node batch handlers
/// (`bindings/*/bench.*`, each under its own app so each reads every record), when
/// their packages are built; returns each language's [`Reading`].
fn binding_reads(args: &Args, endpoint: &str, stream: &str, expect: usize) -> Result<Vec<(&'static str, Reading)>> {
    let mut out = Vec::new();
    let expect = expect.to_string();
    let common = ["--endpoint", endpoint, "--stream", stream, "--expect", &expect];
    if args.python.exists() && Path::new("bindings/python/bench.py").exists() {
        let rps = script_read(
            Command::new(&args.python)
                .arg("bindings/python/bench.py")
                .args(common)
                .args(["--app", &format!("python-{}", now_ms())]),
        )?;
        out.push(("Python", rps));
    }
    let node_addon_built = std::fs::read_dir("bindings/node")
        .map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "node")))
        .unwrap_or(false);
    if node_addon_built && Path::new("bindings/node/bench.js").exists() {
        let rps = script_read(
            Command::new("node")
                .arg("bindings/node/bench.js")
                .args(common)
                .args(["--app", &format!("node-{}", now_ms())]),
        )?;
        out.push(("Node", rps));
    }
    Ok(out)
}

/// What a reader measured: steady-state records/s and seconds to the first record.
type Reading = (f64, f64);

/// The run with the median records/s.
fn median(mut runs: Vec<Reading>) -> Reading {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs[runs.len() / 2]
}

/// Runs a reader process; it prints `records_per_sec=<float>` and `first_record_secs=<float>`.
fn script_read(cmd: &mut Command) -> Result<Reading> {
    let out = cmd.stderr(Stdio::inherit()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("bench script failed: {text}");
    }
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("no {key} line in the reader's output"))
    };
    Ok((value("records_per_sec=")?, value("first_record_secs=")?))
}

struct Row {
    section: &'static str,
    what: String,
    value: String,
    baseline: String,
    ratio: String,
}

fn row(section: &'static str, what: impl Into<String>, value: String, baseline: String, ratio: String) -> Row {
    let what = what.into();
    // Progress as it is measured, so a later failure does not hide earlier figures.
    eprintln!("[{section}] {what}: {value} (baseline {baseline}, ratio {ratio})");
    Row { section, what, value, baseline, ratio }
}

async fn relay(args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    for size in [100usize, 1024] {
        let per_shard = args.relay_records / args.relay_shards;
        let total = per_shard * args.relay_shards;
        let stream = Arc::new(FakeStream::new("relay", args.relay_shards, per_shard, size).await?);
        let (addr, source) = fake_kinesis::serve(stream, "127.0.0.1:0".parse()?).await?;
        let endpoint = format!("http://{addr}");
        let mut directs = Vec::new();
        for _ in 0..args.runs {
            directs.push(direct_read(&kinesis_client(&endpoint), "relay", total).await?);
        }
        let (direct, direct_first) = median(directs);
        let mb = |rps: f64| rps * size as f64 / 1e6;
        rows.push(row(
            "relay",
            format!("direct aws-sdk-kinesis read, {size} B"),
            format!("{direct:.0} rec/s ({:.1} MB/s)", mb(direct)),
            "-".into(),
            "1.00".into(),
        ));

        let dir = tempfile_dir()?;
        let store = format!("sqlite://{}/relay.db", dir.display());
        let server =
            Server::start(&args.bin_dir, &endpoint, &store, &["--batch-size", "10000", "--idle-interval", "200ms"])
                .await?;
        // Readings per reader, in table order: the Rust client, then each binding.
        let mut runs: Vec<(String, Vec<Reading>)> = vec![("Rust client".into(), Vec::new())];
        let mut cpu = 0.0;
        for _ in 0..args.runs {
            let (rust, run_cpu) = rust_client_read(&server, "relay", total, &format!("rust-{}", now_ms()))?;
            let mut these = vec![("Rust client".to_owned(), rust)];
            cpu += run_cpu / f64::from(args.runs);
            these.extend(
                binding_reads(args, &server.endpoint, "relay", total)?
                    .into_iter()
                    .map(|(lang, reading)| (format!("{lang} batch handler"), reading)),
            );
            for (who, reading) in these {
                match runs.iter_mut().find(|(w, _)| *w == who) {
                    Some((_, v)) => v.push(reading),
                    None => runs.push((who, vec![reading])),
                }
            }
        }
        let readings: Vec<(String, Reading)> = runs.into_iter().map(|(who, v)| (who, median(v))).collect();
        for (who, (rps, _)) in &readings {
            rows.push(row(
                "relay",
                format!("server → {who}, {size} B"),
                format!("{rps:.0} rec/s ({:.1} MB/s)", mb(*rps)),
                format!("{direct:.0}"),
                format!("{:.2}", rps / direct),
            ));
        }
        rows.push(row(
            "relay",
            format!("server CPU per million records, {size} B"),
            format!("{:.2} s", cpu / (total as f64 / 1e6)),
            "-".into(),
            "-".into(),
        ));
        let firsts: Vec<String> = readings.iter().map(|(who, (_, first))| format!("{who} {first:.2} s")).collect();
        rows.push(row(
            "relay",
            format!("time to first record (start-up, not in the rates), {size} B"),
            firsts.join(" / "),
            format!("{direct_first:.2} s"),
            "-".into(),
        ));
        drop(server);
        source.abort();
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("kb-bench-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn create_stream(client: &aws_sdk_kinesis::Client, name: &str, shards: i32) -> Result<()> {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .context("CreateStream on kinesalite (scripts/emulators.sh start)")?;
    for _ in 0..300 {
        let d = client.describe_stream_summary().stream_name(name).send().await?;
        if d.stream_description_summary().map(|s| s.stream_status().as_str()) == Some("ACTIVE") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("stream not ACTIVE")
}

/// Puts `count` 100-byte records, each starting with its put time in ms.
async fn put_timed(client: &aws_sdk_kinesis::Client, stream: &str, count: usize, per_sec: usize) -> Result<()> {
    let per_tick = (per_sec / 20).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut sent = 0;
    while sent < count {
        tick.tick().await;
        let n = per_tick.min(count - sent);
        let entries = (0..n)
            .map(|i| {
                let mut data = format!("{}|{}|", now_ms(), sent + i).into_bytes();
                data.resize(100, b'.');
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{}", sent + i))
                    .data(Blob::new(data))
                    .build()
                    .expect("entry")
            })
            .collect::<Vec<_>>();
        // PutRecords takes at most 500 records.
        for chunk in entries.chunks(500) {
            client.put_records().stream_name(stream).set_records(Some(chunk.to_vec())).send().await?;
        }
        sent += n;
    }
    Ok(())
}

fn put_time(data: &[u8]) -> Option<i64> {
    std::str::from_utf8(data.split(|b| *b == b'|').next()?).ok()?.parse().ok()
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0)
}

async fn kinesalite(args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    let client = kinesis_client(&args.kinesalite);
    let stream = format!("bench-{}", now_ms());
    create_stream(&client, &stream, 4).await?;
    let total = 100_000;
    put_timed(&client, &stream, total, 20_000).await?;
    let (direct, _) = direct_read(&client, &stream, total).await?;
    rows.push(row("kinesalite", "direct read, 100 B", format!("{direct:.0} rec/s"), "-".into(), "1.00".into()));
    let dir = tempfile_dir()?;
    let server = Server::start(
        &args.bin_dir,
        &args.kinesalite,
        &format!("sqlite://{}/k.db", dir.display()),
        &["--batch-size", "10000", "--idle-interval", "200ms"],
    )
    .await?;
    let ((through, _), _) = rust_client_read(&server, &stream, total, &format!("rust-{}", now_ms()))?;
    rows.push(row(
        "kinesalite",
        "server → Rust client, 100 B",
        format!("{through:.0} rec/s"),
        format!("{direct:.0}"),
        format!("{:.2}", through / direct),
    ));
    for (lang, (rps, _)) in binding_reads(args, &server.endpoint, &stream, total)? {
        rows.push(row(
            "kinesalite",
            format!("server → {lang} batch handler, 100 B"),
            format!("{rps:.0} rec/s"),
            format!("{direct:.0}"),
            format!("{:.2}", rps / direct),
        ));
    }

    // Latency: records put at a steady rate while each reader runs, measured put → handler.
    let lat_stream = format!("latency-{}", now_ms());
    create_stream(&client, &lat_stream, 2).await?;
    let direct_lat = {
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let reader = tokio::spawn(poll_latency(client.clone(), lat_stream.clone(), latencies.clone()));
        put_timed(&client, &lat_stream, 2_000, 400).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        reader.abort();
        let mut v = latencies.lock().expect("lat").clone();
        v.sort_unstable();
        v
    };
    let server_lat = {
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let options =
            ConsumerOptions { start: kinesis_butler_client::StartPosition::Latest, ..ConsumerOptions::default() };
        let consumer = Arc::new(Consumer::new(server.endpoint.clone(), "latency", [lat_stream.clone()], options)?);
        let l = latencies.clone();
        let handler = move |batch: Batch| {
            let now = now_ms();
            let mut l = l.lock().expect("lat");
            l.extend(batch.records().iter().filter_map(|r| put_time(&r.data)).map(|t| now - t));
            async { Ok::<(), HandlerError>(()) }
        };
        let (c2, stop) = (consumer.clone(), consumer.stop_token());
        let run = tokio::spawn(async move { c2.run(handler).await });
        // Wait until the consumer holds both shards before putting.
        tokio::time::sleep(Duration::from_secs(3)).await;
        put_timed(&client, &lat_stream, 2_000, 400).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
        let _ = run.await;
        let mut v = latencies.lock().expect("lat").clone();
        v.sort_unstable();
        v
    };
    for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (s, d) = (percentile(&server_lat, p), percentile(&direct_lat, p));
        rows.push(row(
            "kinesalite",
            format!("put → handler latency {name}"),
            format!("{s} ms"),
            format!("{d} ms"),
            format!("{:.2}", s as f64 / d.max(1) as f64),
        ));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// A direct polling loop (200 ms between calls when caught up, like the server's
/// `--idle-interval 200ms`) recording put → receive latency.
async fn poll_latency(client: aws_sdk_kinesis::Client, stream: String, out: Arc<Mutex<Vec<i64>>>) -> Result<()> {
    let shards = client.list_shards().stream_name(&stream).send().await?;
    let mut tasks = Vec::new();
    for shard in shards.shards() {
        let (client, stream, shard, out) = (client.clone(), stream.clone(), shard.shard_id().to_owned(), out.clone());
        tasks.push(tokio::spawn(async move {
            let mut it = shard_iterator(&client, &stream, &shard, ShardIteratorType::Latest).await?;
            loop {
                let call = Instant::now();
                let page = client.get_records().shard_iterator(&it).limit(10_000).send().await?;
                let now = now_ms();
                out.lock()
                    .expect("lat")
                    .extend(page.records().iter().filter_map(|r| put_time(r.data().as_ref())).map(|t| now - t));
                it = page.next_shard_iterator.unwrap_or_default();
                tokio::time::sleep_until((call + Duration::from_millis(200)).into()).await;
            }
            #[allow(unreachable_code)]
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// What Redis receives for `window`: commands sent by clients (round trips) and every
/// command it runs, including those inside Lua scripts (`MONITOR` tags those `lua`).
async fn redis_traffic(window: Duration) -> Result<(u64, u64)> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "monitor"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("redis-cli monitor")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("monitor output")?).lines();
    let (mut round_trips, mut all) = (0u64, 0u64);
    let _ = tokio::time::timeout(window, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with(|c: char| c.is_ascii_digit()) {
                all += 1;
                round_trips += u64::from(!line.contains(" lua] "));
            }
        }
    })
    .await;
    child.kill().await?;
    Ok((round_trips, all))
}

/// Waits (up to `within`) until every one of `shards` leases of the app and stream has an owner.
async fn wait_leased(endpoint: &str, app: &str, stream: &str, shards: usize, within: Duration) -> Result<()> {
    let mut client = kinesis_butler_proto::butler_client::ButlerClient::connect(endpoint.to_owned()).await?;
    let deadline = Instant::now() + within;
    loop {
        let request = kinesis_butler_proto::DescribeLeasesRequest { app: app.into(), stream: stream.into() };
        let d = client.describe_leases(request).await?.into_inner();
        if d.leases.iter().filter(|l| !l.owner.is_empty()).count() == shards {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{shards} shards of {stream} not leased within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn cost(args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    let shards = 1000;
    let stream = Arc::new(FakeStream::new("idle", shards, 0, 100).await?);
    let (addr, source) = fake_kinesis::serve(stream, "127.0.0.1:0".parse()?).await?;
    let prefix = format!("kbbench{}", now_ms());
    let store = format!("redis://127.0.0.1:6379/?prefix={prefix}");
    let server = Server::start(&args.bin_dir, &format!("http://{addr}"), &store, &["--idle-interval", "1s"]).await?;
    let consumer =
        Arc::new(Consumer::new(server.endpoint.clone(), "idle", ["idle".to_owned()], ConsumerOptions::default())?);
    let stop = consumer.stop_token();
    let c2 = consumer.clone();
    let run = tokio::spawn(async move { c2.run(|_b: Batch| async { Ok::<(), HandlerError>(()) }).await });
    wait_leased(&server.endpoint, "idle", "idle", shards, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = server.rss_mib();
    let window = 10.0;
    let (round_trips, commands) = redis_traffic(Duration::from_secs_f64(window)).await?;
    let per_shard = |n: u64| n as f64 / window / shards as f64;
    rows.push(row("cost", "server RSS, 1,000 leased shards idle", format!("{rss:.0} MiB"), "-".into(), "-".into()));
    rows.push(row(
        "cost",
        "store round trips per second per shard (Redis, steady state)",
        format!("{:.4}", per_shard(round_trips)),
        "-".into(),
        "-".into(),
    ));
    rows.push(row(
        "cost",
        "Redis commands per second per shard, incl. inside Lua scripts",
        format!("{:.2}", per_shard(commands)),
        "-".into(),
        "-".into(),
    ));
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), run).await;
    drop(server);
    source.abort();
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!(
                "redis-cli -h 127.0.0.1 --scan --pattern '{prefix}*' | xargs -r redis-cli -h 127.0.0.1 DEL >/dev/null"
            ),
        ])
        .status();
    Ok(())
}

/// A TCP proxy in front of dynalite that counts DynamoDB requests by operation (the
/// `X-Amz-Target` header of each HTTP request the server sends).
async fn counting_proxy(
    upstream: String,
) -> Result<(std::net::SocketAddr, Arc<Mutex<std::collections::BTreeMap<String, u64>>>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counts: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (counts, upstream) = (c.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut carry = String::new();
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        carry.push_str(&String::from_utf8_lossy(&buf[..n]));
                        let lower = carry.to_ascii_lowercase();
                        let mut last = 0;
                        for (i, _) in lower.match_indices("x-amz-target:") {
                            if let Some(end) = carry[i..].find("\r\n") {
                                let op = carry[i + 13..i + end].trim().rsplit('.').next().unwrap_or("").to_owned();
                                *counts.lock().expect("counts").entry(op).or_default() += 1;
                                last = i + end;
                            }
                        }
                        // Keep a tail that may hold a header cut by the read.
                        let keep_from = last.max(carry.len().saturating_sub(256));
                        carry = carry.get(keep_from..).unwrap_or("").to_owned();
                    }
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Ok((addr, counts))
}

async fn cost_dynamodb(args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    let shards = 1000;
    let stream = Arc::new(FakeStream::new("idle-dynamo", shards, 0, 100).await?);
    let (addr, source) = fake_kinesis::serve(stream, "127.0.0.1:0".parse()?).await?;
    let (proxy, counts) = counting_proxy(args.dynalite.clone()).await?;
    let table = format!("kbbench-{}", now_ms());
    // The server inherits the endpoint.
    std::env::set_var("AWS_ENDPOINT_URL_DYNAMODB", format!("http://{proxy}"));
    let store = format!("dynamodb://{table}");
    let server = Server::start(&args.bin_dir, &format!("http://{addr}"), &store, &["--idle-interval", "1s"]).await?;
    let app = "idle-dynamo";
    let consumer =
        Arc::new(Consumer::new(server.endpoint.clone(), app, ["idle-dynamo".to_owned()], ConsumerOptions::default())?);
    let stop = consumer.stop_token();
    let c2 = consumer.clone();
    let run = tokio::spawn(async move { c2.run(|_b: Batch| async { Ok::<(), HandlerError>(()) }).await });
    wait_leased(&server.endpoint, app, "idle-dynamo", shards, Duration::from_secs(300)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window = 20.0;
    let before = counts.lock().expect("counts").clone();
    tokio::time::sleep(Duration::from_secs_f64(window)).await;
    let after = counts.lock().expect("counts").clone();
    let delta = |ops: &[&str]| -> u64 {
        ops.iter().map(|op| after.get(*op).copied().unwrap_or(0) - before.get(*op).copied().unwrap_or(0)).sum()
    };
    let writes = delta(&["PutItem", "UpdateItem", "DeleteItem"]);
    let reads = delta(&["GetItem", "Query"]);
    let per_shard = writes as f64 / window / shards as f64;
    let kcl = 1.0 / 3.3;
    rows.push(row(
        "dynamodb",
        "DynamoDB writes per second per shard (1,000 leased shards idle, one session)",
        format!("{per_shard:.4}"),
        format!("{kcl:.2} (KCL default renewals)"),
        format!("{:.4}", per_shard / kcl),
    ));
    rows.push(row(
        "dynamodb",
        "DynamoDB reads per second (GetItem + Query, whole server)",
        format!("{:.1}", reads as f64 / window),
        "-".into(),
        "-".into(),
    ));
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), run).await;
    drop(server);
    source.abort();
    // Drop the table (through the proxy: it counts no more).
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("bench", "bench", None, None, "bench"))
        .endpoint_url(format!("http://{}", args.dynalite))
        .build();
    let _ = aws_sdk_dynamodb::Client::from_conf(config).delete_table().table_name(&table).send().await;
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cores} cores, {cpu}")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(spec) = &args.read {
        return rust_reader(spec).await;
    }
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let mut rows = Vec::new();
    if want("relay") {
        relay(&args, &mut rows).await?;
    }
    if want("kinesalite") {
        kinesalite(&args, &mut rows).await?;
    }
    if want("cost") {
        cost(&args, &mut rows).await?;
    }
    if want("dynamodb") {
        cost_dynamodb(&args, &mut rows).await?;
    }
    if want("scale") {
        for store in &args.scale_stores {
            let scale = kinesis_butler_bench::scale::ScaleArgs {
                bin_dir: args.bin_dir.clone(),
                shards: args.shards as usize,
                instances: args.instances.max(1),
                sessions: args.sessions.max(1),
                records_per_shard: 1,
                store: store.clone(),
                postgres: args.postgres.clone(),
                window: Duration::from_secs(10),
            };
            for f in kinesis_butler_bench::scale::run(&scale).await? {
                rows.push(Row { section: "scale", what: f.what, value: f.value, baseline: f.target, ratio: f.ratio });
            }
        }
    }
    let mut table = format!(
        "Machine: {}\n\n| section | measurement | value | baseline | ratio |\n|---|---|---|---|---|\n",
        machine()
    );
    for r in &rows {
        table.push_str(&format!("| {} | {} | {} | {} | {} |\n", r.section, r.what, r.value, r.baseline, r.ratio));
    }
    println!("{table}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &table)?;
    Ok(())
}
