//! The thing registry in Redis, with optimistic transactions across nodes.
//!
//! Keys, under the same prefix as the broker's (see [`crate::redis_store`]):
//!
//! * `{prefix}:reg:{kind}:{name}` ([`RecordKey::storage_name`]): a hash with `doc`, the record
//!   as JSON, and `rev`, its *revision*: a value of the global counter below, taken anew by
//!   every write of the record (and every [`Write::Touch`]). A missing record is revision 0.
//! * `{prefix}:reg-rev`: the global revision counter (`INCR`). Revisions never repeat, so a
//!   record deleted and created again never looks unchanged to a slow writer.
//! * `{prefix}:regidx:{index}` ([`IndexKey::storage_id`]): one sorted set per index, all scores
//!   0 so members sort bytewise and `ZRANGEBYLEX` pages them: the thing, type and group lists,
//!   `type:{t}`, `attr:{n}`, `attrv:{n}={v}`, `children:{g}`, and the memberships in both
//!   directions, `members:{g}` and `groups-of:{t}`.
//!
//! # How a transaction stays atomic
//!
//! A plan is arbitrary Rust and cannot run inside Redis, so [`RegistryStore::transact`] is
//! optimistic:
//!
//! 1. Each read round the plan asks for is one `MULTI`/`EXEC` pipeline (`HMGET doc rev`,
//!    `ZRANGE`, `ZCARD`), remembering every record's revision and every index's size.
//! 2. The plan runs locally to its commit.
//! 3. One Lua script (atomic in Redis) checks that every record read still has its revision and
//!    every index read still has its size, and only then applies the writes (records, indexes,
//!    touches), taking one new revision for the transaction. Otherwise it writes nothing and
//!    the whole run starts again after a short random backoff, at most [`MAX_ATTEMPTS`] times,
//!    then fails with `ServiceUnavailableException`.
//!
//! Index sizes alone would not catch a concurrent "add one, remove another", but the plans
//! guarantee more (see `shoal_things::registry::plan`): whoever changes a membership or child
//! index also touches the owning record, and whoever reads such an index also reads its owner,
//! so the owner's revision covers the index's content. The only index read without its owner
//! is the size of a type's things, where only the size matters.
//!
//! A plan that reads in a single round and writes nothing (a rejection, an idempotent create)
//! is answered from that one consistent read without running the script.
//!
//! Like the shadow store, this targets a single Redis (with replicas): the keys of one
//! transaction are not in one Redis Cluster hash slot.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use shoal_things::registry::plan::{MAX_READ_ROUNDS, Outcome, Plan, Reads, Snapshot, Step, Write};
use shoal_things::registry::store::SCAN_END;
use shoal_things::registry::{IndexKey, Record, RecordKey, RegistryError, RegistryStore};

use crate::redis_store::{CallError, backoff, call, connect_manager};

/// Optimistic attempts per transaction before giving up with `ServiceUnavailableException`.
pub const MAX_ATTEMPTS: usize = 100;

/// Bound on a whole [`RegistryStore::transact`], retries included.
const TRANSACT_TIMEOUT: Duration = Duration::from_secs(10);

/// First backoff ceiling after a conflict; doubles per attempt up to [`MAX_BACKOFF`]. The
/// pause is uniformly random below the ceiling, so that colliding nodes spread out.
const FIRST_BACKOFF: Duration = Duration::from_micros(500);
/// Largest backoff ceiling.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// The check-and-apply script. `KEYS[1]` is the revision counter, the other keys are referred
/// to by position. `ARGV[1]` is the number of checks; then come the checks and then the writes,
/// three arguments each: an op code, a key position and an argument.
///
/// Checks: `R` (the record's `rev`, `0` when missing, equals the argument), `L` (the sorted
/// set's size equals the argument). Writes: `P` (store the document, new revision), `D`
/// (delete), `T` (new revision if the record exists), `A` (`ZADD 0`), `X` (`ZREM`).
///
/// Returns 1 when applied, 0 when a check failed (nothing written).
const TXN_SCRIPT: &str = r"
local nchecks = tonumber(ARGV[1])
local i = 2
for _ = 1, nchecks do
  local op, k, want = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2]
  i = i + 3
  local have
  if op == 'R' then
    have = redis.call('HGET', k, 'rev')
    if not have then have = '0' end
  else
    have = tostring(redis.call('ZCARD', k))
  end
  if have ~= want then return 0 end
end
local rev = false
local function next_rev()
  if not rev then rev = redis.call('INCR', KEYS[1]) end
  return rev
end
while i <= #ARGV do
  local op, k, arg = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2]
  i = i + 3
  if op == 'P' then
    redis.call('HSET', k, 'doc', arg, 'rev', next_rev())
  elseif op == 'D' then
    redis.call('DEL', k)
  elseif op == 'T' then
    if redis.call('EXISTS', k) == 1 then redis.call('HSET', k, 'rev', next_rev()) end
  elseif op == 'A' then
    redis.call('ZADD', k, 0, arg)
  elseif op == 'X' then
    redis.call('ZREM', k, arg)
  else
    return redis.error_reply('unknown registry op ' .. op)
  end
end
return 1
";

/// A [`RegistryStore`] in Redis (see the [module docs](self) for the layout and the
/// transactions).
///
/// Get one sharing the broker's connection from [`crate::RedisStore::registry_store`], or one
/// with its own connection from [`RedisRegistryStore::connect`] (two of those behave like two
/// Shoal nodes). Cheap to clone. While Redis is down or hung, calls fail within seconds with
/// `ServiceUnavailableException`.
#[derive(Clone)]
pub struct RedisRegistryStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    script: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisRegistryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistryStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A reply that does not decode is `InternalFailureException`; everything else (connection,
/// timeout, server error) `ServiceUnavailableException`.
impl From<CallError> for RegistryError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Corrupt(m) => RegistryError::InternalFailure(m),
            CallError::Unavailable(m) => RegistryError::ServiceUnavailable(m),
        }
    }
}

/// What a transaction read: record revisions and index sizes, for the script's checks.
#[derive(Default)]
struct ReadSet {
    revs: BTreeMap<RecordKey, u64>,
    lens: BTreeMap<IndexKey, u64>,
    rounds: usize,
}

/// The keys and arguments of one script call, with keys deduplicated.
struct ScriptCall {
    keys: Vec<String>,
    positions: BTreeMap<String, usize>,
    args: Vec<Vec<u8>>,
}

impl ScriptCall {
    fn new(rev_key: String) -> Self {
        let mut call = ScriptCall {
            keys: Vec::new(),
            positions: BTreeMap::new(),
            args: Vec::new(),
        };
        call.position(rev_key);
        call
    }

    /// The 1-based Lua position of `key`.
    fn position(&mut self, key: String) -> usize {
        if let Some(p) = self.positions.get(&key) {
            return *p;
        }
        self.keys.push(key.clone());
        let p = self.keys.len();
        self.positions.insert(key, p);
        p
    }

    fn op(&mut self, code: &str, key: String, arg: impl Into<Vec<u8>>) {
        let p = self.position(key);
        self.args.push(code.as_bytes().to_vec());
        self.args.push(p.to_string().into_bytes());
        self.args.push(arg.into());
    }
}

impl RedisRegistryStore {
    /// Connects to `url` (`redis://` or `rediss://`) on a connection of its own, keeping every
    /// key under `prefix`. Fails within about 5 s if Redis is unreachable.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisRegistryStore, RegistryError> {
        let conn = connect_manager(url)
            .await
            .map_err(RegistryError::ServiceUnavailable)?;
        let store = RedisRegistryStore::with_connection(conn, prefix);
        let mut conn = store.conn.clone();
        let _: String = store
            .call("ping", redis::cmd("PING").query_async(&mut conn))
            .await?;
        tracing::info!(url = %crate::redact_url(url), prefix, "Redis registry store connected");
        Ok(store)
    }

    /// A store on an existing connection.
    pub(crate) fn with_connection(conn: ConnectionManager, prefix: &str) -> RedisRegistryStore {
        RedisRegistryStore {
            conn,
            prefix: prefix.into(),
            script: Arc::new(redis::Script::new(TXN_SCRIPT)),
        }
    }

    /// The key prefix, for logs and `/health`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn record_key(&self, key: &RecordKey) -> String {
        format!("{}:reg:{}", self.prefix, key.storage_name())
    }

    fn index_key(&self, index: &IndexKey) -> String {
        format!("{}:regidx:{}", self.prefix, index.storage_id())
    }

    fn rev_key(&self) -> String {
        format!("{}:reg-rev", self.prefix)
    }

    /// [`call`] with the error as a [`RegistryError`].
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RegistryError> {
        Ok(call(what, fut).await?)
    }

    /// Loads `reads` in one `MULTI`/`EXEC` pipeline into `snap`, noting revisions and sizes.
    async fn load(
        &self,
        reads: &Reads,
        snap: &mut Snapshot,
        seen: &mut ReadSet,
    ) -> Result<(), RegistryError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in &reads.records {
            pipe.cmd("HMGET").arg(self.record_key(key)).arg("doc").arg("rev");
        }
        for index in &reads.members {
            pipe.cmd("ZRANGE").arg(self.index_key(index)).arg(0).arg(-1);
        }
        for index in &reads.lens {
            pipe.cmd("ZCARD").arg(self.index_key(index));
        }
        let mut conn = self.conn.clone();
        let replies: Vec<redis::Value> = self.call("registry read", pipe.query_async(&mut conn)).await?;
        let expected = reads.records.len() + reads.members.len() + reads.lens.len();
        if replies.len() != expected {
            return Err(RegistryError::InternalFailure(format!(
                "redis registry read: {} replies for {expected} commands",
                replies.len()
            )));
        }
        let corrupt = |what: String| RegistryError::InternalFailure(format!("redis registry read: {what}"));
        let mut replies = replies.into_iter();
        for key in &reads.records {
            let reply = replies.next().unwrap_or(redis::Value::Nil);
            let (doc, rev): (Option<Vec<u8>>, Option<u64>) = redis::from_redis_value(reply)
                .map_err(|e| corrupt(format!("{}: {e}", self.record_key(key))))?;
            let record = doc.map(|d| Record::from_json_bytes(key, &d)).transpose()?;
            seen.revs.insert(key.clone(), rev.unwrap_or(0));
            snap.put_record(key.clone(), record);
        }
        for index in &reads.members {
            let reply = replies.next().unwrap_or(redis::Value::Nil);
            let members: Vec<String> = redis::from_redis_value(reply)
                .map_err(|e| corrupt(format!("{}: {e}", self.index_key(index))))?;
            seen.lens
                .insert(index.clone(), u64::try_from(members.len()).unwrap_or(u64::MAX));
            snap.put_members(index.clone(), members);
        }
        for index in &reads.lens {
            let reply = replies.next().unwrap_or(redis::Value::Nil);
            let len: u64 = redis::from_redis_value(reply)
                .map_err(|e| corrupt(format!("{}: {e}", self.index_key(index))))?;
            seen.lens.insert(index.clone(), len);
            snap.put_len(index.clone(), len);
        }
        seen.rounds += 1;
        Ok(())
    }

    /// Runs the plan's read rounds; returns the commit and what was read.
    async fn run(&self, plan: &Plan) -> Result<(Vec<Write>, Outcome, ReadSet), RegistryError> {
        let mut snap = Snapshot::default();
        let mut seen = ReadSet::default();
        for _ in 0..MAX_READ_ROUNDS {
            match plan(&snap)? {
                Step::Commit { writes, outcome } => return Ok((writes, outcome, seen)),
                Step::Read(reads) => {
                    let missing = snap.missing(&reads);
                    if missing.is_empty() {
                        return Err(RegistryError::InternalFailure(
                            "registry plan asked again for data it already has".into(),
                        ));
                    }
                    self.load(&missing, &mut snap, &mut seen).await?;
                }
            }
        }
        Err(RegistryError::InternalFailure(format!(
            "registry plan needed more than {MAX_READ_ROUNDS} read rounds"
        )))
    }

    /// Checks what was read and applies `writes` in one script call; `true` if applied.
    async fn check_and_apply(&self, seen: &ReadSet, writes: &[Write]) -> Result<bool, RegistryError> {
        let mut call = ScriptCall::new(self.rev_key());
        let checks = seen.revs.len() + seen.lens.len();
        call.args.push(checks.to_string().into_bytes());
        for (key, rev) in &seen.revs {
            call.op("R", self.record_key(key), rev.to_string());
        }
        for (index, len) in &seen.lens {
            call.op("L", self.index_key(index), len.to_string());
        }
        for write in writes {
            match write {
                Write::Put(record) => call.op("P", self.record_key(&record.key()), record.to_json_bytes()),
                Write::Delete(key) => call.op("D", self.record_key(key), Vec::new()),
                Write::Touch(key) => call.op("T", self.record_key(key), Vec::new()),
                Write::IndexAdd(index, member) => call.op("A", self.index_key(index), member.as_str()),
                Write::IndexRemove(index, member) => call.op("X", self.index_key(index), member.as_str()),
            }
        }
        let mut invocation = self.script.prepare_invoke();
        for key in &call.keys {
            invocation.key(key);
        }
        for arg in &call.args {
            invocation.arg(arg.as_slice());
        }
        let mut conn = self.conn.clone();
        let applied: i64 = self
            .call("registry write", invocation.invoke_async(&mut conn))
            .await?;
        Ok(applied == 1)
    }

    async fn transact_cas(&self, plan: Plan) -> Result<Outcome, RegistryError> {
        for attempt in 0..MAX_ATTEMPTS {
            let (writes, outcome, seen) = self.run(&plan).await?;
            // One atomic read round and nothing to write: the answer is already consistent.
            if writes.is_empty() && seen.rounds <= 1 {
                return Ok(outcome);
            }
            if self.check_and_apply(&seen, &writes).await? {
                return Ok(outcome);
            }
            tracing::trace!(attempt, "registry transaction conflict, retrying");
            tokio::time::sleep(backoff(attempt, FIRST_BACKOFF, MAX_BACKOFF)).await;
        }
        tracing::warn!(
            attempts = MAX_ATTEMPTS,
            "registry transaction gave up on contention"
        );
        Err(RegistryError::ServiceUnavailable(format!(
            "registry records kept changing for {MAX_ATTEMPTS} attempts; retry later"
        )))
    }
}

#[async_trait]
impl RegistryStore for RedisRegistryStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn read(&self, reads: &Reads) -> Result<Snapshot, RegistryError> {
        let mut snap = Snapshot::default();
        if !reads.is_empty() {
            self.load(reads, &mut snap, &mut ReadSet::default()).await?;
        }
        Ok(snap)
    }

    /// Optimistic read, plan, check-and-apply (see the [module docs](self)).
    ///
    /// If the connection fails during the script call, the outcome is unknown (the script may
    /// have run); the error is `ServiceUnavailableException` either way.
    async fn transact(&self, plan: Plan) -> Result<Outcome, RegistryError> {
        match tokio::time::timeout(TRANSACT_TIMEOUT, self.transact_cas(plan)).await {
            Ok(result) => result,
            Err(_) => Err(RegistryError::ServiceUnavailable(format!(
                "redis registry transaction: no result within {}s",
                TRANSACT_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn scan(
        &self,
        index: &IndexKey,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, RegistryError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let min = match after {
            Some(a) if a >= prefix => format!("({a}"),
            _ if prefix.is_empty() => "-".to_owned(),
            _ => format!("[{prefix}"),
        };
        let max = if prefix.is_empty() {
            "+".to_owned()
        } else {
            format!("({prefix}{SCAN_END}")
        };
        let count = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut conn = self.conn.clone();
        self.call(
            "registry scan",
            redis::cmd("ZRANGEBYLEX")
                .arg(self.index_key(index))
                .arg(min)
                .arg(max)
                .arg("LIMIT")
                .arg(0)
                .arg(count)
                .query_async(&mut conn),
        )
        .await
    }
}
