//! Runs the identity store conformance suite (`shoal_auth::store::conformance`) against the
//! embedded and Redis backends, plus what it cannot cover: reopening the embedded file, two
//! Redis "nodes" racing to create the same record, and Redis going away.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::RedisServer;
use shoal_auth::store::{AuthStore, AuthTable, conformance};
use shoal_store::{EmbeddedStore, RedisStore};

#[tokio::test(flavor = "multi_thread")]
async fn embedded_auth_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let auth = store.auth_store().unwrap();
    assert_eq!(auth.kind(), "embedded");
    conformance(&auth).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_auth_conformance() {
    let server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), "shoal").await.unwrap();
    let auth = store.auth_store();
    assert_eq!(auth.kind(), "redis");
    conformance(&auth).await;
    // Another prefix on the same Redis is another, empty, store.
    let other = RedisStore::connect(&server.url(), "other").await.unwrap();
    conformance(&other.auth_store()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_auth_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = EmbeddedStore::open(&path).unwrap();
        let auth = store.auth_store().unwrap();
        auth.put(AuthTable::Certificates, "c1", b"cert".to_vec())
            .await
            .unwrap();
        auth.put(AuthTable::Policies, "p1", b"policy".to_vec())
            .await
            .unwrap();
        auth.put(AuthTable::PolicyTargets, "p1\narn:cert/c1", Vec::new())
            .await
            .unwrap();
        auth.put(AuthTable::Certificates, "gone", b"x".to_vec())
            .await
            .unwrap();
        assert!(auth.delete(AuthTable::Certificates, "gone").await.unwrap());
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let auth = store.auth_store().unwrap();
    assert_eq!(
        auth.scan(AuthTable::Certificates).await.unwrap(),
        vec![("c1".to_owned(), b"cert".to_vec())]
    );
    assert_eq!(
        auth.get(AuthTable::Policies, "p1").await.unwrap(),
        Some(b"policy".to_vec())
    );
    assert_eq!(auth.scan(AuthTable::PolicyTargets).await.unwrap().len(), 1);
}

/// Two processes registering the same certificate at once: exactly one `put_new` wins, on
/// both backends, and the winner's value is what both read afterwards.
async fn race_put_new(a: Arc<dyn AuthStore>, b: Arc<dyn AuthStore>) {
    for round in 0..50 {
        let key = format!("cert-{round}");
        let (ka, kb) = (key.clone(), key.clone());
        let (sa, sb) = (Arc::clone(&a), Arc::clone(&b));
        let ta = tokio::spawn(async move { sa.put_new(AuthTable::Certificates, &ka, b"a".to_vec()).await });
        let tb = tokio::spawn(async move { sb.put_new(AuthTable::Certificates, &kb, b"b".to_vec()).await });
        let (wa, wb) = (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap());
        assert!(
            wa ^ wb,
            "round {round}: exactly one creator wins (a={wa}, b={wb})"
        );
        let winner = if wa { b"a".to_vec() } else { b"b".to_vec() };
        assert_eq!(
            a.get(AuthTable::Certificates, &key).await.unwrap(),
            Some(winner.clone())
        );
        assert_eq!(b.get(AuthTable::Certificates, &key).await.unwrap(), Some(winner));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_auth_two_nodes_put_new_race() {
    let server = RedisServer::start().await;
    let a = RedisStore::connect(&server.url(), "shoal").await.unwrap();
    let b = RedisStore::connect(&server.url(), "shoal").await.unwrap();
    race_put_new(Arc::new(a.auth_store()), Arc::new(b.auth_store())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_auth_put_new_race() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let auth: Arc<dyn AuthStore> = Arc::new(store.auth_store().unwrap());
    race_put_new(Arc::clone(&auth), auth).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_auth_unavailable_then_recovers() {
    let mut server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), "shoal").await.unwrap();
    let auth = store.auth_store();
    auth.put(AuthTable::Policies, "p", b"1".to_vec()).await.unwrap();
    server.kill();
    let started = Instant::now();
    let e = auth.get(AuthTable::Policies, "p").await.unwrap_err();
    assert!(!e.to_string().is_empty());
    assert!(auth.put(AuthTable::Policies, "q", b"2".to_vec()).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "calls did not fail fast"
    );
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match auth.put(AuthTable::Policies, "q", b"2".to_vec()).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    }
    assert_eq!(
        auth.get(AuthTable::Policies, "q").await.unwrap(),
        Some(b"2".to_vec())
    );
}
