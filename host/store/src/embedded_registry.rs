//! The thing registry in the embedded redb file.
//!
//! Layout (in the same file as the broker's tables, see [`crate::embedded`]):
//!
//! * `registry_records`: `(kind, name) -> JSON` with `kind` one of `thing`, `type`, `group`
//!   ([`shoal_things::registry::RecordKey::kind`]) and the record as [`Record::to_json_bytes`].
//! * `registry_index`: `(index, member) -> ()` for every member of every index, `index` being
//!   [`IndexKey::storage_id`]. One index is a contiguous range of the table, in member order,
//!   so listing and paging are range scans.
//!
//! Every [`RegistryStore::transact`] is one write transaction: the plan's reads go through it,
//! its writes are applied in it, and it commits with [`Durability::Immediate`] (an `fsync`)
//! before returning. redb has a single writer, so the run is serialised with every other write
//! to the file. Registry writes are rare next to shadow updates, so there is no group commit.
//! A plan that writes nothing (a rejection, an idempotent create) aborts the transaction
//! instead of committing.

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use shoal_things::registry::plan::{Outcome, Plan, Reads, Snapshot, Write, run_plan};
use shoal_things::registry::store::SCAN_END;
use shoal_things::registry::{IndexKey, Record, RegistryError, RegistryStore};

/// `(kind, name) -> record JSON`.
pub(crate) const REGISTRY_RECORDS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("registry_records");
/// `(index id, member) -> ()`.
pub(crate) const REGISTRY_INDEX: TableDefinition<(&str, &str), ()> = TableDefinition::new("registry_index");

/// Creates the registry's tables (called when the file is opened, so readers always find them).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(REGISTRY_RECORDS)?;
    txn.open_table(REGISTRY_INDEX)?;
    Ok(())
}

/// A [`RegistryStore`] in the embedded redb file, sharing the [`Database`] with
/// [`crate::EmbeddedStore`] (a redb file can be opened only once).
///
/// Get one from [`crate::EmbeddedStore::registry_store`]. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedRegistryStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for EmbeddedRegistryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedRegistryStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Maps a redb error: damage to the file is `InternalFailureException`, everything else (I/O,
/// locking, ...) `ServiceUnavailableException`.
fn redb_err(what: &str, e: impl Into<redb::Error>) -> RegistryError {
    match e.into() {
        redb::Error::Corrupted(msg) => RegistryError::InternalFailure(format!("redb {what}: {msg}")),
        other => RegistryError::ServiceUnavailable(format!("redb {what}: {other}")),
    }
}

/// Loads `reads` from the tables (of a read or a write transaction) into `snap`.
fn load<R, I>(records: &R, index: &I, reads: &Reads, snap: &mut Snapshot) -> Result<(), RegistryError>
where
    R: ReadableTable<(&'static str, &'static str), &'static [u8]>,
    I: ReadableTable<(&'static str, &'static str), ()>,
{
    let err = |e: redb::StorageError| redb_err("read", e);
    for key in &reads.records {
        let record = match records.get((key.kind(), key.name())).map_err(err)? {
            Some(bytes) => Some(Record::from_json_bytes(key, bytes.value())?),
            None => None,
        };
        snap.put_record(key.clone(), record);
    }
    let end = SCAN_END.to_string();
    for idx in &reads.members {
        let id = idx.storage_id();
        let mut members = Vec::new();
        for entry in index
            .range((id.as_str(), "")..(id.as_str(), end.as_str()))
            .map_err(err)?
        {
            let (k, _) = entry.map_err(err)?;
            members.push(k.value().1.to_owned());
        }
        snap.put_members(idx.clone(), members);
    }
    for idx in &reads.lens {
        let id = idx.storage_id();
        let mut n = 0u64;
        for entry in index
            .range((id.as_str(), "")..(id.as_str(), end.as_str()))
            .map_err(err)?
        {
            entry.map_err(err)?;
            n += 1;
        }
        snap.put_len(idx.clone(), n);
    }
    Ok(())
}

impl EmbeddedRegistryStore {
    /// A store on `db`, whose tables must exist (see [`crate::EmbeddedStore::open`]).
    pub(crate) fn new(db: Arc<Database>, path: Arc<PathBuf>) -> EmbeddedRegistryStore {
        EmbeddedRegistryStore { db, path }
    }

    /// Runs `f` on the blocking pool with the database (redb blocks on file I/O and `fsync`).
    async fn blocking<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, RegistryError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| RegistryError::InternalFailure(format!("embedded registry task failed: {e}")))?
    }
}

#[async_trait]
impl RegistryStore for EmbeddedRegistryStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn read(&self, reads: &Reads) -> Result<Snapshot, RegistryError> {
        let reads = reads.clone();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| redb_err("begin read", e))?;
            let open = |e: redb::TableError| redb_err("opening table", e);
            let records = txn.open_table(REGISTRY_RECORDS).map_err(open)?;
            let index = txn.open_table(REGISTRY_INDEX).map_err(open)?;
            let mut snap = Snapshot::default();
            load(&records, &index, &reads, &mut snap)?;
            Ok(snap)
        })
        .await
    }

    async fn transact(&self, plan: Plan) -> Result<Outcome, RegistryError> {
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(|e| redb_err("begin", e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| redb_err("durability", e))?;
            let (writes, outcome) = {
                let open = |e: redb::TableError| redb_err("opening table", e);
                let mut records = txn.open_table(REGISTRY_RECORDS).map_err(open)?;
                let mut index = txn.open_table(REGISTRY_INDEX).map_err(open)?;
                let (_, writes, outcome) =
                    run_plan(&plan, |reads, snap| load(&records, &index, reads, snap))?;
                let err = |e: redb::StorageError| redb_err("write", e);
                for write in &writes {
                    match write {
                        Write::Put(record) => {
                            let key = record.key();
                            records
                                .insert((key.kind(), key.name()), record.to_json_bytes().as_slice())
                                .map_err(err)?;
                        }
                        Write::Delete(key) => {
                            records.remove((key.kind(), key.name())).map_err(err)?;
                        }
                        Write::Touch(_) => {}
                        Write::IndexAdd(idx, member) => {
                            index
                                .insert((idx.storage_id().as_str(), member.as_str()), ())
                                .map_err(err)?;
                        }
                        Write::IndexRemove(idx, member) => {
                            index
                                .remove((idx.storage_id().as_str(), member.as_str()))
                                .map_err(err)?;
                        }
                    }
                }
                (writes, outcome)
            };
            if writes.is_empty() {
                txn.abort().map_err(|e| redb_err("abort", e))?;
            } else {
                txn.commit().map_err(|e| redb_err("commit", e))?;
            }
            Ok(outcome)
        })
        .await
        .inspect_err(|e| {
            if e.is_retryable() || matches!(e, RegistryError::InternalFailure(_)) {
                tracing::warn!(error = %e, "embedded registry transaction failed");
            }
        })
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
        let id = index.storage_id();
        let prefix = prefix.to_owned();
        let after = after.map(str::to_owned);
        self.blocking(move |db| {
            let upper = format!("{prefix}{SCAN_END}");
            let lower = match &after {
                Some(a) if a.as_str() >= prefix.as_str() => {
                    if a.as_str() >= upper.as_str() {
                        return Ok(Vec::new());
                    }
                    Bound::Excluded((id.as_str(), a.as_str()))
                }
                _ => Bound::Included((id.as_str(), prefix.as_str())),
            };
            let err = |e: redb::StorageError| redb_err("read", e);
            let txn = db.begin_read().map_err(|e| redb_err("begin read", e))?;
            let table = txn
                .open_table(REGISTRY_INDEX)
                .map_err(|e| redb_err("opening table", e))?;
            let mut out = Vec::new();
            let range = table
                .range::<(&str, &str)>((lower, Bound::Excluded((id.as_str(), upper.as_str()))))
                .map_err(err)?;
            for entry in range {
                let (k, _) = entry.map_err(err)?;
                out.push(k.value().1.to_owned());
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }
}
