//! Redis store: `redis://…`, `rediss://…` (one server, a [`ConnectionManager`]) and
//! `redis+cluster://host:port[,host:port…]`, `rediss+cluster://…` (Redis Cluster, the
//! crate's async cluster client). One type; only the connection differs.
//!
//! All keys of one app and stream share the hash tag `{kb:<len(app)>:<app>:<stream>}` (after
//! the optional `?prefix=…`), so every multi-key script runs on one cluster slot:
//! - `…:v2:leases` hash: shard id → `<version>:<lease JSON>`
//! - `…:v2:sessions` hash: session id → `<version>:<heartbeat>:<session JSON>`
//! - `…:v2:generation` string: bumped by every script call that wrote a lease;
//! - `…:v2:changed` sorted set: shard id scored by the generation that last wrote it, for
//!   `read_leases_since` (a changed-since read);
//! - `…:v2:changes`: the pub/sub channel of `watch` / `notify`.
//!
//! No lease rule lives here: the scripts only compare and bump versions (the
//! compare-and-set contract of [`LeaseStore`]); the JSON is written and read only by Rust.
//! Cost: every call is one command (a read or one script with two or three commands
//! inside), however many leases or sessions it names.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use serde::{Deserialize, Serialize};

use super::{
    take_query_param, watch_stream, Checkpoint, GroupKey, Lease, LeaseStore, LeaseWrite, SessionRecord, StoreError,
    StoreResult, Versioned,
};
use crate::redact::redact_url;

/// Helpers of every script: `HMGET`/`HSET` in chunks (Lua's `unpack` is bounded).
const LUA_LIB: &str = r#"
local function hmget(key, fields)
  local out = {}
  for s = 1, #fields, 1000 do
    local part = redis.call('HMGET', key, unpack(fields, s, math.min(s + 999, #fields)))
    for j = 1, #part do out[s + j - 1] = part[j] end
  end
  return out
end
local function hset(key, pairs)
  for s = 1, #pairs, 2000 do
    redis.call('HSET', key, unpack(pairs, s, math.min(s + 1999, #pairs)))
  end
end
local function version(raw)
  if not raw then return '' end
  return string.match(raw, '^(%d+):')
end
local function bump(v)
  if v == '' then return '1' end
  return string.format('%d', tonumber(v) + 1)
end
"#;

/// KEYS: leases, generation, changed. ARGV: (shard, expected version or '' for absent, lease JSON)*.
/// Mirrors the compare-and-set of `LeaseStore::write_leases`: each write is stored only at
/// its expected version. Returns the new version per write, '' on a conflict.
const WRITE_LEASES: &str = r#"
local n = #ARGV / 3
local shards = {}
for i = 1, n do shards[i] = ARGV[3 * i - 2] end
local current = hmget(KEYS[1], shards)
local out, set = {}, {}
for i = 1, n do
  local cur = version(current[i])
  if cur == ARGV[3 * i - 1] then
    local v = bump(cur)
    set[#set + 1] = shards[i]
    set[#set + 1] = v .. ':' .. ARGV[3 * i]
    out[i] = v
  else
    out[i] = ''
  end
end
if #set > 0 then
  hset(KEYS[1], set)
  local g = redis.call('INCR', KEYS[2])
  local scored = {}
  for s = 1, #set, 2 do
    scored[#scored + 1] = g
    scored[#scored + 1] = set[s]
  end
  for s = 1, #scored, 2000 do
    redis.call('ZADD', KEYS[3], unpack(scored, s, math.min(s + 1999, #scored)))
  end
end
return out
"#;

/// KEYS: leases, generation, changed. ARGV: since. The generation, then (shard, raw)* of
/// every lease written after `since` (`LeaseStore::read_leases_since`); every lease when
/// `since` is 0 or ahead of the generation (the store was emptied).
const READ_LEASES_SINCE: &str = r#"
local g = tonumber(redis.call('GET', KEYS[2]) or '0')
local since = tonumber(ARGV[1])
local out = {tostring(g)}
if g == since then return out end
if since == 0 or g < since then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all do out[#out + 1] = all[i] end
  return out
end
local shards = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. since, '+inf')
if #shards == 0 then return out end
local raw = hmget(KEYS[1], shards)
for i = 1, #shards do
  if raw[i] then
    out[#out + 1] = shards[i]
    out[#out + 1] = raw[i]
  end
end
return out
"#;

/// KEYS: sessions. ARGV: id, expected version or '' for absent, heartbeat, session JSON.
/// Mirrors the compare-and-set of `LeaseStore::write_session`. Returns the new version or ''.
const WRITE_SESSION: &str = r#"
local cur = version(redis.call('HGET', KEYS[1], ARGV[1]))
if cur ~= ARGV[2] then return '' end
local v = bump(cur)
redis.call('HSET', KEYS[1], ARGV[1], v .. ':' .. ARGV[3] .. ':' .. ARGV[4])
return v
"#;

/// KEYS: sessions. ARGV: session ids. Bumps version and heartbeat of those that exist
/// (`LeaseStore::beat_sessions`); returns the missing ids.
const BEAT_SESSIONS: &str = r#"
local current = hmget(KEYS[1], ARGV)
local missing, set = {}, {}
for i = 1, #ARGV do
  if current[i] then
    local v, hb, rest = string.match(current[i], '^(%d+):(%d+):(.*)$')
    set[#set + 1] = ARGV[i]
    set[#set + 1] = bump(v) .. ':' .. bump(hb) .. ':' .. rest
  else
    missing[#missing + 1] = ARGV[i]
  end
end
if #set > 0 then hset(KEYS[1], set) end
return missing
"#;

/// KEYS: sessions. ARGV: id, expected version or '' for any. Mirrors the conditional
/// delete of `LeaseStore::delete_session`. Returns 1 if deleted.
const DELETE_SESSION: &str = r#"
local cur = version(redis.call('HGET', KEYS[1], ARGV[1]))
if cur == '' or (ARGV[2] ~= '' and cur ~= ARGV[2]) then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
"#;

struct Scripts {
    write_leases: Script,
    read_leases_since: Script,
    write_session: Script,
    beat_sessions: Script,
    delete_session: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{LUA_LIB}{body}"));
        Self {
            write_leases: s(WRITE_LEASES),
            read_leases_since: s(READ_LEASES_SINCE),
            write_session: s(WRITE_SESSION),
            beat_sessions: s(BEAT_SESSIONS),
            delete_session: s(DELETE_SESSION),
        }
    }
}

/// The connection: one server or a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A lease store on Redis (one server or a cluster).
pub struct RedisStore {
    conn: Conn,
    /// For `watch`: the server, or one node of the cluster (cluster nodes forward every
    /// `PUBLISH` to each other, so one subscription hears them all).
    pubsub: redis::Client,
    shown: String,
    prefix: String,
    scripts: Scripts,
}

/// The keys of one group.
struct Keys {
    leases: String,
    sessions: String,
    generation: String,
    /// Shard → generation of its last write.
    changed: String,
    /// Pub/sub channel of `watch` and `notify`.
    changes: String,
}

/// A lease as stored (after its version).
#[derive(Serialize, Deserialize)]
struct StoredLease {
    owner: Option<String>,
    epoch: u64,
    checkpoint: String,
    sub: u64,
    parents: Vec<String>,
    closed: bool,
    handoff: Option<String>,
}

/// The fields of a session besides id, version and heartbeat.
#[derive(Serialize, Deserialize)]
struct StoredSession {
    instance_id: String,
    client_name: String,
}

fn redis_err(e: RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StoreError::Unavailable(format!("redis: {e}"))
    } else {
        StoreError::Backend(format!("redis: {e}"))
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt {what} in redis: {e}"))
}

fn json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(e.to_string()))
}

fn split_version(raw: &str) -> StoreResult<(u64, &str)> {
    let (v, rest) = raw.split_once(':').ok_or_else(|| corrupt("record", "no version"))?;
    Ok((v.parse().map_err(|e| corrupt("version", e))?, rest))
}

fn decode_lease(shard_id: &str, raw: &str) -> StoreResult<Versioned<Lease>> {
    let (version, body) = split_version(raw)?;
    let s: StoredLease = serde_json::from_str(body).map_err(|e| corrupt("lease", e))?;
    let value = Lease {
        shard_id: shard_id.to_owned(),
        owner: s.owner,
        epoch: s.epoch,
        checkpoint: Checkpoint::from_stored(&s.checkpoint, s.sub)?,
        parent_shard_ids: s.parents,
        closed: s.closed,
        handoff_to: s.handoff,
    };
    Ok(Versioned { version, value })
}

fn encode_lease(l: &Lease) -> StoreResult<String> {
    json(&StoredLease {
        owner: l.owner.clone(),
        epoch: l.epoch,
        checkpoint: l.checkpoint.as_text().to_owned(),
        sub: l.checkpoint.sub_sequence(),
        parents: l.parent_shard_ids.clone(),
        closed: l.closed,
        handoff: l.handoff_to.clone(),
    })
}

fn decode_session(session_id: &str, raw: &str) -> StoreResult<Versioned<SessionRecord>> {
    let (version, rest) = split_version(raw)?;
    let (heartbeat, body) = split_version(rest)?;
    let s: StoredSession = serde_json::from_str(body).map_err(|e| corrupt("session", e))?;
    let value = SessionRecord {
        session_id: session_id.to_owned(),
        instance_id: s.instance_id,
        client_name: s.client_name,
        heartbeat,
    };
    Ok(Versioned { version, value })
}

/// A script's version reply: '' is a conflict.
fn version_reply(v: &str) -> StoreResult<Option<u64>> {
    if v.is_empty() {
        Ok(None)
    } else {
        v.parse().map(Some).map_err(|e| corrupt("version reply", e))
    }
}

fn expected_arg(expected: Option<u64>) -> String {
    expected.map(|v| v.to_string()).unwrap_or_default()
}

/// The node URLs of a `redis+cluster://[user:pass@]h1:p1,h2:p2[/…]` URL (without query).
fn cluster_nodes(url: &str, tls: bool) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let scheme = if tls { "rediss" } else { "redis" };
    hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("{scheme}://{userinfo}{h}")).collect()
}

impl RedisStore {
    /// Connects to `redis://…`, `rediss://…`, `redis+cluster://h:p[,h:p…]` or
    /// `rediss+cluster://…`. An optional query parameter `prefix=…` (without braces) is
    /// prepended to every key.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let (url, prefix) = take_query_param(url, "prefix");
        let prefix = prefix.unwrap_or_default();
        if prefix.contains(['{', '}']) {
            return Err(StoreError::Backend("redis key prefix must not contain braces".into()));
        }
        let shown = redact_url(&url);
        let connect_failed = |e: RedisError| match redis_err(e) {
            StoreError::Unavailable(m) => StoreError::Unavailable(format!("cannot connect to {shown}: {m}")),
            other => StoreError::Backend(format!("cannot connect to {shown}: {other}")),
        };
        let tls = url.starts_with("rediss+cluster://");
        let bad_url = |e: RedisError| StoreError::Backend(format!("bad redis URL {shown}: {e}"));
        let (conn, pubsub) = if tls || url.starts_with("redis+cluster://") {
            let nodes = cluster_nodes(&url, tls);
            if nodes.is_empty() {
                return Err(StoreError::Backend(format!("redis cluster URL {shown} names no host:port")));
            }
            let pubsub = redis::Client::open(nodes[0].as_str()).map_err(bad_url)?;
            let client = ClusterClientBuilder::new(nodes)
                .connection_timeout(Duration::from_secs(5))
                .response_timeout(Duration::from_secs(10))
                .retries(3)
                .build()
                .map_err(|e| StoreError::Backend(format!("bad redis cluster URL {shown}: {e}")))?;
            let conn = tokio::time::timeout(Duration::from_secs(20), client.get_async_connection())
                .await
                .map_err(|_| StoreError::Unavailable(format!("cannot connect to {shown}: timed out")))?
                .map_err(|e| {
                    // The cluster client reports unreachable seed nodes without an I/O kind.
                    let msg = redis_err(e).to_string();
                    if msg.contains("uthentication") || msg.contains("WRONGPASS") || msg.contains("NOAUTH") {
                        StoreError::Backend(format!("cannot connect to {shown}: {msg}"))
                    } else {
                        StoreError::Unavailable(format!("cannot connect to {shown}: {msg}"))
                    }
                })?;
            (Conn::Cluster(conn), pubsub)
        } else {
            let client = redis::Client::open(url.as_str()).map_err(bad_url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(Duration::from_secs(10)))
                .set_number_of_retries(3);
            let pubsub = client.clone();
            (Conn::Single(ConnectionManager::new_with_config(client, config).await.map_err(connect_failed)?), pubsub)
        };
        Ok(Self { conn, pubsub, shown, prefix, scripts: Scripts::new() })
    }

    fn keys(&self, group: &GroupKey) -> Keys {
        let base = format!("{}{{kb:{}:{}:{}}}:v2", self.prefix, group.app.len(), group.app, group.stream);
        Keys {
            leases: format!("{base}:leases"),
            sessions: format!("{base}:sessions"),
            generation: format!("{base}:generation"),
            changed: format!("{base}:changed"),
            changes: format!("{base}:changes"),
        }
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }
}

#[async_trait]
impl LeaseStore for RedisStore {
    async fn read_leases(&self, group: &GroupKey) -> StoreResult<Vec<Versioned<Lease>>> {
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys(group).leases)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        let mut leases = all.iter().map(|(shard, raw)| decode_lease(shard, raw)).collect::<StoreResult<Vec<_>>>()?;
        leases.sort_by(|a, b| a.value.shard_id.cmp(&b.value.shard_id));
        Ok(leases)
    }

    async fn read_lease(&self, group: &GroupKey, shard_id: &str) -> StoreResult<Option<Versioned<Lease>>> {
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.keys(group).leases)
            .arg(shard_id)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        raw.map(|r| decode_lease(shard_id, &r)).transpose()
    }

    async fn write_leases(&self, group: &GroupKey, writes: &[LeaseWrite]) -> StoreResult<Vec<Option<u64>>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.keys(group);
        let mut call = self.scripts.write_leases.key(keys.leases);
        call.key(keys.generation).key(keys.changed);
        for w in writes {
            call.arg(&w.lease.shard_id).arg(expected_arg(w.expected)).arg(encode_lease(&w.lease)?);
        }
        let reply: Vec<String> = call.invoke_async(&mut self.conn()).await.map_err(redis_err)?;
        if reply.len() != writes.len() {
            return Err(StoreError::Backend(format!("redis: {} replies for {} writes", reply.len(), writes.len())));
        }
        reply.iter().map(|v| version_reply(v)).collect()
    }

    async fn lease_generation(&self, group: &GroupKey) -> StoreResult<u64> {
        let n: Option<u64> = redis::cmd("GET")
            .arg(self.keys(group).generation)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(n.unwrap_or(0))
    }

    async fn read_leases_since(&self, group: &GroupKey, since: u64) -> StoreResult<(u64, Vec<Versioned<Lease>>)> {
        let keys = self.keys(group);
        let mut call = self.scripts.read_leases_since.key(keys.leases);
        call.key(keys.generation).key(keys.changed).arg(since);
        let reply: Vec<String> = call.invoke_async(&mut self.conn()).await.map_err(redis_err)?;
        let (generation, pairs) = reply.split_first().ok_or_else(|| corrupt("changed-since reply", "empty"))?;
        let generation = generation.parse().map_err(|e| corrupt("generation", e))?;
        let mut leases =
            pairs.chunks_exact(2).map(|pair| decode_lease(&pair[0], &pair[1])).collect::<StoreResult<Vec<_>>>()?;
        leases.sort_by(|a, b| a.value.shard_id.cmp(&b.value.shard_id));
        Ok((generation, leases))
    }

    async fn read_sessions(&self, group: &GroupKey) -> StoreResult<Vec<Versioned<SessionRecord>>> {
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys(group).sessions)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        let mut sessions = all.iter().map(|(id, raw)| decode_session(id, raw)).collect::<StoreResult<Vec<_>>>()?;
        sessions.sort_by(|a, b| a.value.session_id.cmp(&b.value.session_id));
        Ok(sessions)
    }

    async fn write_session(
        &self,
        group: &GroupKey,
        session: &SessionRecord,
        expected: Option<u64>,
    ) -> StoreResult<Option<u64>> {
        let body = json(&StoredSession {
            instance_id: session.instance_id.clone(),
            client_name: session.client_name.clone(),
        })?;
        let reply: String = self
            .scripts
            .write_session
            .key(self.keys(group).sessions)
            .arg(&session.session_id)
            .arg(expected_arg(expected))
            .arg(session.heartbeat.to_string())
            .arg(body)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        version_reply(&reply)
    }

    async fn beat_sessions(&self, group: &GroupKey, session_ids: &[String]) -> StoreResult<Vec<String>> {
        if session_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.scripts.beat_sessions.key(self.keys(group).sessions);
        for id in session_ids {
            call.arg(id);
        }
        call.invoke_async(&mut self.conn()).await.map_err(redis_err)
    }

    async fn delete_session(&self, group: &GroupKey, session_id: &str, expected: Option<u64>) -> StoreResult<bool> {
        let n: i64 = self
            .scripts
            .delete_session
            .key(self.keys(group).sessions)
            .arg(session_id)
            .arg(expected_arg(expected))
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(n == 1)
    }

    async fn ping(&self) -> StoreResult<()> {
        redis::cmd("PING").query_async::<()>(&mut self.conn()).await.map_err(redis_err)
    }

    /// Subscribes to the group's channel on its own connection. Yields once when the
    /// subscription is in place (changes before it may have been missed), then on every
    /// `notify`; ends when the subscription is lost (callers keep polling meanwhile).
    fn watch(&self, group: &GroupKey) -> Option<BoxStream<'static, ()>> {
        let (client, channel) = (self.pubsub.clone(), self.keys(group).changes);
        let subscribe = async move {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub.into_on_message().map(|_| ()))
        };
        Some(watch_stream(format!("redis {}", self.shown), subscribe))
    }

    async fn notify(&self, group: &GroupKey) -> StoreResult<()> {
        redis::cmd("PUBLISH")
            .arg(self.keys(group).changes)
            .arg("")
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(redis_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_every_node_with_the_credentials() {
        assert_eq!(cluster_nodes("redis+cluster://h1:7301,h2:7302/", false), ["redis://h1:7301", "redis://h2:7302"]);
        assert_eq!(
            cluster_nodes("rediss+cluster://u:pw@h1:1,h2:2", true),
            ["rediss://u:pw@h1:1", "rediss://u:pw@h2:2"]
        );
        assert!(cluster_nodes("redis+cluster://", false).is_empty());
    }

    #[test]
    fn records_round_trip() {
        let lease = Lease {
            shard_id: "s".into(),
            owner: Some("a".into()),
            epoch: u64::MAX,
            checkpoint: Checkpoint::from_stored("49590338271490256608559692538361571095921575989136588898", 7).unwrap(),
            parent_shard_ids: vec!["p,q".into(), "r".into()],
            closed: true,
            handoff_to: Some("b".into()),
        };
        let raw = format!("12:{}", encode_lease(&lease).unwrap());
        assert_eq!(decode_lease("s", &raw).unwrap(), Versioned { version: 12, value: lease });
        let s = decode_session("x", r#"3:9:{"instance_id":"i","client_name":"c:d"}"#).unwrap();
        assert_eq!((s.version, s.value.heartbeat, s.value.client_name.as_str()), (3, 9, "c:d"));
        assert!(decode_lease("s", "garbage").is_err());
    }
}
