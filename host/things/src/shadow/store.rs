//! The storage seam for shadows. Backends live in `shoal-store` (embedded redb, Redis) and pass
//! the same conformance suite; [`MemoryShadowStore`] is the reference implementation.
//!
//! Atomicity is the contract that matters: [`ShadowStore::mutate`] reads the current document,
//! runs the caller's pure function on it and writes the result as if no other writer ran in
//! between, on one node or on several sharing one Redis. A backend may call the function more
//! than once (optimistic concurrency retries); only the result of the last call is stored.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::{ShadowError, ShadowName, StoredShadow, ThingName};

/// Identifies one shadow: a thing and, for a named shadow, its name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShadowKey {
    /// The thing.
    pub thing: ThingName,
    /// The shadow's name; `None` for the classic shadow.
    pub shadow: Option<ShadowName>,
}

impl ShadowKey {
    /// A key.
    pub fn new(thing: ThingName, shadow: Option<ShadowName>) -> Self {
        ShadowKey { thing, shadow }
    }

    /// The name a store files it under: `{thing}` for the classic shadow, `{thing}~{shadow}`
    /// for a named one (`~` is in neither name alphabet, so the form is unambiguous).
    pub fn storage_name(&self) -> String {
        match &self.shadow {
            None => self.thing.as_str().to_owned(),
            Some(s) => format!("{}~{}", self.thing.as_str(), s.as_str()),
        }
    }
}

impl fmt::Debug for ShadowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShadowKey({})", self.storage_name())
    }
}

/// The pure function [`ShadowStore::mutate`] applies: current document (if any, tombstones
/// included) to the document to store, or a rejection that leaves the store untouched.
pub type Mutation = Arc<dyn Fn(Option<&StoredShadow>) -> Result<StoredShadow, ShadowError> + Send + Sync>;

/// What a mutation did.
// Returned once per request and consumed at once; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Mutated {
    /// The new document was stored.
    Applied {
        /// The document before (tombstones included), `None` if there was none.
        ///
        /// Shared, so a store that keeps recent documents in memory hands them out without
        /// copying them.
        previous: Option<Arc<StoredShadow>>,
        /// The document stored.
        current: Arc<StoredShadow>,
    },
    /// The function rejected the request; nothing was written.
    Rejected(ShadowError),
}

/// A shadow store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShadowStoreError {
    /// The backend is unreachable or refused the operation.
    #[error("shadow store unavailable: {0}")]
    Unavailable(String),
    /// Too many concurrent writers kept changing the document (optimistic retries exhausted).
    #[error("shadow store contention: {0}")]
    Contention(String),
    /// Stored data could not be read.
    #[error("shadow store data is corrupt: {0}")]
    Corrupt(String),
}

/// Durable shadows.
#[async_trait]
pub trait ShadowStore: Send + Sync + 'static {
    /// A short name for logs (`embedded`, `redis`, `memory`).
    fn kind(&self) -> &'static str;

    /// The stored document (tombstones included), if any.
    async fn get(&self, key: &ShadowKey) -> Result<Option<StoredShadow>, ShadowStoreError>;

    /// Atomically applies `f` to the stored document and stores its result; durable when it
    /// returns `Applied`.
    async fn mutate(&self, key: &ShadowKey, f: Mutation) -> Result<Mutated, ShadowStoreError>;

    /// Names of the thing's named shadows that exist (not deleted), ascending, strictly after
    /// `after` when given, at most `limit`.
    async fn list_named(
        &self,
        thing: &ThingName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ShadowName>, ShadowStoreError>;
}

/// An in-memory [`ShadowStore`] (tests, `--store memory`).
#[derive(Debug, Default)]
pub struct MemoryShadowStore {
    docs: parking_lot::Mutex<BTreeMap<ShadowKey, Arc<StoredShadow>>>,
}

#[async_trait]
impl ShadowStore for MemoryShadowStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &ShadowKey) -> Result<Option<StoredShadow>, ShadowStoreError> {
        Ok(self.docs.lock().get(key).map(|doc| StoredShadow::clone(doc)))
    }

    async fn mutate(&self, key: &ShadowKey, f: Mutation) -> Result<Mutated, ShadowStoreError> {
        let mut docs = self.docs.lock();
        let previous = docs.get(key).cloned();
        match f(previous.as_deref()) {
            Ok(current) => {
                let current = Arc::new(current);
                docs.insert(key.clone(), Arc::clone(&current));
                Ok(Mutated::Applied { previous, current })
            }
            Err(e) => Ok(Mutated::Rejected(e)),
        }
    }

    async fn list_named(
        &self,
        thing: &ThingName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ShadowName>, ShadowStoreError> {
        let docs = self.docs.lock();
        Ok(docs
            .iter()
            .filter(|(k, v)| k.thing == *thing && v.exists())
            .filter_map(|(k, _)| k.shadow.clone())
            .filter(|s| after.is_none_or(|a| s.as_str() > a))
            .take(limit)
            .collect())
    }
}
