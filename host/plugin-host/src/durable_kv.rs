//! Key-value state that survives restarts: [`DurableKv`] answers every plugin call from memory
//! (a [`MemoryKv`]) and writes changes behind to a [`KvBackend`] (the embedded store or Redis,
//! implemented in `shoal-store`) from its own thread, in batches.
//!
//! At start the backend's entries are loaded into memory (expired ones are skipped and deleted
//! from the backend). A write the backend refuses is kept and retried (with a growing pause,
//! at most 5 s) until the backend takes it, so an outage loses nothing the process still holds;
//! what was not yet written when the process dies is lost (the window is one batch, normally
//! milliseconds). Several Shoal nodes on one Redis each keep their own copy in memory: a value
//! written on one node is seen by another only after it restarts.

use crate::kv::{KvFailure, KvKey, KvScope, MemoryKv, PluginKv};
use crate::services::Clock;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

/// One stored entry of a plugin's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    /// Plugin name.
    pub plugin: String,
    /// The thing, or `None` for the plugin's global scope.
    pub thing: Option<String>,
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: Option<u64>,
}

/// One change for the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvChange {
    /// Insert or replace.
    Put(KvEntry),
    /// Remove (absent keys are fine).
    Delete {
        /// Plugin name.
        plugin: String,
        /// The thing, or `None` for the global scope.
        thing: Option<String>,
        /// Key.
        key: Vec<u8>,
    },
}

/// Durable storage of plugin state. Called from the write-behind thread and once at start,
/// never on a plugin call, so implementations may block (bounded by their own timeouts).
pub trait KvBackend: Send + Sync + 'static {
    /// `embedded`, `redis`...
    fn kind(&self) -> &'static str;
    /// Every stored entry.
    fn load(&self) -> Result<Vec<KvEntry>, String>;
    /// Applies `changes` in order, atomically if the backend can.
    fn apply(&self, changes: &[KvChange]) -> Result<(), String>;
}

/// Most changes written in one batch.
const BATCH: usize = 1000;

/// Memory in front, a [`KvBackend`] behind (see the module docs).
pub struct DurableKv {
    mem: MemoryKv,
    tx: Sender<KvChange>,
    pending: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
}

impl DurableKv {
    /// Loads the backend's entries and starts the write-behind thread. Blocks for the load:
    /// call it off the async executor.
    pub fn open(backend: Arc<dyn KvBackend>, clock: Arc<dyn Clock>) -> Result<DurableKv, String> {
        let now = clock.now_ms();
        let mem = MemoryKv::new(clock);
        let mut expired = Vec::new();
        let mut loaded = 0usize;
        for e in backend.load()? {
            if e.expires_at_ms.is_some_and(|at| at <= now) {
                expired.push(KvChange::Delete {
                    plugin: e.plugin,
                    thing: e.thing,
                    key: e.key,
                });
                continue;
            }
            let key = KvKey {
                plugin: &e.plugin,
                scope: e.thing.as_deref().map_or(KvScope::Global, KvScope::Thing),
                key: &e.key,
            };
            // What is stored was within quota when written; quotas apply to new writes.
            mem.set(&key, &e.value, e.expires_at_ms, u64::MAX)
                .map_err(|f| format!("loading plugin state: {f:?}"))?;
            loaded += 1;
        }
        if !expired.is_empty() {
            backend.apply(&expired)?;
        }
        tracing::info!(
            backend = backend.kind(),
            entries = loaded,
            expired = expired.len(),
            "plugin key-value state loaded"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let pending = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let (p, f) = (pending.clone(), failures.clone());
        std::thread::Builder::new()
            .name("shoal-plugin-kv".into())
            .spawn(move || writer(backend, rx, p, f))
            .map_err(|e| format!("cannot start the plugin state writer: {e}"))?;
        Ok(DurableKv {
            mem,
            tx,
            pending,
            failures,
        })
    }

    /// Changes not yet written to the backend.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Batches the backend refused so far (each retried until written).
    pub fn write_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Waits (up to `timeout`) until every change so far is written; whether it was.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.pending() > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::park_timeout(Duration::from_millis(5));
        }
        true
    }

    fn send(&self, change: KvChange) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(change).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("the plugin state writer has stopped; a change stays in memory only");
        }
    }
}

fn owned(key: &KvKey<'_>) -> (String, Option<String>, Vec<u8>) {
    let thing = match key.scope {
        KvScope::Global => None,
        KvScope::Thing(t) => Some(t.to_string()),
    };
    (key.plugin.to_string(), thing, key.key.to_vec())
}

impl PluginKv for DurableKv {
    fn get(&self, key: &KvKey<'_>) -> Result<Option<Vec<u8>>, KvFailure> {
        self.mem.get(key)
    }

    fn set(
        &self,
        key: &KvKey<'_>,
        value: &[u8],
        expires_at_ms: Option<u64>,
        quota_bytes: u64,
    ) -> Result<(), KvFailure> {
        self.mem.set(key, value, expires_at_ms, quota_bytes)?;
        let (plugin, thing, k) = owned(key);
        self.send(KvChange::Put(KvEntry {
            plugin,
            thing,
            key: k,
            value: value.to_vec(),
            expires_at_ms,
        }));
        Ok(())
    }

    fn delete(&self, key: &KvKey<'_>) -> Result<bool, KvFailure> {
        let existed = self.mem.delete(key)?;
        let (plugin, thing, key) = owned(key);
        self.send(KvChange::Delete { plugin, thing, key });
        Ok(existed)
    }

    fn usage_bytes(&self, plugin: &str) -> Result<u64, KvFailure> {
        self.mem.usage_bytes(plugin)
    }
}

fn writer(
    backend: Arc<dyn KvBackend>,
    rx: Receiver<KvChange>,
    pending: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut pause = Duration::from_millis(50);
        loop {
            match backend.apply(&batch) {
                Ok(()) => break,
                Err(e) => {
                    let n = failures.fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() || n == 0 {
                        tracing::warn!(backend = backend.kind(), error = %e, changes = batch.len(),
                            "cannot write plugin state; keeping it in memory and retrying");
                    }
                    std::thread::park_timeout(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        pending.fetch_sub(batch.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::SystemClock;
    use parking_lot::Mutex;

    /// A backend in memory that can be told to fail.
    #[derive(Default)]
    struct Fake {
        entries: Mutex<Vec<KvEntry>>,
        down: std::sync::atomic::AtomicBool,
    }

    impl KvBackend for Fake {
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn load(&self) -> Result<Vec<KvEntry>, String> {
            Ok(self.entries.lock().clone())
        }
        fn apply(&self, changes: &[KvChange]) -> Result<(), String> {
            if self.down.load(Ordering::SeqCst) {
                return Err("down".into());
            }
            let mut e = self.entries.lock();
            for c in changes {
                match c {
                    KvChange::Put(p) => {
                        e.retain(|x| (&x.plugin, &x.thing, &x.key) != (&p.plugin, &p.thing, &p.key));
                        e.push(p.clone());
                    }
                    KvChange::Delete { plugin, thing, key } => {
                        e.retain(|x| (&x.plugin, &x.thing, &x.key) != (plugin, thing, key));
                    }
                }
            }
            Ok(())
        }
    }

    #[test]
    fn survives_a_reopen_and_an_outage() {
        let backend = Arc::new(Fake::default());
        let key = |k: &'static str| KvKey {
            plugin: "p",
            scope: KvScope::Thing("t1"),
            key: k.as_bytes(),
        };
        let kv = DurableKv::open(backend.clone(), Arc::new(SystemClock)).unwrap();
        kv.set(&key("a"), b"1", None, 1000).unwrap();
        kv.set(&key("gone"), b"x", Some(1), 1000).unwrap();
        kv.set(&key("b"), b"2", None, 1000).unwrap();
        assert!(kv.delete(&key("b")).unwrap());
        assert!(kv.flush(Duration::from_secs(5)));
        backend.down.store(true, Ordering::SeqCst);
        kv.set(&key("c"), b"3", None, 1000).unwrap();
        assert!(
            !kv.flush(Duration::from_millis(200)),
            "held while the backend is down"
        );
        assert_eq!(
            kv.get(&key("c")).unwrap(),
            Some(b"3".to_vec()),
            "served from memory meanwhile"
        );
        backend.down.store(false, Ordering::SeqCst);
        assert!(kv.flush(Duration::from_secs(10)));
        assert!(kv.write_failures() >= 1);
        let again = DurableKv::open(backend.clone(), Arc::new(SystemClock)).unwrap();
        assert_eq!(again.get(&key("a")).unwrap(), Some(b"1".to_vec()));
        assert_eq!(again.get(&key("b")).unwrap(), None);
        assert_eq!(again.get(&key("c")).unwrap(), Some(b"3".to_vec()));
        assert_eq!(again.get(&key("gone")).unwrap(), None);
        assert!(
            backend.entries.lock().iter().all(|e| e.key != b"gone"),
            "expired entries are removed from the backend at load"
        );
    }
}
