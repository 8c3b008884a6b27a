//! [`AuthStore`] on the shared redb file: one table, keyed `(table, key)`. Identity records are
//! few and rarely written, so each write is its own durable transaction.

use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use shoal_auth::store::{AuthStore, AuthStoreError, AuthTable};

/// `(table name, key) -> value`.
pub(crate) const AUTH: TableDefinition<'static, (&'static str, &'static str), &'static [u8]> =
    TableDefinition::new("auth");

/// Identity records in the embedded database.
#[derive(Debug, Clone)]
pub struct EmbeddedAuthStore {
    db: Arc<Database>,
}

fn err(e: impl std::fmt::Display) -> AuthStoreError {
    AuthStoreError::Unavailable(format!("embedded store: {e}"))
}

impl EmbeddedAuthStore {
    pub(crate) fn new(db: Arc<Database>) -> Result<Self, AuthStoreError> {
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(AUTH).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(EmbeddedAuthStore { db })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, AuthStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, AuthStoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| AuthStoreError::Unavailable(format!("embedded store task failed: {e}")))?
    }
}

#[async_trait]
impl AuthStore for EmbeddedAuthStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, table: AuthTable, key: &str) -> Result<Option<Vec<u8>>, AuthStoreError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(err)?;
            let t = tx.open_table(AUTH).map_err(err)?;
            Ok(t.get((table.name(), key.as_str()))
                .map_err(err)?
                .map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn put(&self, table: AuthTable, key: &str, value: Vec<u8>) -> Result<(), AuthStoreError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(err)?;
            {
                let mut t = tx.open_table(AUTH).map_err(err)?;
                t.insert((table.name(), key.as_str()), value.as_slice())
                    .map_err(err)?;
            }
            tx.commit().map_err(err)
        })
        .await
    }

    async fn put_new(&self, table: AuthTable, key: &str, value: Vec<u8>) -> Result<bool, AuthStoreError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(err)?;
            let created = {
                let mut t = tx.open_table(AUTH).map_err(err)?;
                if t.get((table.name(), key.as_str())).map_err(err)?.is_some() {
                    false
                } else {
                    t.insert((table.name(), key.as_str()), value.as_slice())
                        .map_err(err)?;
                    true
                }
            };
            tx.commit().map_err(err)?;
            Ok(created)
        })
        .await
    }

    async fn delete(&self, table: AuthTable, key: &str) -> Result<bool, AuthStoreError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(err)?;
            let removed = {
                let mut t = tx.open_table(AUTH).map_err(err)?;
                t.remove((table.name(), key.as_str())).map_err(err)?.is_some()
            };
            tx.commit().map_err(err)?;
            Ok(removed)
        })
        .await
    }

    async fn scan(&self, table: AuthTable) -> Result<Vec<(String, Vec<u8>)>, AuthStoreError> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(err)?;
            let t = tx.open_table(AUTH).map_err(err)?;
            let name = table.name();
            let mut out = Vec::new();
            for row in t.range((name, "")..).map_err(err)? {
                let (k, v) = row.map_err(err)?;
                let (tn, key) = k.value();
                if tn != name {
                    break;
                }
                out.push((key.to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }
}
