//! Runs the shadow conformance suite against every backend, plus what the suite cannot cover:
//! reopening the embedded file, several Redis "nodes" on one key, Redis dying or hanging, the
//! Redis key layout, and (ignored by default) a throughput benchmark:
//!
//! ```text
//! cargo +1.97.0 test -p shoal-store --release --test shadows -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::RedisServer;
use shoal_broker::store::{BrokerStore, StoreOp};
use shoal_store::conformance::{self, counter, delete, increment, key, update};
use shoal_store::{EmbeddedShadowStore, EmbeddedStore, RedisShadowStore, RedisStore};
use shoal_things::shadow::{MemoryShadowStore, Mutated, ShadowStore, ShadowStoreError, StoredShadow};

// ---------------------------------------------------------------------------------------------
// Memory and embedded
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn memory_shadow_conformance() {
    conformance::run_shadow_suite(Arc::new(MemoryShadowStore::default())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_shadow_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let shadows = store.shadow_store();
    assert_eq!(shadows.kind(), "embedded");
    conformance::run_shadow_suite(Arc::new(shadows)).await;
    // The broker's half of the file is unaffected and still conforms.
    conformance::run_all(&store).await;
}

async fn applied(store: &dyn ShadowStore, k: &shoal_things::shadow::ShadowKey, body: &str) -> StoredShadow {
    match store.mutate(k, update(body)).await.unwrap() {
        Mutated::Applied { current, .. } => StoredShadow::clone(&current),
        Mutated::Rejected(e) => panic!("{k:?}: rejected: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_shadows_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (classic, named, gone) = (
        key("lamp", None),
        key("lamp", Some("cfg")),
        key("lamp", Some("old")),
    );
    let (v_classic, v_named, v_gone);
    {
        let store = EmbeddedStore::open(&path).unwrap();
        let shadows = store.shadow_store();
        v_classic = applied(&shadows, &classic, r#"{"state":{"desired":{"on":true}}}"#).await;
        applied(&shadows, &named, r#"{"state":{"reported":{"fw":"1.0"}}}"#).await;
        v_named = applied(&shadows, &named, r#"{"state":{"reported":{"fw":"1.1"}}}"#).await;
        applied(&shadows, &gone, r#"{"state":{"reported":{"x":1}}}"#).await;
        v_gone = match shadows.mutate(&gone, delete(&gone)).await.unwrap() {
            Mutated::Applied { current, .. } => StoredShadow::clone(&current),
            other => panic!("{other:?}"),
        };
        store
            .apply(&[StoreOp::PutRetained {
                topic: "t".into(),
                data: b"r".to_vec(),
            }])
            .await
            .unwrap();
        // Dropping every handle closes the file right away: the writer thread does not keep it
        // open between batches, so the reopen below must not find it locked.
        drop(shadows);
        drop(store);
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let shadows = store.shadow_store();
    assert_eq!(shadows.get(&classic).await.unwrap(), Some(v_classic));
    assert_eq!(shadows.get(&named).await.unwrap(), Some(v_named.clone()));
    assert_eq!(shadows.get(&gone).await.unwrap(), Some(v_gone.clone()));
    assert!(v_gone.deleted);
    let names = shadows.list_named(&classic.thing, None, 10).await.unwrap();
    assert_eq!(names.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["cfg"]);
    assert_eq!(
        store.load_retained().await.unwrap(),
        vec![("t".to_owned(), b"r".to_vec())]
    );
    // Versions continue after the reopen, the tombstone's included.
    let v = applied(&shadows, &named, r#"{"state":{"reported":{"fw":"1.2"}}}"#).await;
    assert_eq!(v.version, v_named.version + 1);
    let v = applied(&shadows, &gone, r#"{"state":{"reported":{"x":2}}}"#).await;
    assert_eq!(v.version, v_gone.version + 1);
}

/// The workload of [`embedded_acknowledged_writes_survive_a_crash`]: 48 shadows (a third of
/// them named, and one named shadow deleted at the end) updated 25 times each, 48 callers at
/// once, so batches hold many mutations.
const CRASH_SHADOWS: usize = 48;
const CRASH_ROUNDS: u64 = 25;

fn crash_key(i: usize) -> shoal_things::shadow::ShadowKey {
    if i.is_multiple_of(3) {
        key(&format!("truck{i}"), Some("cargo"))
    } else {
        key(&format!("truck{i}"), None)
    }
}

/// The child half of [`embedded_acknowledged_writes_survive_a_crash`]: runs only when that test
/// starts this binary with `SHOAL_CRASH_DIR` set. Right after opening the store (every commit
/// so far durable) it copies the redb file aside: what the disk holds of it if the machine
/// loses power later, since the shadow writes below commit to redb without a sync (only the
/// log is synced). Every write is acknowledged before the process aborts, with no chance to
/// close the file.
#[test]
#[ignore = "run by embedded_acknowledged_writes_survive_a_crash in a child process"]
fn crash_child() {
    let Some(dir) = std::env::var_os("SHOAL_CRASH_DIR") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let path = Path::new(&dir).join("store.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        std::fs::copy(&path, Path::new(&dir).join("synced.redb")).unwrap();
        let shadows = Arc::new(store.shadow_store());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..CRASH_SHADOWS {
            let shadows = Arc::clone(&shadows);
            tasks.spawn(async move {
                for round in 1..=CRASH_ROUNDS {
                    let body = format!(r#"{{"state":{{"reported":{{"round":{round},"i":{i}}}}}}}"#);
                    let doc = applied(shadows.as_ref(), &crash_key(i), &body).await;
                    assert_eq!(doc.version, round);
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let gone = crash_key(0);
        shadows.mutate(&gone, delete(&gone)).await.unwrap();
    });
    // Acknowledged is durable: no destructor, no clean close of the redb file.
    std::process::abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_acknowledged_writes_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SHOAL_CRASH_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "the child must abort after its writes, got {status}"
    );
    let log = std::fs::metadata(dir.path().join("store.redb.shadow-log")).unwrap();
    assert!(
        log.len() > 0,
        "the acknowledged writes are in the shadow log, not yet checkpointed"
    );
    // A process crash leaves redb's unsynced pages in the OS's cache, and redb finds them. A
    // power loss does not: put back the file as it was at its last sync, so only the shadow
    // log can bring the acknowledged writes back.
    std::fs::rename(dir.path().join("synced.redb"), dir.path().join("store.redb")).unwrap();

    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let shadows = store.shadow_store();
    for i in 0..CRASH_SHADOWS {
        let doc = shadows.get(&crash_key(i)).await.unwrap().unwrap();
        assert_eq!(doc.version, CRASH_ROUNDS, "shadow {i}");
        if i == 0 {
            assert!(doc.deleted, "the delete was acknowledged too");
            continue;
        }
        let reported = &doc.reported.as_ref().unwrap().state;
        assert_eq!(reported["round"], serde_json::json!(CRASH_ROUNDS), "shadow {i}");
        assert_eq!(reported["i"], serde_json::json!(i), "shadow {i}");
    }
    // The named-shadow index came back with the documents (truck0's was deleted).
    let listed = shadows.list_named(&crash_key(3).thing, None, 10).await.unwrap();
    assert_eq!(listed.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["cargo"]);
    assert!(
        shadows
            .list_named(&crash_key(0).thing, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Versions go on from the recovered ones; the log was emptied once replayed.
    let next = applied(&shadows, &crash_key(1), r#"{"state":{"reported":{"round":0}}}"#).await;
    assert_eq!(next.version, CRASH_ROUNDS + 1);
    drop(shadows);
    drop(store);
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let doc = store.shadow_store().get(&crash_key(1)).await.unwrap().unwrap();
    assert_eq!(doc.version, CRASH_ROUNDS + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_shadow_handle_keeps_working_without_broker_handle() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let shadows: EmbeddedShadowStore = store.shadow_store();
    drop(store);
    let k = key("t", None);
    applied(&shadows, &k, r#"{"state":{"desired":{"a":1}}}"#).await;
    assert_eq!(shadows.get(&k).await.unwrap().unwrap().version, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_corrupt_document_fails_only_its_mutation() {
    const SHADOWS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("shadows");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    drop(EmbeddedStore::open(&path).unwrap());
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(SHADOWS)
            .unwrap()
            .insert("bad", b"{not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let shadows = Arc::new(store.shadow_store());
    let bad = key("bad", None);
    assert!(matches!(
        shadows.get(&bad).await,
        Err(ShadowStoreError::Corrupt(_))
    ));
    // Many at once, so some share a batch with the corrupt one.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let shadows = Arc::clone(&shadows);
        tasks.spawn(async move {
            let k = if i % 10 == 0 {
                key("bad", None)
            } else {
                key(&format!("good{i}"), None)
            };
            (
                i,
                shadows
                    .mutate(&k, update(r#"{"state":{"desired":{"a":1}}}"#))
                    .await,
            )
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (i, r) = r.unwrap();
        if i % 10 == 0 {
            assert!(matches!(r, Err(ShadowStoreError::Corrupt(_))), "{i}: {r:?}");
        } else {
            assert!(matches!(r, Ok(Mutated::Applied { .. })), "{i}: {r:?}");
        }
    }
    assert_eq!(
        shadows.get(&key("good1", None)).await.unwrap().unwrap().version,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn open_embedded_puts_both_stores_in_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("dev", Some("s"));
    {
        let stores = shoal_store::open("embedded", dir.path()).await.unwrap();
        applied(stores.shadows.as_ref(), &k, r#"{"state":{"desired":{"a":1}}}"#).await;
        stores
            .broker
            .apply(&[StoreOp::PutSession {
                client_id: "c".into(),
                data: b"s".to_vec(),
            }])
            .await
            .unwrap();
    }
    let store = EmbeddedStore::open(&dir.path().join(shoal_store::EMBEDDED_FILE)).unwrap();
    assert_eq!(store.shadow_store().get(&k).await.unwrap().unwrap().version, 1);
    assert_eq!(store.load_sessions().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn open_memory_gives_a_working_shadow_store() {
    let stores = shoal_store::open("memory", Path::new("/nonexistent"))
        .await
        .unwrap();
    let k = key("m", None);
    applied(stores.shadows.as_ref(), &k, r#"{"state":{"desired":{"a":1}}}"#).await;
    assert_eq!(stores.shadows.get(&k).await.unwrap().unwrap().version, 1);
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_shadow_conformance() {
    let server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), "shoal").await.unwrap();
    let shadows = store.shadow_store();
    assert_eq!(shadows.kind(), "redis");
    conformance::run_shadow_suite(Arc::new(shadows)).await;
    conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_shadow_two_nodes_one_key() {
    let server = RedisServer::start().await;
    let a = RedisShadowStore::connect(&server.url(), "shoal").await.unwrap();
    let b = RedisShadowStore::connect(&server.url(), "shoal").await.unwrap();
    let nodes: Vec<Arc<dyn ShadowStore>> = vec![Arc::new(a), Arc::new(b)];
    let started = Instant::now();
    let stats = conformance::shadow_concurrency(&nodes, key("hot", Some("counter")), 1000).await;
    eprintln!(
        "two nodes, 1000 mutations of one key in {:?}: {stats:?}",
        started.elapsed()
    );
}

/// Many nodes (connections) on one key: far more compare-and-set conflicts than two nodes.
#[tokio::test(flavor = "multi_thread")]
async fn redis_shadow_eight_nodes_one_key() {
    let server = RedisServer::start().await;
    let mut nodes: Vec<Arc<dyn ShadowStore>> = Vec::new();
    for _ in 0..8 {
        nodes.push(Arc::new(
            RedisShadowStore::connect(&server.url(), "shoal").await.unwrap(),
        ));
    }
    let started = Instant::now();
    let stats = conformance::shadow_concurrency(&nodes, key("hot", None), 800).await;
    eprintln!(
        "eight nodes, 800 mutations of one key in {:?}: {stats:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_shadow_key_layout() {
    let server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), "pfx").await.unwrap();
    let shadows = store.shadow_store();
    let mut conn = raw(&server).await;
    let k = key("dev", Some("cfg"));
    let doc_key = "pfx:shadow:dev~cfg";
    let rev = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("HGET")
                .arg(doc_key)
                .arg("rev")
                .query_async::<Option<u64>>(&mut conn)
                .await
                .unwrap()
        }
    };
    let index = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("ZRANGE")
                .arg("pfx:shadows:dev")
                .arg(0)
                .arg(-1)
                .query_async::<Vec<String>>(&mut conn)
                .await
                .unwrap()
        }
    };

    let v1 = applied(&shadows, &k, r#"{"state":{"desired":{"a":1}}}"#).await;
    assert_eq!(rev(&mut conn).await, Some(1));
    assert_eq!(index(&mut conn).await, ["cfg"]);
    let doc: Vec<u8> = redis::cmd("HGET")
        .arg(doc_key)
        .arg("doc")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(StoredShadow::from_json_bytes(&doc).unwrap(), v1);

    // A delete keeps the version but moves the revision, and leaves the index.
    let t = match shadows.mutate(&k, delete(&k)).await.unwrap() {
        Mutated::Applied { current, .. } => StoredShadow::clone(&current),
        other => panic!("{other:?}"),
    };
    assert_eq!(t.version, 1);
    assert_eq!(rev(&mut conn).await, Some(2));
    assert!(index(&mut conn).await.is_empty());

    // A rejection changes nothing.
    assert!(matches!(
        shadows.mutate(&k, delete(&k)).await.unwrap(),
        Mutated::Rejected(_)
    ));
    assert_eq!(rev(&mut conn).await, Some(2));

    applied(&shadows, &k, r#"{"state":{"desired":{"a":2}}}"#).await;
    assert_eq!(rev(&mut conn).await, Some(3));
    assert_eq!(index(&mut conn).await, ["cfg"]);

    // The classic shadow has its own hash and is never indexed.
    applied(&shadows, &key("dev", None), r#"{"state":{"desired":{"a":1}}}"#).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg("pfx:shadow:dev")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists);
    assert_eq!(index(&mut conn).await, ["cfg"]);

    // A document that does not decode is reported as corrupt, not overwritten.
    let _: () = redis::cmd("HSET")
        .arg("pfx:shadow:broken")
        .arg("doc")
        .arg("{nope")
        .arg("rev")
        .arg(4)
        .query_async(&mut conn)
        .await
        .unwrap();
    let broken = key("broken", None);
    assert!(matches!(
        shadows.get(&broken).await,
        Err(ShadowStoreError::Corrupt(_))
    ));
    assert!(matches!(
        shadows.mutate(&broken, update(r#"{"state":{}}"#)).await,
        Err(ShadowStoreError::Corrupt(_))
    ));
}

/// Another node writes between our read and our compare-and-set: the write must be retried
/// from the document the script returned, and the function called again on it.
#[tokio::test(flavor = "multi_thread")]
async fn redis_shadow_conflict_retries_from_the_current_document() {
    let server = RedisServer::start().await;
    let shadows = RedisShadowStore::connect(&server.url(), "shoal").await.unwrap();
    let k = key("dev", Some("cfg"));
    let v1 = applied(&shadows, &k, r#"{"state":{"reported":{"n":1}}}"#).await;

    // What the "other node" writes: n = 100, one version later, with the revision bumped.
    let interloper = match update(r#"{"state":{"reported":{"n":100}}}"#)(Some(&v1)) {
        Ok(doc) => doc,
        Err(e) => panic!("{e}"),
    };
    let client = redis::Client::open(server.url()).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let f: shoal_things::shadow::Mutation = {
        let (calls, interloper) = (Arc::clone(&calls), interloper.clone());
        let inner = increment(None, Arc::new(AtomicUsize::new(0)));
        Arc::new(move |current: Option<&StoredShadow>| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                // Blocking I/O inside the function, on purpose and only in this test.
                let mut conn = client.get_connection().unwrap();
                redis::pipe()
                    .cmd("HSET")
                    .arg("shoal:shadow:dev~cfg")
                    .arg("doc")
                    .arg(interloper.to_json_bytes())
                    .ignore()
                    .cmd("HINCRBY")
                    .arg("shoal:shadow:dev~cfg")
                    .arg("rev")
                    .arg(1)
                    .ignore()
                    .exec(&mut conn)
                    .unwrap();
            }
            inner(current)
        })
    };
    let (previous, current) = match shadows.mutate(&k, f).await.unwrap() {
        Mutated::Applied { previous, current } => (previous, current),
        other => panic!("{other:?}"),
    };
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one conflict, one retry");
    assert_eq!(
        previous.as_deref(),
        Some(&interloper),
        "the retry starts from the other write"
    );
    assert_eq!(current.version, interloper.version + 1);
    assert_eq!(counter(Some(&current)), 101);
    assert_eq!(shadows.get(&k).await.unwrap().as_ref(), Some(&*current));
    let rev: u64 = redis::cmd("HGET")
        .arg("shoal:shadow:dev~cfg")
        .arg("rev")
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert_eq!(rev, 3, "create, the other node, our retry");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_shadow_prefixes_are_isolated() {
    let server = RedisServer::start().await;
    let one = RedisShadowStore::connect(&server.url(), "one").await.unwrap();
    let two = RedisShadowStore::connect(&server.url(), "two").await.unwrap();
    let k = key("t", Some("s"));
    applied(&one, &k, r#"{"state":{"desired":{"a":1}}}"#).await;
    assert_eq!(two.get(&k).await.unwrap(), None);
    assert!(two.list_named(&k.thing, None, 10).await.unwrap().is_empty());
    assert_eq!(one.list_named(&k.thing, None, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_open_gives_shadows_under_the_default_prefix() {
    let server = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let stores = shoal_store::open(&server.url(), dir.path()).await.unwrap();
    let k = key("t", Some("s"));
    let v = applied(stores.shadows.as_ref(), &k, r#"{"state":{"desired":{"a":1}}}"#).await;
    let direct = RedisShadowStore::connect(&server.url(), shoal_store::DEFAULT_REDIS_PREFIX)
        .await
        .unwrap();
    assert_eq!(direct.get(&k).await.unwrap(), Some(v));
}

/// Spawns `tasks` tasks that increment shadows `load-0..load-9` until a call fails (the tests
/// take Redis away); each returns how many it applied and its first error with the time it took.
fn spawn_load(
    store: &Arc<RedisShadowStore>,
    tasks: usize,
) -> tokio::task::JoinSet<(usize, ShadowStoreError, Duration)> {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let store = Arc::clone(store);
        set.spawn(async move {
            let calls = Arc::new(AtomicUsize::new(0));
            let mut applied = 0;
            let mut i = t;
            loop {
                let k = key(&format!("load-{}", i % 10), None);
                i += 1;
                let started = Instant::now();
                match store.mutate(&k, increment(None, Arc::clone(&calls))).await {
                    Ok(Mutated::Applied { .. }) => applied += 1,
                    Ok(Mutated::Rejected(e)) => panic!("unexpected rejection: {e}"),
                    Err(e) => return (applied, e, started.elapsed()),
                }
            }
        });
    }
    set
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_shadow_unavailable_when_killed_then_recovers() {
    unavailable_when_killed_then_recovers(false).await;
}

/// The same on a single-threaded runtime (an HTTP thread's), where the store opens a
/// connection of the thread's own: it must fail and recover the same way.
#[tokio::test(flavor = "current_thread")]
async fn redis_shadow_on_a_single_threaded_runtime_unavailable_when_killed_then_recovers() {
    unavailable_when_killed_then_recovers(true).await;
}

/// Connections to `server` (`CLIENT LIST`), the one asking included.
async fn clients(server: &RedisServer) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut raw(server).await)
        .await
        .unwrap();
    list.lines().count()
}

#[tokio::test(flavor = "current_thread")]
async fn redis_shadow_conformance_on_a_single_threaded_runtime() {
    let server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), "shoal").await.unwrap();
    assert_eq!(
        clients(&server).await,
        2,
        "the store's shared connection and this query"
    );
    let shadows = Arc::new(store.shadow_store());
    conformance::run_shadow_suite(shadows.clone()).await;
    // The thread's own connection was opened in the background and serves from then on.
    wait_for_clients(&server, 3, "the thread's own connection").await;
    conformance::shadow_concurrency(
        &[shadows.clone() as Arc<dyn ShadowStore>],
        key("local", None),
        200,
    )
    .await;
    assert_eq!(
        clients(&server).await,
        3,
        "one connection per thread, not per call"
    );

    // Redis restarts while nothing is asked: the thread's connection is pinged back up, so the
    // first request afterwards succeeds (as on the broker's shared, pinged connection).
    let mut server = server;
    server.restart().await;
    wait_for_clients(&server, 2, "the thread's connection back after the restart").await;
    let r = shadows
        .mutate(
            &key("after-restart", None),
            update(r#"{"state":{"desired":{"a":1}}}"#),
        )
        .await;
    assert!(matches!(r, Ok(Mutated::Applied { .. })), "{r:?}");
}

/// Waits (at most 10 s) until `server` has at least `n` connections, the one asking included.
async fn wait_for_clients(server: &RedisServer, n: usize, what: &str) {
    let started = Instant::now();
    while clients(server).await < n {
        assert!(started.elapsed() < Duration::from_secs(10), "no {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `own_connection`: first wait until the store serves this thread on a connection of its own.
async fn unavailable_when_killed_then_recovers(own_connection: bool) {
    let mut server = RedisServer::start().await;
    let store = Arc::new(RedisShadowStore::connect(&server.url(), "shoal").await.unwrap());
    if own_connection {
        store.get(&key("warm-up", None)).await.unwrap();
        wait_for_clients(&server, 3, "thread-local connection").await;
    }
    let mut load = spawn_load(&store, 16);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Killed in the middle of the load: every writer must get an error, quickly.
    server.kill();
    let killed = Instant::now();
    let mut applied = 0;
    while let Some(r) = load.join_next().await {
        let (n, e, took) = r.unwrap();
        applied += n;
        assert!(matches!(e, ShadowStoreError::Unavailable(_)), "{e}");
        assert!(
            took < Duration::from_secs(6),
            "a mutate took {took:?} to fail: {e}"
        );
    }
    let all_failed_after = killed.elapsed();
    eprintln!("{applied} applied before the kill; all writers failed within {all_failed_after:?}");
    assert!(applied > 0, "the load never got going");
    assert!(all_failed_after < Duration::from_secs(7));

    let k = key("t", Some("s"));
    for _ in 0..3 {
        let started = Instant::now();
        let r = store.mutate(&k, update(r#"{"state":{"desired":{"a":1}}}"#)).await;
        assert!(matches!(r, Err(ShadowStoreError::Unavailable(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "mutate took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let r = store.get(&k).await;
        assert!(matches!(r, Err(ShadowStoreError::Unavailable(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "get took {:?}",
            started.elapsed()
        );
        let r = store.list_named(&k.thing, None, 10).await;
        assert!(matches!(r, Err(ShadowStoreError::Unavailable(_))), "{r:?}");
    }

    // A fresh, empty server on the same port (its script cache is empty too: EVALSHA must
    // fall back to loading the script).
    server.restart().await;
    let started = Instant::now();
    let v = loop {
        match store.mutate(&k, update(r#"{"state":{"desired":{"a":1}}}"#)).await {
            Ok(Mutated::Applied { previous, current }) => {
                assert_eq!(previous, None, "the restarted server is empty");
                break StoredShadow::clone(&current);
            }
            Ok(other) => panic!("{other:?}"),
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                eprintln!("not reconnected yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no reconnect within 10 s: {e}"),
        }
    };
    eprintln!("writing again {:?} after the restart", started.elapsed());
    assert_eq!(v.version, 1);
    assert_eq!(store.get(&k).await.unwrap(), Some(v));
    let names = store.list_named(&k.thing, None, 10).await.unwrap();
    assert_eq!(names.len(), 1);
    conformance::shadow_concurrency(&[store], key("after", None), 100).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_shadow_times_out_when_frozen() {
    let server = RedisServer::start().await;
    let store = Arc::new(RedisShadowStore::connect(&server.url(), "shoal").await.unwrap());
    let mut load = spawn_load(&store, 16);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A frozen server keeps the TCP connection open but never answers: only timeouts help.
    server.signal("STOP");
    let frozen = Instant::now();
    let k = key("t", None);
    let r = store.mutate(&k, update(r#"{"state":{"desired":{"a":1}}}"#)).await;
    let took = frozen.elapsed();
    assert!(matches!(r, Err(ShadowStoreError::Unavailable(_))), "{r:?}");
    assert!(took < Duration::from_secs(9), "mutate took {took:?}");
    eprintln!("mutate failed after {took:?}: {}", r.unwrap_err());
    let started = Instant::now();
    let r = store.get(&k).await;
    assert!(matches!(r, Err(ShadowStoreError::Unavailable(_))), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "get took {:?}",
        started.elapsed()
    );
    eprintln!("get failed after {:?}: {}", started.elapsed(), r.unwrap_err());
    while let Some(r) = load.join_next().await {
        let (_, e, took) = r.unwrap();
        assert!(matches!(e, ShadowStoreError::Unavailable(_)), "{e}");
        assert!(
            took < Duration::from_secs(9),
            "a mutate took {took:?} to fail: {e}"
        );
    }
    eprintln!("all writers failed within {:?} of the freeze", frozen.elapsed());

    server.signal("CONT");
    let started = Instant::now();
    loop {
        match store.get(&k).await {
            Ok(_) => break,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                eprintln!("not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("store did not recover within 10 s: {e}"),
        }
    }
    // Writes that timed out may still have run once the server thawed, but never half: in each
    // hash the document's version, its counter and the revision moved together.
    let mut conn = raw(&server).await;
    for i in 0..10 {
        let doc_key = format!("shoal:shadow:load-{i}");
        let (doc, rev): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
            .arg(&doc_key)
            .arg("doc")
            .arg("rev")
            .query_async(&mut conn)
            .await
            .unwrap();
        let doc = StoredShadow::from_json_bytes(&doc.unwrap()).unwrap();
        assert_eq!(Some(doc.version), rev, "{doc_key}");
        assert_eq!(counter(Some(&doc)), doc.version, "{doc_key}");
    }
    conformance::shadow_concurrency(&[store as Arc<dyn ShadowStore>], key("after", None), 100).await;
}

// ---------------------------------------------------------------------------------------------
// Throughput (ignored by default; run in release mode)
// ---------------------------------------------------------------------------------------------

const BENCH_TASKS: usize = 64;
const BENCH_SHADOWS: usize = 1000;
const BENCH_TIME: Duration = Duration::from_secs(5);

/// `BENCH_TASKS` tasks, each updating random shadows out of `BENCH_SHADOWS` back to back (a real
/// `apply_update` incrementing `reported.n`) for `BENCH_TIME`; prints updates/s and latencies.
async fn throughput(name: &str, store: Arc<dyn ShadowStore>) -> f64 {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    let started = Instant::now();
    let deadline = started + BENCH_TIME;
    for t in 0..BENCH_TASKS {
        let (store, calls) = (Arc::clone(&store), Arc::clone(&calls));
        set.spawn(async move {
            let mut latencies = Vec::new();
            // A cheap per-task pseudo-random walk over the shadows.
            let mut rng =
                shoal_broker::rng::XorShift64::new((t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            // A deadline rather than a timer: a store that never awaits (memory) keeps the
            // workers busy, and then nobody drives tokio's timers.
            while Instant::now() < deadline {
                let k = key(&format!("bench-{}", rng.below(BENCH_SHADOWS as u64)), None);
                let t0 = Instant::now();
                match store.mutate(&k, increment(None, Arc::clone(&calls))).await {
                    Ok(Mutated::Applied { .. }) => latencies.push(t0.elapsed()),
                    other => panic!("{other:?}"),
                }
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(r) = set.join_next().await {
        latencies.extend(r.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let n = latencies.len();
    let rate = n as f64 / elapsed.as_secs_f64();
    let pct = |p: f64| latencies[((n as f64 * p) as usize).min(n - 1)];
    eprintln!(
        "{name}: {n} updates in {elapsed:.2?} = {rate:.0} updates/s ({BENCH_TASKS} tasks, \
         {BENCH_SHADOWS} shadows); latency p50 {:?} p99 {:?} max {:?}; {} function calls",
        pct(0.5),
        pct(0.99),
        latencies[n - 1],
        calls.load(Ordering::Relaxed)
    );
    // Nothing lost: the counters add up to the number of updates.
    let mut total = 0;
    for i in 0..BENCH_SHADOWS {
        total += counter(
            store
                .get(&key(&format!("bench-{i}"), None))
                .await
                .unwrap()
                .as_ref(),
        );
    }
    assert_eq!(total, n as u64, "{name}: counters do not add up");
    rate
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
async fn bench_embedded_shadow_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let rate = throughput("embedded", Arc::new(store.shadow_store())).await;
    // The target is 20,000/s on a 2-core machine, but a shared machine's disk and CPU make the
    // figure swing by a quarter: report the target, fail only on a collapse (one commit per
    // mutation, i.e. no group commit, is about 1,000/s).
    eprintln!(
        "embedded: {} the 20000 updates/s target",
        if rate >= 20_000.0 { "meets" } else { "MISSES" }
    );
    if !cfg!(debug_assertions) {
        assert!(
            rate >= 8_000.0,
            "embedded shadow store: {rate:.0} updates/s: group commit broken?"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
async fn bench_redis_shadow_throughput() {
    let server = RedisServer::start().await;
    let store = RedisShadowStore::connect(&server.url(), "shoal").await.unwrap();
    throughput("redis", Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
async fn bench_memory_shadow_throughput() {
    throughput("memory", Arc::new(MemoryShadowStore::default())).await;
}

// `Arc<dyn ShadowStore>` is what the server holds; make sure the concrete types fit.
#[allow(dead_code)]
fn _stores_are_shareable(e: EmbeddedShadowStore, r: RedisShadowStore) -> [Arc<dyn ShadowStore>; 2] {
    [Arc::new(e), Arc::new(r)]
}
