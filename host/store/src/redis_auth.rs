//! [`AuthStore`] on Redis: one hash per table, `{prefix}:auth:{table}`, field = key. The
//! records are small and few, so `HGETALL` serves a scan. Every write also raises the table's
//! revision `{prefix}:auth-rev:{table}` in the same `MULTI` ([`AuthStore::revision`]): nodes
//! sharing the Redis poll it to notice each other's changes.

use std::future::Future;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use shoal_auth::store::{AuthStore, AuthStoreError, AuthTable};

use crate::redis_store::call;

/// Identity records in Redis.
#[derive(Clone)]
pub struct RedisAuthStore {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisAuthStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuthStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisAuthStore {
    pub(crate) fn with_connection(conn: ConnectionManager, prefix: &str) -> Self {
        RedisAuthStore {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, table: AuthTable) -> String {
        format!("{}:auth:{}", self.prefix, table.name())
    }

    fn rev_key(&self, table: AuthTable) -> String {
        format!("{}:auth-rev:{}", self.prefix, table.name())
    }

    /// [`call`]; every failure is [`AuthStoreError::Unavailable`] (the trait has no other kind).
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, AuthStoreError> {
        call(what, fut)
            .await
            .map_err(|e| AuthStoreError::Unavailable(e.into_message()))
    }
}

#[async_trait]
impl AuthStore for RedisAuthStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, table: AuthTable, key: &str) -> Result<Option<Vec<u8>>, AuthStoreError> {
        let mut c = self.conn.clone();
        let k = self.key(table);
        self.call("HGET", c.hget::<_, _, Option<Vec<u8>>>(k, key)).await
    }

    async fn put(&self, table: AuthTable, key: &str, value: Vec<u8>) -> Result<(), AuthStoreError> {
        let mut c = self.conn.clone();
        let (k, rev) = (self.key(table), self.rev_key(table));
        let ((), _): ((), u64) = self
            .call(
                "HSET",
                redis::pipe()
                    .atomic()
                    .hset(k, key, value)
                    .incr(rev, 1)
                    .query_async(&mut c),
            )
            .await?;
        Ok(())
    }

    async fn put_new(&self, table: AuthTable, key: &str, value: Vec<u8>) -> Result<bool, AuthStoreError> {
        let mut c = self.conn.clone();
        let (k, rev) = (self.key(table), self.rev_key(table));
        // Raising the revision when nothing was written only costs the other nodes a reread.
        let (created, _): (bool, u64) = self
            .call(
                "HSETNX",
                redis::pipe()
                    .atomic()
                    .hset_nx(k, key, value)
                    .incr(rev, 1)
                    .query_async(&mut c),
            )
            .await?;
        Ok(created)
    }

    async fn delete(&self, table: AuthTable, key: &str) -> Result<bool, AuthStoreError> {
        let mut c = self.conn.clone();
        let (k, rev) = (self.key(table), self.rev_key(table));
        let (n, _): (i64, u64) = self
            .call(
                "HDEL",
                redis::pipe()
                    .atomic()
                    .hdel(k, key)
                    .incr(rev, 1)
                    .query_async(&mut c),
            )
            .await?;
        Ok(n > 0)
    }

    async fn revision(&self, table: AuthTable) -> Result<Option<u64>, AuthStoreError> {
        let mut c = self.conn.clone();
        let rev = self.rev_key(table);
        let v: Option<u64> = self.call("GET auth-rev", c.get(rev)).await?;
        Ok(Some(v.unwrap_or(0)))
    }

    async fn scan(&self, table: AuthTable) -> Result<Vec<(String, Vec<u8>)>, AuthStoreError> {
        let mut c = self.conn.clone();
        let k = self.key(table);
        let mut all: Vec<(String, Vec<u8>)> = self
            .call("HGETALL", c.hgetall::<_, Vec<(String, Vec<u8>)>>(k))
            .await?;
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }
}
