//! Shadows in Redis, with optimistic concurrency across nodes.
//!
//! Keys, under the same prefix as the broker's (see [`crate::redis_store`]):
//!
//! * `{prefix}:shadow:{storage_name}`: a hash with `doc`, the [`StoredShadow`] as JSON
//!   (tombstones included), and `rev`, the key's *revision*: 1 after the first write, +1 on
//!   every write, deletes (tombstones) included.
//! * `{prefix}:shadows:{thing}`: a sorted set of the thing's named shadows that exist (not
//!   tombstones), all with score 0 so that they sort bytewise and `ZRANGEBYLEX` pages them.
//!
//! # Why a revision, and how a mutation stays atomic
//!
//! [`ShadowStore::mutate`] must behave as if no other writer ran between reading the document
//! and storing the function's result, even when several Shoal nodes share the Redis. The
//! function is arbitrary Rust, so it cannot run inside Redis; instead:
//!
//! 1. `HMGET doc rev` reads the document and its revision (a missing key is revision 0).
//! 2. The function runs locally.
//! 3. One Lua script (atomic in Redis) writes the new document only if `rev` still holds the
//!    value read, increments `rev`, and updates the named-shadow index in the same step. If
//!    another writer got there first, it writes nothing and returns the current document and
//!    revision, so the retry starts from them without another read.
//!
//! The revision rather than the shadow's `version` is compared because the version does not
//! change on every write: a delete keeps it, so "update, delete" seen by a slow writer would
//! look like nothing happened and its stale result would overwrite the tombstone.
//!
//! # One round trip per update
//!
//! Each node remembers, per key, the document and revision of its own last successful write
//! or read (a bounded cache held in the key's write queue, see below), and starts the next
//! mutation of that key from it instead of step 1. A stale entry (another node wrote since)
//! costs nothing in correctness: the compare-and-set sees a different revision, writes
//! nothing and returns the current document, and the mutation is retried from that. So a
//! shadow updated mostly through one node costs Redis one script call per update, and one
//! written by several nodes in turn costs at most what the read-first scheme did. A rejection
//! (a version conflict, say) judged on a remembered document is judged again on a fresh read
//! before it is returned. The one case the revision cannot catch is Redis losing its data
//! (a restart without persistence, `FLUSHALL`) and other nodes then writing the key back up to
//! exactly the remembered revision; that already loses updates, and this node's memory of
//! the key may then add to what is lost.
//!
//! Conflicts are retried after a short random backoff, at most [`MAX_ATTEMPTS`] times, then
//! reported as [`ShadowStoreError::Contention`]. To keep conflicts down to the ones between
//! nodes, each store also lets only one mutation per key (per stripe of keys) run at a time on
//! this node: concurrent local writers of one hot shadow queue up instead of failing each
//! other's compare-and-set.
//!
//! The two keys of one shadow are not in one Redis Cluster hash slot; this backend targets a
//! single Redis (with replicas), like the broker store.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use shoal_things::shadow::{
    Mutated, Mutation, ShadowKey, ShadowName, ShadowStore, ShadowStoreError, StoredShadow, ThingName,
};

use crate::redis_store::{CallError, backoff, call, connect_manager};

/// Compare-and-set attempts per mutation before giving up with
/// [`ShadowStoreError::Contention`].
pub const MAX_ATTEMPTS: usize = 100;

/// Bound on a whole [`ShadowStore::mutate`], waiting for this node's turn on the key included,
/// so that callers queued behind a hung Redis fail instead of waiting one timeout each.
const MUTATE_TIMEOUT: Duration = Duration::from_secs(8);

/// First backoff ceiling after a conflict; doubles per attempt up to [`MAX_BACKOFF`]. The
/// actual pause is uniformly random below the ceiling, so that colliding nodes spread out.
const FIRST_BACKOFF: Duration = Duration::from_micros(200);
/// Largest backoff ceiling.
const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// Number of local write queues; keys are hashed onto them. Two keys sharing a stripe only
/// wait for each other on this node, which costs little with this many stripes.
const STRIPES: usize = 1024;

/// Cached documents per stripe (so at most `STRIPES * STRIPE_CACHE` = 65,536 per node); when
/// a stripe is full an arbitrary entry makes room.
const STRIPE_CACHE: usize = 64;

/// How long a thread whose own Redis connection could not be opened uses the shared one
/// before trying again ([`RedisShadowStore::local_conn`]).
const LOCAL_RETRY: Duration = Duration::from_secs(5);

/// How often a thread's own connection is pinged.
const LOCAL_PING: Duration = Duration::from_secs(1);

/// A thread's own connection to one store's Redis.
enum Local {
    Connecting,
    Ready(ConnectionManager),
    Failed(std::time::Instant),
}

/// What [`RedisShadowStore::local_conn`] found in the thread's table.
enum Pick {
    /// The thread's own connection.
    Own(ConnectionManager),
    /// The shared one; `connect`: start opening the thread's own.
    Shared { connect: bool },
}

thread_local! {
    /// Per store (keyed by the address of its write queues, which its clones share, and its
    /// URL, in case a dropped store's address is reused).
    static LOCAL: std::cell::RefCell<Vec<(usize, Arc<str>, Local)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The last document and revision this node wrote or read for some keys of one stripe.
#[derive(Default)]
struct StripeCache {
    entries: std::collections::HashMap<String, (u64, Option<Arc<StoredShadow>>)>,
}

impl StripeCache {
    fn take(&mut self, key: &str) -> Option<(u64, Option<Arc<StoredShadow>>)> {
        self.entries.remove(key)
    }

    fn put(&mut self, key: String, rev: u64, doc: Option<Arc<StoredShadow>>) {
        if self.entries.len() >= STRIPE_CACHE
            && !self.entries.contains_key(&key)
            && let Some(evict) = self.entries.keys().next().cloned()
        {
            self.entries.remove(&evict);
        }
        self.entries.insert(key, (rev, doc));
    }
}

/// The compare-and-set. `KEYS[1]`: the shadow hash, `KEYS[2]`: the thing's named-shadow index.
/// `ARGV[1]`: the revision read (decimal, `0` when the key was missing), `ARGV[2]`: the new
/// document, `ARGV[3]`: the shadow name (empty for the classic shadow, which is not indexed),
/// `ARGV[4]`: `1` if the new document exists, `0` if it is a tombstone.
///
/// Returns `{1}` when written, `{0, current_rev, current_doc}` on conflict. Revisions stay
/// strings in Lua (`HINCRBY` stores an exact decimal; Lua numbers are doubles).
const CAS_SCRIPT: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'rev', 'doc')
local rev = cur[1] or '0'
if rev ~= ARGV[1] then
  return {0, rev, cur[2]}
end
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'doc', ARGV[2])
if ARGV[3] ~= '' then
  if ARGV[4] == '1' then
    redis.call('ZADD', KEYS[2], 0, ARGV[3])
  else
    redis.call('ZREM', KEYS[2], ARGV[3])
  end
end
return {1}
";

/// A [`ShadowStore`] in Redis (see the [module docs](self) for the layout and the
/// compare-and-set).
///
/// Get one sharing the broker's connection from [`crate::RedisStore::shadow_store`], or a
/// separate one (its own connection) from [`RedisShadowStore::connect`]. Cheap to clone; clones
/// share the connection and the per-key write queues. While Redis is down or hung, calls fail
/// within seconds with [`ShadowStoreError::Unavailable`].
#[derive(Clone)]
pub struct RedisShadowStore {
    conn: ConnectionManager,
    /// Where to open the per-thread connections ([`RedisShadowStore::local_conn`]).
    url: Arc<str>,
    prefix: Arc<str>,
    script: Arc<redis::Script>,
    turns: Arc<[tokio::sync::Mutex<StripeCache>]>,
    hasher: RandomState,
}

impl std::fmt::Debug for RedisShadowStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisShadowStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl From<CallError> for ShadowStoreError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Corrupt(m) => ShadowStoreError::Corrupt(m),
            CallError::Unavailable(m) => ShadowStoreError::Unavailable(m),
        }
    }
}

/// What the compare-and-set script answered.
enum Cas {
    Written,
    Conflict { rev: u64, doc: Option<Vec<u8>> },
}

impl Cas {
    fn parse(reply: Vec<redis::Value>) -> Result<Cas, ShadowStoreError> {
        let corrupt = |why: String| ShadowStoreError::Corrupt(format!("redis shadow write: {why}"));
        let mut items = reply.into_iter();
        match items.next() {
            Some(redis::Value::Int(1)) => Ok(Cas::Written),
            Some(redis::Value::Int(0)) => {
                let rev = items.next().unwrap_or(redis::Value::Nil);
                let rev: u64 = redis::from_redis_value(rev)
                    .map_err(|e| corrupt(format!("revision is not a number: {e}")))?;
                let doc: Option<Vec<u8>> = redis::from_redis_value(items.next().unwrap_or(redis::Value::Nil))
                    .map_err(|e| corrupt(format!("document is not a string: {e}")))?;
                Ok(Cas::Conflict { rev, doc })
            }
            other => Err(corrupt(format!("unexpected script reply {other:?}"))),
        }
    }
}

fn decode(key: &str, doc: Option<Vec<u8>>) -> Result<Option<StoredShadow>, ShadowStoreError> {
    doc.map(|bytes| {
        StoredShadow::from_json_bytes(&bytes)
            .map_err(|e| ShadowStoreError::Corrupt(format!("redis key {key}: document does not decode: {e}")))
    })
    .transpose()
}

/// [`decode`], shared for [`Mutated`] and the stripe cache.
fn decode_shared(key: &str, doc: Option<Vec<u8>>) -> Result<Option<Arc<StoredShadow>>, ShadowStoreError> {
    Ok(decode(key, doc)?.map(Arc::new))
}

impl RedisShadowStore {
    /// Connects to `url` (`redis://` or `rediss://`) on a connection of its own, keeping every
    /// key under `prefix`. Fails within about 5 s if Redis is unreachable.
    ///
    /// Two stores connected like this behave like two Shoal nodes: they share nothing but the
    /// Redis, and their mutations of one shadow are still atomic. To share the broker's
    /// connection instead, use [`crate::RedisStore::shadow_store`].
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisShadowStore, ShadowStoreError> {
        let conn = connect_manager(url)
            .await
            .map_err(ShadowStoreError::Unavailable)?;
        let store = RedisShadowStore::with_connection(conn, url, prefix);
        let mut conn = store.conn.clone();
        let _: String = store
            .call("ping", redis::cmd("PING").query_async(&mut conn))
            .await?;
        tracing::info!(url = %crate::redact_url(url), prefix, "Redis shadow store connected");
        Ok(store)
    }

    /// A store on an existing connection.
    pub(crate) fn with_connection(conn: ConnectionManager, url: &str, prefix: &str) -> RedisShadowStore {
        RedisShadowStore {
            conn,
            url: url.into(),
            prefix: prefix.into(),
            script: Arc::new(redis::Script::new(CAS_SCRIPT)),
            turns: (0..STRIPES)
                .map(|_| tokio::sync::Mutex::new(StripeCache::default()))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// The key prefix, for logs and `/health`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The connection for a call from here: on a single-threaded runtime (an HTTP thread), a
    /// connection of that thread's own, so that the request, the connection's driver task and
    /// the reply's wake-up stay on one thread (measured in docs/BENCHMARKS.md); elsewhere the
    /// shared one. The thread's connection is opened in the background on first use (calls
    /// take the shared one meanwhile, and for [`LOCAL_RETRY`] after a failed attempt).
    fn local_conn(&self) -> ConnectionManager {
        if tokio::runtime::Handle::try_current().map_or(true, |h| {
            h.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread
        }) {
            return self.conn.clone();
        }
        let id = self.turns.as_ptr() as usize;
        let connect = match LOCAL.with_borrow_mut(|l| {
            let Some(n) = l.iter().position(|(i, u, _)| *i == id && *u == self.url) else {
                l.push((id, Arc::clone(&self.url), Local::Connecting));
                return Pick::Shared { connect: true };
            };
            let slot = &mut l[n].2;
            match slot {
                Local::Ready(conn) => Pick::Own(conn.clone()),
                Local::Failed(at) if at.elapsed() >= LOCAL_RETRY => {
                    *slot = Local::Connecting;
                    Pick::Shared { connect: true }
                }
                Local::Failed(_) | Local::Connecting => Pick::Shared { connect: false },
            }
        }) {
            Pick::Own(conn) => return conn,
            Pick::Shared { connect } => connect,
        };
        if connect {
            let url = Arc::clone(&self.url);
            let home = std::thread::current().id();
            tokio::spawn(async move {
                // On a single-threaded runtime the task runs on the runtime's thread: the
                // caller's unless it called from the runtime's blocking pool, whose slot then
                // stays "connecting" (it uses the shared connection).
                if std::thread::current().id() != home {
                    return;
                }
                let (done, conn) = match connect_manager(&url).await {
                    Ok(conn) => (Local::Ready(conn.clone()), Some(conn)),
                    Err(e) => {
                        tracing::debug!(error = %e, "no thread-local Redis connection for shadows yet; using the shared one");
                        (Local::Failed(std::time::Instant::now()), None)
                    }
                };
                LOCAL.with_borrow_mut(|l| {
                    if let Some(slot) = l.iter_mut().find(|(i, u, _)| *i == id && *u == url) {
                        slot.2 = done;
                    }
                });
                // Pinged like the shared connection (the broker's store pinger), so that a
                // dropped connection is noticed and re-established by the ping, not by a
                // request failing first.
                if let Some(mut conn) = conn {
                    loop {
                        tokio::time::sleep(LOCAL_PING).await;
                        let _ = tokio::time::timeout(
                            LOCAL_PING,
                            redis::cmd("PING").query_async::<String>(&mut conn),
                        )
                        .await;
                    }
                }
            });
        }
        self.conn.clone()
    }

    fn doc_key(&self, key: &ShadowKey) -> String {
        format!("{}:shadow:{}", self.prefix, key.storage_name())
    }

    fn index_key(&self, thing: &ThingName) -> String {
        format!("{}:shadows:{}", self.prefix, thing.as_str())
    }

    /// This node's write queue for `doc_key`, with the stripe's cached documents.
    fn turn(&self, doc_key: &str) -> &tokio::sync::Mutex<StripeCache> {
        let hash = self.hasher.hash_one(doc_key);
        let i = usize::try_from(hash % STRIPES as u64).unwrap_or(0);
        &self.turns[i]
    }

    /// [`call`] with the error as a [`ShadowStoreError`].
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ShadowStoreError> {
        Ok(call(what, fut).await?)
    }

    /// `HMGET doc rev`: the key's revision (0 when missing) and document.
    async fn read(
        &self,
        conn: &mut ConnectionManager,
        doc_key: &str,
    ) -> Result<(u64, Option<Arc<StoredShadow>>), ShadowStoreError> {
        let (doc, rev): (Option<Vec<u8>>, Option<u64>) = self
            .call(
                "read shadow",
                redis::cmd("HMGET")
                    .arg(doc_key)
                    .arg("doc")
                    .arg("rev")
                    .query_async(conn),
            )
            .await?;
        Ok((rev.unwrap_or(0), decode_shared(doc_key, doc)?))
    }

    /// The read, run, compare-and-set loop of [`ShadowStore::mutate`].
    async fn mutate_cas(&self, key: &ShadowKey, f: Mutation) -> Result<Mutated, ShadowStoreError> {
        let doc_key = self.doc_key(key);
        let index_key = self.index_key(&key.thing);
        let shadow_name = key.shadow.as_ref().map_or("", ShadowName::as_str);
        let mut conn = self.local_conn();
        let mut turn = self.turn(&doc_key).lock().await;

        // Start from what this node last saw of the key, if it still remembers (a stale
        // entry only costs a conflict, see the module docs); read it otherwise. The entry
        // is taken out: it is put back only after a write whose outcome is known.
        // `verified`: the document is known to be Redis's current one (just read, or
        // returned by a failed compare-and-set), not only this node's memory of it.
        let (mut rev, mut previous, mut verified) = match turn.take(&doc_key) {
            Some((rev, doc)) => (rev, doc, false),
            None => {
                let (rev, doc) = self.read(&mut conn, &doc_key).await?;
                (rev, doc, true)
            }
        };

        for attempt in 0..MAX_ATTEMPTS {
            let current = match f(previous.as_deref()) {
                Ok(current) => current,
                Err(rejection) if verified => {
                    turn.put(doc_key, rev, previous);
                    return Ok(Mutated::Rejected(rejection));
                }
                Err(_) => {
                    // A rejection (say, a version conflict) judged on a remembered
                    // document may be wrong: judge again on the current one.
                    (rev, previous) = self.read(&mut conn, &doc_key).await?;
                    verified = true;
                    continue;
                }
            };
            let reply: Vec<redis::Value> = self
                .call(
                    "write shadow",
                    self.script
                        .key(&doc_key)
                        .key(&index_key)
                        .arg(rev)
                        .arg(current.to_json_bytes())
                        .arg(shadow_name)
                        .arg(if current.exists() { "1" } else { "0" })
                        .invoke_async(&mut conn),
                )
                .await?;
            match Cas::parse(reply)? {
                Cas::Written => {
                    let current = Arc::new(current);
                    turn.put(doc_key, rev + 1, Some(Arc::clone(&current)));
                    return Ok(Mutated::Applied { previous, current });
                }
                Cas::Conflict { rev: now, doc } => {
                    tracing::trace!(key = %doc_key, attempt, "shadow write conflict, retrying");
                    previous = decode_shared(&doc_key, doc)?;
                    rev = now;
                    if !verified {
                        // Our memory was stale (another node wrote): no backoff, this was
                        // not a race with a concurrent writer.
                        verified = true;
                        continue;
                    }
                    tokio::time::sleep(backoff(attempt, FIRST_BACKOFF, MAX_BACKOFF)).await;
                }
            }
        }
        tracing::warn!(key = %doc_key, attempts = MAX_ATTEMPTS, "shadow write gave up on contention");
        Err(ShadowStoreError::Contention(format!(
            "{doc_key}: still changing after {MAX_ATTEMPTS} attempts"
        )))
    }
}

#[async_trait]
impl ShadowStore for RedisShadowStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &ShadowKey) -> Result<Option<StoredShadow>, ShadowStoreError> {
        let doc_key = self.doc_key(key);
        let mut conn = self.local_conn();
        let doc: Option<Vec<u8>> = self
            .call(
                "get shadow",
                redis::cmd("HGET").arg(&doc_key).arg("doc").query_async(&mut conn),
            )
            .await?;
        decode(&doc_key, doc)
    }

    /// Optimistic read, run, compare-and-set (see the [module docs](self)).
    ///
    /// If the connection fails during the compare-and-set, the outcome is unknown (the script
    /// may have run); the error is [`ShadowStoreError::Unavailable`] either way.
    async fn mutate(&self, key: &ShadowKey, f: Mutation) -> Result<Mutated, ShadowStoreError> {
        match tokio::time::timeout(MUTATE_TIMEOUT, self.mutate_cas(key, f)).await {
            Ok(result) => result,
            Err(_) => Err(ShadowStoreError::Unavailable(format!(
                "redis shadow write {}: no result within {}s",
                key.storage_name(),
                MUTATE_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn list_named(
        &self,
        thing: &ThingName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ShadowName>, ShadowStoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let index_key = self.index_key(thing);
        let min = match after {
            Some(a) => format!("({a}"),
            None => "-".to_owned(),
        };
        let count = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut conn = self.local_conn();
        let names: Vec<String> = self
            .call(
                "list named shadows",
                redis::cmd("ZRANGEBYLEX")
                    .arg(&index_key)
                    .arg(min)
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(count)
                    .query_async(&mut conn),
            )
            .await?;
        names
            .into_iter()
            .map(|n| {
                ShadowName::parse(&n).map_err(|e| {
                    ShadowStoreError::Corrupt(format!("redis key {index_key}: member {n:?}: {e}"))
                })
            })
            .collect()
    }
}
