//! The fault suite (`make faults`; a normal test, so `make test` runs it too).
//!
//! A producer puts numbered records (`rec-<n>`) into a 4-shard stream on kinesis-local
//! while consumer processes — this test binary run again as `consumer_process`, each a
//! `kinesis-butler-client` Consumer on one of two server instances — append every record
//! they handle to a file of their own before returning, so a checkpoint always follows a
//! durable write. Meanwhile faults are injected in turn, at least 24 of them:
//!
//! - a server instance (of two) is SIGKILLed and started again on the same port;
//! - a consumer process is SIGKILLed and a new one started;
//! - Redis (a private `redis-server` with an append-only file fsynced on every write)
//!   is stopped — SIGTERM or SIGKILL in turn — and started again on the same port with
//!   the same data;
//! - the connection from both servers to the emulator (a TCP proxy) is cut for 2 s.
//!
//! A monitor polls DescribeLeases every 100 ms and checks that no lease's checkpoint or
//! epoch ever moves backwards. At the end every record put must be in the consumers'
//! output at least once, as the record that was put (same shard and sequence number);
//! duplicates are counted and reported, with how long delivery took to recover.
//!
//! The servers' and consumers' logs and the consumers' output are kept under
//! `$CARGO_TARGET_TMPDIR/fault_suite/` when the suite fails (or `KB_FAULT_KEEP` is set).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::driver::{figure, Producer};
use common::private_redis::PrivateRedis;
use common::tcp_proxy::Proxy;
use common::*;
use kinesis_butler_client::{BackoffSettings, Batch, Consumer, ConsumerOptions, HandlerError};
use kinesis_butler_proto as pb;
use pb::butler_client::ButlerClient;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const APP: &str = "faults";
const SHARDS: i32 = 4;
const CONSUMERS: usize = 3;
const FAULTS: usize = 24;
/// Quiet time between two faults.
const FAULT_GAP: Duration = Duration::from_millis(1500);
/// The producer puts this many records every 100 ms (100 records/s).
const PER_TICK: usize = 10;
/// A bound on the records put (kinesis-local slows down past ~10k records a stream).
const MAX_RECORDS: usize = 10_000;

/// How long a consumer's handler takes per batch after writing it.
const PROCESSING: Duration = Duration::from_millis(50);

// What a consumer process is told, by environment variables.
const ENV_ENDPOINT: &str = "KB_FAULT_CONSUMER_ENDPOINT";
const ENV_STREAM: &str = "KB_FAULT_CONSUMER_STREAM";
const ENV_OUTPUT: &str = "KB_FAULT_CONSUMER_OUTPUT";
const ENV_NAME: &str = "KB_FAULT_CONSUMER_NAME";

/// A consumer process of `fault_suite_loses_nothing` (this binary run again with
/// `consumer_process --exact --ignored`); returns at once when not started by it.
/// Appends `<shard> <sequence number> <data>` per record to its output file before the
/// handler returns, so a checkpoint always follows the write. Exits when its parent's
/// end of stdin closes, so it never outlives the suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a consumer process of the fault suite, started by it"]
async fn consumer_process() -> Result<()> {
    let Ok(endpoint) = std::env::var(ENV_ENDPOINT) else { return Ok(()) };
    let stream = std::env::var(ENV_STREAM).context(ENV_STREAM)?;
    let output = std::env::var(ENV_OUTPUT).context(ENV_OUTPUT)?;
    let name = std::env::var(ENV_NAME).context(ENV_NAME)?;
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });

    let options = ConsumerOptions {
        client_name: name,
        reconnect_backoff: BackoffSettings { initial: Duration::from_millis(100), max: Duration::from_secs(1) },
        max_reconnect_attempts: None,
        max_initial_connect_attempts: None,
        request_timeout: Duration::from_secs(5),
        ..ConsumerOptions::default()
    };
    let consumer = Consumer::new(endpoint, APP, [stream], options)?;
    let file = Arc::new(Mutex::new(OpenOptions::new().create(true).append(true).open(&output)?));
    consumer
        .run(move |batch: Batch| {
            let file = file.clone();
            async move {
                let mut lines = String::new();
                for r in batch.records() {
                    let data = String::from_utf8_lossy(&r.data);
                    writeln!(lines, "{} {} {data}", batch.shard_id(), r.sequence_number).expect("format");
                }
                // One write per batch; the OS keeps it when this process is killed.
                file.lock().expect("output lock").write_all(lines.as_bytes())?;
                // Processing time: a kill often lands between the write and the
                // checkpoint, so redelivery after a crash is exercised too.
                tokio::time::sleep(PROCESSING).await;
                Ok::<(), HandlerError>(())
            }
        })
        .await?;
    Ok(())
}

/// A consumer process, SIGKILLed on drop.
struct ConsumerProcess {
    name: String,
    log: PathBuf,
    child: Child,
    /// Held open: the process exits when it closes (the suite went away).
    _stdin: ChildStdin,
}

impl ConsumerProcess {
    fn spawn(dir: &Path, name: &str, endpoint: &str, stream: &str) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let mut child = Command::new(std::env::current_exe()?)
            .args(["consumer_process", "--exact", "--ignored", "--nocapture"])
            .env(ENV_ENDPOINT, endpoint)
            .env(ENV_STREAM, stream)
            .env(ENV_OUTPUT, dir.join(format!("{name}.out")))
            .env(ENV_NAME, name)
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning a consumer process")?;
        let stdin = child.stdin.take().context("consumer stdin")?;
        Ok(Self { name: name.into(), log, child, _stdin: stdin })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ServerKill,
    ConsumerKill,
    RedisRestart,
    EmulatorCut,
}

const KINDS: [Kind; 4] = [Kind::ServerKill, Kind::ConsumerKill, Kind::RedisRestart, Kind::EmulatorCut];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ServerKill => "server_kill",
            Kind::ConsumerKill => "consumer_kill",
            Kind::RedisRestart => "redis_restart",
            Kind::EmulatorCut => "emulator_cut",
        }
    }
}

/// One injected fault; `ended` is when the faulty part was back (restarted, restored).
struct Fault {
    kind: Kind,
    ended: Instant,
}

/// Everything the suite runs: the store, the emulator proxy, two servers, the consumers.
struct Cluster {
    dir: PathBuf,
    stream: String,
    redis: PrivateRedis,
    proxy: Proxy,
    ports: [u16; 2],
    servers: [Option<TestServer>; 2],
    server_starts: usize,
    consumers: Vec<ConsumerProcess>,
    consumer_starts: usize,
}

impl Cluster {
    fn endpoint(&self, server: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[server])
    }

    async fn start_server(&mut self, i: usize) -> Result<()> {
        self.server_starts += 1;
        let log = self.dir.join(format!("server-{i}-{}.log", self.server_starts));
        let kinesis = format!("http://127.0.0.1:{}", self.proxy.port);
        let server = TestServer::start_via(self.ports[i], &self.redis.url(), &kinesis, &["--lease-ttl", "3s"], &log)
            .await
            .with_context(|| format!("starting server {i} (log {})", log.display()))?;
        self.servers[i] = Some(server);
        Ok(())
    }

    /// Starts the consumer of `slot` (a new process with a new output file), on server
    /// `slot % 2`.
    fn start_consumer(&mut self, slot: usize) -> Result<()> {
        self.consumer_starts += 1;
        let name = format!("consumer-{slot}-{}", self.consumer_starts);
        let process = ConsumerProcess::spawn(&self.dir, &name, &self.endpoint(slot % 2), &self.stream)?;
        if slot < self.consumers.len() {
            self.consumers[slot] = process;
        } else {
            self.consumers.push(process);
        }
        Ok(())
    }

    /// Fails when a server or a consumer exited on its own.
    fn check_alive(&mut self) -> Result<()> {
        for (i, server) in self.servers.iter_mut().enumerate() {
            let server = server.as_mut().with_context(|| format!("server {i} is not running"))?;
            if let Some(status) = server.child.try_wait()? {
                bail!("server {i} exited on its own: {status} (logs in {})", self.dir.display());
            }
        }
        for c in &mut self.consumers {
            if let Some(status) = c.child.try_wait()? {
                let log = std::fs::read_to_string(&c.log).unwrap_or_default();
                bail!("{} exited on its own: {status}; its log:\n{log}", c.name);
            }
        }
        Ok(())
    }

    /// Injects the `n`th fault of its kind; returns when the faulty part is back.
    async fn inject(&mut self, kind: Kind, n: usize) -> Result<()> {
        match kind {
            Kind::ServerKill => {
                let i = n % 2;
                if let Some(mut server) = self.servers[i].take() {
                    server.kill();
                }
                tokio::time::sleep(Duration::from_secs(1)).await; // the outage itself
                self.start_server(i).await?;
            }
            Kind::ConsumerKill => {
                let slot = n % self.consumers.len();
                self.consumers[slot].kill();
                self.start_consumer(slot)?;
            }
            Kind::RedisRestart => {
                if n.is_multiple_of(2) {
                    self.redis.stop().await?;
                } else {
                    self.redis.kill();
                }
                tokio::time::sleep(Duration::from_millis(1500)).await; // the outage itself
                self.redis.restart().await?;
            }
            Kind::EmulatorCut => {
                self.proxy.cut().await?;
                tokio::time::sleep(Duration::from_secs(2)).await; // the outage itself
                self.proxy.restore().await?;
            }
        }
        Ok(())
    }
}

/// What the consumers wrote, read incrementally from their output files.
#[derive(Default)]
struct Received {
    /// Output lines read (deliveries, duplicates included).
    lines: usize,
    /// When each record number was first seen in an output file.
    first_seen: HashMap<usize, Instant>,
    /// The shard and sequence number each record number arrived as.
    identity: HashMap<usize, (String, String)>,
    /// (when, how many records the producer had put by then), every 100 ms.
    put_samples: Vec<(Instant, usize)>,
    /// Bytes of complete lines already read, per output file.
    offsets: HashMap<PathBuf, u64>,
    problems: Vec<String>,
}

impl Received {
    fn problem(&mut self, text: String) {
        if self.problems.len() < 20 {
            self.problems.push(text);
        }
    }

    /// Reads the complete lines appended to every output file since the last scan.
    fn scan(&mut self, dir: &Path) -> Result<()> {
        let now = Instant::now();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("out") {
                continue;
            }
            let offset = self.offsets.get(&path).copied().unwrap_or(0);
            let mut file = File::open(&path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf)?;
            // A process killed in the middle of a write leaves a partial last line:
            // only complete lines count (that batch was never checkpointed).
            let Some(end) = buf.iter().rposition(|b| *b == b'\n') else { continue };
            self.offsets.insert(path, offset + end as u64 + 1);
            for line in buf[..end].split(|b| *b == b'\n') {
                self.line(&String::from_utf8_lossy(line), now);
            }
        }
        Ok(())
    }

    fn line(&mut self, text: &str, now: Instant) {
        self.lines += 1;
        let mut parts = text.split(' ');
        let number = |data: Option<&str>| data.and_then(|d| d.strip_prefix("rec-")).and_then(|n| n.parse().ok());
        match (parts.next(), parts.next(), number(parts.next()), parts.next()) {
            (Some(shard), Some(seq), Some(n), None) => {
                self.first_seen.entry(n).or_insert(now);
                let id = (shard.to_owned(), seq.to_owned());
                match self.identity.get(&n) {
                    None => {
                        self.identity.insert(n, id);
                    }
                    Some(first) if *first != id => {
                        let text = format!("rec-{n} arrived as {first:?} and as {id:?}");
                        self.problem(text);
                    }
                    Some(_) => {}
                }
            }
            _ => self.problem(format!("malformed output line {text:?}")),
        }
    }

    /// When record `n` was put, to the 100 ms of the samples.
    fn put_at(&self, n: usize) -> Option<Instant> {
        let i = self.put_samples.partition_point(|(_, count)| *count <= n);
        self.put_samples.get(i).map(|(t, _)| *t)
    }

    /// How long after `ended` every record put by then was in the output.
    fn recovery(&self, ended: Instant) -> Duration {
        let put = self.put_samples.iter().take_while(|(t, _)| *t <= ended).last().map_or(0, |(_, n)| *n);
        (0..put)
            .filter_map(|n| self.first_seen.get(&n))
            .map(|seen| seen.saturating_duration_since(ended))
            .max()
            .unwrap_or_default()
    }
}

/// Every 100 ms: how many records were put, and what the consumers wrote.
async fn track(dir: PathBuf, put_count: impl Fn() -> usize, received: Arc<Mutex<Received>>, stop: CancellationToken) {
    loop {
        {
            let put = put_count();
            let mut r = received.lock().unwrap();
            r.put_samples.push((Instant::now(), put));
            if let Err(e) = r.scan(&dir) {
                r.problem(format!("reading the consumers' output: {e:#}"));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// What the lease monitor saw.
#[derive(Default)]
struct Watched {
    polls: usize,
    failed_polls: usize,
    /// shard → highest (epoch, checkpoint) seen.
    leases: BTreeMap<String, (u64, String)>,
    /// Leases with an owner at the last successful poll.
    owned: usize,
    checkpoint_moves: usize,
    /// Epochs or checkpoints seen moving backwards (the first 20 kept).
    regressions: usize,
    regression_examples: Vec<String>,
}

/// Orders checkpoints: none, then sequence numbers as decimals, then `SHARD_END`.
fn checkpoint_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let rank = |c: &str| match c {
        "" => 0,
        "SHARD_END" => 2,
        _ => 1,
    };
    rank(a).cmp(&rank(b)).then_with(|| if rank(a) == 1 { seq_cmp(a, b) } else { std::cmp::Ordering::Equal })
}

impl Watched {
    fn regression(&mut self, text: String) {
        self.regressions += 1;
        if self.regression_examples.len() < 20 {
            self.regression_examples.push(text);
        }
    }

    fn observe(&mut self, leases: Vec<pb::LeaseInfo>) {
        self.polls += 1;
        self.owned = leases.iter().filter(|l| !l.owner.is_empty()).count();
        for l in leases {
            let Some((epoch, checkpoint)) = self.leases.get(&l.shard_id).cloned() else {
                self.leases.insert(l.shard_id, (l.epoch, l.checkpoint));
                continue;
            };
            if l.epoch < epoch {
                self.regression(format!("shard {}: epoch went from {epoch} back to {}", l.shard_id, l.epoch));
            }
            match checkpoint_cmp(&l.checkpoint, &checkpoint) {
                std::cmp::Ordering::Less => self.regression(format!(
                    "shard {}: checkpoint went from {checkpoint:?} back to {:?}",
                    l.shard_id, l.checkpoint
                )),
                std::cmp::Ordering::Greater => self.checkpoint_moves += 1,
                std::cmp::Ordering::Equal => {}
            }
            let high = self.leases.get_mut(&l.shard_id).expect("seen");
            high.0 = high.0.max(l.epoch);
            if checkpoint_cmp(&l.checkpoint, &high.1).is_gt() {
                high.1 = l.checkpoint;
            }
        }
    }
}

/// Polls DescribeLeases every 100 ms on whichever server answers.
async fn watch_leases(addrs: Vec<String>, stream: String, watched: Arc<Mutex<Watched>>, stop: CancellationToken) {
    let clients: Vec<ButlerClient<Channel>> = addrs
        .iter()
        .map(|a| {
            let channel = Channel::from_shared(a.clone()).expect("server address");
            ButlerClient::new(channel.connect_timeout(Duration::from_millis(300)).connect_lazy())
        })
        .collect();
    let mut preferred = 0;
    loop {
        let mut answer = None;
        for k in 0..clients.len() {
            let i = (preferred + k) % clients.len();
            let req = pb::DescribeLeasesRequest { app: APP.into(), stream: stream.clone() };
            let mut client = clients[i].clone();
            if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(1), client.describe_leases(req)).await {
                answer = Some(d.into_inner().leases);
                preferred = i;
                break;
            }
        }
        {
            let mut w = watched.lock().unwrap();
            match answer {
                Some(leases) => w.observe(leases),
                None => w.failed_polls += 1,
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Stops a background task and waits for it (bounded).
async fn finish(stop: &CancellationToken, task: JoinHandle<()>, what: &str) -> Result<()> {
    stop.cancel();
    within(10, what, task).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite_loses_nothing() -> Result<()> {
    let began = Instant::now();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault_suite").join(unique("run"));
    std::fs::create_dir_all(dir.join("redis"))?;
    println!(
        "fault suite: logs and consumer output in {} (removed when the suite passes, unless KB_FAULT_KEEP is set)",
        dir.display()
    );
    run_suite(&dir, began).await?;
    if std::env::var_os("KB_FAULT_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

async fn run_suite(dir: &Path, began: Instant) -> Result<()> {
    let emulator = Emulator::KinesisLocal;
    let emulator_port: u16 = emulator.endpoint().rsplit(':').next().and_then(|p| p.parse().ok()).context("port")?;
    let kinesis = kinesis_client(emulator);
    let stream = unique("faults");
    create_stream(&kinesis, &stream, SHARDS).await?;

    let redis = PrivateRedis::start_persistent(&dir.join("redis")).await?;
    let proxy = Proxy::start(emulator_port).await?;
    let mut cluster = Cluster {
        dir: dir.to_owned(),
        stream: stream.clone(),
        redis,
        proxy,
        ports: [free_port(), free_port()],
        servers: [None, None],
        server_starts: 0,
        consumers: Vec::new(),
        consumer_starts: 0,
    };
    cluster.start_server(0).await?;
    cluster.start_server(1).await?;
    for slot in 0..CONSUMERS {
        cluster.start_consumer(slot)?;
    }

    let stop = CancellationToken::new();
    let watched = Arc::new(Mutex::new(Watched::default()));
    let monitor = tokio::spawn(watch_leases(
        vec![cluster.endpoint(0), cluster.endpoint(1)],
        stream.clone(),
        watched.clone(),
        stop.clone(),
    ));
    let producer = Producer::start(kinesis.clone(), &stream, PER_TICK, Duration::from_millis(100), MAX_RECORDS);
    let received = Arc::new(Mutex::new(Received::default()));
    let tracker = tokio::spawn(track(dir.to_owned(), producer.counter(), received.clone(), stop.clone()));

    // Running: every shard leased and records arriving.
    eventually(60, "every shard leased and records in the consumers' output", || {
        let leased = watched.lock().unwrap().owned == SHARDS as usize;
        let flowing = !received.lock().unwrap().first_seen.is_empty();
        async move { Ok(leased && flowing) }
    })
    .await?;
    println!("fault suite: running after {:.1}s", began.elapsed().as_secs_f64());

    let mut faults: Vec<Fault> = Vec::new();
    let mut per_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    while faults.len() < FAULTS {
        tokio::time::sleep(FAULT_GAP).await; // spacing between faults
        cluster.check_alive()?;
        {
            let w = watched.lock().unwrap();
            ensure!(w.regressions == 0, "lease regressions: {:#?}", w.regression_examples);
        }
        let kind = KINDS[faults.len() % KINDS.len()];
        let n = per_kind.get(&kind).copied().unwrap_or(0);
        let at = began.elapsed().as_secs_f64();
        cluster.inject(kind, n).await.with_context(|| format!("injecting {} #{n}", kind.name()))?;
        println!("fault {:>2} at {at:6.1}s: {} #{n}", faults.len() + 1, kind.name());
        *per_kind.entry(kind).or_default() += 1;
        faults.push(Fault { kind, ended: Instant::now() });
    }
    cluster.check_alive()?;

    // The producer stops; every record put must reach the output.
    let puts = numbered(producer.finish().await?)?;
    let total: usize = puts.len();
    let drained = Instant::now();
    let all_in = eventually(120, "every record put in the consumers' output", || {
        let done = {
            let r = received.lock().unwrap();
            (0..total).all(|n| r.first_seen.contains_key(&n))
        };
        async move { Ok(done) }
    })
    .await;
    let drain_ms = drained.elapsed().as_millis();
    cluster.check_alive()?;
    finish(&stop, tracker, "output tracker to stop").await?;
    finish(&stop, monitor, "lease monitor to stop").await?;
    // Everything arrived (or the wait gave up): the consumers can go.
    for c in &mut cluster.consumers {
        c.kill();
    }
    let mut r = std::mem::take(&mut *received.lock().unwrap());
    r.scan(dir)?;
    let w = std::mem::take(&mut *watched.lock().unwrap());

    let lost: Vec<usize> = (0..total).filter(|n| !r.first_seen.contains_key(n)).collect();
    let distinct = r.first_seen.len();
    let mut recovery: BTreeMap<Kind, Duration> = BTreeMap::new();
    for f in &faults {
        let d = r.recovery(f.ended);
        let worst = recovery.entry(f.kind).or_default();
        *worst = (*worst).max(d);
    }
    let worst_delay = (0..total)
        .filter_map(|n| Some(r.first_seen.get(&n)?.saturating_duration_since(r.put_at(n)?)))
        .max()
        .unwrap_or_default();

    figure("faults_injected", faults.len());
    for kind in KINDS {
        figure(&format!("faults_{}", kind.name()), per_kind.get(&kind).copied().unwrap_or(0));
    }
    figure("records_put", total);
    figure("records_received", r.lines);
    figure("records_distinct", distinct);
    figure("records_lost", lost.len());
    figure("duplicates", r.lines.saturating_sub(distinct));
    figure("emulator_connections_cut", cluster.proxy.severed());
    figure("lease_polls", w.polls);
    figure("lease_polls_failed", w.failed_polls);
    figure("checkpoint_moves_seen", w.checkpoint_moves);
    figure("checkpoint_regressions", w.regressions);
    for (kind, d) in &recovery {
        figure(&format!("worst_recovery_ms_{}", kind.name()), d.as_millis());
    }
    figure("worst_recovery_ms", recovery.values().max().copied().unwrap_or_default().as_millis());
    figure("worst_put_to_output_ms", worst_delay.as_millis());
    figure("drain_ms", drain_ms);
    figure("suite_seconds", format!("{:.1}", began.elapsed().as_secs_f64()));

    ensure!(
        lost.is_empty(),
        "{} of {total} records never reached a consumer's output, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    all_in?;
    ensure!(w.regressions == 0, "lease regressions: {:#?}", w.regression_examples);
    ensure!(w.leases.len() == SHARDS as usize, "the monitor saw {} leases", w.leases.len());
    ensure!(faults.len() >= 20, "only {} faults injected", faults.len());
    ensure!(cluster.proxy.severed() > 0, "cutting the emulator proxy never closed a connection of the servers");
    ensure!(r.problems.is_empty(), "bad output: {:#?}", r.problems);
    for (n, (shard, seq)) in puts.iter().enumerate() {
        let got = r.identity.get(&n).context("received")?;
        ensure!(
            got.0 == *shard && got.1 == *seq,
            "rec-{n} was put as {shard} {seq} but arrived as {} {}",
            got.0,
            got.1
        );
    }
    ensure!(r.identity.keys().all(|n| *n < total), "records that were never put arrived");
    within(30, "DeleteStream", kinesis.delete_stream().stream_name(&stream).send()).await??;
    Ok(())
}

/// (shard, sequence number) of every record put, by record number.
fn numbered(by_shard: BTreeMap<String, Vec<Put>>) -> Result<Vec<(String, String)>> {
    let mut by_number: BTreeMap<usize, (String, String)> = BTreeMap::new();
    for put in by_shard.into_values().flatten() {
        let text = String::from_utf8(put.data)?;
        let n: usize = text.strip_prefix("rec-").and_then(|n| n.parse().ok()).context("record number")?;
        ensure!(by_number.insert(n, (put.shard_id, put.sequence_number)).is_none(), "rec-{n} put twice");
    }
    let total = by_number.len();
    ensure!(by_number.keys().copied().eq(0..total), "the producer's records are not numbered 0..{total}");
    Ok(by_number.into_values().collect())
}
