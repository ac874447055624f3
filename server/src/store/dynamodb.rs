//! `dynamodb://TABLE[?region=R][&create=false]`: leases and sessions in one DynamoDB table.
//!
//! One table per store URL, on-demand billing, created when missing (unless
//! `create=false`). Items are keyed by `pk` (the group: app and stream) and `sk`
//! (`lease#<shard>`, `session#<id>` or `gen`); every lease and session item carries a
//! `version` number, and every write is a single-item conditional write on it
//! (`#v = :expected`, or `attribute_not_exists(pk)` to create). Reads are consistent
//! (`ConsistentRead`); batch reads are one paginated Query per group and kind.
//!
//! DynamoDB has neither a clock (nothing here needs one: liveness is judged by observed
//! heartbeat change) nor, on the test emulator dynalite, transactions, so the backend uses
//! only conditional single-item writes, GetItem and Query. Where the trait asks for one
//! round trip for many items (`write_leases`, `beat_sessions`), DynamoDB has no
//! multi-item conditional script: they are one request per item, sent concurrently, and
//! the steady-state cost counts each of them. A lease write also bumps the group's
//! generation item, after the lease write (the comment on `bump_generation` argues why).
//!
//! The AWS settings come from the standard chain (credentials, `AWS_REGION`,
//! `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL`); `?region=` overrides the region.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::{
    take_query_param, Checkpoint, GroupKey, Lease, LeaseStore, LeaseWrite, SessionRecord, StoreError, StoreResult,
    Versioned,
};

/// A DynamoDB item.
type Item = HashMap<String, AttributeValue>;

const LEASE_PREFIX: &str = "lease#";
const SESSION_PREFIX: &str = "session#";
const GENERATION_SK: &str = "gen";
/// Concurrent single-item requests of one `write_leases` / `beat_sessions` call.
const CONCURRENCY: usize = 16;

/// The options of a `dynamodb://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamoUrl {
    /// Table name.
    pub table: String,
    /// Region override (`?region=`); the AWS chain's region otherwise.
    pub region: Option<String>,
    /// Create the table when it is missing (`?create=false` turns it off).
    pub create: bool,
}

impl DynamoUrl {
    /// Parses `dynamodb://TABLE[?region=R][&create=true|false]`.
    pub fn parse(url: &str) -> StoreResult<Self> {
        let rest = url
            .strip_prefix("dynamodb://")
            .ok_or_else(|| StoreError::Backend(format!("not a dynamodb:// URL: {url:?}")))?;
        let (rest, region) = take_query_param(rest, "region");
        let (rest, create) = take_query_param(&rest, "create");
        if let Some((_, unknown)) = rest.split_once('?') {
            return Err(StoreError::Backend(format!(
                "unknown option {unknown:?} in {url:?}: dynamodb:// takes region= and create="
            )));
        }
        let table = rest.trim_end_matches('/').to_owned();
        validate_table_name(&table)?;
        let create = match create.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(StoreError::Backend(format!(
                    "create={other:?} in {url:?}: use create=true or create=false"
                )))
            }
        };
        Ok(Self { table, region: region.filter(|r| !r.is_empty()), create })
    }
}

/// DynamoDB's rule for table names: 3 to 255 of `a-z A-Z 0-9 _ - .`.
pub fn validate_table_name(table: &str) -> StoreResult<()> {
    let ok_chars = table.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if (3..=255).contains(&table.len()) && ok_chars {
        Ok(())
    } else {
        Err(StoreError::Backend(format!(
            "invalid DynamoDB table name {table:?}: 3 to 255 characters of a-z, A-Z, 0-9, '_', '-', '.'"
        )))
    }
}

/// A DynamoDB client from the standard AWS chain (`AWS_ENDPOINT_URL_DYNAMODB` for a local
/// endpoint), with bounded call timeouts; `region` overrides the chain's region.
pub async fn client(region: Option<&str>) -> Client {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(10))
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts);
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    Client::new(&loader.load().await)
}

/// Sorts an SDK failure: throttling, capacity and connection trouble are
/// [`StoreError::Unavailable`] (retry later), anything else [`StoreError::Backend`].
/// The message names the table and the operation.
pub fn classify<E, R>(table: &str, op: &str, err: &SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let text = match err.message() {
        Some(m) => format!("DynamoDB table {table}: {op}: {}: {m}", err.code().unwrap_or("error")),
        None => format!("DynamoDB table {table}: {op}: {}", aws_sdk_dynamodb::error::DisplayErrorContext(err)),
    };
    match err {
        SdkError::ServiceError(_) => match err.code() {
            Some(
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "LimitExceededException"
                | "InternalServerError"
                | "ServiceUnavailable",
            ) => StoreError::Unavailable(text),
            _ => StoreError::Backend(text),
        },
        // Dispatch (connection), timeouts and unreadable responses.
        _ => StoreError::Unavailable(text),
    }
}

fn is_condition_failed<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    matches!(err, SdkError::ServiceError(_)) && err.code() == Some("ConditionalCheckFailedException")
}

/// The partition key of a group: the app's length first, so that no two (app, stream)
/// pairs share one.
pub fn group_pk(group: &GroupKey) -> String {
    format!("{}:{}:{}", group.app.len(), group.app, group.stream)
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'a>(item: &'a Item, name: &str) -> Result<Option<&'a str>, String> {
    match item.get(name) {
        None => Ok(None),
        Some(v) => v.as_s().map(|s| Some(s.as_str())).map_err(|_| format!("attribute {name} is not a string (S)")),
    }
}

fn get_n(item: &Item, name: &str) -> Result<Option<u64>, String> {
    match item.get(name) {
        None => Ok(None),
        Some(v) => {
            let text = v.as_n().map_err(|_| format!("attribute {name} is not a number (N)"))?;
            text.parse().map(Some).map_err(|_| format!("attribute {name} = {text} is not a whole number"))
        }
    }
}

fn required_n(item: &Item, name: &str) -> Result<u64, String> {
    get_n(item, name)?.ok_or_else(|| format!("attribute {name} is missing"))
}

/// The item of a lease at `version`.
pub fn lease_item(pk: &str, lease: &Lease, version: u64) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(pk));
    item.insert("sk".into(), s(format!("{LEASE_PREFIX}{}", lease.shard_id)));
    item.insert("version".into(), n(version));
    item.insert("epoch".into(), n(lease.epoch));
    if let Some(owner) = &lease.owner {
        item.insert("owner".into(), s(owner));
    }
    if lease.checkpoint != Checkpoint::None {
        item.insert("checkpoint".into(), s(lease.checkpoint.as_text()));
        item.insert("sub_sequence".into(), n(lease.checkpoint.sub_sequence()));
    }
    if !lease.parent_shard_ids.is_empty() {
        item.insert("parents".into(), AttributeValue::L(lease.parent_shard_ids.iter().map(s).collect()));
    }
    item.insert("closed".into(), AttributeValue::Bool(lease.closed));
    if let Some(to) = &lease.handoff_to {
        item.insert("handoff_to".into(), s(to));
    }
    item
}

/// A lease read back from its item.
pub fn lease_from_item(item: &Item) -> Result<Versioned<Lease>, String> {
    let sk = get_s(item, "sk")?.unwrap_or_default();
    let shard_id = sk.strip_prefix(LEASE_PREFIX).ok_or_else(|| format!("sort key {sk:?} is not a lease's"))?;
    let checkpoint = match get_s(item, "checkpoint")? {
        None => Checkpoint::None,
        Some(text) => Checkpoint::from_stored(text, get_n(item, "sub_sequence")?.unwrap_or(0))
            .map_err(|e| format!("lease {shard_id}: {e}"))?,
    };
    let parent_shard_ids = match item.get("parents") {
        None => Vec::new(),
        Some(v) => v
            .as_l()
            .map_err(|_| "attribute parents is not a list (L)".to_owned())?
            .iter()
            .map(|p| p.as_s().cloned().map_err(|_| "attribute parents holds a non-string".to_owned()))
            .collect::<Result<_, _>>()?,
    };
    let closed = match item.get("closed") {
        None => false,
        Some(v) => *v.as_bool().map_err(|_| "attribute closed is not a boolean (BOOL)".to_owned())?,
    };
    Ok(Versioned {
        version: required_n(item, "version")?,
        value: Lease {
            shard_id: shard_id.to_owned(),
            owner: get_s(item, "owner")?.map(str::to_owned),
            epoch: required_n(item, "epoch")?,
            checkpoint,
            parent_shard_ids,
            closed,
            handoff_to: get_s(item, "handoff_to")?.map(str::to_owned),
        },
    })
}

/// The item of a session record at `version` (empty strings are left out: older
/// DynamoDB emulators refuse them).
pub fn session_item(pk: &str, session: &SessionRecord, version: u64) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(pk));
    item.insert("sk".into(), s(format!("{SESSION_PREFIX}{}", session.session_id)));
    item.insert("version".into(), n(version));
    item.insert("heartbeat".into(), n(session.heartbeat));
    for (name, value) in [("instance_id", &session.instance_id), ("client_name", &session.client_name)] {
        if !value.is_empty() {
            item.insert(name.into(), s(value));
        }
    }
    item
}

/// A session record read back from its item.
pub fn session_from_item(item: &Item) -> Result<Versioned<SessionRecord>, String> {
    let sk = get_s(item, "sk")?.unwrap_or_default();
    let id = sk.strip_prefix(SESSION_PREFIX).ok_or_else(|| format!("sort key {sk:?} is not a session's"))?;
    Ok(Versioned {
        version: required_n(item, "version")?,
        value: SessionRecord {
            session_id: id.to_owned(),
            instance_id: get_s(item, "instance_id")?.unwrap_or_default().to_owned(),
            client_name: get_s(item, "client_name")?.unwrap_or_default().to_owned(),
            heartbeat: get_n(item, "heartbeat")?.unwrap_or(0),
        },
    })
}

/// A lease store in one DynamoDB table.
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    /// Opens the store named by a `dynamodb://` URL: checks the table (creating it when
    /// missing and allowed) and that its key is Butler's (`pk`, `sk`).
    pub async fn open(url: &str) -> StoreResult<Self> {
        let opts = DynamoUrl::parse(url)?;
        let store = Self { client: client(opts.region.as_deref()).await, table: opts.table };
        store.ensure_table(opts.create).await?;
        Ok(store)
    }

    /// A store over an existing client and table (the table must exist).
    pub fn from_client(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn err<E, R>(&self, op: &str, e: &SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        classify(&self.table, op, e)
    }

    fn corrupt(&self, item: &Item, why: String) -> StoreError {
        let key = |k| get_s(item, k).ok().flatten().unwrap_or("?").to_owned();
        StoreError::Backend(format!(
            "DynamoDB table {}: item (pk {:?}, sk {:?}): {why}",
            self.table,
            key("pk"),
            key("sk")
        ))
    }

    async fn ensure_table(&self, create: bool) -> StoreResult<()> {
        let t = &self.table;
        match self.client.describe_table().table_name(t).send().await {
            Ok(out) => {
                let desc = out.table().ok_or_else(|| StoreError::Backend(format!("DescribeTable {t}: no table")))?;
                let keys: Vec<(&str, &KeyType)> =
                    desc.key_schema().iter().map(|k| (k.attribute_name(), k.key_type())).collect();
                if keys != [("pk", &KeyType::Hash), ("sk", &KeyType::Range)] {
                    let names: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
                    return Err(StoreError::Backend(format!(
                        "DynamoDB table {t} is not a Kinesis Butler lease table: its key is {names:?}, \
                         not [\"pk\", \"sk\"] (a KCL lease table is read with `kinesis-butler kcl import`)"
                    )));
                }
                if desc.table_status() == Some(&TableStatus::Active) {
                    return Ok(());
                }
            }
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                if !create {
                    return Err(StoreError::Backend(format!(
                        "DynamoDB table {t} does not exist (create=false in the store URL)"
                    )));
                }
                self.create_table().await?;
            }
            Err(e) => return Err(self.err("DescribeTable", &e)),
        }
        self.wait_active().await
    }

    async fn create_table(&self) -> StoreResult<()> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| StoreError::Backend(e.to_string()))
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| StoreError::Backend(e.to_string()))
        };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(table = %self.table, "created the DynamoDB lease table (on-demand billing)");
                Ok(())
            }
            // Another instance is creating it right now.
            Err(e) if e.code() == Some("ResourceInUseException") => Ok(()),
            Err(e) => Err(self.err("CreateTable", &e)),
        }
    }

    async fn wait_active(&self) -> StoreResult<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.client.describe_table().table_name(&self.table).send().await;
            let out = out.map_err(|e| self.err("DescribeTable", &e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!("DynamoDB table {} did not become ACTIVE", self.table)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every item of the group whose sort key starts with `prefix`, following pages.
    async fn query(&self, group: &GroupKey, prefix: &str) -> StoreResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(group_pk(group)))
                .expression_attribute_values(":prefix", s(prefix))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.err("Query", &e))?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(items),
            }
        }
    }

    /// One conditional PutItem: at `expected` (or only if absent); `None` on a conflict.
    async fn put_versioned(&self, item: Item, expected: Option<u64>) -> StoreResult<Option<u64>> {
        let version = expected.unwrap_or(0) + 1;
        let mut item = item;
        item.insert("version".into(), n(version));
        let put = self.client.put_item().table_name(&self.table).set_item(Some(item));
        let put = match expected {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(v) => put
                .condition_expression("#v = :expected")
                .expression_attribute_names("#v", "version")
                .expression_attribute_values(":expected", n(v)),
        };
        match put.send().await {
            Ok(_) => Ok(Some(version)),
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(self.err("PutItem", &e)),
        }
    }

    /// Bumps the group's generation item by one.
    ///
    /// Without transactions the lease write and this bump are two calls, so their order
    /// matters. A reader (`lease_generation`, then `read_leases`) caches the leases under
    /// the generation it read first. Bumped after the lease write, a reader that sees the
    /// new generation reads leases at least as new as that write; one that read the old
    /// generation may cache newer leases under it, which only costs a re-read when the
    /// bump shows. Bumped before, a reader could cache the old leases under the new
    /// generation and never re-read them. If the writer dies between the two calls, the
    /// change is seen at the reader's next own store action or periodic shard sync, both
    /// of which drop the cache; a failed bump is reported as an error to the caller.
    async fn bump_generation(&self, group: &GroupKey) -> StoreResult<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(group_pk(group)))
            .key("sk", s(GENERATION_SK))
            .update_expression("ADD generation :one")
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map_err(|e| self.err("UpdateItem (generation)", &e))?;
        Ok(())
    }

    async fn get(&self, group: &GroupKey, sk: String) -> StoreResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .key("pk", s(group_pk(group)))
            .key("sk", s(sk))
            .send()
            .await
            .map_err(|e| self.err("GetItem", &e))?;
        Ok(out.item)
    }

    /// Bumps one session's heartbeat and version if it exists; whether it did.
    async fn beat(&self, group: &GroupKey, id: &str) -> StoreResult<bool> {
        let beat = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(group_pk(group)))
            .key("sk", s(format!("{SESSION_PREFIX}{id}")))
            .condition_expression("attribute_exists(pk)")
            .update_expression("ADD heartbeat :one, #v :one")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        match beat {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(self.err("UpdateItem (heartbeat)", &e)),
        }
    }
}

#[async_trait]
impl LeaseStore for DynamoStore {
    async fn read_leases(&self, group: &GroupKey) -> StoreResult<Vec<Versioned<Lease>>> {
        let items = self.query(group, LEASE_PREFIX).await?;
        let mut leases = items
            .iter()
            .map(|i| lease_from_item(i).map_err(|why| self.corrupt(i, why)))
            .collect::<StoreResult<Vec<_>>>()?;
        leases.sort_by(|a, b| a.value.shard_id.cmp(&b.value.shard_id));
        Ok(leases)
    }

    async fn read_lease(&self, group: &GroupKey, shard_id: &str) -> StoreResult<Option<Versioned<Lease>>> {
        match self.get(group, format!("{LEASE_PREFIX}{shard_id}")).await? {
            None => Ok(None),
            Some(item) => lease_from_item(&item).map(Some).map_err(|why| self.corrupt(&item, why)),
        }
    }

    async fn write_leases(&self, group: &GroupKey, writes: &[LeaseWrite]) -> StoreResult<Vec<Option<u64>>> {
        let pk = group_pk(group);
        // Futures made by a plain iterator (lazy until polled), at most CONCURRENCY at once.
        let puts: Vec<BoxFuture<'_, StoreResult<Option<u64>>>> =
            writes.iter().map(|w| self.put_versioned(lease_item(&pk, &w.lease, 0), w.expected).boxed()).collect();
        let results: Vec<StoreResult<Option<u64>>> = futures::stream::iter(puts).buffered(CONCURRENCY).collect().await;
        let wrote = results.iter().any(|r| matches!(r, Ok(Some(_))));
        if wrote {
            // After the writes, never before: see `bump_generation`.
            self.bump_generation(group).await?;
        }
        results.into_iter().collect()
    }

    async fn lease_generation(&self, group: &GroupKey) -> StoreResult<u64> {
        match self.get(group, GENERATION_SK.to_owned()).await? {
            None => Ok(0),
            Some(item) => {
                get_n(&item, "generation").map(Option::unwrap_or_default).map_err(|why| self.corrupt(&item, why))
            }
        }
    }

    async fn read_sessions(&self, group: &GroupKey) -> StoreResult<Vec<Versioned<SessionRecord>>> {
        let items = self.query(group, SESSION_PREFIX).await?;
        let mut sessions = items
            .iter()
            .map(|i| session_from_item(i).map_err(|why| self.corrupt(i, why)))
            .collect::<StoreResult<Vec<_>>>()?;
        sessions.sort_by(|a, b| a.value.session_id.cmp(&b.value.session_id));
        Ok(sessions)
    }

    async fn write_session(
        &self,
        group: &GroupKey,
        session: &SessionRecord,
        expected: Option<u64>,
    ) -> StoreResult<Option<u64>> {
        self.put_versioned(session_item(&group_pk(group), session, 0), expected).await
    }

    async fn beat_sessions(&self, group: &GroupKey, session_ids: &[String]) -> StoreResult<Vec<String>> {
        let beats: Vec<BoxFuture<'_, StoreResult<bool>>> =
            session_ids.iter().map(|id| self.beat(group, id).boxed()).collect();
        let beaten: Vec<StoreResult<bool>> = futures::stream::iter(beats).buffered(CONCURRENCY).collect().await;
        let mut missing = Vec::new();
        for (id, found) in session_ids.iter().zip(beaten) {
            if !found? {
                missing.push(id.clone());
            }
        }
        Ok(missing)
    }

    async fn delete_session(&self, group: &GroupKey, session_id: &str, expected: Option<u64>) -> StoreResult<bool> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(group_pk(group)))
            .key("sk", s(format!("{SESSION_PREFIX}{session_id}")));
        let delete = match expected {
            None => delete.condition_expression("attribute_exists(pk)"),
            Some(v) => delete
                .condition_expression("#v = :expected")
                .expression_attribute_names("#v", "version")
                .expression_attribute_values(":expected", n(v)),
        };
        match delete.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(self.err("DeleteItem", &e)),
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        // A GetItem of a key no group uses: a data-plane call, cheaper than DescribeTable.
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", s("ping"))
            .key("sk", s("ping"))
            .send()
            .await
            .map_err(|e| self.err("GetItem (ping)", &e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seqnum::SequenceNumber;

    const BIG: &str = "49590338271490256608559692538361571095921575989136588898";

    #[test]
    fn urls() {
        let u = DynamoUrl::parse("dynamodb://butler-leases").unwrap();
        assert_eq!(u, DynamoUrl { table: "butler-leases".into(), region: None, create: true });
        let u = DynamoUrl::parse("dynamodb://t.x_1?region=eu-west-1&create=false").unwrap();
        assert_eq!(u, DynamoUrl { table: "t.x_1".into(), region: Some("eu-west-1".into()), create: false });
        for bad in
            ["dynamodb://ab", "dynamodb://a b c", "dynamodb://tab?create=maybe", "dynamodb://tab?x=1", "redis://x"]
        {
            assert!(matches!(DynamoUrl::parse(bad), Err(StoreError::Backend(_))), "{bad}");
        }
    }

    #[test]
    fn group_keys_do_not_collide() {
        assert_ne!(group_pk(&GroupKey::new("a:b", "c")), group_pk(&GroupKey::new("a", "b:c")));
        assert_eq!(group_pk(&GroupKey::new("app", "s")), "3:app:s");
    }

    #[test]
    fn leases_round_trip_through_items() {
        let full = Lease {
            shard_id: "shardId-000000000002".into(),
            owner: Some("s1".into()),
            epoch: 7,
            checkpoint: Checkpoint::At { sequence: SequenceNumber::parse(BIG).unwrap(), sub_sequence: 3 },
            parent_shard_ids: vec!["shardId-000000000000".into(), "shardId-000000000001".into()],
            closed: true,
            handoff_to: Some("s2".into()),
        };
        let bare = Lease {
            shard_id: "s".into(),
            owner: None,
            epoch: 0,
            checkpoint: Checkpoint::None,
            parent_shard_ids: vec![],
            closed: false,
            handoff_to: None,
        };
        let ended = Lease { checkpoint: Checkpoint::ShardEnd, ..bare.clone() };
        for (lease, version) in [(full, 9), (bare, 1), (ended, 2)] {
            let item = lease_item("3:app:s", &lease, version);
            assert_eq!(lease_from_item(&item).unwrap(), Versioned { version, value: lease });
        }
    }

    #[test]
    fn bad_lease_items_are_named_errors() {
        let lease =
            Lease::new(&crate::store::ShardInfo { shard_id: "a".into(), parent_shard_ids: vec![], closed: false });
        let mut item = lease_item("p", &lease, 1);
        item.insert("epoch".into(), s("x"));
        assert!(lease_from_item(&item).unwrap_err().contains("epoch"));
        let mut item = lease_item("p", &lease, 1);
        item.insert("checkpoint".into(), s("12ab"));
        assert!(lease_from_item(&item).unwrap_err().contains("lease a"));
        let mut item = lease_item("p", &lease, 1);
        item.remove("version");
        assert!(lease_from_item(&item).unwrap_err().contains("version is missing"));
        let mut item = lease_item("p", &lease, 1);
        item.insert("sk".into(), s("session#x"));
        assert!(lease_from_item(&item).is_err());
    }

    #[test]
    fn sessions_round_trip_through_items() {
        for record in [
            SessionRecord { session_id: "x".into(), instance_id: "i".into(), client_name: "c".into(), heartbeat: 4 },
            SessionRecord {
                session_id: "y".into(),
                instance_id: String::new(),
                client_name: String::new(),
                heartbeat: 0,
            },
        ] {
            let item = session_item("p", &record, 3);
            assert!(item.values().all(|v| v.as_s().map_or(true, |s| !s.is_empty())), "no empty strings");
            assert_eq!(session_from_item(&item).unwrap(), Versioned { version: 3, value: record });
        }
    }
}
