//! The storage seam for identities: certificates, CA certificates, policies and attachments.
//!
//! These records are small, few (thousands, not millions) and written rarely, so the seam is a
//! plain table/key/value store with a compare-free API; [`crate::service`] keeps the whole set
//! in memory for the message path and writes through. Backends (embedded redb, Redis) live in
//! `shoal-store`; [`MemoryAuthStore`] is the reference.

use std::collections::BTreeMap;

use async_trait::async_trait;

/// The tables of the identity store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuthTable {
    /// Device certificates by id.
    Certificates,
    /// Registered CA certificates by id.
    CaCertificates,
    /// Policies by name (with their versions).
    Policies,
    /// Policy attachments, keyed `{policy}\n{target}`.
    PolicyTargets,
    /// Thing-principal attachments, keyed `{thing}\n{principal}`.
    ThingPrincipals,
    /// Access keys (issue #7), by access key id.
    AccessKeys,
}

impl AuthTable {
    /// Every table.
    pub const ALL: [AuthTable; 6] = [
        AuthTable::Certificates,
        AuthTable::CaCertificates,
        AuthTable::Policies,
        AuthTable::PolicyTargets,
        AuthTable::ThingPrincipals,
        AuthTable::AccessKeys,
    ];

    /// A stable short name (used in store keys).
    pub fn name(self) -> &'static str {
        match self {
            AuthTable::Certificates => "certificates",
            AuthTable::CaCertificates => "ca_certificates",
            AuthTable::Policies => "policies",
            AuthTable::PolicyTargets => "policy_targets",
            AuthTable::ThingPrincipals => "thing_principals",
            AuthTable::AccessKeys => "access_keys",
        }
    }
}

/// An identity store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthStoreError {
    /// The backend is unreachable or refused the operation.
    #[error("identity store unavailable: {0}")]
    Unavailable(String),
}

/// Durable identity records.
#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    /// A short name for logs.
    fn kind(&self) -> &'static str;

    /// One record.
    async fn get(&self, table: AuthTable, key: &str) -> Result<Option<Vec<u8>>, AuthStoreError>;

    /// Creates or replaces a record; durable when it returns.
    async fn put(&self, table: AuthTable, key: &str, value: Vec<u8>) -> Result<(), AuthStoreError>;

    /// Creates a record only if the key is free; `false` if it exists (nothing written).
    async fn put_new(&self, table: AuthTable, key: &str, value: Vec<u8>) -> Result<bool, AuthStoreError>;

    /// Deletes a record; `false` if there was none.
    async fn delete(&self, table: AuthTable, key: &str) -> Result<bool, AuthStoreError>;

    /// Every record of a table, ascending by key.
    async fn scan(&self, table: AuthTable) -> Result<Vec<(String, Vec<u8>)>, AuthStoreError>;

    /// For a store several nodes share: the revision of `table`, a number that changes with
    /// every write of that table by any node, so each node can tell cheaply that its copy in
    /// memory is stale. `None` (the default) for a store only this node writes.
    async fn revision(&self, table: AuthTable) -> Result<Option<u64>, AuthStoreError> {
        let _ = table;
        Ok(None)
    }
}

/// An in-memory [`AuthStore`]; [`MemoryAuthStore::shared`] makes one that keeps revisions,
/// like a store nodes share (for tests of several services on one store).
#[derive(Debug, Default)]
pub struct MemoryAuthStore {
    tables: parking_lot::Mutex<BTreeMap<(AuthTable, String), Vec<u8>>>,
    /// Revisions by table, when shared.
    revisions: Option<parking_lot::Mutex<BTreeMap<AuthTable, u64>>>,
}

impl MemoryAuthStore {
    /// A store that reports revisions, as if several nodes shared it.
    pub fn shared() -> MemoryAuthStore {
        MemoryAuthStore {
            tables: Default::default(),
            revisions: Some(Default::default()),
        }
    }

    fn bump(&self, table: AuthTable) {
        if let Some(r) = &self.revisions {
            *r.lock().entry(table).or_default() += 1;
        }
    }
}

#[async_trait]
impl AuthStore for MemoryAuthStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, table: AuthTable, key: &str) -> Result<Option<Vec<u8>>, AuthStoreError> {
        Ok(self.tables.lock().get(&(table, key.to_owned())).cloned())
    }

    async fn put(&self, table: AuthTable, key: &str, value: Vec<u8>) -> Result<(), AuthStoreError> {
        self.tables.lock().insert((table, key.to_owned()), value);
        self.bump(table);
        Ok(())
    }

    async fn put_new(&self, table: AuthTable, key: &str, value: Vec<u8>) -> Result<bool, AuthStoreError> {
        let mut t = self.tables.lock();
        let k = (table, key.to_owned());
        if t.contains_key(&k) {
            return Ok(false);
        }
        t.insert(k, value);
        self.bump(table);
        Ok(true)
    }

    async fn delete(&self, table: AuthTable, key: &str) -> Result<bool, AuthStoreError> {
        let gone = self.tables.lock().remove(&(table, key.to_owned())).is_some();
        if gone {
            self.bump(table);
        }
        Ok(gone)
    }

    async fn scan(&self, table: AuthTable) -> Result<Vec<(String, Vec<u8>)>, AuthStoreError> {
        Ok(self
            .tables
            .lock()
            .iter()
            .filter(|((t, _), _)| *t == table)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn revision(&self, table: AuthTable) -> Result<Option<u64>, AuthStoreError> {
        Ok(self
            .revisions
            .as_ref()
            .map(|r| r.lock().get(&table).copied().unwrap_or(0)))
    }
}

/// The conformance suite every [`AuthStore`] passes (run by `shoal-store`'s tests too).
pub async fn conformance(store: &dyn AuthStore) {
    for t in AuthTable::ALL {
        assert!(
            store.scan(t).await.expect("scan").is_empty(),
            "{t:?} starts empty"
        );
    }
    let c = AuthTable::Certificates;
    assert_eq!(store.get(c, "a").await.expect("get"), None);
    store.put(c, "a", b"1".to_vec()).await.expect("put");
    store.put(c, "a", b"2".to_vec()).await.expect("replace");
    assert_eq!(store.get(c, "a").await.expect("get"), Some(b"2".to_vec()));
    assert!(!store.put_new(c, "a", b"3".to_vec()).await.expect("put_new"));
    assert_eq!(store.get(c, "a").await.expect("get"), Some(b"2".to_vec()));
    assert!(
        store
            .put_new(c, "b", b"\x00\xff".to_vec())
            .await
            .expect("put_new")
    );
    // Same key in another table is another record.
    store
        .put(AuthTable::Policies, "a", b"p".to_vec())
        .await
        .expect("put");
    let keys: Vec<String> = store
        .scan(c)
        .await
        .expect("scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(store.get(c, "b").await.expect("get"), Some(b"\x00\xff".to_vec()));
    let t = AuthTable::PolicyTargets;
    for k in ["p1\narn:x", "p1\narn:y", "p2\narn:x", "p:1\n*"] {
        store.put(t, k, Vec::new()).await.expect("put");
    }
    assert_eq!(store.scan(t).await.expect("scan").len(), 4);
    assert!(store.delete(c, "a").await.expect("delete"));
    assert!(!store.delete(c, "a").await.expect("delete again"));
    assert_eq!(store.get(c, "a").await.expect("get"), None);
    assert_eq!(
        store.get(AuthTable::Policies, "a").await.expect("get"),
        Some(b"p".to_vec())
    );
    // A shared store's revision of a table moves with every write of that table.
    let k = AuthTable::AccessKeys;
    if let Some(r0) = store.revision(k).await.expect("revision") {
        store.put(k, "AKIA1", b"1".to_vec()).await.expect("put");
        let r1 = store.revision(k).await.expect("revision");
        assert!(r1.is_some_and(|r| r != r0), "{r0} {r1:?}");
        assert!(store.put_new(k, "AKIA2", b"2".to_vec()).await.expect("put_new"));
        let r2 = store.revision(k).await.expect("revision");
        assert_ne!(r1, r2);
        assert!(store.delete(k, "AKIA1").await.expect("delete"));
        let r3 = store.revision(k).await.expect("revision");
        assert_ne!(r2, r3);
        // Reading, and writing another table, leave it alone.
        store.scan(k).await.expect("scan");
        store
            .put(AuthTable::Policies, "b", b"q".to_vec())
            .await
            .expect("put");
        assert_eq!(store.revision(k).await.expect("revision"), r3);
        assert!(store.delete(k, "AKIA2").await.expect("delete"));
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_conforms() {
        super::conformance(&super::MemoryAuthStore::default()).await;
        super::conformance(&super::MemoryAuthStore::shared()).await;
    }
}
