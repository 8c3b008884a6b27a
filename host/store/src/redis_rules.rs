//! Rule definitions in Redis ([`RuleStore`] of `shoal-rules`): the whole rule set as one JSON
//! document (the same one `FileRuleStore` writes) under `{prefix}:rules`, replaced with one
//! `SET` per change, and a revision `{prefix}:rules-rev` raised in the same `MULTI`, which the
//! engines of other nodes poll to pick the change up. Rules are few and change rarely, so one
//! key keeps a change atomic.
//!
//! The trait is synchronous (the rules engine calls it from the blocking pool, never from an
//! executor thread), so calls wait on the runtime with `block_on`.

use redis::aio::ConnectionManager;
use shoal_rules::RuleError;
use shoal_rules::store::{RuleStore, StoredRule, decode_rules, encode_rules};

use crate::redis_store::{CallError, call};

fn store_error(e: CallError) -> RuleError {
    RuleError::Store(e.into_message())
}

/// Rule definitions in Redis.
#[derive(Clone)]
pub struct RedisRuleStore {
    conn: ConnectionManager,
    key: String,
    rev_key: String,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for RedisRuleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRuleStore").field("key", &self.key).finish()
    }
}

impl RedisRuleStore {
    /// A store on `conn`, under `prefix`; calls wait on `rt`.
    pub fn with_connection(conn: ConnectionManager, prefix: &str, rt: tokio::runtime::Handle) -> Self {
        RedisRuleStore {
            conn,
            key: format!("{prefix}:rules"),
            rev_key: format!("{prefix}:rules-rev"),
            rt,
        }
    }
}

impl RuleStore for RedisRuleStore {
    fn load(&self) -> Result<Vec<StoredRule>, RuleError> {
        let mut conn = self.conn.clone();
        let key = self.key.clone();
        let got: Option<Vec<u8>> = self
            .rt
            .block_on(async move {
                call(
                    "GET rules",
                    redis::cmd("GET")
                        .arg(&key)
                        .query_async::<Option<Vec<u8>>>(&mut conn),
                )
                .await
            })
            .map_err(store_error)?;
        match got {
            None => Ok(Vec::new()),
            Some(bytes) => decode_rules(&bytes, &format!("redis key {}", self.key)),
        }
    }

    fn save(&self, rules: &[StoredRule]) -> Result<Option<u64>, RuleError> {
        let doc = encode_rules(rules)?;
        let mut conn = self.conn.clone();
        let (key, rev_key) = (self.key.clone(), self.rev_key.clone());
        let ((), rev): ((), u64) = self
            .rt
            .block_on(async move {
                call(
                    "SET rules",
                    redis::pipe()
                        .atomic()
                        .cmd("SET")
                        .arg(&key)
                        .arg(doc)
                        .cmd("INCR")
                        .arg(&rev_key)
                        .query_async(&mut conn),
                )
                .await
            })
            .map_err(store_error)?;
        Ok(Some(rev))
    }

    fn revision(&self) -> Result<Option<u64>, RuleError> {
        let mut conn = self.conn.clone();
        let rev_key = self.rev_key.clone();
        let rev: Option<u64> = self
            .rt
            .block_on(async move {
                call(
                    "GET rules-rev",
                    redis::cmd("GET").arg(&rev_key).query_async(&mut conn),
                )
                .await
            })
            .map_err(store_error)?;
        Ok(Some(rev.unwrap_or(0)))
    }
}
