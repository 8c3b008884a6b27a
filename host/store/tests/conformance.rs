//! Runs the conformance suite against every backend, plus the backend-specific behaviour the
//! suite cannot cover (reopening a file, Redis going away and coming back).
//!
//! The Redis tests start their own `redis-server` (one per test, on a free port) and fail, rather
//! than skip, when it is not installed: a silently skipped backend is an untested backend.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{RedisServer, free_port};
use shoal_broker::store::{BrokerStore, MemoryStore, StoreOp};
use shoal_store::{EmbeddedStore, RedisStore, conformance};

// ---------------------------------------------------------------------------------------------
// Memory and embedded
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn memory_store_conformance() {
    conformance::run_all(&MemoryStore::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    assert_eq!(store.kind(), "embedded");
    conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let all: Vec<u8> = (0..=255u8).collect();
    {
        let store = EmbeddedStore::open(&path).unwrap();
        store
            .apply(&[
                put_session("c1", b"session"),
                put_queued("c1", 9, b"nine"),
                put_queued("c1", 3, &all),
                put_session("c2", b"gone"),
                put_queued("c2", 1, b"gone"),
                put_retained("r/t", b"kept"),
            ])
            .await
            .unwrap();
        store
            .apply(&[StoreOp::DeleteSession {
                client_id: "c2".into(),
            }])
            .await
            .unwrap();
        // Dropping the last handle closes the file and releases its lock.
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let sessions = store.load_sessions().await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].client_id, "c1");
    assert_eq!(sessions[0].data, b"session");
    assert_eq!(sessions[0].queued, vec![(3, all.clone()), (9, b"nine".to_vec())]);
    assert_eq!(
        store.load_retained().await.unwrap(),
        vec![("r/t".to_owned(), b"kept".to_vec())]
    );
    store.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_file_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let _first = EmbeddedStore::open(&path).unwrap();
    let second = EmbeddedStore::open(&path);
    assert!(second.is_err(), "a second open of the same file must fail");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_embedded_creates_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested").join("data");
    let stores = shoal_store::open("embedded", &data_dir).await.unwrap();
    assert_eq!(stores.broker.kind(), "embedded");
    assert_eq!(stores.shadows.kind(), "embedded");
    assert!(data_dir.join(shoal_store::EMBEDDED_FILE).is_file());
    conformance::run_all(stores.broker.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn open_memory() {
    let stores = shoal_store::open("memory", Path::new("/nonexistent"))
        .await
        .unwrap();
    assert_eq!(stores.broker.kind(), "memory");
    assert_eq!(stores.shadows.kind(), "memory");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_rejects_unknown_store() {
    for url in ["embeded", "", "http://localhost", "postgres://u:secret@h/db"] {
        let Err(e) = shoal_store::open(url, Path::new("/nonexistent")).await else {
            panic!("{url:?} must be rejected");
        };
        let msg = e.to_string();
        assert!(
            msg.contains("embedded") && msg.contains("memory") && msg.contains("redis://"),
            "{url:?}: message should list the accepted forms: {msg}"
        );
        assert!(!msg.contains("secret"), "credentials leaked: {msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn redis_store_conformance() {
    let server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), "shoal").await.unwrap();
    assert_eq!(store.kind(), "redis");
    conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_store_prefixes_are_isolated() {
    let server = RedisServer::start().await;
    let one = RedisStore::connect(&server.url(), "one").await.unwrap();
    // A prefix that extends the other must not see its keys either.
    let other = RedisStore::connect(&server.url(), "one:queue").await.unwrap();
    one.apply(&[
        put_session("c", b"one"),
        put_queued("c", 1, b"q"),
        put_retained("t", b"r"),
    ])
    .await
    .unwrap();
    assert!(other.load_sessions().await.unwrap().is_empty());
    assert!(other.load_retained().await.unwrap().is_empty());
    conformance::run_all(&other).await;
    let s = one.load_sessions().await.unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].queued, vec![(1, b"q".to_vec())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_open_via_url() {
    let server = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let stores = shoal_store::open(&server.url(), dir.path()).await.unwrap();
    assert_eq!(stores.broker.kind(), "redis");
    assert_eq!(stores.shadows.kind(), "redis");
    stores.broker.apply(&[put_retained("t", b"r")]).await.unwrap();
    // `open` uses the default prefix.
    let direct = RedisStore::connect(&server.url(), shoal_store::DEFAULT_REDIS_PREFIX)
        .await
        .unwrap();
    assert_eq!(
        direct.load_retained().await.unwrap(),
        vec![("t".to_owned(), b"r".to_vec())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_connect_fails_fast_when_nothing_listens() {
    let port = free_port();
    let started = Instant::now();
    let res = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), "shoal").await;
    let took = started.elapsed();
    let Err(e) = res else {
        panic!("connecting to a closed port must fail");
    };
    assert!(took < Duration::from_secs(7), "connect took {took:?}");
    assert!(e.to_string().contains("127.0.0.1"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_store_recovers_after_restart() {
    let mut server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), "shoal").await.unwrap();
    store.apply(&[put_session("c", b"before")]).await.unwrap();
    store.ping().await.unwrap();

    server.kill();

    let started = Instant::now();
    let res = store.apply(&[put_session("c", b"while down")]).await;
    let took = started.elapsed();
    assert!(res.is_err(), "apply with Redis down must fail");
    assert!(took < Duration::from_secs(6), "apply took {took:?} to fail");
    eprintln!("apply failed after {took:?}: {}", res.unwrap_err());

    let started = Instant::now();
    let res = store.ping().await;
    let took = started.elapsed();
    assert!(res.is_err(), "ping with Redis down must fail");
    assert!(took < Duration::from_secs(6), "ping took {took:?} to fail");
    eprintln!("ping failed after {took:?}: {}", res.unwrap_err());

    // Same port, same store instance: the connection manager must find its way back.
    server.restart().await;
    let started = Instant::now();
    loop {
        match store.ping().await {
            Ok(()) => break,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                eprintln!("not reconnected yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no reconnect within 10 s: {e}"),
        }
    }
    eprintln!("reconnected after {:?}", started.elapsed());
    // The restarted server is empty (no persistence); the store works on it again.
    store
        .apply(&[put_session("c", b"after"), put_queued("c", 2, b"q")])
        .await
        .unwrap();
    let s = store.load_sessions().await.unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].data, b"after");
    assert_eq!(s[0].queued, vec![(2, b"q".to_vec())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_calls_time_out_while_server_hangs() {
    let server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), "shoal").await.unwrap();
    store.ping().await.unwrap();

    // A frozen server keeps the TCP connection open but never answers: only timeouts help.
    server.signal("STOP");
    let started = Instant::now();
    let res = store.apply(&[put_session("c", b"frozen")]).await;
    let took = started.elapsed();
    assert!(res.is_err(), "apply against a frozen server must fail");
    assert!(took < Duration::from_secs(6), "apply took {took:?} to fail");
    eprintln!("apply failed after {took:?}: {}", res.unwrap_err());
    let started = Instant::now();
    let res = store.ping().await;
    let took = started.elapsed();
    assert!(res.is_err(), "ping against a frozen server must fail");
    assert!(took < Duration::from_secs(6), "ping took {took:?} to fail");
    eprintln!("ping failed after {took:?}: {}", res.unwrap_err());

    server.signal("CONT");
    let started = Instant::now();
    loop {
        match store.ping().await {
            Ok(()) => break,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                eprintln!("not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("store did not recover within 10 s: {e}"),
        }
    }
    store.apply(&[put_session("c", b"thawed")]).await.unwrap();
    let s = store.load_sessions().await.unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].data, b"thawed");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn put_session(client_id: &str, data: &[u8]) -> StoreOp {
    StoreOp::PutSession {
        client_id: client_id.into(),
        data: data.to_vec(),
    }
}

fn put_queued(client_id: &str, seq: u64, data: &[u8]) -> StoreOp {
    StoreOp::PutQueued {
        client_id: client_id.into(),
        seq,
        data: data.to_vec(),
    }
}

fn put_retained(topic: &str, data: &[u8]) -> StoreOp {
    StoreOp::PutRetained {
        topic: topic.into(),
        data: data.to_vec(),
    }
}

// `Arc<dyn BrokerStore>` is what the broker holds; make sure the concrete types fit.
#[allow(dead_code)]
fn _stores_are_shareable(e: EmbeddedStore, r: RedisStore) -> [Arc<dyn BrokerStore>; 2] {
    [Arc::new(e), Arc::new(r)]
}
