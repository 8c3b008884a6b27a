//! Plugins' key-value state on the embedded file and on Redis: the same checks against both
//! backends, through the plugin host's write-behind `DurableKv` as the server uses it (state
//! written, the process "restarted" by reopening, state back; expired entries dropped), and
//! Redis going away and coming back without losing a write.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::RedisServer;
use shoal_plugin_host::{DurableKv, KvBackend, KvChange, KvEntry, KvKey, KvScope, PluginKv, SystemClock};
use shoal_store::{EmbeddedStore, RedisStore};

fn key<'a>(plugin: &'a str, thing: Option<&'a str>, k: &'a [u8]) -> KvKey<'a> {
    KvKey {
        plugin,
        scope: thing.map_or(KvScope::Global, KvScope::Thing),
        key: k,
    }
}

/// The checks both backends pass. `reopen` gives a fresh backend over the same storage.
fn conformance(reopen: &dyn Fn() -> Arc<dyn KvBackend>) {
    let backend = reopen();
    assert!(backend.load().unwrap().is_empty());
    // The backend itself: puts, replaces, deletes, binary keys, scopes.
    let entry = |plugin: &str, thing: Option<&str>, k: &[u8], v: &[u8], at: Option<u64>| KvEntry {
        plugin: plugin.into(),
        thing: thing.map(Into::into),
        key: k.to_vec(),
        value: v.to_vec(),
        expires_at_ms: at,
    };
    backend
        .apply(&[
            KvChange::Put(entry("p", None, b"g", b"global", None)),
            KvChange::Put(entry(
                "p",
                Some("t1"),
                b"k\0\xff",
                b"binary key",
                Some(u64::MAX - 1),
            )),
            KvChange::Put(entry("p", Some("t1"), b"x", b"old", None)),
            KvChange::Put(entry("p", Some("t1"), b"x", b"new", None)),
            KvChange::Put(entry("q", Some("t1"), b"x", b"other plugin", None)),
            KvChange::Put(entry("p", Some("t2"), b"gone", b"", None)),
            KvChange::Delete {
                plugin: "p".into(),
                thing: Some("t2".into()),
                key: b"gone".to_vec(),
            },
            KvChange::Delete {
                plugin: "p".into(),
                thing: None,
                key: b"never-there".to_vec(),
            },
        ])
        .unwrap();
    let mut loaded = reopen().load().unwrap();
    loaded.sort_by(|a, b| (&a.plugin, &a.thing, &a.key).cmp(&(&b.plugin, &b.thing, &b.key)));
    assert_eq!(
        loaded,
        vec![
            entry("p", None, b"g", b"global", None),
            entry("p", Some("t1"), b"k\0\xff", b"binary key", Some(u64::MAX - 1)),
            entry("p", Some("t1"), b"x", b"new", None),
            entry("q", Some("t1"), b"x", b"other plugin", None),
        ]
    );

    // Through DurableKv, as the server uses it.
    let kv = DurableKv::open(reopen(), Arc::new(SystemClock)).unwrap();
    assert_eq!(
        kv.get(&key("p", Some("t1"), b"x")).unwrap(),
        Some(b"new".to_vec())
    );
    kv.set(&key("p", Some("t3"), b"count"), b"3", None, 1 << 20)
        .unwrap();
    kv.set(&key("p", None, b"soon"), b"expires", Some(1), 1 << 20)
        .unwrap();
    assert!(kv.delete(&key("q", Some("t1"), b"x")).unwrap());
    assert!(kv.flush(Duration::from_secs(10)));
    drop(kv);
    let kv = DurableKv::open(reopen(), Arc::new(SystemClock)).unwrap();
    assert_eq!(
        kv.get(&key("p", Some("t3"), b"count")).unwrap(),
        Some(b"3".to_vec())
    );
    assert_eq!(kv.get(&key("q", Some("t1"), b"x")).unwrap(), None);
    assert_eq!(kv.get(&key("p", None, b"soon")).unwrap(), None, "expired");
    assert!(
        reopen().load().unwrap().iter().all(|e| e.key != b"soon"),
        "expired entries are removed from the backend when loaded"
    );
}

#[test]
fn embedded_plugin_kv() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    // redb opens a file once per process: keep one store and hand out handles.
    let store = EmbeddedStore::open(&path).unwrap();
    conformance(&|| Arc::new(store.plugin_kv()) as Arc<dyn KvBackend>);
    drop(store);
    // And across a real reopen of the file (once the write-behind threads of the dropped
    // DurableKvs have let go of it).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let store = loop {
        match EmbeddedStore::open(&path) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("reopening the file: {e}"),
        }
    };
    let kv = DurableKv::open(Arc::new(store.plugin_kv()), Arc::new(SystemClock)).unwrap();
    assert_eq!(
        kv.get(&key("p", Some("t3"), b"count")).unwrap(),
        Some(b"3".to_vec())
    );
}

#[test]
fn redis_plugin_kv_and_an_outage() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = rt.block_on(RedisServer::start());
    let store = rt.block_on(RedisStore::connect(&server.url(), "shoal")).unwrap();
    let handle = rt.handle().clone();
    conformance(&|| Arc::new(store.plugin_kv(handle.clone())) as Arc<dyn KvBackend>);

    // Redis away: writes are served from memory and held; back: they land.
    let kv = DurableKv::open(Arc::new(store.plugin_kv(handle.clone())), Arc::new(SystemClock)).unwrap();
    server.kill();
    kv.set(&key("p", Some("t9"), b"during"), b"outage", None, 1 << 20)
        .unwrap();
    assert_eq!(
        kv.get(&key("p", Some("t9"), b"during")).unwrap(),
        Some(b"outage".to_vec())
    );
    assert!(!kv.flush(Duration::from_millis(500)));
    rt.block_on(server.restart());
    assert!(kv.flush(Duration::from_secs(30)), "written once Redis is back");
    let reloaded = store.plugin_kv(handle).load().unwrap();
    assert!(
        reloaded
            .iter()
            .any(|e| e.key == b"during" && e.value == b"outage")
    );
}
