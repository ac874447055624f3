//! Fleet cost (design rule 9): an idle round of a group with 10,000 shards costs O(1)
//! Redis commands, counted by the server itself (`INFO commandstats`, which also counts
//! the commands a script runs) on the test Redis Cluster (127.0.0.1:7301-7303, used only
//! by these tests; cargo runs test binaries one at a time). Target: ≤ 0.05 commands per shard per second.

mod store_common;

use kinesis_butler::store::{GroupKey, SessionRecord, ShardInfo};

const SHARDS: usize = 10_000;
const ROUNDS: u64 = 20;

/// Commands the cluster ran so far, without the `INFO` calls that count them.
async fn commands_run() -> u64 {
    let mut total = 0;
    for node in store_common::CLUSTER_NODES {
        let client = ::redis::Client::open(format!("redis://{node}/")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let stats: String = ::redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
        for line in stats.lines().filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:")) {
            let calls = line.split(['=', ',']).nth(1).and_then(|n| n.parse::<u64>().ok());
            total += calls.expect("calls=N in commandstats");
        }
    }
    total
}

#[tokio::test]
async fn an_idle_round_costs_a_constant_number_of_commands() {
    store_common::run(store_common::open_redis_cluster(), |l| async move {
        let g = GroupKey::new("app", "big-stream");
        let shards: Vec<ShardInfo> = (0..SHARDS)
            .map(|i| ShardInfo { shard_id: format!("shardId-{i:012}"), parent_shard_ids: vec![], closed: false })
            .collect();
        l.sync_shards(&g, &shards).await.unwrap();
        let ids: Vec<String> = (0..5).map(|i| format!("session-{i}")).collect();
        for id in &ids {
            let s = SessionRecord {
                session_id: id.clone(),
                instance_id: "i".into(),
                client_name: String::new(),
                heartbeat: 0,
            };
            l.put_session(&g, &s).await.unwrap();
        }
        l.beat(&g, &ids).await.unwrap(); // loads the script: not part of a steady round
        let mut generation = l.generation(&g).await.unwrap();
        let before = commands_run().await;
        for _ in 0..ROUNDS {
            // An idle round: renew the local sessions, read who is alive, re-read the
            // leases only if some lease was written since the last round.
            assert!(l.beat(&g, &ids).await.unwrap().is_empty());
            assert_eq!(l.sessions(&g).await.unwrap().len(), ids.len());
            let now = l.generation(&g).await.unwrap();
            if now != generation {
                generation = now;
                l.list(&g).await.unwrap();
            }
        }
        let per_round = (commands_run().await - before) as f64 / ROUNDS as f64;
        let per_shard_second = per_round / SHARDS as f64; // one round a second
        eprintln!("idle round: {per_round} commands ({per_shard_second:.6} per shard per second at 1 round/s)");
        assert!(per_round <= 6.0, "an idle round should be beat (script + HMGET + HSET) + HGETALL + GET: {per_round}");
        assert!(per_shard_second <= 0.05);
    })
    .await
}
