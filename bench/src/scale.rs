//! The scale section of `make bench`: several server instances on the in-memory source
//! (`--memory-source`, no Kinesis at all) sharing one store, and many lightweight
//! sessions: gRPC processors in this process that answer revokes at once (each release on
//! its own task) and checkpoint what they received every couple of seconds.
//!
//! Measured: time to converge (every shard held by exactly one session, every session at
//! floor or ceil of its share), a 31st session's join and one session's leave until
//! balanced again, the first shard the joiner receives from a session on another instance
//! (a cross-instance handoff), resident memory and idle CPU per instance over a steady
//! window, and store commands (Redis `INFO commandstats`, inner commands of scripts
//! included) or statements (PostgreSQL `pg_stat_database` transactions) per shard per
//! second in that window. Redis runs as a private `redis-server` and PostgreSQL on a
//! database of its own, so other users of the machine's store servers do not count.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kinesis_butler_proto as pb;
use pb::butler_client::ButlerClient;
use pb::get_records_response::Event;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::process::{free_port, Server};

const APP: &str = "scale";
const STREAM: &str = "scale";

/// What the scale section is told.
#[derive(Clone, Debug)]
pub struct ScaleArgs {
    /// Directory of the release `kinesis-butler`.
    pub bin_dir: std::path::PathBuf,
    /// Shards of the in-memory stream.
    pub shards: usize,
    /// Server instances.
    pub instances: usize,
    /// Sessions before the join.
    pub sessions: usize,
    /// Records generated per shard (each session checkpoints what it receives).
    pub records_per_shard: usize,
    /// `redis` or `postgres`.
    pub store: String,
    /// PostgreSQL server URL without a database (`postgres://postgres@127.0.0.1:5432`).
    pub postgres: String,
    /// Length of the steady-state window.
    pub window: Duration,
}

/// One measured figure with its target.
#[derive(Debug)]
pub struct Figure {
    /// What was measured.
    pub what: String,
    /// The value, with its unit.
    pub value: String,
    /// The target, with its unit.
    pub target: String,
    /// value / target where both are numbers.
    pub ratio: String,
}

fn figure(what: impl Into<String>, value: f64, unit: &str, target: f64, digits: usize) -> Figure {
    let f = Figure {
        what: what.into(),
        value: format!("{value:.digits$} {unit}").trim_end().to_owned(),
        target: format!("≤ {target} {unit}").trim_end().to_owned(),
        ratio: format!("{:.2}", value / target),
    };
    eprintln!("[scale] {}: {} (target {}, ratio {})", f.what, f.value, f.target, f.ratio);
    f
}

fn note(what: impl Into<String>, value: String) -> Figure {
    let f = Figure { what: what.into(), value, target: "-".into(), ratio: "-".into() };
    eprintln!("[scale] {}: {}", f.what, f.value);
    f
}

/// What every session holds, as the sessions themselves see it.
#[derive(Default)]
struct Board {
    /// Shard → sessions holding it (exactly one when converged).
    holders: HashMap<String, HashSet<usize>>,
    /// Session → shards it holds.
    held: HashMap<usize, HashSet<String>>,
    /// Shard → the session that held it last.
    last_holder: HashMap<String, usize>,
    /// Session → its instance.
    instance_of: HashMap<usize, usize>,
    /// Sessions that count for balance (started and not left).
    live: HashSet<usize>,
    /// Assignments seen so far.
    assignments: u64,
    /// Per session: when it received its first shard that another instance's session held.
    first_cross_instance: HashMap<usize, Instant>,
    /// Per session: when its SessionStarted arrived.
    started: HashMap<usize, Instant>,
    /// Records received and not yet checkpointed (waiting for the tick or in flight).
    unsettled: HashMap<usize, usize>,
}

impl Board {
    fn assign(&mut self, who: usize, shard: &str) {
        self.assignments += 1;
        if let Some(prev) = self.last_holder.insert(shard.to_owned(), who) {
            if prev != who && self.instance_of.get(&prev) != self.instance_of.get(&who) {
                self.first_cross_instance.entry(who).or_insert_with(Instant::now);
            }
        }
        self.holders.entry(shard.to_owned()).or_default().insert(who);
        self.held.entry(who).or_default().insert(shard.to_owned());
    }

    fn unassign(&mut self, who: usize, shard: &str) {
        if let Some(h) = self.holders.get_mut(shard) {
            h.remove(&who);
        }
        if let Some(h) = self.held.get_mut(&who) {
            h.remove(shard);
        }
    }

    fn leave(&mut self, who: usize) {
        self.live.remove(&who);
        for shard in self.held.remove(&who).unwrap_or_default() {
            if let Some(h) = self.holders.get_mut(&shard) {
                h.remove(&who);
            }
        }
    }

    /// Every shard held by exactly one session, every live session at floor or ceil.
    fn converged(&self, shards: usize, sessions: usize) -> bool {
        if self.live.len() != sessions || self.holders.len() < shards {
            return false;
        }
        if self.holders.values().any(|h| h.len() != 1) {
            return false;
        }
        let (lo, hi) = (shards / self.live.len(), shards.div_ceil(self.live.len()));
        self.live.iter().all(|s| self.held.get(s).map_or(0, HashSet::len) >= lo)
            && self.live.iter().all(|s| self.held.get(s).map_or(0, HashSet::len) <= hi)
            && self.held.iter().all(|(s, h)| h.is_empty() || self.live.contains(s))
    }
}

struct Shared {
    board: Mutex<Board>,
    changed: Notify,
}

impl Shared {
    /// Counts `who`'s records not yet checkpointed up (+1) or down (-1).
    fn settle(&self, who: usize, by: isize) {
        let mut b = self.board.lock().expect("board");
        let n = b.unsettled.entry(who).or_default();
        *n = n.saturating_add_signed(by);
        drop(b);
        self.changed.notify_waiters();
    }
}

/// One lightweight session: reads events, answers revokes with a release at once (with
/// the last sequence received), checkpoints what it received every 2 s.
/// However it ends (a stream error included), the session leaves the board: a session
/// whose stream broke holds nothing, and convergence must not wait on it.
async fn session(who: usize, channel: Channel, shared: Arc<Shared>, stop: CancellationToken) -> Result<()> {
    let ended = session_events(who, channel, &shared, stop).await;
    shared.board.lock().expect("board").leave(who);
    shared.changed.notify_waiters();
    ended
}

async fn session_events(who: usize, channel: Channel, shared: &Arc<Shared>, stop: CancellationToken) -> Result<()> {
    let mut client = ButlerClient::new(channel);
    let request = pb::GetRecordsRequest {
        app: APP.into(),
        streams: vec![STREAM.into()],
        start: None,
        max_records_per_batch: 1000,
        client_name: format!("bench-{who}"),
    };
    let mut events = client.get_records(request).await?.into_inner();
    let mut session_id = String::new();
    // Shard → (epoch, last sequence not yet checkpointed).
    let mut pending: HashMap<String, (u64, String)> = HashMap::new();
    let mut epochs: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let due: Vec<(String, (u64, String))> = pending.drain().collect();
                if !due.is_empty() {
                    let (mut c, id, shared) = (client.clone(), session_id.clone(), shared.clone());
                    tokio::spawn(async move {
                        for (shard, (epoch, seq)) in due {
                            let req = pb::CheckpointRequest {
                                session_id: id.clone(), stream: STREAM.into(), shard_id: shard,
                                lease_epoch: epoch, sequence_number: seq, ..Default::default()
                            };
                            let _ = c.checkpoint(req).await;
                            shared.settle(who, -1);
                        }
                    });
                }
            }
            message = events.message() => {
                let Some(message) = message? else { break };
                match message.event {
                    Some(Event::SessionStarted(s)) => {
                        session_id = s.session_id;
                        let mut b = shared.board.lock().expect("board");
                        b.started.insert(who, Instant::now());
                        b.live.insert(who);
                    }
                    Some(Event::ShardAssigned(a)) => {
                        epochs.insert(a.shard_id.clone(), a.lease_epoch);
                        shared.board.lock().expect("board").assign(who, &a.shard_id);
                        shared.changed.notify_waiters();
                    }
                    Some(Event::Records(batch)) => {
                        if let Some(last) = batch.records.last() {
                            let entry = (batch.lease_epoch, last.sequence_number.clone());
                            if pending.insert(batch.shard_id.clone(), entry).is_none() {
                                shared.settle(who, 1);
                            }
                        }
                    }
                    Some(Event::ShardRevoked(r)) => {
                        shared.board.lock().expect("board").unassign(who, &r.shard_id);
                        shared.changed.notify_waiters();
                        epochs.remove(&r.shard_id);
                        let last = pending.remove(&r.shard_id);
                        if last.is_some() {
                            shared.settle(who, -1);
                        }
                        let last = last.filter(|(e, _)| *e == r.lease_epoch);
                        if r.reason != pb::shard_revoked::Reason::LeaseLost as i32 {
                            let (mut c, id) = (client.clone(), session_id.clone());
                            tokio::spawn(async move {
                                let req = pb::CheckpointRequest {
                                    session_id: id, stream: STREAM.into(), shard_id: r.shard_id,
                                    lease_epoch: r.lease_epoch, sequence_number: last.map(|(_, s)| s).unwrap_or_default(),
                                    release: true, ..Default::default()
                                };
                                let _ = c.checkpoint(req).await;
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Which servers have exited, for the error of a wait that failed.
fn servers_state(servers: &mut [Server]) -> String {
    let states: Vec<String> = servers
        .iter_mut()
        .enumerate()
        .map(|(i, sv)| match sv.child.try_wait() {
            Ok(Some(status)) => format!("instance {i} exited ({status})"),
            _ => format!("instance {i} running"),
        })
        .collect();
    states.join(", ")
}

/// Waits (up to `within`) until the board is converged; returns when it was.
async fn wait_converged(shared: &Shared, shards: usize, sessions: usize, within: Duration) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let changed = shared.changed.notified();
        if shared.board.lock().expect("board").converged(shards, sessions) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            let b = shared.board.lock().expect("board");
            let held = b.holders.values().filter(|h| h.len() == 1).count();
            let counts: Vec<usize> = b.live.iter().map(|s| b.held.get(s).map_or(0, HashSet::len)).collect();
            bail!("not converged within {within:?}: {held} of {shards} shards held once, counts {counts:?}");
        }
        // Re-check at least every 100 ms, and after a burst of changes settles.
        let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (up to `within`) until no session has a record it has not checkpointed.
async fn wait_settled(shared: &Shared, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let changed = shared.changed.notified();
        let unsettled: usize = shared.board.lock().expect("board").unsettled.values().sum();
        if unsettled == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{unsettled} records still not checkpointed after {within:?}");
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
    }
}

/// A private `redis-server`, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    async fn start() -> Result<Self> {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { child, port })
    }

    /// Commands run so far (every `cmdstat_*` calls, scripts' inner commands included),
    /// and how many of them were script calls; the `INFO` itself is not counted.
    fn commands(&self) -> Result<(u64, u64)> {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string(), "INFO", "commandstats"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (mut all, mut scripts) = (0, 0);
        for line in text.lines() {
            let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
            let calls: u64 =
                rest.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|v| v.parse().ok()).unwrap_or(0);
            match name {
                "info" => {}
                "evalsha" | "eval" => {
                    scripts += calls;
                    all += calls;
                }
                _ => all += calls,
            }
        }
        Ok((all, scripts))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database of its own on the PostgreSQL server, dropped on drop.
struct PgDatabase {
    server: String,
    name: String,
}

impl PgDatabase {
    fn psql(server: &str, db: &str, sql: &str) -> Result<String> {
        let out = Command::new("psql")
            .args([&format!("{server}/{db}"), "-Atc", sql])
            .stderr(Stdio::inherit())
            .output()
            .context("psql")?;
        if !out.status.success() {
            bail!("psql {sql:?} failed");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn create(server: &str) -> Result<Self> {
        let name = format!("kbscale{}", std::process::id());
        let _ = Self::psql(server, "postgres", &format!("DROP DATABASE IF EXISTS {name}"));
        Self::psql(server, "postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(Self { server: server.to_owned(), name })
    }

    /// Transactions committed or rolled back in the database so far (each statement of
    /// the store outside a transaction is one).
    fn transactions(&self) -> Result<u64> {
        // Stats are flushed by backends about once a second: wait for that first.
        std::thread::sleep(Duration::from_millis(1500));
        let sql = format!("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{}'", self.name);
        Ok(Self::psql(&self.server, "postgres", &sql)?.parse()?)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = Self::psql(&self.server, "postgres", &sql);
    }
}

/// The store under test and how its traffic is counted.
enum Store {
    Redis(RedisServer),
    Postgres(PgDatabase),
}

impl Store {
    fn url(&self) -> String {
        match self {
            Store::Redis(r) => format!("redis://127.0.0.1:{}/", r.port),
            Store::Postgres(p) => format!("{}/{}", p.server, p.name),
        }
    }

    /// Operations so far: Redis commands, or PostgreSQL transactions.
    fn operations(&self) -> Result<u64> {
        match self {
            Store::Redis(r) => Ok(r.commands()?.0),
            Store::Postgres(p) => p.transactions(),
        }
    }
}

/// Runs the scale section once for `args.store`.
pub async fn run(args: &ScaleArgs) -> Result<Vec<Figure>> {
    let store = match args.store.as_str() {
        "redis" => Store::Redis(RedisServer::start().await?),
        "postgres" => Store::Postgres(PgDatabase::create(&args.postgres)?),
        other => bail!("unknown scale store {other:?}: redis or postgres"),
    };
    let name = if matches!(store, Store::Redis(_)) { "Redis" } else { "PostgreSQL" };
    let s = args.shards;
    let spec = format!("{STREAM}={s}x{}x100", args.records_per_shard);
    let url = store.url();
    let mut servers = Vec::new();
    for _ in 0..args.instances {
        servers.push(Server::start(&args.bin_dir, "http://127.0.0.1:9", &url, &["--memory-source", &spec]).await?);
    }
    let mut channels = Vec::new();
    for server in &servers {
        channels.push(Channel::from_shared(server.endpoint.clone())?.connect().await?);
    }
    let shared = Arc::new(Shared { board: Mutex::new(Board::default()), changed: Notify::new() });
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let spawn = |who: usize, instance: usize, stops: &mut Vec<CancellationToken>, tasks: &mut Vec<_>| {
        shared.board.lock().expect("board").instance_of.insert(who, instance);
        let stop = CancellationToken::new();
        stops.push(stop.clone());
        let (channel, shared) = (channels[instance].clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = session(who, channel, shared, stop).await {
                eprintln!("[scale] session {who} ended: {e}");
            }
        }));
    };
    let mut figures = Vec::new();
    let label = |what: &str| format!("{what} ({s} shards, {} instances, {name})", args.instances);

    // Converge: every session opens at once.
    let started = Instant::now();
    for who in 0..args.sessions {
        spawn(who, who % args.instances, &mut stops, &mut tasks);
    }
    let at = wait_converged(&shared, s, args.sessions, Duration::from_secs(300))
        .await
        .with_context(|| servers_state(&mut servers))?;
    figures.push(figure(
        label(&format!("time to converge, {} sessions", args.sessions)),
        (at - started).as_secs_f64(),
        "s",
        3.0,
        2,
    ));

    // Steady state: once every record received is checkpointed (the first checkpoint of
    // every shard is a write, not steady state), 5 s more, then measure.
    wait_settled(&shared, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let moves_before = shared.board.lock().expect("board").assignments;
    let cpu_before: Vec<f64> = servers.iter().map(Server::cpu_seconds).collect();
    let ops_before = store.operations()?;
    let window_started = Instant::now();
    tokio::time::sleep(args.window).await;
    let ops_after = store.operations()?;
    let secs = window_started.elapsed().as_secs_f64();
    let cpu: Vec<f64> = servers
        .iter()
        .zip(&cpu_before)
        .map(|(sv, before)| (sv.cpu_seconds() - before) / args.window.as_secs_f64() * 100.0)
        .collect();
    let rss: Vec<f64> = servers.iter().map(Server::rss_mib).collect();
    let moves = shared.board.lock().expect("board").assignments - moves_before;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(" / ");
    let unit = if name == "Redis" { "commands" } else { "statements" };
    figures.push(figure(
        label(&format!("store {unit} per shard per second, steady state")),
        (ops_after - ops_before) as f64 / secs / s as f64,
        "",
        0.05,
        5,
    ));
    figures.push(figure(label("resident memory, largest instance (MiB)"), max(&rss), "MiB", 150.0, 0));
    figures.push(note(label("resident memory per instance"), format!("{} MiB", list(&rss))));
    figures.push(figure(label("idle CPU, busiest instance (% of a core)"), max(&cpu), "%", 5.0, 1));
    figures.push(note(label("idle CPU per instance"), format!("{} % of a core", list(&cpu))));
    figures.push(note(label("shard moves in the steady window"), moves.to_string()));

    // Join: a session on the second instance.
    let joiner = args.sessions;
    let joined = Instant::now();
    spawn(joiner, 1 % args.instances, &mut stops, &mut tasks);
    let at = wait_converged(&shared, s, args.sessions + 1, Duration::from_secs(120))
        .await
        .with_context(|| servers_state(&mut servers))?;
    figures.push(figure(
        label(&format!("join: session {} until balanced", args.sessions + 1)),
        (at - joined).as_secs_f64(),
        "s",
        3.0,
        2,
    ));
    let first = shared.board.lock().expect("board").first_cross_instance.get(&joiner).copied();
    match first {
        Some(t) => figures.push(figure(
            label("cross-instance handoff: join → first shard from another instance's session"),
            (t - joined).as_secs_f64() * 1000.0,
            "ms",
            300.0,
            0,
        )),
        None => figures.push(note(label("cross-instance handoff"), "no shard came from another instance".into())),
    }

    // Leave: the first session goes away.
    let left = Instant::now();
    stops[0].cancel();
    let at = wait_converged(&shared, s, args.sessions, Duration::from_secs(120))
        .await
        .with_context(|| servers_state(&mut servers))?;
    figures.push(figure(label("leave: one session leaves until balanced"), (at - left).as_secs_f64(), "s", 3.0, 2));

    for stop in &stops {
        stop.cancel();
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    drop(servers);
    drop(store);
    Ok(figures)
}
