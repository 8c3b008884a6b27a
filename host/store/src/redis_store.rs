//! The Redis backend.
//!
//! Keys, all under a prefix (default `shoal`) so one Redis can be shared:
//!
//! * `{prefix}:sessions`: hash `client_id -> data`
//! * `{prefix}:queue:{client_id}`: hash `seq (decimal) -> data`, one per client, so deleting a
//!   session drops its whole queue with one `DEL` and clients never share a key.
//! * `{prefix}:retained`: hash `topic -> data`
//! * `{prefix}:shadow:…`, `{prefix}:shadows:…`: device shadows, see [`crate::redis_shadows`].
//! * `{prefix}:reg:…`, `{prefix}:regidx:…`, `{prefix}:reg-rev`: the thing registry, see
//!   [`crate::redis_registry`].
//! * `{prefix}:stream:{name}`, `{prefix}:streams`: streams, see [`crate::redis_streams`].
//! * `{prefix}:rules`: the rule definitions (one JSON document), see [`crate::redis_rules`].
//!
//! A batch is one `MULTI`/`EXEC` pipeline: one round trip, applied atomically. Durability is
//! whatever the Redis server is configured for (AOF `fsync` policy); `Ok` means Redis executed
//! the transaction.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use shoal_broker::store::{BrokerStore, LoadedSession, StoreError, StoreOp};

use crate::redis_registry::RedisRegistryStore;
use crate::redis_shadows::RedisShadowStore;

/// Bound on [`RedisStore::connect`]: `ConnectionManager::new` retries on its own and must not
/// hold up start-up indefinitely.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per connection attempt (TCP + handshake).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Per command or pipeline response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect attempts per call while Redis is down: few, so a call fails fast and the broker's
/// writer retries on its own schedule; the next call starts a fresh reconnect.
const RECONNECT_RETRIES: usize = 1;
/// Last-resort bound on any single round trip, in case a timeout above does not cover a path.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How many queue hashes `load_sessions` fetches per pipelined round trip.
const LOAD_CHUNK: usize = 256;

/// Connects a [`ConnectionManager`] to `url` with Shoal's timeouts, within [`CONNECT_TIMEOUT`].
/// The error is a message that names the (redacted) URL.
pub(crate) async fn connect_manager(url: &str) -> Result<ConnectionManager, String> {
    let shown = crate::redact_url(url);
    let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL {shown}: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(ATTEMPT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_millis(500));
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        ConnectionManager::new_with_config(client, config),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(format!("cannot connect to Redis at {shown}: {e}")),
        Err(_) => Err(format!(
            "cannot connect to Redis at {shown}: no connection within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// A [`BrokerStore`] in Redis hashes.
///
/// Holds a [`ConnectionManager`]: one multiplexed connection that reconnects by itself after
/// Redis restarts, so the broker keeps one `RedisStore` for its whole life. While Redis is down,
/// calls fail within a few seconds with [`StoreError::Unavailable`] instead of hanging.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    sessions_key: String,
    retained_key: String,
    shadows: RedisShadowStore,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// One failed Redis round trip, before each store maps it to its own error type.
#[derive(Debug)]
pub(crate) enum CallError {
    /// A reply that does not decode as expected.
    Corrupt(String),
    /// Connection lost, server error, or no answer within [`CALL_TIMEOUT`].
    Unavailable(String),
}

impl CallError {
    /// The message, for stores whose error type does not tell the two kinds apart.
    pub(crate) fn into_message(self) -> String {
        match self {
            CallError::Corrupt(m) | CallError::Unavailable(m) => m,
        }
    }
}

impl From<CallError> for StoreError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Corrupt(m) => StoreError::Corrupt(m),
            CallError::Unavailable(m) => StoreError::Unavailable(m),
        }
    }
}

/// Runs one round trip under [`CALL_TIMEOUT`]; a failure is described as `redis {what}: ...`
/// (a reply that does not decode is [`CallError::Corrupt`], anything else
/// [`CallError::Unavailable`]) and logged at debug level. Every Redis store calls through here.
pub(crate) async fn call<T>(
    what: &str,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, CallError> {
    let err = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e)) => match e.kind() {
            redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => {
                CallError::Corrupt(format!("redis {what}: {e}"))
            }
            _ => CallError::Unavailable(format!("redis {what}: {e}")),
        },
        Err(_) => CallError::Unavailable(format!(
            "redis {what}: no answer within {}s",
            CALL_TIMEOUT.as_secs()
        )),
    };
    tracing::debug!(error = ?err, "Redis call failed");
    Err(err)
}

/// The pause before attempt `attempt + 1` of an optimistic transaction that lost a race:
/// uniformly random below a ceiling that starts at `first` and doubles per attempt up to `max`,
/// so that colliding nodes spread out. (Each `RandomState` has fresh keys, so hashing nothing
/// with it is a cheap random number; no need for a generator crate.)
pub(crate) fn backoff(attempt: usize, first: Duration, max: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let shift = u32::try_from(attempt.min(16)).unwrap_or(16);
    let ceiling = first.saturating_mul(1u32 << shift).min(max);
    let max_nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            % max_nanos,
    )
}

impl RedisStore {
    /// Connects to `url` (`redis://` or `rediss://`), keeping every key under `prefix`.
    ///
    /// Fails within about 5 s if Redis is unreachable, so a misconfigured broker reports it at
    /// start-up. After that the connection is re-established automatically.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let shown = crate::redact_url(url);
        let conn = connect_manager(url).await.map_err(StoreError::Unavailable)?;
        let store = RedisStore {
            shadows: RedisShadowStore::with_connection(conn.clone(), url, prefix),
            conn,
            prefix: prefix.to_owned(),
            sessions_key: format!("{prefix}:sessions"),
            retained_key: format!("{prefix}:retained"),
        };
        // The handshake alone does not prove the server answers commands (AUTH, ACLs, LOADING).
        store.ping().await?;
        tracing::info!(url = %shown, prefix, "Redis store connected");
        Ok(store)
    }

    /// The key prefix, for logs and `/health`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The device shadows in the same Redis, under the same prefix and on the same connection
    /// (one multiplexed connection serves both; see [`RedisShadowStore`]). Every call returns a
    /// handle on the same shadow store, so they also share its per-key write queues.
    pub fn shadow_store(&self) -> RedisShadowStore {
        self.shadows.clone()
    }

    /// The thing registry in the same Redis, under the same prefix and on the same connection
    /// (see [`RedisRegistryStore`]).
    pub fn registry_store(&self) -> RedisRegistryStore {
        RedisRegistryStore::with_connection(self.conn.clone(), &self.prefix)
    }

    /// Plugins' key-value state in the same Redis (see [`crate::plugin_kv`]); its calls block
    /// the calling thread on `rt`.
    pub fn plugin_kv(&self, rt: tokio::runtime::Handle) -> crate::plugin_kv::RedisPluginKv {
        crate::plugin_kv::RedisPluginKv::with_connection(self.conn.clone(), &self.prefix, rt)
    }

    /// Rule definitions in the same Redis, under the same prefix and on the same connection
    /// (see [`crate::redis_rules`]); its calls wait on `rt` and must come from outside it.
    pub fn rule_store(&self, rt: tokio::runtime::Handle) -> crate::redis_rules::RedisRuleStore {
        crate::redis_rules::RedisRuleStore::with_connection(self.conn.clone(), &self.prefix, rt)
    }

    /// Streams in the same Redis, under the same prefix and on the same connection (see
    /// [`crate::redis_streams`]).
    pub fn stream_store(&self) -> crate::redis_streams::RedisStreamStore {
        crate::redis_streams::RedisStreamStore::with_connection(self.conn.clone(), &self.prefix)
    }

    /// Identities in the same Redis (see [`crate::redis_auth`]).
    pub fn auth_store(&self) -> crate::redis_auth::RedisAuthStore {
        crate::redis_auth::RedisAuthStore::with_connection(self.conn.clone(), &self.prefix)
    }

    fn queue_key(&self, client_id: &str) -> String {
        format!("{}:queue:{client_id}", self.prefix)
    }

    /// [`call`] with the error as a [`StoreError`].
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        Ok(call(what, fut).await?)
    }
}

#[async_trait]
impl BrokerStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// The whole batch as one `MULTI`/`EXEC` pipeline, commands in batch order.
    ///
    /// If the connection drops mid-call the outcome is unknown (the `EXEC` may or may not have
    /// run); every op is idempotent, so the caller can simply apply the batch again.
    async fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for op in ops {
            match op {
                StoreOp::PutSession { client_id, data } => {
                    pipe.cmd("HSET")
                        .arg(&self.sessions_key)
                        .arg(client_id)
                        .arg(data.as_slice())
                        .ignore();
                }
                StoreOp::DeleteSession { client_id } => {
                    pipe.cmd("HDEL").arg(&self.sessions_key).arg(client_id).ignore();
                    pipe.cmd("DEL").arg(self.queue_key(client_id)).ignore();
                }
                StoreOp::PutQueued { client_id, seq, data } => {
                    pipe.cmd("HSET")
                        .arg(self.queue_key(client_id))
                        .arg(*seq)
                        .arg(data.as_slice())
                        .ignore();
                }
                StoreOp::DeleteQueued { client_id, seq } => {
                    pipe.cmd("HDEL").arg(self.queue_key(client_id)).arg(*seq).ignore();
                }
                StoreOp::PutRetained { topic, data } => {
                    pipe.cmd("HSET")
                        .arg(&self.retained_key)
                        .arg(topic)
                        .arg(data.as_slice())
                        .ignore();
                }
                StoreOp::DeleteRetained { topic } => {
                    pipe.cmd("HDEL").arg(&self.retained_key).arg(topic).ignore();
                }
            }
        }
        let mut conn = self.conn.clone();
        self.call("apply", pipe.exec_async(&mut conn))
            .await
            .inspect_err(|e| tracing::warn!(ops = ops.len(), error = %e, "Redis store batch failed"))
    }

    /// `HGETALL` of the sessions hash, then the queue hashes in pipelined chunks.
    ///
    /// Not a snapshot: the two steps are separate round trips. It is meant for start-up, before
    /// the broker writes anything.
    async fn load_sessions(&self) -> Result<Vec<LoadedSession>, StoreError> {
        let mut conn = self.conn.clone();
        let sessions: HashMap<String, Vec<u8>> = self
            .call(
                "load sessions",
                redis::cmd("HGETALL")
                    .arg(&self.sessions_key)
                    .query_async(&mut conn),
            )
            .await?;
        let mut sessions: Vec<(String, Vec<u8>)> = sessions.into_iter().collect();
        sessions.sort_unstable_by(|a, b| a.0.cmp(&b.0));

        let mut out = Vec::with_capacity(sessions.len());
        for chunk in sessions.chunks(LOAD_CHUNK) {
            let mut pipe = redis::pipe();
            for (client_id, _) in chunk {
                pipe.cmd("HGETALL").arg(self.queue_key(client_id));
            }
            let queues: Vec<HashMap<String, Vec<u8>>> =
                self.call("load queues", pipe.query_async(&mut conn)).await?;
            if queues.len() != chunk.len() {
                return Err(StoreError::Corrupt(format!(
                    "redis load queues: {} replies for {} queues",
                    queues.len(),
                    chunk.len()
                )));
            }
            for ((client_id, data), queue) in chunk.iter().zip(queues) {
                let mut queued = queue
                    .into_iter()
                    .map(|(seq, d)| {
                        seq.parse::<u64>().map(|s| (s, d)).map_err(|_| {
                            StoreError::Corrupt(format!(
                                "redis key {}: field {seq:?} is not a sequence number",
                                self.queue_key(client_id)
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                // Hash fields come back unordered; the broker needs delivery order.
                queued.sort_unstable_by_key(|(s, _)| *s);
                out.push(LoadedSession {
                    client_id: client_id.clone(),
                    data: data.clone(),
                    queued,
                });
            }
        }
        Ok(out)
    }

    async fn load_retained(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut conn = self.conn.clone();
        let retained: HashMap<String, Vec<u8>> = self
            .call(
                "load retained",
                redis::cmd("HGETALL")
                    .arg(&self.retained_key)
                    .query_async(&mut conn),
            )
            .await?;
        let mut retained: Vec<(String, Vec<u8>)> = retained.into_iter().collect();
        // Same order as the other backends.
        retained.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(retained)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let reply: String = self
            .call("ping", redis::cmd("PING").query_async(&mut conn))
            .await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Corrupt(format!(
                "redis ping: unexpected reply {reply:?}"
            )))
        }
    }
}
