//! Per-plugin key-value state: the [`PluginKv`] seam and an in-memory implementation.
//!
//! Instances are reused and discarded at the host's will, so anything a plugin must remember
//! between messages lives here, keyed by plugin name (shared by all its versions), scope
//! (global or one thing) and key. Keys and values are bytes so a Redis or embedded backend can
//! store them as they are; expiry is an absolute time from the host's [`Clock`]; the quota is
//! enforced by the backend because only it knows the plugin's usage.

use crate::services::Clock;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Which part of a plugin's key space a key lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvScope<'a> {
    /// Shared by every message the plugin sees.
    Global,
    /// Private to one thing.
    Thing(&'a str),
}

/// A fully qualified key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvKey<'a> {
    /// The plugin (by name, across versions).
    pub plugin: &'a str,
    /// The scope.
    pub scope: KvScope<'a>,
    /// The key (1-256 bytes, checked by the host).
    pub key: &'a [u8],
}

impl KvKey<'_> {
    /// Bytes this key costs against the plugin's quota, beside its value.
    pub fn charge(&self) -> u64 {
        let scope = match self.scope {
            KvScope::Global => 0,
            KvScope::Thing(thing) => thing.len(),
        };
        (scope + self.key.len()) as u64
    }
}

/// Why a key-value operation failed (mapped onto WIT's `kv-error`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvFailure {
    /// The write would exceed the plugin's quota.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The key is not acceptable.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The backend cannot answer now.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// A key-value backend. Called synchronously on the plugin's call path: implementations must
/// not block (serve from memory; a networked backend keeps a local cache and writes behind).
pub trait PluginKv: Send + Sync + 'static {
    /// The value, unless absent or expired.
    fn get(&self, key: &KvKey<'_>) -> Result<Option<Vec<u8>>, KvFailure>;
    /// Stores a value, expiring at `expires_at_ms` (Unix milliseconds) when given. Fails with
    /// [`KvFailure::QuotaExceeded`] when the plugin's keys and values would exceed
    /// `quota_bytes` in total.
    fn set(
        &self,
        key: &KvKey<'_>,
        value: &[u8],
        expires_at_ms: Option<u64>,
        quota_bytes: u64,
    ) -> Result<(), KvFailure>;
    /// Deletes a value; whether it existed (and had not expired).
    fn delete(&self, key: &KvKey<'_>) -> Result<bool, KvFailure>;
    /// Bytes the plugin currently uses.
    fn usage_bytes(&self, plugin: &str) -> Result<u64, KvFailure>;
}

struct Entry {
    value: Vec<u8>,
    expires_at_ms: Option<u64>,
}

impl Entry {
    fn live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }
}

#[derive(Default)]
struct Space {
    global: HashMap<Vec<u8>, Entry>,
    things: HashMap<String, HashMap<Vec<u8>, Entry>>,
    used: u64,
}

impl Space {
    fn map(&self, scope: KvScope<'_>) -> Option<&HashMap<Vec<u8>, Entry>> {
        match scope {
            KvScope::Global => Some(&self.global),
            KvScope::Thing(thing) => self.things.get(thing),
        }
    }

    fn map_mut(&mut self, scope: KvScope<'_>) -> &mut HashMap<Vec<u8>, Entry> {
        match scope {
            KvScope::Global => &mut self.global,
            KvScope::Thing(thing) => self.things.entry(thing.to_string()).or_default(),
        }
    }

    /// Drops expired entries, crediting their bytes.
    fn purge(&mut self, now_ms: u64) {
        let mut freed = 0u64;
        let mut sweep = |scope_len: usize, map: &mut HashMap<Vec<u8>, Entry>| {
            map.retain(|k, e| {
                let keep = e.live(now_ms);
                if !keep {
                    freed += (scope_len + k.len() + e.value.len()) as u64;
                }
                keep
            });
        };
        sweep(0, &mut self.global);
        for (thing, map) in &mut self.things {
            sweep(thing.len(), map);
        }
        self.things.retain(|_, m| !m.is_empty());
        self.used = self.used.saturating_sub(freed);
    }
}

/// An in-memory [`PluginKv`]: one mutex over all plugins' spaces, expiry checked on read and
/// purged when a write would exceed the quota. Lost on restart: the server puts it in front of
/// a store with [`crate::DurableKv`]; alone it serves tests and `--store memory`.
pub struct MemoryKv {
    clock: Arc<dyn Clock>,
    spaces: Mutex<HashMap<String, Space>>,
}

impl MemoryKv {
    /// An empty store using `clock` for expiry.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        MemoryKv {
            clock,
            spaces: Mutex::new(HashMap::new()),
        }
    }
}

impl PluginKv for MemoryKv {
    fn get(&self, key: &KvKey<'_>) -> Result<Option<Vec<u8>>, KvFailure> {
        let now = self.clock.now_ms();
        let spaces = self.spaces.lock();
        let entry = spaces
            .get(key.plugin)
            .and_then(|s| s.map(key.scope))
            .and_then(|m| m.get(key.key));
        Ok(entry.filter(|e| e.live(now)).map(|e| e.value.clone()))
    }

    fn set(
        &self,
        key: &KvKey<'_>,
        value: &[u8],
        expires_at_ms: Option<u64>,
        quota_bytes: u64,
    ) -> Result<(), KvFailure> {
        let now = self.clock.now_ms();
        let mut spaces = self.spaces.lock();
        let space = spaces.entry(key.plugin.to_string()).or_default();
        let new_cost = key.charge() + value.len() as u64;
        let old_cost = |space: &Space| {
            space
                .map(key.scope)
                .and_then(|m| m.get(key.key))
                .map_or(0, |e| key.charge() + e.value.len() as u64)
        };
        if space.used.saturating_sub(old_cost(space)) + new_cost > quota_bytes {
            space.purge(now);
            let used = space.used.saturating_sub(old_cost(space));
            if used + new_cost > quota_bytes {
                return Err(KvFailure::QuotaExceeded(format!(
                    "{used} bytes used, {new_cost} more would exceed the quota of {quota_bytes}"
                )));
            }
        }
        let old = old_cost(space);
        space.used = space.used.saturating_sub(old) + new_cost;
        space.map_mut(key.scope).insert(
            key.key.to_vec(),
            Entry {
                value: value.to_vec(),
                expires_at_ms,
            },
        );
        Ok(())
    }

    fn delete(&self, key: &KvKey<'_>) -> Result<bool, KvFailure> {
        let now = self.clock.now_ms();
        let mut spaces = self.spaces.lock();
        let Some(space) = spaces.get_mut(key.plugin) else {
            return Ok(false);
        };
        let removed = match key.scope {
            KvScope::Global => space.global.remove(key.key),
            KvScope::Thing(thing) => space.things.get_mut(thing).and_then(|m| m.remove(key.key)),
        };
        Ok(match removed {
            Some(entry) => {
                space.used = space.used.saturating_sub(key.charge() + entry.value.len() as u64);
                entry.live(now)
            }
            None => false,
        })
    }

    fn usage_bytes(&self, plugin: &str) -> Result<u64, KvFailure> {
        Ok(self.spaces.lock().get(plugin).map_or(0, |s| s.used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct FakeClock(AtomicU64);
    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn key<'a>(plugin: &'a str, scope: KvScope<'a>, k: &'a str) -> KvKey<'a> {
        KvKey {
            plugin,
            scope,
            key: k.as_bytes(),
        }
    }

    #[test]
    fn scopes_are_separate_and_quota_counts_keys_and_values() {
        let kv = MemoryKv::new(Arc::new(FakeClock(AtomicU64::new(0))));
        kv.set(&key("p", KvScope::Global, "k"), b"g", None, 100).unwrap();
        kv.set(&key("p", KvScope::Thing("t1"), "k"), b"t", None, 100)
            .unwrap();
        assert_eq!(
            kv.get(&key("p", KvScope::Global, "k")).unwrap(),
            Some(b"g".to_vec())
        );
        assert_eq!(
            kv.get(&key("p", KvScope::Thing("t1"), "k")).unwrap(),
            Some(b"t".to_vec())
        );
        assert_eq!(kv.get(&key("p", KvScope::Thing("t2"), "k")).unwrap(), None);
        assert_eq!(kv.get(&key("other", KvScope::Global, "k")).unwrap(), None);
        assert_eq!(kv.usage_bytes("p").unwrap(), 2 + 4);
        // Overwriting charges the difference only.
        kv.set(&key("p", KvScope::Global, "k"), &[0; 90], None, 100)
            .unwrap();
        let err = kv
            .set(&key("p", KvScope::Global, "x"), &[0; 10], None, 100)
            .unwrap_err();
        assert!(matches!(err, KvFailure::QuotaExceeded(_)), "{err:?}");
        assert!(kv.delete(&key("p", KvScope::Global, "k")).unwrap());
        assert!(!kv.delete(&key("p", KvScope::Global, "k")).unwrap());
        assert_eq!(kv.usage_bytes("p").unwrap(), 4);
    }

    #[test]
    fn expired_values_vanish_and_free_their_quota() {
        let clock = Arc::new(FakeClock(AtomicU64::new(1_000)));
        let kv = MemoryKv::new(clock.clone());
        kv.set(&key("p", KvScope::Global, "a"), &[1; 50], Some(2_000), 60)
            .unwrap();
        assert!(kv.get(&key("p", KvScope::Global, "a")).unwrap().is_some());
        assert!(
            kv.set(&key("p", KvScope::Global, "b"), &[1; 50], None, 60)
                .is_err()
        );
        clock.0.store(2_000, Ordering::SeqCst);
        assert_eq!(kv.get(&key("p", KvScope::Global, "a")).unwrap(), None);
        kv.set(&key("p", KvScope::Global, "b"), &[1; 50], None, 60)
            .unwrap();
        assert_eq!(kv.usage_bytes("p").unwrap(), 51);
    }
}
