//! The in-process host of native builds: a settable clock, an in-memory key-value store that
//! honours TTLs against that clock, a shadow map, and captured logs and metrics. One per thread,
//! so the tests `cargo test` runs in parallel (one thread each) never see each other's state;
//! [`crate::testing::Harness`] resets and inspects it.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::kv::{Error as KvError, Scope};
use crate::log::Level;
use crate::testing::LogRecord;

/// 2026-01-01T00:00:00Z: a fixed start so tests are reproducible.
pub(crate) const EPOCH_MS: u64 = 1_767_225_600_000;

/// The longest key the host accepts, in bytes.
const MAX_KEY_BYTES: usize = 256;

// Shoal's default per-plugin limits (host/plugin-host's `PluginConfig`), mirrored so a test
// fails the way production would; the harness can change each.
/// Total bytes of keys and values a plugin may keep.
pub(crate) const DEFAULT_KV_QUOTA_BYTES: usize = 1 << 20;
/// Largest single value.
pub(crate) const DEFAULT_KV_MAX_VALUE_BYTES: usize = 64 << 10;
/// Most actions one call may return.
pub(crate) const DEFAULT_MAX_ACTIONS: usize = 100;
/// Most bytes of action data (strings and payloads) one call may return.
pub(crate) const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;

pub(crate) struct KvEntry {
    pub(crate) value: Vec<u8>,
    pub(crate) expires_at_ms: Option<u64>,
}

/// (thing, key); `None` is the global scope.
pub(crate) type KvKey = (Option<String>, String);

pub(crate) struct FakeHost {
    pub(crate) now_ms: u64,
    pub(crate) kv: BTreeMap<KvKey, KvEntry>,
    pub(crate) kv_quota_bytes: Option<usize>,
    pub(crate) kv_max_value_bytes: Option<usize>,
    pub(crate) kv_unavailable: Option<String>,
    pub(crate) shadows: BTreeMap<(String, Option<String>), String>,
    pub(crate) shadow_error: Option<String>,
    pub(crate) logs: Vec<LogRecord>,
    pub(crate) counters: BTreeMap<String, u64>,
    pub(crate) gauges: BTreeMap<String, f64>,
}

impl FakeHost {
    fn new() -> Self {
        FakeHost {
            now_ms: EPOCH_MS,
            kv: BTreeMap::new(),
            kv_quota_bytes: Some(DEFAULT_KV_QUOTA_BYTES),
            kv_max_value_bytes: Some(DEFAULT_KV_MAX_VALUE_BYTES),
            kv_unavailable: None,
            shadows: BTreeMap::new(),
            shadow_error: None,
            logs: Vec::new(),
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
        }
    }

    /// Drops the entries whose TTL has passed on the fake clock.
    pub(crate) fn expire(&mut self) {
        let now = self.now_ms;
        self.kv.retain(|_, e| e.expires_at_ms.is_none_or(|t| t > now));
    }

    fn kv_bytes(&self) -> usize {
        self.kv.iter().map(|((_, k), e)| k.len() + e.value.len()).sum()
    }

    fn check(&self, key: &str) -> Result<(), KvError> {
        if let Some(why) = &self.kv_unavailable {
            return Err(KvError::Unavailable(why.clone()));
        }
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(KvError::InvalidKey(format!(
                "{} bytes (1 to {MAX_KEY_BYTES})",
                key.len()
            )));
        }
        Ok(())
    }
}

thread_local! {
    static HOST: RefCell<FakeHost> = RefCell::new(FakeHost::new());
}

/// Runs `f` on this thread's fake host. `f` must not call back into a host function.
pub(crate) fn with_host<R>(f: impl FnOnce(&mut FakeHost) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

/// Forgets everything: clock back to [`EPOCH_MS`], empty stores, no captured output.
pub(crate) fn reset() {
    with_host(|h| *h = FakeHost::new());
}

pub(crate) fn kv_key(scope: Scope<'_>, key: &str) -> KvKey {
    let thing = match scope {
        Scope::Global => None,
        Scope::Thing(t) => Some(t.to_string()),
    };
    (thing, key.to_string())
}

pub(crate) fn log(level: Level, message: &str) {
    // Shown by `cargo test` for a failing test (it captures each test's stderr).
    eprintln!("[plugin {level}] {message}");
    with_host(|h| {
        let at_ms = h.now_ms;
        h.logs.push(LogRecord {
            level,
            message: message.to_string(),
            at_ms,
        });
    });
}

pub(crate) fn now_ms() -> u64 {
    with_host(|h| h.now_ms)
}

pub(crate) fn get_shadow(thing: &str, name: Option<&str>) -> Result<Option<String>, String> {
    with_host(|h| match &h.shadow_error {
        Some(why) => Err(why.clone()),
        None => Ok(h
            .shadows
            .get(&(thing.to_string(), name.map(str::to_string)))
            .cloned()),
    })
}

pub(crate) fn kv_get(scope: Scope<'_>, key: &str) -> Result<Option<Vec<u8>>, KvError> {
    with_host(|h| {
        h.check(key)?;
        h.expire();
        Ok(h.kv.get(&kv_key(scope, key)).map(|e| e.value.clone()))
    })
}

pub(crate) fn kv_set(
    scope: Scope<'_>,
    key: &str,
    value: &[u8],
    ttl_secs: Option<u32>,
) -> Result<(), KvError> {
    with_host(|h| {
        h.check(key)?;
        h.expire();
        let k = kv_key(scope, key);
        if let Some(max) = h.kv_max_value_bytes
            && value.len() > max
        {
            return Err(KvError::QuotaExceeded(format!(
                "a value of {} bytes, the limit is {max}",
                value.len()
            )));
        }
        if let Some(quota) = h.kv_quota_bytes {
            let old = h.kv.get(&k).map_or(0, |e| key.len() + e.value.len());
            let total = h.kv_bytes() - old + key.len() + value.len();
            if total > quota {
                return Err(KvError::QuotaExceeded(format!("{total} bytes > quota {quota}")));
            }
        }
        let expires_at_ms = ttl_secs.map(|s| h.now_ms + u64::from(s) * 1000);
        h.kv.insert(
            k,
            KvEntry {
                value: value.to_vec(),
                expires_at_ms,
            },
        );
        Ok(())
    })
}

pub(crate) fn kv_delete(scope: Scope<'_>, key: &str) -> Result<bool, KvError> {
    with_host(|h| {
        h.check(key)?;
        h.expire();
        Ok(h.kv.remove(&kv_key(scope, key)).is_some())
    })
}

pub(crate) fn counter_add(name: &str, value: u64) {
    with_host(|h| *h.counters.entry(name.to_string()).or_default() += value);
}

pub(crate) fn gauge_set(name: &str, value: f64) {
    with_host(|h| {
        h.gauges.insert(name.to_string(), value);
    });
}
