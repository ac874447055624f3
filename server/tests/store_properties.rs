//! Seeded random operation sequences run through `Leases` against the in-memory reference
//! (`MemoryStore`) and each real backend side by side: every reply and, after every
//! operation, the whole state (all leases with versions, all sessions) must be equal.
//!
//! `STORE2_SEEDS=a,b,…` replays chosen seeds; `STORE2_OPS=n` sets the operations per seed.

mod store_common;

use std::fmt::Debug;

use kinesis_butler::seqnum::SequenceNumber;
use kinesis_butler::store::{Checkpoint, GroupKey, Lease, Leases, MemoryStore, SessionRecord, ShardInfo, Versioned};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const SHARDS: [&str; 5] = ["shardId-0", "shardId-1", "shardId-2", "shardId-3", "shardId-4"];
const SESSIONS: [&str; 4] = ["a", "b", "c", "d"];
const BIG: &str = "49590338271490256608559692538361571095921575989136588898";
const DEFAULT_SEEDS: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const DEFAULT_OPS: usize = 250;

macro_rules! property_tests {
    ($($backend:ident => $open:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $backend() {
                store_common::run(store_common::$open(), compare_with_reference).await
            }
        )*
    };
}

property_tests!(
    sqlite => open_sqlite,
    redis => open_redis,
    redis_cluster => open_redis_cluster,
    postgres => open_postgres,
    dynamodb => open_dynamodb,
);

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn checkpoint(rng: &mut StdRng) -> Checkpoint {
    match rng.random_range(0..10) {
        0 => Checkpoint::None,
        1 => Checkpoint::ShardEnd,
        _ => {
            let numbers =
                ["5".to_owned(), "9".into(), "10".into(), BIG.into(), format!("{}9", &BIG[..55]), format!("1{BIG}")];
            let sequence = SequenceNumber::parse(pick::<String>(rng, &numbers)).unwrap();
            Checkpoint::At { sequence, sub_sequence: rng.random_range(0..3) }
        }
    }
}

fn session(id: &str, rng: &mut StdRng) -> SessionRecord {
    SessionRecord {
        session_id: id.to_owned(),
        instance_id: format!("instance-{}", rng.random_range(0..2)),
        client_name: format!("client {}", rng.random_range(0..3)),
        heartbeat: rng.random_range(0..3),
    }
}

/// What one operation does, chosen from the reference's state.
#[derive(Debug)]
enum Op {
    Sync(Vec<ShardInfo>),
    Acquire(Vec<(Versioned<Lease>, String, bool)>),
    Handoff(Vec<(Versioned<Lease>, String)>),
    Checkpoint { shard: String, owner: String, epoch: u64, cp: Checkpoint },
    Release { shard: String, owner: String, epoch: u64 },
    DropSession(String),
    PutSession(SessionRecord),
    Beat(Vec<String>),
    DeleteSession { id: String, expected: Option<u64> },
    RemoveStale { stale: Vec<(String, u64)>, local: Vec<String> },
}

/// The state of one store: all leases and all sessions with their versions.
type State = (Vec<Versioned<Lease>>, Vec<Versioned<SessionRecord>>);

async fn state(l: &Leases, g: &GroupKey) -> State {
    (l.list(g).await.expect("list leases"), l.sessions(g).await.expect("list sessions"))
}

/// A reply, comparable across stores (errors by their text).
fn reply<T: Debug, E: Debug>(r: Result<T, E>) -> String {
    format!("{r:?}")
}

async fn apply(l: &Leases, g: &GroupKey, op: &Op) -> String {
    match op {
        Op::Sync(shards) => reply(l.sync_shards(g, shards).await),
        Op::Acquire(wants) => reply(l.acquire_many(g, wants).await),
        Op::Handoff(wants) => reply(l.request_handoffs(g, wants).await),
        Op::Checkpoint { shard, owner, epoch, cp } => reply(l.checkpoint(g, shard, owner, *epoch, cp).await),
        Op::Release { shard, owner, epoch } => reply(l.release(g, shard, owner, *epoch).await),
        Op::DropSession(id) => reply(l.drop_session(g, id).await),
        Op::PutSession(s) => reply(l.put_session(g, s).await),
        Op::Beat(ids) => reply(l.beat(g, ids).await),
        Op::DeleteSession { id, expected } => reply(l.store().delete_session(g, id, *expected).await),
        Op::RemoveStale { stale, local } => reply(l.remove_stale_sessions(g, stale, local).await),
    }
}

/// Chooses the next operation from the reference state and reads kept from earlier steps
/// (stale reads make compare-and-set conflicts).
fn next_op(rng: &mut StdRng, (leases, sessions): &State, old_reads: &[Versioned<Lease>]) -> Op {
    let a_read = |rng: &mut StdRng| -> Option<Versioned<Lease>> {
        if !old_reads.is_empty() && rng.random_bool(0.25) {
            Some(pick(rng, old_reads).clone())
        } else if !leases.is_empty() {
            Some(pick(rng, leases).clone())
        } else {
            None
        }
    };
    let a_session = |rng: &mut StdRng| pick(rng, &SESSIONS).to_string();
    // The epoch of a lease, sometimes off by one.
    let an_epoch = |rng: &mut StdRng, l: &Lease| match rng.random_range(0..6) {
        0 => l.epoch.saturating_sub(1),
        1 => l.epoch + 1,
        _ => l.epoch,
    };
    loop {
        let op = match rng.random_range(0..20) {
            0 | 1 => {
                let n = rng.random_range(1..=SHARDS.len());
                Op::Sync(
                    (0..n)
                        .map(|_| ShardInfo {
                            shard_id: pick(rng, &SHARDS).to_string(),
                            parent_shard_ids: if rng.random_bool(0.3) {
                                vec![pick(rng, &SHARDS).to_string()]
                            } else {
                                vec![]
                            },
                            closed: rng.random_bool(0.2),
                        })
                        .collect(),
                )
            }
            2..=5 => {
                let n = rng.random_range(1..=3);
                let wants: Vec<_> =
                    (0..n).filter_map(|_| a_read(rng).map(|r| (r, a_session(rng), rng.random_bool(0.3)))).collect();
                if wants.is_empty() {
                    continue;
                }
                Op::Acquire(wants)
            }
            6 | 7 => match a_read(rng) {
                Some(r) => Op::Handoff(vec![(r, a_session(rng))]),
                None => continue,
            },
            8..=11 => {
                let Some(r) = a_read(rng) else { continue };
                // Mostly the owner; sometimes another session or an unknown shard.
                let owner = r.value.owner.clone().filter(|_| rng.random_bool(0.8)).unwrap_or_else(|| a_session(rng));
                let shard = if rng.random_bool(0.05) { "shardId-unknown".to_owned() } else { r.value.shard_id.clone() };
                Op::Checkpoint { shard, owner, epoch: an_epoch(rng, &r.value), cp: checkpoint(rng) }
            }
            12 | 13 => {
                let Some(r) = a_read(rng) else { continue };
                let owner = r.value.owner.clone().filter(|_| rng.random_bool(0.8)).unwrap_or_else(|| a_session(rng));
                Op::Release { shard: r.value.shard_id.clone(), owner, epoch: an_epoch(rng, &r.value) }
            }
            14 => Op::DropSession(a_session(rng)),
            15 | 16 => Op::PutSession(session(&a_session(rng), rng)),
            // Ids may repeat: each session is beaten once.
            17 => Op::Beat((0..rng.random_range(1..=3)).map(|_| a_session(rng)).collect()),
            18 => {
                let id = a_session(rng);
                let seen = sessions.iter().find(|s| s.value.session_id == id).map_or(1, |s| s.version);
                let expected = match rng.random_range(0..3) {
                    0 => None,
                    1 => Some(seen),
                    _ => Some(seen.saturating_sub(1)),
                };
                Op::DeleteSession { id, expected }
            }
            _ => {
                let mut stale = Vec::new();
                for s in sessions {
                    if rng.random_bool(0.5) {
                        stale.push((s.value.session_id.clone(), s.version - u64::from(rng.random_bool(0.3))));
                    }
                }
                let local = SESSIONS.iter().filter(|_| rng.random_bool(0.3)).map(|s| s.to_string()).collect();
                Op::RemoveStale { stale, local }
            }
        };
        return op;
    }
}

fn env_list(name: &str) -> Option<Vec<u64>> {
    std::env::var(name).ok().map(|v| v.split(',').map(|s| s.trim().parse().expect("a number")).collect())
}

async fn compare_with_reference(backend: Leases) {
    let seeds = env_list("STORE2_SEEDS").unwrap_or_else(|| DEFAULT_SEEDS.to_vec());
    let ops = env_list("STORE2_OPS").map_or(DEFAULT_OPS, |v| v[0] as usize);
    let started = std::time::Instant::now();
    let (mut total, mut changed) = (0, 0);
    for seed in &seeds {
        let reference = Leases::new(Arc::new(MemoryStore::new()));
        let g = GroupKey::new(format!("app-{seed}"), "stream");
        let mut rng = StdRng::seed_from_u64(*seed);
        let mut old_reads: Vec<Versioned<Lease>> = Vec::new();
        let mut trail: Vec<String> = Vec::new();
        total += ops;
        for step in 0..ops {
            let expected = state(&reference, &g).await;
            let actual = state(&backend, &g).await;
            assert_eq!(actual, expected, "seed {seed}, before step {step}; operations so far:\n{}", trail.join("\n"));
            let op = next_op(&mut rng, &expected, &old_reads);
            if old_reads.len() > 8 {
                old_reads.remove(0);
            }
            if !expected.0.is_empty() {
                old_reads.push(pick(&mut rng, &expected.0).clone());
            }
            let want = apply(&reference, &g, &op).await;
            changed += usize::from(state(&reference, &g).await != expected);
            let got = apply(&backend, &g, &op).await;
            trail.push(format!("{step}: {op:?} -> {want}"));
            assert_eq!(got, want, "seed {seed}, step {step}: {op:?}; operations so far:\n{}", trail.join("\n"));
        }
        assert_eq!(state(&backend, &g).await, state(&reference, &g).await, "seed {seed}: final state");
    }
    eprintln!(
        "{} seeds x {ops} operations ({changed} of {total} changed the state) agreed with the reference in {:?}",
        seeds.len(),
        started.elapsed()
    );
}
