//! `kinesis-butler kcl import|export`: moving between a KCL 2.x/3.x lease table in
//! DynamoDB and any Butler store without losing place.
//!
//! The KCL format is the one `DynamoDBLeaseSerializer` / `DynamoDBMultiStreamLeaseSerializer`
//! and `ExtendedSequenceNumber` of amazon-kinesis-client 3.x write: hash key `leaseKey`
//! (S: the shard id, or `account:stream:creationEpoch:shardId` in multi-stream mode, with
//! `streamName` and `shardId` beside it), `leaseOwner` (S), `leaseCounter` (N),
//! `checkpoint` (S: a decimal sequence number, `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP` or
//! `SHARD_END`), `checkpointSubSequenceNumber` (N), `pendingCheckpoint*`,
//! `ownerSwitchesSinceCheckpoint` (N), `parentShardId` / `childShardIds` (SS),
//! `startingHashKey` / `endingHashKey` (S), `checkpointOwner` (S), `throughputKBps` (N),
//! and `entityType` (S, KCL 3.5+: rows that are not `LEASE` are not leases).
//!
//! The mapping between a KCL item and a Butler checkpoint is pure ([`parse_kcl_item`],
//! [`KclCheckpoint::to_butler`], [`kcl_item`]); the commands around it read everything
//! and check it before writing anything. Import writes through the [`Leases`] driver with
//! the existing rules only: acquire as an import session, checkpoint, release.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};
use clap::{Args, Subcommand, ValueEnum};

use crate::cli::config::parse_duration;
use crate::retrieval::kinesis::StreamArn;
use crate::seqnum::SequenceNumber;
use crate::store::{self, Checkpoint, GroupKey, Lease, Leases, ShardInfo, Versioned};

type Item = HashMap<String, AttributeValue>;

/// `kinesis-butler kcl`: import a KCL lease table into a Butler store, or export back.
#[derive(Args, Debug)]
pub struct KclArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KclCommand,
}

/// The `kcl` subcommands.
#[derive(Subcommand, Debug)]
pub enum KclCommand {
    /// Read a KCL lease table and set the app's checkpoints in the Butler store.
    Import(ImportArgs),
    /// Write the app's Butler checkpoints into a KCL lease table, so KCL can resume.
    Export(ExportArgs),
}

/// Options both directions share.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// The KCL lease table (KCL names it after the application).
    #[arg(long)]
    pub kcl_table: String,
    /// Butler app (consumer group) whose checkpoints are set or read.
    #[arg(long, default_value = "default")]
    pub app: String,
    /// Stream name or ARN (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`), as Butler
    /// sessions name it.
    #[arg(long)]
    pub stream: String,
    /// Butler lease store URL.
    #[arg(long, env = "KINESIS_BUTLER_STORE", default_value = "sqlite://butler.db")]
    pub store: String,
    /// Region of the KCL table (the AWS chain's region otherwise).
    #[arg(long)]
    pub region: Option<String>,
    /// How long a KCL lease may go without a `leaseCounter` change before it counts as
    /// not held (KCL's `failoverTimeMillis`); the leases are read twice this far apart.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub failover_time: Duration,
    /// Go on although KCL workers (or Butler sessions) still hold leases.
    #[arg(long)]
    pub force: bool,
}

/// Options of `kcl import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Table, app, stream, store.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Options of `kcl export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Table, app, stream, store.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Write multi-stream keys `ID:shardId` with this stream identifier
    /// (`account:stream:creationEpoch`, as `kcl import` printed it).
    #[arg(long)]
    pub stream_identifier: Option<String>,
    /// What to write for a shard without a checkpoint (KCL's `initialPositionInStream`);
    /// child shards always get `TRIM_HORIZON`, as KCL gives them.
    #[arg(long, value_enum, default_value_t = InitialPosition::TrimHorizon)]
    pub initial_position: InitialPosition,
}

/// KCL's `initialPositionInStream`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    /// `TRIM_HORIZON`.
    TrimHorizon,
    /// `LATEST`.
    Latest,
}

/// A KCL checkpoint (`ExtendedSequenceNumber`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KclCheckpoint {
    /// A record (and user record inside a KPL aggregate).
    Sequence(SequenceNumber, u64),
    /// `TRIM_HORIZON`.
    TrimHorizon,
    /// `LATEST`.
    Latest,
    /// `AT_TIMESTAMP` (the timestamp is in the KCL configuration, not the lease).
    AtTimestamp,
    /// `SHARD_END`.
    ShardEnd,
}

impl KclCheckpoint {
    /// The Butler checkpoint, and a note when something is not carried over: the
    /// sentinels other than `SHARD_END` mean "no checkpoint".
    pub fn to_butler(&self) -> (Checkpoint, Option<&'static str>) {
        match self {
            KclCheckpoint::Sequence(sequence, sub) => {
                (Checkpoint::At { sequence: sequence.clone(), sub_sequence: *sub }, None)
            }
            KclCheckpoint::ShardEnd => (Checkpoint::ShardEnd, None),
            KclCheckpoint::TrimHorizon => (Checkpoint::None, Some("TRIM_HORIZON: no checkpoint")),
            KclCheckpoint::Latest => (Checkpoint::None, Some("LATEST: no checkpoint")),
            KclCheckpoint::AtTimestamp => (Checkpoint::None, Some("AT_TIMESTAMP: no checkpoint")),
        }
    }

    /// The `checkpoint` text.
    pub fn text(&self) -> &str {
        match self {
            KclCheckpoint::Sequence(s, _) => s.as_str(),
            KclCheckpoint::TrimHorizon => "TRIM_HORIZON",
            KclCheckpoint::Latest => "LATEST",
            KclCheckpoint::AtTimestamp => "AT_TIMESTAMP",
            KclCheckpoint::ShardEnd => "SHARD_END",
        }
    }

    /// The `checkpointSubSequenceNumber`.
    pub fn sub_sequence(&self) -> u64 {
        match self {
            KclCheckpoint::Sequence(_, sub) => *sub,
            _ => 0,
        }
    }
}

/// One KCL lease as read from its item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KclLease {
    /// `leaseKey`.
    pub lease_key: String,
    /// Multi-stream mode: the stream identifier `account:stream:creationEpoch`.
    pub stream_identifier: Option<String>,
    /// Shard id.
    pub shard_id: String,
    /// `leaseOwner`.
    pub owner: Option<String>,
    /// `leaseCounter`.
    pub counter: u64,
    /// `checkpoint` + `checkpointSubSequenceNumber`.
    pub checkpoint: KclCheckpoint,
    /// `pendingCheckpoint` is set (a prepared, uncommitted checkpoint).
    pub pending_checkpoint: bool,
    /// `parentShardId`.
    pub parents: Vec<String>,
    /// `childShardIds`.
    pub children: Vec<String>,
    /// `startingHashKey`, `endingHashKey`.
    pub hash_range: Option<(String, String)>,
}

impl KclLease {
    /// The stream name of a multi-stream lease.
    pub fn stream_name(&self) -> Option<&str> {
        self.stream_identifier.as_deref().and_then(|id| id.split(':').nth(1))
    }

    /// The account of a multi-stream lease.
    pub fn account(&self) -> Option<&str> {
        self.stream_identifier.as_deref().and_then(|id| id.split(':').next())
    }
}

fn type_name(v: &AttributeValue) -> &'static str {
    match v {
        AttributeValue::S(_) => "S",
        AttributeValue::N(_) => "N",
        AttributeValue::B(_) => "B",
        AttributeValue::Ss(_) => "SS",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Bs(_) => "BS",
        AttributeValue::M(_) => "M",
        AttributeValue::L(_) => "L",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::Bool(_) => "BOOL",
        _ => "unknown",
    }
}

fn wrong_type(name: &str, v: &AttributeValue, want: &str) -> String {
    format!("attribute {name} is {}, KCL writes {want}", type_name(v))
}

fn opt_s<'a>(item: &'a Item, name: &str) -> Result<Option<&'a str>, String> {
    item.get(name).map(|v| v.as_s().map(String::as_str).map_err(|v| wrong_type(name, v, "S"))).transpose()
}

fn opt_n(item: &Item, name: &str) -> Result<Option<u64>, String> {
    item.get(name)
        .map(|v| {
            let text = v.as_n().map_err(|v| wrong_type(name, v, "N"))?;
            text.parse::<u64>().map_err(|_| format!("attribute {name} = {text} is not a whole number"))
        })
        .transpose()
}

fn opt_ss(item: &Item, name: &str) -> Result<Vec<String>, String> {
    Ok(item
        .get(name)
        .map(|v| v.as_ss().cloned().map_err(|v| wrong_type(name, v, "SS")))
        .transpose()?
        .unwrap_or_default())
}

/// Reads a KCL item: `Ok(None)` for a row that is not a lease (`entityType` present and
/// not `LEASE`); an error names the attribute that is missing or of the wrong type.
pub fn parse_kcl_item(item: &Item) -> Result<Option<KclLease>, String> {
    let lease_key = opt_s(item, "leaseKey")?.ok_or("no leaseKey (S) attribute")?.to_owned();
    if let Some(kind) = opt_s(item, "entityType")? {
        if kind != "LEASE" {
            return Ok(None);
        }
    }
    // Type checks of what is not carried over, so that a table of some other shape is
    // refused rather than half understood.
    for n in ["ownerSwitchesSinceCheckpoint", "pendingCheckpointSubSequenceNumber"] {
        opt_n(item, n)?;
    }
    for s in ["checkpointOwner", "pendingCheckpoint"] {
        opt_s(item, s)?;
    }
    if let Some(v) = item.get("throughputKBps") {
        let text = v.as_n().map_err(|v| wrong_type("throughputKBps", v, "N"))?;
        text.parse::<f64>().map_err(|_| format!("attribute throughputKBps = {text} is not a number"))?;
    }
    let counter = opt_n(item, "leaseCounter")?.ok_or("no leaseCounter (N) attribute")?;
    let text = opt_s(item, "checkpoint")?.ok_or("no checkpoint (S) attribute")?;
    let sub = opt_n(item, "checkpointSubSequenceNumber")?.unwrap_or(0);
    let checkpoint = match text {
        "TRIM_HORIZON" => KclCheckpoint::TrimHorizon,
        "LATEST" => KclCheckpoint::Latest,
        "AT_TIMESTAMP" => KclCheckpoint::AtTimestamp,
        "SHARD_END" => KclCheckpoint::ShardEnd,
        t => KclCheckpoint::Sequence(
            SequenceNumber::parse(t).map_err(|_| {
                format!(
                    "checkpoint {t:?} is neither a sequence number nor TRIM_HORIZON, LATEST, AT_TIMESTAMP, SHARD_END"
                )
            })?,
            sub,
        ),
    };
    let (stream_identifier, shard_id) = match lease_key.rsplit_once(':') {
        None => (None, lease_key.clone()),
        Some((id, shard)) => {
            if id.split(':').count() != 3 || shard.is_empty() {
                return Err(format!(
                    "leaseKey {lease_key:?} is neither a shard id nor account:stream:creationEpoch:shardId"
                ));
            }
            if let Some(attr) = opt_s(item, "shardId")? {
                if attr != shard {
                    return Err(format!("shardId {attr:?} does not match leaseKey {lease_key:?}"));
                }
            }
            opt_s(item, "streamName")?;
            (Some(id.to_owned()), shard.to_owned())
        }
    };
    let hash_range = match (opt_s(item, "startingHashKey")?, opt_s(item, "endingHashKey")?) {
        (Some(a), Some(b)) => Some((a.to_owned(), b.to_owned())),
        _ => None,
    };
    Ok(Some(KclLease {
        lease_key,
        stream_identifier,
        shard_id,
        owner: opt_s(item, "leaseOwner")?.map(str::to_owned),
        counter,
        checkpoint,
        pending_checkpoint: item.contains_key("pendingCheckpoint"),
        parents: opt_ss(item, "parentShardId")?,
        children: opt_ss(item, "childShardIds")?,
        hash_range,
    }))
}

/// The leases of `stream` among a table's: its multi-stream leases if there are any,
/// else the single-stream ones (a single-stream table belongs to the app's one stream).
pub fn select_stream(all: Vec<KclLease>, stream: &str) -> Vec<KclLease> {
    let (multi, single): (Vec<KclLease>, Vec<KclLease>) = all.into_iter().partition(|l| l.stream_identifier.is_some());
    let mine: Vec<KclLease> = multi.into_iter().filter(|l| belongs_to(l, stream)).collect();
    if mine.is_empty() {
        single
    } else {
        mine
    }
}

/// Whether a KCL lease belongs to `stream` (a name or an ARN): a multi-stream lease by
/// its stream name (and account, for an ARN); a single-stream lease always.
pub fn belongs_to(lease: &KclLease, stream: &str) -> bool {
    let Some(name) = lease.stream_name() else {
        return true;
    };
    match StreamArn::parse(stream) {
        Some(arn) => arn.name == name && lease.account() == Some(arn.account.as_str()),
        None => stream == name,
    }
}

/// The KCL checkpoint for a Butler one: no checkpoint becomes `initial` (children, which
/// KCL always starts at their beginning, `TRIM_HORIZON`).
pub fn kcl_checkpoint(cp: &Checkpoint, has_parents: bool, initial: InitialPosition) -> KclCheckpoint {
    match cp {
        Checkpoint::At { sequence, sub_sequence } => KclCheckpoint::Sequence(sequence.clone(), *sub_sequence),
        Checkpoint::ShardEnd => KclCheckpoint::ShardEnd,
        Checkpoint::None if has_parents || initial == InitialPosition::TrimHorizon => KclCheckpoint::TrimHorizon,
        Checkpoint::None => KclCheckpoint::Latest,
    }
}

/// The KCL item of a Butler lease, free (no `leaseOwner`, counter 0) so that the first
/// KCL worker takes it at once.
pub fn kcl_item(
    lease: &Lease,
    checkpoint: &KclCheckpoint,
    stream_identifier: Option<&str>,
    children: &[String],
    hash_range: Option<&(String, String)>,
) -> Item {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: u64| AttributeValue::N(v.to_string());
    let mut item = Item::new();
    match stream_identifier {
        Some(id) => {
            item.insert("leaseKey".into(), s(&format!("{id}:{}", lease.shard_id)));
            item.insert("streamName".into(), s(id));
            item.insert("shardId".into(), s(&lease.shard_id));
        }
        None => {
            item.insert("leaseKey".into(), s(&lease.shard_id));
        }
    }
    item.insert("leaseCounter".into(), n(0));
    item.insert("ownerSwitchesSinceCheckpoint".into(), n(0));
    item.insert("checkpoint".into(), s(checkpoint.text()));
    item.insert("checkpointSubSequenceNumber".into(), n(checkpoint.sub_sequence()));
    if !lease.parent_shard_ids.is_empty() {
        item.insert("parentShardId".into(), AttributeValue::Ss(lease.parent_shard_ids.clone()));
    }
    if !children.is_empty() {
        item.insert("childShardIds".into(), AttributeValue::Ss(children.to_vec()));
    }
    if let Some((start, end)) = hash_range {
        item.insert("startingHashKey".into(), s(start));
        item.insert("endingHashKey".into(), s(end));
    }
    item
}

/// The KCL leases that are live: held by an owner whose `leaseCounter` changed between
/// two reads `failoverTimeMillis` apart.
pub fn live_leases<'a>(before: &[KclLease], after: &'a [KclLease]) -> Vec<&'a KclLease> {
    let counters: HashMap<&str, u64> = before.iter().map(|l| (l.lease_key.as_str(), l.counter)).collect();
    after
        .iter()
        .filter(|l| l.owner.is_some() && counters.get(l.lease_key.as_str()).is_none_or(|c| *c != l.counter))
        .collect()
}

// ---------------------------------------------------------------- DynamoDB

struct KclTable {
    client: aws_sdk_dynamodb::Client,
    name: String,
}

impl KclTable {
    async fn open(common: &CommonArgs) -> Result<Self> {
        store::dynamodb::validate_table_name(&common.kcl_table)?;
        let client = store::dynamodb::client(common.region.as_deref()).await;
        Ok(Self { client, name: common.kcl_table.clone() })
    }

    /// Whether the table exists; an error if it exists and is not keyed like KCL's.
    async fn check(&self) -> Result<bool> {
        let t = &self.name;
        match self.client.describe_table().table_name(t).send().await {
            Ok(out) => {
                let keys: Vec<(String, KeyType)> = out
                    .table()
                    .map(|d| {
                        d.key_schema().iter().map(|k| (k.attribute_name().to_owned(), k.key_type().clone())).collect()
                    })
                    .unwrap_or_default();
                if keys != [("leaseKey".to_owned(), KeyType::Hash)] {
                    let names: Vec<&str> = keys.iter().map(|(n, _)| n.as_str()).collect();
                    bail!("table {t} is not a KCL lease table: its key is {names:?}, KCL's is [\"leaseKey\"]");
                }
                Ok(true)
            }
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(false),
            Err(e) => Err(store::dynamodb::classify(t, "DescribeTable", &e).into()),
        }
    }

    /// Every item, following Scan pages.
    async fn scan(&self) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.name)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store::dynamodb::classify(&self.name, "Scan", &e))?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(items),
            }
        }
    }

    /// Every lease of `stream` (all of them checked first: one bad item fails the read).
    async fn leases(&self, stream: &str) -> Result<Vec<KclLease>> {
        let mut leases = Vec::new();
        for item in self.scan().await? {
            let key = item.get("leaseKey").and_then(|v| v.as_s().ok()).cloned().unwrap_or_else(|| format!("{item:?}"));
            match parse_kcl_item(&item) {
                Ok(Some(lease)) => leases.push(lease),
                Ok(None) => {}
                Err(why) => bail!("table {}, item {key:?}: {why}", self.name),
            }
        }
        let mut leases = select_stream(leases, stream);
        leases.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        Ok(leases)
    }

    /// Reads the leases twice `failover` apart; refuses (unless `force`) when KCL
    /// workers still renew some.
    async fn leases_checked(&self, stream: &str, failover: Duration, force: bool) -> Result<Vec<KclLease>> {
        let before = self.leases(stream).await?;
        if before.iter().all(|l| l.owner.is_none()) {
            return Ok(before);
        }
        eprintln!("checking that no KCL worker holds a lease of {stream} in {} ({failover:?})…", self.name);
        tokio::time::sleep(failover).await;
        let after = self.leases(stream).await?;
        let live = live_leases(&before, &after);
        if !live.is_empty() {
            let list: Vec<String> = live
                .iter()
                .map(|l| {
                    format!("{} (owner {}, leaseCounter {})", l.lease_key, l.owner.as_deref().unwrap_or("-"), l.counter)
                })
                .collect();
            let text = format!(
                "KCL workers still hold live leases in table {} (leaseCounter changed within {failover:?}): {}",
                self.name,
                list.join(", ")
            );
            if !force {
                bail!("{text}; stop the KCL application first, or pass --force");
            }
            eprintln!("warning: {text}; going on (--force)");
        }
        Ok(after)
    }

    async fn create(&self) -> Result<()> {
        self.client
            .create_table()
            .table_name(&self.name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("leaseKey")
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .key_schema(KeySchemaElement::builder().attribute_name("leaseKey").key_type(KeyType::Hash).build()?)
            .send()
            .await
            .map_err(|e| store::dynamodb::classify(&self.name, "CreateTable", &e))?;
        for _ in 0..600 {
            let out = self.client.describe_table().table_name(&self.name).send().await;
            let out = out.map_err(|e| store::dynamodb::classify(&self.name, "DescribeTable", &e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("table {} did not become ACTIVE", self.name)
    }
}

// ---------------------------------------------------------------- import

/// What import does to one shard.
#[derive(Debug)]
struct Planned {
    kcl: KclLease,
    checkpoint: Checkpoint,
    note: Option<&'static str>,
}

/// Runs `kcl import` or `kcl export`.
pub async fn run(args: KclArgs) -> Result<()> {
    match args.command {
        KclCommand::Import(a) => import(a).await,
        KclCommand::Export(a) => export(a).await,
    }
}

async fn import(args: ImportArgs) -> Result<()> {
    let c = &args.common;
    let table = KclTable::open(c).await?;
    if !table.check().await? {
        bail!("KCL table {} does not exist", c.kcl_table);
    }
    let kcl = table.leases_checked(&c.stream, c.failover_time, c.force).await?;
    if kcl.is_empty() {
        bail!("table {} holds no KCL lease of stream {}", c.kcl_table, c.stream);
    }
    let plan: Vec<Planned> = kcl
        .into_iter()
        .map(|kcl| {
            let (checkpoint, note) = kcl.checkpoint.to_butler();
            Planned { kcl, checkpoint, note }
        })
        .collect();

    let leases = Leases::new(store::open(&c.store).await?);
    let g = GroupKey::new(&c.app, &c.stream);
    // Everything is checked before the first write.
    let existing: BTreeMap<String, Versioned<Lease>> =
        leases.list(&g).await?.into_iter().map(|l| (l.value.shard_id.clone(), l)).collect();
    for p in &plan {
        let Some(have) = existing.get(&p.kcl.shard_id) else { continue };
        if let Some(owner) = &have.value.owner {
            if !c.force {
                bail!(
                    "Butler session {owner} holds the lease of shard {} (app {}, stream {}); stop the Butler \
                     consumers first, or pass --force",
                    p.kcl.shard_id,
                    c.app,
                    c.stream
                );
            }
        }
        if have.value.checkpoint.is_regressed_by(&p.checkpoint) && p.checkpoint != Checkpoint::None {
            bail!(
                "shard {}: Butler's checkpoint {} is already past KCL's {}; nothing imported",
                p.kcl.shard_id,
                have.value.checkpoint.as_text(),
                p.kcl.checkpoint.text()
            );
        }
    }

    let shards: Vec<ShardInfo> = plan
        .iter()
        .map(|p| ShardInfo {
            shard_id: p.kcl.shard_id.clone(),
            parent_shard_ids: p.kcl.parents.clone(),
            closed: p.kcl.checkpoint == KclCheckpoint::ShardEnd || !p.kcl.children.is_empty(),
        })
        .collect();
    leases.sync_shards(&g, &shards).await?;
    let importer = format!("kcl-import-{}", uuid::Uuid::new_v4().simple());
    for p in plan.iter().filter(|p| p.checkpoint != Checkpoint::None) {
        set_checkpoint(&leases, &g, &p.kcl.shard_id, &importer, &p.checkpoint).await?;
    }

    println!(
        "imported {} leases of stream {} from KCL table {} into app {}:",
        plan.len(),
        c.stream,
        c.kcl_table,
        c.app
    );
    println!("{:<24} {:<60} BUTLER", "SHARD", "KCL CHECKPOINT");
    let mut sentinel = None;
    for p in &plan {
        let kcl_text = match p.kcl.checkpoint.sub_sequence() {
            0 => p.kcl.checkpoint.text().to_owned(),
            sub => format!("{}/{sub}", p.kcl.checkpoint.text()),
        };
        let butler = match (&p.checkpoint, p.note) {
            (Checkpoint::None, Some(note)) if !p.kcl.parents.is_empty() => {
                format!("{note}; a child shard, read from its start after its parents")
            }
            (Checkpoint::None, Some(note)) => {
                sentinel = Some(p.kcl.checkpoint.text().to_owned());
                format!("{note}; read from the session's start position")
            }
            (cp, _) => match cp.sub_sequence() {
                0 => cp.as_text().to_owned(),
                sub => format!("{}/{sub}", cp.as_text()),
            },
        };
        let pending = if p.kcl.pending_checkpoint { " (pendingCheckpoint ignored)" } else { "" };
        println!("{:<24} {:<60} {butler}{pending}", p.kcl.shard_id, kcl_text);
    }
    if let Some(s) = sentinel {
        println!("note: shards without a checkpoint start at the session's start position; KCL had {s}: open sessions with start {s} to match");
    }
    if let Some(id) = plan.iter().find_map(|p| p.kcl.stream_identifier.as_deref()) {
        println!("KCL stream identifier: {id} (for `kcl export --stream-identifier`)");
    }
    Ok(())
}

/// Sets a shard's checkpoint with the existing rules only: acquire as `importer` (its
/// current owner counts as gone), checkpoint at that epoch, release.
async fn set_checkpoint(leases: &Leases, g: &GroupKey, shard: &str, importer: &str, cp: &Checkpoint) -> Result<()> {
    for _ in 0..store::leases::MAX_ATTEMPTS {
        let current = leases.get(g, shard).await?.with_context(|| format!("no lease for shard {shard}"))?;
        if current.value.checkpoint == *cp {
            return Ok(());
        }
        let Some(held) = leases.acquire_many(g, &[(current, importer.to_owned(), true)]).await?.remove(0) else {
            continue;
        };
        let stored = leases.checkpoint(g, shard, importer, held.epoch, cp).await;
        leases.release(g, shard, importer, held.epoch).await?;
        stored?;
        return Ok(());
    }
    bail!("shard {shard}: the lease kept changing while importing")
}

// ---------------------------------------------------------------- export

/// Hash key ranges and children of every shard, from ListShards.
async fn shard_layout(stream: &str) -> Result<(HashMap<String, (String, String)>, HashMap<String, Vec<String>>)> {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let client = aws_sdk_kinesis::Client::new(&config);
    let (mut ranges, mut children) = (HashMap::new(), HashMap::<String, Vec<String>>::new());
    let mut next: Option<String> = None;
    loop {
        let request = match &next {
            Some(token) => client.list_shards().next_token(token),
            None if StreamArn::parse(stream).is_some() => client.list_shards().stream_arn(stream),
            None => client.list_shards().stream_name(stream),
        };
        let out = request.send().await.with_context(|| format!("ListShards of stream {stream}"))?;
        for s in out.shards() {
            if let Some(r) = s.hash_key_range() {
                ranges.insert(
                    s.shard_id().to_owned(),
                    (r.starting_hash_key().to_owned(), r.ending_hash_key().to_owned()),
                );
            }
            for p in [s.parent_shard_id(), s.adjacent_parent_shard_id()].into_iter().flatten() {
                children.entry(p.to_owned()).or_default().push(s.shard_id().to_owned());
            }
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_owned()),
            _ => break,
        }
    }
    for c in children.values_mut() {
        c.sort();
        c.dedup();
    }
    Ok((ranges, children))
}

async fn export(args: ExportArgs) -> Result<()> {
    let c = &args.common;
    let leases = Leases::new(store::open(&c.store).await?);
    let g = GroupKey::new(&c.app, &c.stream);
    let butler = leases.list(&g).await?;
    if butler.is_empty() {
        bail!("the store has no lease of stream {} for app {}", c.stream, c.app);
    }
    if let Some(l) = butler.iter().find(|l| l.value.owner.is_some()) {
        if !c.force {
            bail!(
                "Butler session {} holds the lease of shard {}; stop the Butler consumers first, or pass --force",
                l.value.owner.as_deref().unwrap_or_default(),
                l.value.shard_id
            );
        }
    }
    if let Some(id) = &args.stream_identifier {
        if id.split(':').count() != 3 {
            bail!("--stream-identifier {id:?} is not account:stream:creationEpoch");
        }
    }
    let table = KclTable::open(c).await?;
    if table.check().await? {
        table.leases_checked(&c.stream, c.failover_time, c.force).await?;
    } else {
        table.create().await?;
    }
    let (ranges, children) = shard_layout(&c.stream).await?;
    let items: Vec<(String, KclCheckpoint, Item)> = butler
        .iter()
        .map(|l| {
            let l = &l.value;
            let cp = kcl_checkpoint(&l.checkpoint, !l.parent_shard_ids.is_empty(), args.initial_position);
            let kids = children.get(&l.shard_id).cloned().unwrap_or_default();
            let item = kcl_item(l, &cp, args.stream_identifier.as_deref(), &kids, ranges.get(&l.shard_id));
            (l.shard_id.clone(), cp, item)
        })
        .collect();
    for (shard, _, item) in &items {
        table
            .client
            .put_item()
            .table_name(&table.name)
            .set_item(Some(item.clone()))
            .send()
            .await
            .map_err(|e| store::dynamodb::classify(&table.name, &format!("PutItem of shard {shard}"), &e))?;
    }
    println!("exported {} leases of stream {} (app {}) into KCL table {}:", items.len(), c.stream, c.app, c.kcl_table);
    for (shard, cp, _) in &items {
        let text = match cp.sub_sequence() {
            0 => cp.text().to_owned(),
            sub => format!("{}/{sub}", cp.text()),
        };
        println!("{shard:<24} {text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQ: &str = "49590338271490256608559692538361571095921575989136588898";

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    fn n(v: u64) -> AttributeValue {
        AttributeValue::N(v.to_string())
    }

    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn base(key: &str, checkpoint: &str) -> Item {
        item(&[
            ("leaseKey", s(key)),
            ("leaseOwner", s("worker-1")),
            ("leaseCounter", n(42)),
            ("checkpoint", s(checkpoint)),
            ("checkpointSubSequenceNumber", n(0)),
            ("ownerSwitchesSinceCheckpoint", n(1)),
        ])
    }

    #[test]
    fn decimal_and_sub_sequence_checkpoints_are_kept() {
        let mut i = base("shardId-000000000001", SEQ);
        i.insert("checkpointSubSequenceNumber".into(), n(3));
        i.insert("parentShardId".into(), AttributeValue::Ss(vec!["shardId-000000000000".into()]));
        i.insert("throughputKBps".into(), AttributeValue::N("12.5".into()));
        i.insert("checkpointOwner".into(), s("worker-1"));
        let l = parse_kcl_item(&i).unwrap().unwrap();
        assert_eq!(
            (l.shard_id.as_str(), l.owner.as_deref(), l.counter),
            ("shardId-000000000001", Some("worker-1"), 42)
        );
        assert_eq!(l.parents, ["shardId-000000000000"]);
        let (cp, note) = l.checkpoint.to_butler();
        assert_eq!(cp, Checkpoint::At { sequence: SequenceNumber::parse(SEQ).unwrap(), sub_sequence: 3 });
        assert_eq!(note, None);
    }

    #[test]
    fn sentinels_map_to_no_checkpoint_except_shard_end() {
        for (text, want) in [
            ("TRIM_HORIZON", Checkpoint::None),
            ("LATEST", Checkpoint::None),
            ("AT_TIMESTAMP", Checkpoint::None),
            ("SHARD_END", Checkpoint::ShardEnd),
        ] {
            let l = parse_kcl_item(&base("shardId-0", text)).unwrap().unwrap();
            let (cp, note) = l.checkpoint.to_butler();
            assert_eq!(cp, want, "{text}");
            assert_eq!(note.is_some(), want == Checkpoint::None, "{text}");
            assert_eq!(l.checkpoint.text(), text);
        }
    }

    #[test]
    fn rows_that_are_not_leases_are_skipped() {
        let mut i = base("worker-1", "TRIM_HORIZON");
        i.insert("entityType".into(), s("WORKER_METRICS"));
        assert_eq!(parse_kcl_item(&i).unwrap(), None);
        let mut i = base("shardId-0", "LATEST");
        i.insert("entityType".into(), s("LEASE"));
        assert!(parse_kcl_item(&i).unwrap().is_some());
    }

    #[test]
    fn multi_stream_keys_name_their_stream() {
        let mut i = base("123456789012:orders:1700000000:shardId-000000000007", SEQ);
        i.insert("streamName".into(), s("123456789012:orders:1700000000"));
        i.insert("shardId".into(), s("shardId-000000000007"));
        let l = parse_kcl_item(&i).unwrap().unwrap();
        assert_eq!(l.shard_id, "shardId-000000000007");
        assert_eq!((l.stream_name(), l.account()), (Some("orders"), Some("123456789012")));
        assert!(belongs_to(&l, "orders"));
        assert!(!belongs_to(&l, "payments"));
        assert!(belongs_to(&l, "arn:aws:kinesis:us-east-1:123456789012:stream/orders"));
        assert!(!belongs_to(&l, "arn:aws:kinesis:us-east-1:999999999999:stream/orders"), "another account's");
        let single = parse_kcl_item(&base("shardId-0", SEQ)).unwrap().unwrap();
        assert!(belongs_to(&single, "anything"), "a single-stream table is the app's one stream");
        let both = vec![l.clone(), single.clone()];
        assert_eq!(select_stream(both.clone(), "orders"), std::slice::from_ref(&l), "its multi-stream leases");
        assert_eq!(select_stream(both, "other"), [single], "else the single-stream ones");

        i.insert("shardId".into(), s("shardId-000000000008"));
        assert!(parse_kcl_item(&i).unwrap_err().contains("does not match"));
        assert!(parse_kcl_item(&base("a:b:shardId-0", SEQ)).unwrap_err().contains("neither a shard id"));
    }

    #[test]
    fn wrong_types_and_missing_attributes_are_named() {
        let mut i = base("shardId-0", SEQ);
        i.insert("leaseCounter".into(), s("42"));
        assert_eq!(parse_kcl_item(&i).unwrap_err(), "attribute leaseCounter is S, KCL writes N");
        let mut i = base("shardId-0", SEQ);
        i.insert("parentShardId".into(), s("shardId-x"));
        assert_eq!(parse_kcl_item(&i).unwrap_err(), "attribute parentShardId is S, KCL writes SS");
        let mut i = base("shardId-0", SEQ);
        i.remove("checkpoint");
        assert!(parse_kcl_item(&i).unwrap_err().contains("no checkpoint"));
        assert!(parse_kcl_item(&base("shardId-0", "12ab")).unwrap_err().contains("neither a sequence number"));
        assert!(parse_kcl_item(&item(&[("pk", s("x"))])).unwrap_err().contains("leaseKey"));
    }

    #[test]
    fn export_items_read_back_as_the_same_lease() {
        let lease = Lease {
            shard_id: "shardId-000000000002".into(),
            parent_shard_ids: vec!["shardId-000000000000".into()],
            checkpoint: Checkpoint::At { sequence: SequenceNumber::parse(SEQ).unwrap(), sub_sequence: 2 },
            ..Lease::new(&ShardInfo { shard_id: String::new(), parent_shard_ids: vec![], closed: false })
        };
        let cp = kcl_checkpoint(&lease.checkpoint, true, InitialPosition::Latest);
        let range = ("0".to_owned(), "170141183460469231731687303715884105727".to_owned());
        let kids = vec!["shardId-000000000005".to_owned()];
        for id in [None, Some("123456789012:orders:1700000000")] {
            let back = parse_kcl_item(&kcl_item(&lease, &cp, id, &kids, Some(&range))).unwrap().unwrap();
            assert_eq!(back.checkpoint.to_butler().0, lease.checkpoint);
            assert_eq!(
                (back.parents, back.children, back.hash_range),
                (lease.parent_shard_ids.clone(), kids.clone(), Some(range.clone()))
            );
            assert_eq!((back.owner, back.counter, back.stream_identifier.as_deref()), (None, 0, id));
        }
    }

    #[test]
    fn no_checkpoint_exports_as_the_initial_position_and_children_from_their_start() {
        let none = Checkpoint::None;
        assert_eq!(kcl_checkpoint(&none, false, InitialPosition::Latest), KclCheckpoint::Latest);
        assert_eq!(kcl_checkpoint(&none, false, InitialPosition::TrimHorizon), KclCheckpoint::TrimHorizon);
        assert_eq!(kcl_checkpoint(&none, true, InitialPosition::Latest), KclCheckpoint::TrimHorizon);
        assert_eq!(kcl_checkpoint(&Checkpoint::ShardEnd, true, InitialPosition::Latest), KclCheckpoint::ShardEnd);
    }

    #[test]
    fn live_leases_are_those_whose_counter_moved() {
        let l = |key: &str, owner: Option<&str>, counter| KclLease {
            lease_key: key.into(),
            stream_identifier: None,
            shard_id: key.into(),
            owner: owner.map(str::to_owned),
            counter,
            checkpoint: KclCheckpoint::Latest,
            pending_checkpoint: false,
            parents: vec![],
            children: vec![],
            hash_range: None,
        };
        let before = [l("a", Some("w"), 1), l("b", Some("w"), 5), l("c", None, 1)];
        let after = [l("a", Some("w"), 2), l("b", Some("w"), 5), l("c", None, 9), l("d", Some("w"), 1)];
        let live: Vec<&str> = live_leases(&before, &after).iter().map(|l| l.lease_key.as_str()).collect();
        assert_eq!(live, ["a", "d"], "renewed, or newly taken; a free lease is never live");
    }
}
