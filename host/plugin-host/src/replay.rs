//! Dry runs: a version (active or not) over recorded messages, with nothing leaving the run.
//!
//! A replay gets its own instance of the version, so the active version's instances, counters
//! and health are untouched; its key-value writes go to a scratch overlay that reads through
//! to the real store (so the run starts from the plugin's real state, and each replayed
//! version evolves its own copy); its log lines are kept with the result instead of the
//! plugin's log; the actions it returns are reported, never executed.

use crate::kv::{KvFailure, KvKey, KvScope, PluginKv};
use crate::log::LogLine;
use crate::outcome::Outcome;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// What a replay of one version produced.
#[derive(Clone, Debug)]
pub struct Replay {
    /// The version replayed.
    pub version: u32,
    /// One outcome per message, in order.
    pub outcomes: Vec<Outcome>,
    /// What the version logged during the run (kept up to the host's log ring size).
    pub logs: Vec<LogLine>,
}

/// An owned [`KvKey`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct OwnedKey {
    plugin: String,
    thing: Option<String>,
    key: Vec<u8>,
}

impl OwnedKey {
    fn of(key: &KvKey<'_>) -> Self {
        OwnedKey {
            plugin: key.plugin.to_string(),
            thing: match key.scope {
                KvScope::Global => None,
                KvScope::Thing(t) => Some(t.to_string()),
            },
            key: key.key.to_vec(),
        }
    }
}

/// Copy-on-write key-value state: reads fall through to `base` unless the run wrote the key;
/// writes and deletes stay here. The quota is checked against the base usage plus what the run
/// added, which is close enough for a dry run.
pub(crate) struct OverlayKv {
    base: Arc<dyn PluginKv>,
    /// `None` marks a key the run deleted.
    writes: Mutex<HashMap<OwnedKey, Option<Vec<u8>>>>,
}

impl OverlayKv {
    pub(crate) fn new(base: Arc<dyn PluginKv>) -> Self {
        OverlayKv {
            base,
            writes: Mutex::new(HashMap::new()),
        }
    }

    fn added(&self, plugin: &str) -> u64 {
        self.writes
            .lock()
            .iter()
            .filter(|(k, _)| k.plugin == plugin)
            .map(|(k, v)| {
                (k.key.len() + k.thing.as_ref().map_or(0, String::len) + v.as_ref().map_or(0, Vec::len))
                    as u64
            })
            .sum()
    }
}

impl PluginKv for OverlayKv {
    fn get(&self, key: &KvKey<'_>) -> Result<Option<Vec<u8>>, KvFailure> {
        if let Some(v) = self.writes.lock().get(&OwnedKey::of(key)) {
            return Ok(v.clone());
        }
        self.base.get(key)
    }

    fn set(
        &self,
        key: &KvKey<'_>,
        value: &[u8],
        _expires_at_ms: Option<u64>,
        quota_bytes: u64,
    ) -> Result<(), KvFailure> {
        let used = self.base.usage_bytes(key.plugin)? + self.added(key.plugin);
        let cost = key.charge() + value.len() as u64;
        if used + cost > quota_bytes {
            return Err(KvFailure::QuotaExceeded(format!(
                "{used} bytes used, {cost} more would exceed the quota of {quota_bytes}"
            )));
        }
        self.writes.lock().insert(OwnedKey::of(key), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&self, key: &KvKey<'_>) -> Result<bool, KvFailure> {
        let existed = self.get(key)?.is_some();
        self.writes.lock().insert(OwnedKey::of(key), None);
        Ok(existed)
    }

    fn usage_bytes(&self, plugin: &str) -> Result<u64, KvFailure> {
        Ok(self.base.usage_bytes(plugin)? + self.added(plugin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemoryKv;
    use crate::services::SystemClock;

    #[test]
    fn writes_stay_in_the_overlay() {
        let base: Arc<dyn PluginKv> = Arc::new(MemoryKv::new(Arc::new(SystemClock)));
        let k = |key: &'static str| KvKey {
            plugin: "p",
            scope: KvScope::Thing("t"),
            key: key.as_bytes(),
        };
        base.set(&k("a"), b"1", None, 1000).unwrap();
        let overlay = OverlayKv::new(base.clone());
        assert_eq!(overlay.get(&k("a")).unwrap(), Some(b"1".to_vec()));
        overlay.set(&k("a"), b"2", None, 1000).unwrap();
        overlay.set(&k("b"), b"3", None, 1000).unwrap();
        assert!(overlay.delete(&k("a")).unwrap());
        assert_eq!(overlay.get(&k("a")).unwrap(), None);
        assert_eq!(overlay.get(&k("b")).unwrap(), Some(b"3".to_vec()));
        assert_eq!(base.get(&k("a")).unwrap(), Some(b"1".to_vec()));
        assert_eq!(base.get(&k("b")).unwrap(), None);
    }
}
