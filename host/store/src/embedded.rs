//! The embedded backend: one redb file.
//!
//! redb gives us ACID transactions in a single file with no server to run, which is what a
//! single-node broker wants. Layout:
//!
//! * `sessions`: `client_id -> data`
//! * `queued`: `(client_id, seq) -> data`. The tuple key sorts by client first and then
//!   numerically by `seq`, so one client's queue is a contiguous range in delivery order, and a
//!   client whose id is a prefix of another's (`a`, `ab`) never sees the other's entries (unlike
//!   a concatenated string key would).
//! * `retained`: `topic -> data`
//! * `shadows`, `named_shadows`: device shadows, see [`crate::embedded_shadows`]; and
//!   `shadow_log`: which batch of the shadows' redo log (a file beside this one) this file
//!   holds last, and the log's id, see [`crate::shadow_log`].
//! * `registry_records`, `registry_index`: the thing registry, see [`crate::embedded_registry`].
//! * `stream_entries`, `stream_meta`, `stream_groups`, `stream_pending`, `stream_consumers`:
//!   streams, see [`crate::embedded_streams`].
//!
//! redb is blocking (file I/O, `fsync` on commit), so every call runs on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use shoal_broker::store::{BrokerStore, LoadedSession, StoreError, StoreOp};

use crate::embedded_registry::{self, EmbeddedRegistryStore};
use crate::embedded_shadows::{EmbeddedShadowStore, NAMED_SHADOWS, SHADOWS};

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const QUEUED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queued");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");

/// A [`BrokerStore`] in one redb file, which also holds the device shadows
/// ([`EmbeddedStore::shadow_store`]).
///
/// Cheap to share: it is a handle on the open database. The file is locked while any handle (or a
/// call still running on the blocking pool) is alive, so a second broker on the same data
/// directory fails to open instead of corrupting it. That lock is also why the shadow store
/// cannot open the file itself and is handed out from here instead.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    shadows: EmbeddedShadowStore,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens the database at `path`, creating the file if it does not exist.
    ///
    /// This blocks (it may repair the file after a crash); from async code prefer
    /// [`crate::open`], which runs it on the blocking pool. The parent directory must exist.
    /// All tables are created here so readers never have to deal with a missing table.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let db = Database::create(path).map_err(|e| redb_err(&format!("opening {}", path.display()), e))?;
        let txn = db.begin_write().map_err(|e| redb_err("begin", e))?;
        {
            txn.open_table(SESSIONS)
                .map_err(|e| redb_err("creating tables", e))?;
            txn.open_table(QUEUED)
                .map_err(|e| redb_err("creating tables", e))?;
            txn.open_table(RETAINED)
                .map_err(|e| redb_err("creating tables", e))?;
            txn.open_table(SHADOWS)
                .map_err(|e| redb_err("creating tables", e))?;
            txn.open_table(NAMED_SHADOWS)
                .map_err(|e| redb_err("creating tables", e))?;
            embedded_registry::create_tables(&txn).map_err(|e| redb_err("creating tables", e))?;
            crate::embedded_streams::create_tables(&txn).map_err(|e| redb_err("creating tables", e))?;
        }
        txn.commit().map_err(|e| redb_err("creating tables", e))?;
        let db = Arc::new(db);
        let path = Arc::new(path.to_path_buf());
        let shadows = EmbeddedShadowStore::start(Arc::clone(&db), Arc::clone(&path))
            .map_err(|e| StoreError::Unavailable(format!("embedded shadow store: {e}")))?;
        tracing::info!(path = %path.display(), "embedded store opened");
        Ok(EmbeddedStore { db, path, shadows })
    }

    /// The device shadows in the same file. All handles share one writer thread (see
    /// [`crate::embedded_shadows`] on group commit); the thread ends when the last handle of
    /// this store and of its shadow stores is dropped.
    pub fn shadow_store(&self) -> EmbeddedShadowStore {
        self.shadows.clone()
    }

    /// The thing registry in the same file (see [`crate::embedded_registry`]).
    pub fn registry_store(&self) -> EmbeddedRegistryStore {
        EmbeddedRegistryStore::new(Arc::clone(&self.db), Arc::clone(&self.path))
    }

    /// Plugins' key-value state in the same file (see [`crate::plugin_kv`]).
    pub fn plugin_kv(&self) -> crate::plugin_kv::EmbeddedPluginKv {
        crate::plugin_kv::EmbeddedPluginKv::new(Arc::clone(&self.db), Arc::clone(&self.path))
    }

    /// Streams in the same file (see [`crate::embedded_streams`]).
    pub fn stream_store(&self) -> crate::embedded_streams::EmbeddedStreamStore {
        crate::embedded_streams::EmbeddedStreamStore::new(Arc::clone(&self.db), Arc::clone(&self.path))
    }

    /// Identities in the same file (see [`crate::embedded_auth`]).
    pub fn auth_store(
        &self,
    ) -> Result<crate::embedded_auth::EmbeddedAuthStore, shoal_auth::store::AuthStoreError> {
        crate::embedded_auth::EmbeddedAuthStore::new(Arc::clone(&self.db))
    }

    /// The database file, for logs and `/health`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the blocking pool: redb's calls block on file I/O and `fsync`, which must not
    /// stall the runtime's worker threads.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("embedded store task failed: {e}")))?
    }
}

/// Maps a redb error: damage to the file is [`StoreError::Corrupt`], everything else (I/O,
/// locking, ...) is [`StoreError::Unavailable`].
fn redb_err(what: &str, e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(msg) => StoreError::Corrupt(format!("redb {what}: {msg}")),
        other => StoreError::Unavailable(format!("redb {what}: {other}")),
    }
}

/// Writes `ops` in order inside `txn`.
fn write_ops(txn: &WriteTransaction, ops: &[StoreOp]) -> Result<(), StoreError> {
    let err = |e: redb::StorageError| redb_err("write", e);
    let open = |e: redb::TableError| redb_err("opening table", e);
    let mut sessions = txn.open_table(SESSIONS).map_err(open)?;
    let mut queued = txn.open_table(QUEUED).map_err(open)?;
    let mut retained = txn.open_table(RETAINED).map_err(open)?;
    for op in ops {
        match op {
            StoreOp::PutSession { client_id, data } => {
                sessions
                    .insert(client_id.as_str(), data.as_slice())
                    .map_err(err)?;
            }
            StoreOp::DeleteSession { client_id } => {
                sessions.remove(client_id.as_str()).map_err(err)?;
                let c = client_id.as_str();
                queued
                    .retain_in((c, 0u64)..=(c, u64::MAX), |_, _| false)
                    .map_err(err)?;
            }
            StoreOp::PutQueued { client_id, seq, data } => {
                queued
                    .insert((client_id.as_str(), *seq), data.as_slice())
                    .map_err(err)?;
            }
            StoreOp::DeleteQueued { client_id, seq } => {
                queued.remove((client_id.as_str(), *seq)).map_err(err)?;
            }
            StoreOp::PutRetained { topic, data } => {
                retained.insert(topic.as_str(), data.as_slice()).map_err(err)?;
            }
            StoreOp::DeleteRetained { topic } => {
                retained.remove(topic.as_str()).map_err(err)?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl BrokerStore for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    /// One write transaction per batch, committed with [`Durability::Immediate`] (fsync before
    /// `Ok`). On any error the transaction is dropped, which aborts it: a batch is all or
    /// nothing.
    async fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        // The blocking task needs owned data; copying is cheap next to the fsync.
        let ops = ops.to_vec();
        let n = ops.len();
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(|e| redb_err("begin", e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| redb_err("durability", e))?;
            write_ops(&txn, &ops)?;
            txn.commit().map_err(|e| redb_err("commit", e))
        })
        .await
        .inspect_err(|e| tracing::warn!(ops = n, error = %e, "embedded store batch failed"))
    }

    async fn load_sessions(&self) -> Result<Vec<LoadedSession>, StoreError> {
        self.blocking(|db| {
            let err = |e: redb::StorageError| redb_err("read", e);
            let txn = db.begin_read().map_err(|e| redb_err("begin read", e))?;
            let sessions = txn
                .open_table(SESSIONS)
                .map_err(|e| redb_err("opening table", e))?;
            let queued = txn.open_table(QUEUED).map_err(|e| redb_err("opening table", e))?;
            let mut out = Vec::new();
            for entry in sessions.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                let client_id = k.value();
                let mut q = Vec::new();
                for qe in queued
                    .range((client_id, 0u64)..=(client_id, u64::MAX))
                    .map_err(err)?
                {
                    let (qk, qv) = qe.map_err(err)?;
                    q.push((qk.value().1, qv.value().to_vec()));
                }
                out.push(LoadedSession {
                    client_id: client_id.to_owned(),
                    data: v.value().to_vec(),
                    queued: q,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn load_retained(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.blocking(|db| {
            let err = |e: redb::StorageError| redb_err("read", e);
            let txn = db.begin_read().map_err(|e| redb_err("begin read", e))?;
            let retained = txn
                .open_table(RETAINED)
                .map_err(|e| redb_err("opening table", e))?;
            let mut out = Vec::new();
            for entry in retained.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    /// A read transaction: proves the file is still open and readable.
    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(|e| redb_err("begin read", e))?;
            txn.open_table(SESSIONS)
                .map_err(|e| redb_err("opening table", e))?;
            Ok(())
        })
        .await
    }
}
