//! `kinesis-butler leases`: the leases and sessions of one app and stream, read
//! straight from the store, as a table or JSON.

use std::sync::Arc;

use clap::Args;
use futures::StreamExt;
use kinesis_butler_proto as pb;
use serde_json::json;

use crate::coordination::butler::describe_group;
use crate::retrieval::kinesis::{IteratorStart, Kinesis};
use crate::retrieval::source::ShardSource;
use crate::store::{self, GroupKey, SHARD_END};

/// Options of `kinesis-butler leases`.
#[derive(Args, Debug)]
pub struct LeasesArgs {
    /// Lease store URL.
    #[arg(long, env = "KINESIS_BUTLER_STORE", default_value = "sqlite://butler.db")]
    pub store: String,
    /// App (consumer group).
    #[arg(long, default_value = "default")]
    pub app: String,
    /// Stream name.
    #[arg(long)]
    pub stream: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also ask Kinesis how far each checkpoint is behind the tip (one GetRecords per shard).
    #[arg(long)]
    pub lag: bool,
}

/// Milliseconds between a shard's checkpoint and its tip, as Kinesis reports it.
async fn lag_ms(kinesis: &Kinesis, stream: &str, lease: &pb::LeaseInfo) -> Option<i64> {
    let start = match lease.checkpoint.as_str() {
        SHARD_END => return Some(0),
        "" => IteratorStart::TrimHorizon,
        seq => IteratorStart::AfterSequence(seq.to_owned()),
    };
    let it = kinesis.shard_iterator(stream, &lease.shard_id, &start).await.ok()?;
    kinesis.get_records(&it, 1).await.ok().map(|p| p.millis_behind_latest)
}

/// Runs the command.
pub async fn run(args: LeasesArgs) -> anyhow::Result<()> {
    let store = store::open(&args.store).await?;
    let key = GroupKey::new(&args.app, &args.stream);
    let described = describe_group(&store::Leases::new(store), &key).await?;
    let lags: Vec<Option<i64>> = if args.lag {
        let kinesis = Arc::new(Kinesis::from_env().await);
        futures::stream::iter(described.leases.iter())
            .map(|l| {
                let kinesis = kinesis.clone();
                let stream = args.stream.clone();
                async move { lag_ms(&kinesis, &stream, l).await }
            })
            .buffered(16)
            .collect()
            .await
    } else {
        vec![None; described.leases.len()]
    };

    if args.json {
        let leases: Vec<_> = described
            .leases
            .iter()
            .zip(&lags)
            .map(|(l, lag)| {
                json!({
                    "shard_id": l.shard_id, "owner": l.owner, "epoch": l.epoch,
                    "checkpoint": l.checkpoint, "sub_sequence_number": l.sub_sequence_number,
                    "parent_shard_ids": l.parent_shard_ids, "closed": l.closed,
                    "expires_at_ms": l.expires_at_ms, "handoff_to": l.handoff_to, "lag_ms": lag,
                })
            })
            .collect();
        let sessions: Vec<_> = described
            .sessions
            .iter()
            .map(|s| {
                json!({"session_id": s.session_id, "instance_id": s.instance_id,
                "client_name": s.client_name, "shard_count": s.shard_count})
            })
            .collect();
        let out = json!({"app": args.app, "stream": args.stream, "leases": leases, "sessions": sessions});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    println!("{:<24} {:<38} {:>6} {:<58} {:>9} STATE", "SHARD", "OWNER", "EPOCH", "CHECKPOINT", "LAG_MS");
    for (l, lag) in described.leases.iter().zip(&lags) {
        let state = if l.checkpoint == SHARD_END {
            "finished"
        } else if l.closed {
            "closed"
        } else {
            "open"
        };
        let checkpoint = match l.sub_sequence_number {
            0 => l.checkpoint.clone(),
            sub => format!("{}/{sub}", l.checkpoint),
        };
        let lag = lag.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let owner = if l.owner.is_empty() { "-" } else { &l.owner };
        let checkpoint = if checkpoint.is_empty() { "-".to_owned() } else { checkpoint };
        println!("{:<24} {:<38} {:>6} {:<58} {:>9} {state}", l.shard_id, owner, l.epoch, checkpoint, lag);
    }
    println!();
    println!("{:<38} {:<38} {:<20} {:>6}", "SESSION", "INSTANCE", "CLIENT", "SHARDS");
    for s in &described.sessions {
        println!("{:<38} {:<38} {:<20} {:>6}", s.session_id, s.instance_id, s.client_name, s.shard_count);
    }
    Ok(())
}
