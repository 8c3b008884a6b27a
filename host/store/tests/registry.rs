//! Runs the registry conformance suite against every backend, plus what the suite cannot
//! cover: reopening the embedded file, several Redis "nodes" on one thing, the Redis key
//! layout, Redis going away, and `shoal_store::open` handing out the registry.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::RedisServer;
use shoal_store::conformance::{self, assert_memberships_consistent, suite_config};
use shoal_store::{EmbeddedStore, RedisRegistryStore, RedisStore};
use shoal_things::registry::{
    AttributePayload, CreateThingGroupRequest, CreateThingRequest, CreateThingTypeRequest,
    DeprecateThingTypeRequest, ListThingsFilter, MemoryRegistryStore, PageRequest, Registry, RegistryError,
    RegistryStore, ThingGroupMembershipRequest, UpdateThingRequest,
};

fn create(type_name: Option<&str>, attrs: &[(&str, &str)]) -> CreateThingRequest {
    CreateThingRequest {
        thing_type_name: type_name.map(str::to_owned),
        attribute_payload: Some(AttributePayload::replace(attrs.iter().copied())),
    }
}

fn child_of(parent: &str) -> CreateThingGroupRequest {
    CreateThingGroupRequest {
        parent_group_name: Some(parent.to_owned()),
        thing_group_properties: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Memory and embedded
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn memory_registry_conformance() {
    conformance::run_registry_suite(Arc::new(MemoryRegistryStore::default())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_registry_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let registry = store.registry_store();
    assert_eq!(registry.kind(), "embedded");
    conformance::run_registry_suite(Arc::new(registry)).await;
    // The broker's and the shadows' halves of the file are unaffected and still conform.
    conformance::run_all(&store).await;
    conformance::run_shadow_suite(Arc::new(store.shadow_store())).await;
}

/// Builds a small registry: a deprecated type with a thing, a nested group hierarchy with
/// members, and updated attributes.
async fn populate(r: &Registry) {
    r.create_thing_type("lamp", &CreateThingTypeRequest::default())
        .await
        .unwrap();
    r.create_thing(
        "t1",
        &create(Some("lamp"), &[("color", "red"), ("site", "berlin")]),
    )
    .await
    .unwrap();
    r.create_thing("t2", &create(None, &[("color", "blue")]))
        .await
        .unwrap();
    r.update_thing(
        "t2",
        &UpdateThingRequest {
            attribute_payload: Some(AttributePayload::merge([("color", "red")])),
            ..UpdateThingRequest::default()
        },
    )
    .await
    .unwrap();
    r.deprecate_thing_type("lamp", &DeprecateThingTypeRequest::default())
        .await
        .unwrap();
    r.create_thing_group("site", &CreateThingGroupRequest::default())
        .await
        .unwrap();
    r.create_thing_group("floor1", &child_of("site")).await.unwrap();
    r.create_thing_group("other", &CreateThingGroupRequest::default())
        .await
        .unwrap();
    r.add_thing_to_thing_group(&ThingGroupMembershipRequest::new("floor1", "t1"))
        .await
        .unwrap();
    r.add_thing_to_thing_group(&ThingGroupMembershipRequest::new("other", "t1"))
        .await
        .unwrap();
    r.add_thing_to_thing_group(&ThingGroupMembershipRequest::new("site", "t2"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_registry_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (t1, t2, floor1, lamp);
    {
        let store = EmbeddedStore::open(&path).unwrap();
        let r = Registry::new(Arc::new(store.registry_store()), suite_config());
        populate(&r).await;
        t1 = r.describe_thing("t1").await.unwrap();
        t2 = r.describe_thing("t2").await.unwrap();
        floor1 = r.describe_thing_group("floor1").await.unwrap();
        lamp = r.describe_thing_type("lamp").await.unwrap();
        // Dropping every handle closes the file, so the reopen below does not find it locked.
        drop(r);
        drop(store);
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let r = Registry::new(Arc::new(store.registry_store()), suite_config());
    assert_eq!(r.describe_thing("t1").await.unwrap(), t1);
    assert_eq!(r.describe_thing("t2").await.unwrap(), t2);
    assert_eq!(t2.version, 2);
    assert_eq!(r.describe_thing_group("floor1").await.unwrap(), floor1);
    assert_eq!(r.describe_thing_type("lamp").await.unwrap(), lamp);
    assert!(lamp.deprecated);
    // The indexes came back with the records.
    let red = ListThingsFilter {
        attribute_name: Some("color".into()),
        attribute_value: Some("red".into()),
        ..ListThingsFilter::default()
    };
    let page = r.list_things(&red, &PageRequest::default()).await.unwrap();
    assert_eq!(page.items, vec![t1.clone(), t2.clone()]);
    let lamps = ListThingsFilter {
        thing_type_name: Some("lamp".into()),
        ..ListThingsFilter::default()
    };
    assert_eq!(
        r.list_things(&lamps, &PageRequest::default())
            .await
            .unwrap()
            .items,
        vec![t1]
    );
    let in_site = r
        .list_things_in_thing_group("site", true, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        in_site.items.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        ["t1", "t2"]
    );
    assert_memberships_consistent(&r, &["t1", "t2"], &["site", "floor1", "other"]).await;
    // The rules still see the reopened state.
    let e = r
        .create_thing("t3", &create(Some("lamp"), &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "InvalidRequestException");
    let e = r.delete_thing_group("site", None).await.unwrap_err();
    assert_eq!(e.code(), "InvalidRequestException");
    let v = r
        .update_thing("t2", &UpdateThingRequest::default())
        .await
        .unwrap();
    assert_eq!(v.version, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_registry_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let a: Arc<dyn RegistryStore> = Arc::new(store.registry_store());
    let b: Arc<dyn RegistryStore> = Arc::new(store.registry_store());
    let stats = conformance::registry_concurrency(&[a, b], "emb-hot", 8, 10).await;
    eprintln!("embedded, two handles: {stats:?}");
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn redis_registry_conformance() {
    let server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), "shoal").await.unwrap();
    let registry = store.registry_store();
    assert_eq!(registry.kind(), "redis");
    conformance::run_registry_suite(Arc::new(registry)).await;
    conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_registry_two_nodes_one_thing() {
    let server = RedisServer::start().await;
    let a = RedisRegistryStore::connect(&server.url(), "shoal").await.unwrap();
    let b = RedisRegistryStore::connect(&server.url(), "shoal").await.unwrap();
    let nodes: Vec<Arc<dyn RegistryStore>> = vec![Arc::new(a), Arc::new(b)];
    let started = Instant::now();
    let stats = conformance::registry_concurrency(&nodes, "hot", 8, 10).await;
    eprintln!(
        "two Redis nodes, one thing, in {:?}: {stats:?}",
        started.elapsed()
    );
    assert!(
        stats.conflicts > 0,
        "the checked updates never collided: the test proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_registry_nodes_see_each_other() {
    let server = RedisServer::start().await;
    let a = Registry::new(
        Arc::new(RedisRegistryStore::connect(&server.url(), "shoal").await.unwrap()),
        suite_config(),
    );
    let b = Registry::new(
        Arc::new(RedisRegistryStore::connect(&server.url(), "shoal").await.unwrap()),
        suite_config(),
    );
    populate(&a).await;
    assert_eq!(
        b.describe_thing("t1").await.unwrap(),
        a.describe_thing("t1").await.unwrap()
    );
    assert_memberships_consistent(&b, &["t1", "t2"], &["site", "floor1", "other"]).await;
    // A group created on one node blocks the deletion of its parent on the other.
    a.create_thing_group("floor2", &child_of("site")).await.unwrap();
    b.delete_thing_group("floor1", None).await.unwrap();
    assert_eq!(
        b.delete_thing_group("site", None).await.unwrap_err().code(),
        "InvalidRequestException"
    );
    // Different prefixes are different registries.
    let c = Registry::new(
        Arc::new(RedisRegistryStore::connect(&server.url(), "other").await.unwrap()),
        suite_config(),
    );
    assert_eq!(
        c.describe_thing("t1").await.unwrap_err().code(),
        "ResourceNotFoundException"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_registry_key_layout() {
    let server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), "pfx").await.unwrap();
    let r = Registry::new(Arc::new(store.registry_store()), suite_config());
    populate(&r).await;
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let doc: Vec<u8> = redis::cmd("HGET")
        .arg("pfx:reg:thing:t1")
        .arg("doc")
        .query_async(&mut conn)
        .await
        .unwrap();
    let doc = String::from_utf8(doc).unwrap();
    assert!(doc.starts_with('{') && doc.contains(r#""name":"t1""#), "{doc}");
    let members = |key: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async::<Vec<String>>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(members("pfx:regidx:things").await, ["t1", "t2"]);
    assert_eq!(members("pfx:regidx:attrv:color=red").await, ["t1", "t2"]);
    assert_eq!(members("pfx:regidx:attr:site").await, ["t1"]);
    assert_eq!(members("pfx:regidx:type:lamp").await, ["t1"]);
    assert_eq!(members("pfx:regidx:members:site").await, ["t2"]);
    assert_eq!(members("pfx:regidx:groups-of:t1").await, ["floor1", "other"]);
    assert_eq!(members("pfx:regidx:children:site").await, ["floor1"]);
    // The stale index entry of t2's old color is gone.
    assert!(members("pfx:regidx:attrv:color=blue").await.is_empty());
    // Deleting everything leaves no registry key behind but the revision counter.
    r.delete_thing("t1", None).await.unwrap();
    r.delete_thing("t2", None).await.unwrap();
    for g in ["floor1", "site", "other"] {
        r.delete_thing_group(g, None).await.unwrap();
    }
    r.delete_thing_type("lamp").await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("pfx:reg*")
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys, ["pfx:reg-rev"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_registry_unavailable_then_recovers() {
    let mut server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), "shoal").await.unwrap();
    let r = Registry::new(Arc::new(store.registry_store()), suite_config());
    r.create_thing("t", &CreateThingRequest::default()).await.unwrap();
    server.kill();
    let started = Instant::now();
    let e = r.describe_thing("t").await.unwrap_err();
    assert!(matches!(e, RegistryError::ServiceUnavailable(_)), "{e:?}");
    assert_eq!(e.http_status(), 503);
    let e = r
        .create_thing("u", &CreateThingRequest::default())
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "calls did not fail fast"
    );
    // A fresh server (no persistence: empty) on the same port; the connection comes back.
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match r.create_thing("u", &CreateThingRequest::default()).await {
            Ok(t) => {
                assert_eq!(t.version, 1);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(e.is_retryable(), "{e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// shoal_store::open
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn open_hands_out_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start().await;
    for (url, kind) in [
        ("memory", "memory"),
        ("embedded", "embedded"),
        (server.url().as_str(), "redis"),
    ] {
        let stores = shoal_store::open(url, dir.path()).await.unwrap();
        assert_eq!(stores.registry.kind(), kind);
        assert!(format!("{stores:?}").contains(&format!("registry: \"{kind}\"")));
        let r = Registry::new(Arc::clone(&stores.registry), suite_config());
        r.create_thing("via-open", &CreateThingRequest::default())
            .await
            .unwrap();
        assert_eq!(r.describe_thing("via-open").await.unwrap().version, 1);
    }
}
