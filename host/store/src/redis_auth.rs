//! [`AuthStore`] on Redis: one hash per table, `{prefix}:auth:{table}`, field = key. The
//! records are small and few, so `HGETALL` serves a scan.

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
        let k = self.key(table);
        self.call("HSET", c.hset::<_, _, _, ()>(k, key, value)).await
    }

    async fn put_new(&self, table: AuthTable, key: &str, value: Vec<u8>) -> Result<bool, AuthStoreError> {
        let mut c = self.conn.clone();
        let k = self.key(table);
        self.call("HSETNX", c.hset_nx::<_, _, _, bool>(k, key, value))
            .await
    }

    async fn delete(&self, table: AuthTable, key: &str) -> Result<bool, AuthStoreError> {
        let mut c = self.conn.clone();
        let k = self.key(table);
        let n: i64 = self.call("HDEL", c.hdel(k, key)).await?;
        Ok(n > 0)
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
