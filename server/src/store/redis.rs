//! Redis lease store.
//!
//! All keys of one app and stream share the hash tag `{kb:<len(app)>:<app>:<stream>}`, so
//! the store works on Redis Cluster. Per group there are three keys:
//! `…:leases` (hash: shard id → lease as JSON, every value a string), `…:sessions` (hash:
//! session id → JSON of instance and client name) and `…:session_expiry` (sorted set: session
//! id scored by its expiry in ms). Every conditional change is one Lua script that applies
//! the rules of `rules.rs`; sequence numbers and epochs are compared as decimal strings.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use serde::{Deserialize, Serialize};

use super::rules::checkpoint_allowed;
use super::{
    take_query_param, Checkpoint, GroupKey, HeldLease, Lease, LeaseStore, SessionRecord, ShardInfo, StoreError,
    StoreResult, SESSION_RECORD_RETENTION_MS,
};
use crate::redact::redact_url;

/// Helpers shared by every script. A lease is a JSON object of strings: `owner`, `epoch`,
/// `expires`, `checkpoint`, `sub`, `parents`, `closed` and `handoff` (absent = none).
const LUA_LIB: &str = r#"
local function load(key, shard)
  local raw = redis.call('HGET', key, shard)
  if not raw then return nil end
  return cjson.decode(raw)
end
local function save(key, shard, l) redis.call('HSET', key, shard, cjson.encode(l)) end
local function incr(s)
  local tail = ''
  for i = #s, 1, -1 do
    local d = s:byte(i) - 48
    if d < 9 then return s:sub(1, i - 1) .. string.char(d + 49) .. tail end
    tail = '0' .. tail
  end
  return '1' .. tail
end
local function strip(s)
  s = s:gsub('^0+', '')
  if s == '' then return '0' end
  return s
end
local function cmp(a, b)
  a, b = strip(a), strip(b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end
local function regressed(cur, cur_sub, nxt, nxt_sub)
  if cur == '' then return false end
  if nxt == '' then return true end
  if cur == 'SHARD_END' then return nxt ~= 'SHARD_END' end
  if nxt == 'SHARD_END' then return false end
  local c = cmp(nxt, cur)
  if c ~= 0 then return c < 0 end
  return cmp(nxt_sub, cur_sub) < 0
end
local function held(l, now) return l.owner ~= nil and tonumber(l.expires) > now end
local function finished(l) return l.checkpoint == 'SHARD_END' end
"#;

/// KEYS: leases. ARGV: (shard, parents, closed "0"/"1")*.
const SYNC: &str = r#"
for i = 1, #ARGV, 3 do
  local l = load(KEYS[1], ARGV[i]) or {epoch = '0', expires = '0', checkpoint = '', sub = '0'}
  l.parents = ARGV[i + 1]
  if ARGV[i + 2] == '1' or l.closed == '1' then l.closed = '1' else l.closed = '0' end
  save(KEYS[1], ARGV[i], l)
end
return 1
"#;

/// KEYS: leases. ARGV: shard, expected epoch, owner, now, expires.
const ACQUIRE: &str = r#"
local l = load(KEYS[1], ARGV[1])
if not l then return {'notfound'} end
if l.epoch ~= ARGV[2] or held(l, tonumber(ARGV[4])) or finished(l) then return {'none'} end
l.owner, l.epoch, l.expires, l.handoff = ARGV[3], incr(l.epoch), ARGV[5], nil
save(KEYS[1], ARGV[1], l)
return {'ok', cjson.encode(l)}
"#;

/// KEYS: leases. ARGV: expires, (shard, owner, epoch)*. Returns the lost shard ids.
const RENEW: &str = r#"
local lost = {}
for i = 2, #ARGV, 3 do
  local l = load(KEYS[1], ARGV[i])
  if l and l.owner == ARGV[i + 1] and l.epoch == ARGV[i + 2] then
    l.expires = ARGV[1]
    save(KEYS[1], ARGV[i], l)
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"#;

/// KEYS: leases. ARGV: shard, owner, epoch, expires for a handoff target.
const RELEASE: &str = r#"
local l = load(KEYS[1], ARGV[1])
if not l then return {'notfound'} end
if l.owner ~= ARGV[2] or l.epoch ~= ARGV[3] then return {'none'} end
l.epoch = incr(l.epoch)
if l.handoff and not finished(l) then
  l.owner, l.expires = l.handoff, ARGV[4]
else
  l.owner, l.expires = nil, '0'
end
l.handoff = nil
save(KEYS[1], ARGV[1], l)
return {'ok', cjson.encode(l)}
"#;

/// KEYS: leases. ARGV: shard, epoch, target session.
const HANDOFF: &str = r#"
local l = load(KEYS[1], ARGV[1])
if not l or l.epoch ~= ARGV[2] or not l.owner then return 0 end
l.handoff = ARGV[3]
save(KEYS[1], ARGV[1], l)
return 1
"#;

/// KEYS: leases. ARGV: shard, owner, epoch, checkpoint text, sub-sequence.
const CHECKPOINT: &str = r#"
local l = load(KEYS[1], ARGV[1])
if not l then return {'notfound'} end
if l.owner ~= ARGV[2] or l.epoch ~= ARGV[3] or regressed(l.checkpoint, l.sub, ARGV[4], ARGV[5]) then
  return {'rejected', cjson.encode(l)}
end
l.checkpoint, l.sub = ARGV[4], ARGV[5]
save(KEYS[1], ARGV[1], l)
return {'ok'}
"#;

/// KEYS: leases, sessions, session_expiry. ARGV: session id.
const DROP_SESSION: &str = r#"
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local l = cjson.decode(all[i + 1])
  if l.owner == ARGV[1] then
    l.owner, l.epoch, l.expires, l.handoff = nil, incr(l.epoch), '0', nil
    save(KEYS[1], all[i], l)
  elseif l.handoff == ARGV[1] then
    l.handoff = nil
    save(KEYS[1], all[i], l)
  end
end
return 1
"#;

/// KEYS: sessions, session_expiry. ARGV: now, cutoff. Deletes (a bounded number of)
/// records that expired before the cutoff. Returns (id, expiry, info)*.
const LIST_SESSIONS: &str = r#"
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2], 'LIMIT', 0, 100)
if #stale > 0 then
  redis.call('HDEL', KEYS[1], unpack(stale))
  redis.call('ZREM', KEYS[2], unpack(stale))
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  local info = redis.call('HGET', KEYS[1], ids[i])
  if info then
    out[#out + 1] = ids[i]
    out[#out + 1] = ids[i + 1]
    out[#out + 1] = info
  end
end
return out
"#;

struct Scripts {
    sync: Script,
    acquire: Script,
    renew: Script,
    release: Script,
    handoff: Script,
    checkpoint: Script,
    drop_session: Script,
    list_sessions: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{LUA_LIB}{body}"));
        Self {
            sync: s(SYNC),
            acquire: s(ACQUIRE),
            renew: s(RENEW),
            release: s(RELEASE),
            handoff: s(HANDOFF),
            checkpoint: s(CHECKPOINT),
            drop_session: s(DROP_SESSION),
            list_sessions: s(LIST_SESSIONS),
        }
    }
}

/// A lease store on Redis (standalone or Cluster).
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    scripts: Scripts,
}

/// The keys of one group.
struct Keys {
    leases: String,
    sessions: String,
    session_expiry: String,
}

/// A lease as the scripts store it.
#[derive(Deserialize)]
struct StoredLease {
    owner: Option<String>,
    epoch: String,
    expires: String,
    checkpoint: String,
    sub: String,
    #[serde(default)]
    parents: String,
    #[serde(default)]
    closed: String,
    handoff: Option<String>,
}

/// The non-key fields of a session.
#[derive(Serialize, Deserialize)]
struct StoredSession {
    instance_id: String,
    client_name: String,
}

fn redis_err(e: RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt {what} in redis: {e}"))
}

fn decode_lease(shard_id: &str, json: &str) -> StoreResult<Lease> {
    let s: StoredLease = serde_json::from_str(json).map_err(|e| corrupt("lease", e))?;
    let sub = s.sub.parse().map_err(|e| corrupt("sub-sequence", e))?;
    Ok(Lease {
        shard_id: shard_id.to_owned(),
        owner: s.owner,
        epoch: s.epoch.parse().map_err(|e| corrupt("epoch", e))?,
        expires_at_ms: s.expires.parse().map_err(|e| corrupt("expiry", e))?,
        checkpoint: Checkpoint::from_stored(&s.checkpoint, sub)?,
        parent_shard_ids: s.parents.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        closed: s.closed == "1",
        handoff_to: s.handoff,
    })
}

fn not_found(group: &GroupKey, shard_id: &str) -> StoreError {
    StoreError::NotFound { app: group.app.clone(), stream: group.stream.clone(), shard_id: shard_id.to_owned() }
}

/// Reads an `{'ok', lease}` / `{'none'}` / `{'notfound'}` script reply.
fn lease_reply(group: &GroupKey, shard_id: &str, reply: &[String]) -> StoreResult<Option<Lease>> {
    match reply {
        [kind, json] if kind == "ok" => decode_lease(shard_id, json).map(Some),
        [kind] if kind == "none" => Ok(None),
        [kind] if kind == "notfound" => Err(not_found(group, shard_id)),
        other => Err(StoreError::Backend(format!("unexpected script reply {other:?}"))),
    }
}

impl RedisStore {
    /// Connects to `redis://…` or `rediss://…`. An optional query parameter `prefix=…`
    /// (without braces) is prepended to every key.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let (url, prefix) = take_query_param(url, "prefix");
        let prefix = prefix.unwrap_or_default();
        if prefix.contains(['{', '}']) {
            return Err(StoreError::Backend("redis key prefix must not contain braces".into()));
        }
        let shown = redact_url(&url);
        let client = redis::Client::open(url.as_str())
            .map_err(|e| StoreError::Backend(format!("bad redis URL {shown}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(|e| match redis_err(e) {
            StoreError::Unavailable(m) => StoreError::Unavailable(format!("cannot connect to {shown}: {m}")),
            StoreError::Backend(m) => StoreError::Backend(format!("cannot connect to {shown}: {m}")),
            other => other,
        })?;
        Ok(Self { conn, prefix, scripts: Scripts::new() })
    }

    fn keys(&self, group: &GroupKey) -> Keys {
        let base = format!("{}{{kb:{}:{}:{}}}", self.prefix, group.app.len(), group.app, group.stream);
        Keys {
            leases: format!("{base}:leases"),
            sessions: format!("{base}:sessions"),
            session_expiry: format!("{base}:session_expiry"),
        }
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

#[async_trait]
impl LeaseStore for RedisStore {
    async fn sync_shards(&self, group: &GroupKey, shards: &[ShardInfo]) -> StoreResult<()> {
        if shards.is_empty() {
            return Ok(());
        }
        let mut call = self.scripts.sync.key(self.keys(group).leases);
        for s in shards {
            call.arg(&s.shard_id).arg(s.parent_shard_ids.join(",")).arg(if s.closed { "1" } else { "0" });
        }
        call.invoke_async::<()>(&mut self.conn()).await.map_err(redis_err)
    }

    async fn list_leases(&self, group: &GroupKey) -> StoreResult<Vec<Lease>> {
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys(group).leases)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        let mut leases = all.iter().map(|(shard, json)| decode_lease(shard, json)).collect::<StoreResult<Vec<_>>>()?;
        leases.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        Ok(leases)
    }

    async fn acquire(
        &self,
        group: &GroupKey,
        shard_id: &str,
        expected_epoch: u64,
        owner: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> StoreResult<Option<Lease>> {
        let reply: Vec<String> = self
            .scripts
            .acquire
            .key(self.keys(group).leases)
            .arg(shard_id)
            .arg(expected_epoch.to_string())
            .arg(owner)
            .arg(now_ms)
            .arg(expires_at_ms)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        lease_reply(group, shard_id, &reply)
    }

    async fn renew(&self, group: &GroupKey, held: &[HeldLease], expires_at_ms: i64) -> StoreResult<Vec<String>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.scripts.renew.key(self.keys(group).leases);
        call.arg(expires_at_ms);
        for h in held {
            call.arg(&h.shard_id).arg(&h.owner).arg(h.epoch.to_string());
        }
        call.invoke_async(&mut self.conn()).await.map_err(redis_err)
    }

    async fn release(
        &self,
        group: &GroupKey,
        shard_id: &str,
        owner: &str,
        epoch: u64,
        expires_at_ms: i64,
    ) -> StoreResult<Option<Lease>> {
        let reply: Vec<String> = self
            .scripts
            .release
            .key(self.keys(group).leases)
            .arg(shard_id)
            .arg(owner)
            .arg(epoch.to_string())
            .arg(expires_at_ms)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        lease_reply(group, shard_id, &reply)
    }

    async fn request_handoff(&self, group: &GroupKey, shard_id: &str, epoch: u64, to: &str) -> StoreResult<bool> {
        let n: i64 = self
            .scripts
            .handoff
            .key(self.keys(group).leases)
            .arg(shard_id)
            .arg(epoch.to_string())
            .arg(to)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(n == 1)
    }

    async fn checkpoint(
        &self,
        group: &GroupKey,
        shard_id: &str,
        owner: &str,
        epoch: u64,
        checkpoint: &Checkpoint,
    ) -> StoreResult<()> {
        let reply: Vec<String> = self
            .scripts
            .checkpoint
            .key(self.keys(group).leases)
            .arg(shard_id)
            .arg(owner)
            .arg(epoch.to_string())
            .arg(checkpoint.as_text())
            .arg(checkpoint.sub_sequence().to_string())
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        match reply.as_slice() {
            [kind] if kind == "ok" => Ok(()),
            [kind] if kind == "notfound" => Err(not_found(group, shard_id)),
            // The script refused: let the shared rules name the reason.
            [kind, json] if kind == "rejected" => {
                checkpoint_allowed(group, &decode_lease(shard_id, json)?, owner, epoch, checkpoint)?;
                Err(StoreError::Backend(format!("redis refused checkpoint of shard {shard_id} that the rules allow")))
            }
            other => Err(StoreError::Backend(format!("unexpected script reply {other:?}"))),
        }
    }

    async fn put_session(&self, group: &GroupKey, session: &SessionRecord) -> StoreResult<()> {
        let keys = self.keys(group);
        let info = serde_json::to_string(&StoredSession {
            instance_id: session.instance_id.clone(),
            client_name: session.client_name.clone(),
        })
        .map_err(|e| StoreError::Backend(e.to_string()))?;
        redis::pipe()
            .atomic()
            .hset(&keys.sessions, &session.session_id, info)
            .ignore()
            .zadd(&keys.session_expiry, &session.session_id, session.expires_at_ms)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(redis_err)
    }

    async fn renew_sessions(&self, group: &GroupKey, session_ids: &[String], expires_at_ms: i64) -> StoreResult<()> {
        if session_ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(self.keys(group).session_expiry).arg("XX");
        for id in session_ids {
            cmd.arg(expires_at_ms).arg(id);
        }
        cmd.query_async::<()>(&mut self.conn()).await.map_err(redis_err)
    }

    async fn drop_session(&self, group: &GroupKey, session_id: &str) -> StoreResult<()> {
        let keys = self.keys(group);
        self.scripts
            .drop_session
            .key(keys.leases)
            .key(keys.sessions)
            .key(keys.session_expiry)
            .arg(session_id)
            .invoke_async::<()>(&mut self.conn())
            .await
            .map_err(redis_err)
    }

    async fn list_sessions(&self, group: &GroupKey, now_ms: i64) -> StoreResult<Vec<SessionRecord>> {
        let keys = self.keys(group);
        let flat: Vec<String> = self
            .scripts
            .list_sessions
            .key(keys.sessions)
            .key(keys.session_expiry)
            .arg(now_ms)
            .arg(now_ms.saturating_sub(SESSION_RECORD_RETENTION_MS))
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        let mut sessions = flat
            .chunks_exact(3)
            .map(|c| {
                let info: StoredSession = serde_json::from_str(&c[2]).map_err(|e| corrupt("session", e))?;
                let expires: f64 = c[1].parse().map_err(|e| corrupt("session expiry", e))?;
                Ok(SessionRecord {
                    session_id: c[0].clone(),
                    instance_id: info.instance_id,
                    client_name: info.client_name,
                    expires_at_ms: expires as i64,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Ok(sessions)
    }

    async fn ping(&self) -> StoreResult<()> {
        redis::cmd("PING").query_async::<()>(&mut self.conn()).await.map_err(redis_err)
    }
}
