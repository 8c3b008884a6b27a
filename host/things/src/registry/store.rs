//! The storage seam for the registry. Backends live in `shoal-store` (embedded redb, Redis) and
//! pass the same conformance suite; [`MemoryRegistryStore`] is the reference implementation.
//!
//! A store keeps two kinds of data: records ([`Record`], by [`RecordKey`]) and indexes (sets of
//! names, by [`IndexKey`], ordered bytewise). It knows nothing of the registry's rules: it
//! loads what a [`Plan`] asks for and applies the [`Write`]s of its commit, and the contract
//! that matters is atomicity. [`RegistryStore::transact`] must behave as if no other writer
//! ran between the plan's first read and its writes, on one node or on several sharing one
//! Redis; a backend may run the plan more than once (optimistic retries) and only applies the
//! writes of the last run.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;

use super::RegistryError;
use super::model::{IndexKey, Record, RecordKey};
use super::plan::{Outcome, Plan, Reads, Snapshot, Write, run_plan};

/// Sorts after every character a stored name may contain (registry names, attribute names and
/// values are all ASCII below `~`), so `{prefix}\u{7f}` bounds the names starting with
/// `prefix` from above.
pub const SCAN_END: char = '\u{7f}';

/// Durable registry records and indexes.
#[async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    /// A short name for logs (`embedded`, `redis`, `memory`).
    fn kind(&self) -> &'static str;

    /// Loads `reads` (records, index members, index sizes) as of one moment.
    async fn read(&self, reads: &Reads) -> Result<Snapshot, RegistryError>;

    /// Runs `plan` to its commit (see [`super::plan`]) and applies its writes atomically;
    /// durable when it returns `Ok`. A plan's error is returned unchanged and writes nothing.
    async fn transact(&self, plan: Plan) -> Result<Outcome, RegistryError>;

    /// Members of `index` that start with `prefix` and sort strictly after `after` (when
    /// given), ascending, at most `limit`.
    async fn scan(
        &self,
        index: &IndexKey,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, RegistryError>;
}

/// The members of `set` that [`RegistryStore::scan`] returns: for backends that hold an index
/// as an ordered set in memory.
pub fn scan_set(set: &BTreeSet<String>, prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
    set.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
        .filter(|m| after.is_none_or(|a| m.as_str() > a))
        .take_while(|m| m.starts_with(prefix))
        .take(limit)
        .cloned()
        .collect()
}

/// An in-memory [`RegistryStore`] (tests, `--store memory`).
#[derive(Debug, Default)]
pub struct MemoryRegistryStore {
    state: parking_lot::Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    records: BTreeMap<RecordKey, Record>,
    indexes: BTreeMap<IndexKey, BTreeSet<String>>,
}

impl MemoryState {
    fn load(&self, reads: &Reads, snap: &mut Snapshot) {
        for key in &reads.records {
            snap.put_record(key.clone(), self.records.get(key).cloned());
        }
        for index in &reads.members {
            let members = self
                .indexes
                .get(index)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            snap.put_members(index.clone(), members);
        }
        for index in &reads.lens {
            let len = self.indexes.get(index).map_or(0, BTreeSet::len);
            snap.put_len(index.clone(), u64::try_from(len).unwrap_or(u64::MAX));
        }
    }

    fn apply(&mut self, writes: Vec<Write>) {
        for write in writes {
            match write {
                Write::Put(record) => {
                    self.records.insert(record.key(), record);
                }
                Write::Delete(key) => {
                    self.records.remove(&key);
                }
                Write::Touch(_) => {}
                Write::IndexAdd(index, member) => {
                    self.indexes.entry(index).or_default().insert(member);
                }
                Write::IndexRemove(index, member) => {
                    if let Some(set) = self.indexes.get_mut(&index) {
                        set.remove(&member);
                        if set.is_empty() {
                            self.indexes.remove(&index);
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl RegistryStore for MemoryRegistryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn read(&self, reads: &Reads) -> Result<Snapshot, RegistryError> {
        let mut snap = Snapshot::default();
        self.state.lock().load(reads, &mut snap);
        Ok(snap)
    }

    async fn transact(&self, plan: Plan) -> Result<Outcome, RegistryError> {
        let mut state = self.state.lock();
        let (_, writes, outcome) = run_plan(&plan, |reads, snap| {
            state.load(reads, snap);
            Ok(())
        })?;
        state.apply(writes);
        Ok(outcome)
    }

    async fn scan(
        &self,
        index: &IndexKey,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, RegistryError> {
        let state = self.state.lock();
        Ok(state
            .indexes
            .get(index)
            .map(|set| scan_set(set, prefix, after, limit))
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_set_honours_prefix_after_and_limit() {
        let set: BTreeSet<String> = ["a", "ab", "abc", "abd", "b", "ba"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(scan_set(&set, "", None, 10).len(), 6);
        assert_eq!(scan_set(&set, "ab", None, 10), ["ab", "abc", "abd"]);
        assert_eq!(scan_set(&set, "ab", Some("abc"), 10), ["abd"]);
        assert_eq!(scan_set(&set, "ab", Some("a"), 2), ["ab", "abc"]);
        assert_eq!(scan_set(&set, "", Some("b"), 10), ["ba"]);
        assert_eq!(scan_set(&set, "c", None, 10), Vec::<String>::new());
        assert_eq!(scan_set(&set, "", Some("zzz"), 10), Vec::<String>::new());
    }
}
