//! `kinesis-butler leases`: the leases and sessions of one app and stream, read
//! straight from the store, as a table or JSON.

use std::sync::Arc;

use clap::{Args, Subcommand};
use futures::StreamExt;
use kinesis_butler_proto as pb;
use serde_json::json;

use crate::coordination::admin::{self, ResetTo};
use crate::coordination::butler::describe_group;
use crate::retrieval::kinesis::{IteratorStart, Kinesis};
use crate::retrieval::source::ShardSource;
use crate::store::{self, GroupKey, SHARD_END};

/// Options of `kinesis-butler leases`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LeasesArgs {
    /// `reset`: replay or skip records (without one: show the leases).
    #[command(subcommand)]
    pub action: Option<LeasesAction>,
    /// Lease store URL.
    #[arg(long, env = "KINESIS_BUTLER_STORE", default_value = "sqlite://butler.db")]
    pub store: String,
    /// App (consumer group).
    #[arg(long, default_value = "default")]
    pub app: String,
    /// Stream name.
    #[arg(long, required = true)]
    pub stream: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also ask Kinesis how far each checkpoint is behind the tip (one GetRecords per shard).
    #[arg(long)]
    pub lag: bool,
}

/// What `kinesis-butler leases` does besides showing.
#[derive(Subcommand, Debug)]
pub enum LeasesAction {
    /// Move checkpoints while sessions are live: the shards are revoked (LEASE_LOST),
    /// their checkpoints set (backwards too) and reading restarts there.
    Reset(ResetArgs),
}

/// Options of `kinesis-butler leases reset`.
#[derive(Args, Debug)]
pub struct ResetArgs {
    /// Lease store URL.
    #[arg(long, env = "KINESIS_BUTLER_STORE", default_value = "sqlite://butler.db")]
    pub store: String,
    /// App (consumer group).
    #[arg(long, default_value = "default")]
    pub app: String,
    /// Stream name.
    #[arg(long)]
    pub stream: String,
    /// Where to: trim-horizon, latest, at-timestamp=TIME (ms since the Unix epoch or
    /// RFC 3339) or sequence=SEQ (read the records after SEQ; needs --shard).
    #[arg(long)]
    pub to: String,
    /// Only this shard (default: every shard of the stream).
    #[arg(long)]
    pub shard: Option<String>,
    /// Show what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `leases reset`.
async fn run_reset(args: ResetArgs) -> anyhow::Result<()> {
    let to: ResetTo = args.to.parse().map_err(|e: String| anyhow::anyhow!("--to: {e}"))?;
    let store = store::open(&args.store).await?;
    let kinesis = Kinesis::from_env().await;
    let key = GroupKey::new(&args.app, &args.stream);
    let leases = store::Leases::new(store);
    let done = admin::reset(&leases, &kinesis, &key, args.shard.as_deref(), &to, args.dry_run).await?;
    let rows: Vec<pb::ShardReset> = done.iter().map(admin::ShardReset::to_proto).collect();
    if args.json {
        let shards: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"shard_id": r.shard_id, "previous_owner": r.previous_owner, "previous_epoch": r.previous_epoch,
                    "previous_checkpoint": r.previous_checkpoint, "checkpoint": r.checkpoint, "epoch": r.epoch})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({"dry_run": args.dry_run, "shards": shards}))?);
        return Ok(());
    }
    let verb = if args.dry_run { "would reset (dry run, nothing changed)" } else { "reset" };
    println!("{verb} {} shard(s) of stream {} (app {}) to {:?}", rows.len(), args.stream, args.app, args.to);
    println!("{:<24} {:<38} {:>13} CHECKPOINT", "SHARD", "OWNER", "EPOCH");
    for r in &rows {
        let dash = |s: &str| if s.is_empty() { "-".to_owned() } else { s.to_owned() };
        println!(
            "{:<24} {:<38} {:>13} {} -> {}",
            r.shard_id,
            dash(&r.previous_owner),
            format!("{} -> {}", r.previous_epoch, r.epoch),
            dash(&r.previous_checkpoint),
            dash(&r.checkpoint)
        );
    }
    Ok(())
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
    if let Some(LeasesAction::Reset(reset)) = args.action {
        return run_reset(reset).await;
    }
    let stream = args.stream.clone().unwrap_or_default();
    let store = store::open(&args.store).await?;
    let key = GroupKey::new(&args.app, &stream);
    let described = describe_group(&store::Leases::new(store), &key).await?;
    let lags: Vec<Option<i64>> = if args.lag {
        let kinesis = Arc::new(Kinesis::from_env().await);
        futures::stream::iter(described.leases.iter())
            .map(|l| {
                let kinesis = kinesis.clone();
                let stream = stream.clone();
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
        let out = json!({"app": args.app, "stream": stream, "leases": leases, "sessions": sessions});
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
