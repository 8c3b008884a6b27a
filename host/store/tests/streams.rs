//! Streams on every backend: the conformance suite against the memory (reference), embedded and
//! Redis stores; the embedded file reopened (records, groups and pending lists survive, ids keep
//! rising); Redis killed (calls fail quickly with `Unavailable`, then recover).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::RedisServer;
use shoal_rules::stream::{GroupStart, MemoryStreamStore, NewRecord, StreamError, StreamId, StreamStore};
use shoal_store::conformance::run_stream_suite;
use shoal_store::{EmbeddedStore, RedisStore};

fn rec(stream: &str, key: &str, data: &[u8]) -> NewRecord {
    NewRecord {
        stream: stream.into(),
        key: key.into(),
        data: data.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_streams_conform() {
    run_stream_suite(&MemoryStreamStore::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_streams_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let streams = store.stream_store();
    run_stream_suite(&streams).await;
    // Twice on the same file: leftovers of the first run (if any) must not matter.
    run_stream_suite(&streams).await;
    assert!(streams.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_streams_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (ids, before);
    {
        let store = EmbeddedStore::open(&path).unwrap();
        let streams = store.stream_store();
        ids = streams
            .append(
                &[
                    rec("a", "k0", b"d0"),
                    rec("b", "", b"\0\xff"),
                    rec("a", "k1", b"d1"),
                    rec("a", "k2", b"d2"),
                    rec("a", "k3", b"d3"),
                ],
                3,
            )
            .await
            .unwrap();
        streams
            .create_group("a", "g", GroupStart::Beginning)
            .await
            .unwrap();
        streams.create_group("a", "late", GroupStart::End).await.unwrap();
        let got = streams.read_group("a", "g", "c1", 2).await.unwrap();
        assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ids[2], ids[3]]);
        assert_eq!(streams.ack("a", "g", &[ids[2]]).await.unwrap(), 1);
        before = (
            streams.list().await.unwrap(),
            streams.range("a", None, 10).await.unwrap(),
            streams.range("b", None, 10).await.unwrap(),
        );
        drop(streams);
        drop(store);
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let streams = store.stream_store();
    let after = (
        streams.list().await.unwrap(),
        streams.range("a", None, 10).await.unwrap(),
        streams.range("b", None, 10).await.unwrap(),
    );
    assert_eq!(after, before);
    let a = streams.info("a").await.unwrap();
    assert_eq!(a.length, 3);
    assert_eq!(a.first_id, Some(ids[2]));
    assert_eq!(a.last_id, Some(ids[4]));
    assert_eq!(a.groups.len(), 2);
    assert_eq!(
        (
            a.groups[0].name.as_str(),
            a.groups[0].last_delivered,
            a.groups[0].pending
        ),
        ("g", ids[3], 1)
    );
    assert_eq!(
        (
            a.groups[1].name.as_str(),
            a.groups[1].last_delivered,
            a.groups[1].pending
        ),
        ("late", ids[4], 0)
    );
    assert_eq!(streams.info("b").await.unwrap().length, 1);
    // The pending list and the cursor survived.
    let pending = streams.read_pending("a", "g", "c1", 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].id, pending[0].key.as_str()), (ids[3], "k2"));
    let next = streams.read_group("a", "g", "c2", 10).await.unwrap();
    assert_eq!(next.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ids[4]]);
    // Ids keep rising after the reopen, even within the same millisecond.
    let more = streams
        .append(&[rec("a", "k4", b"d4"), rec("b", "x", b"")], 3)
        .await
        .unwrap();
    assert!(more[0] > ids[4], "{more:?} after {ids:?}");
    assert!(more[1] > ids[1], "{more:?} after {ids:?}");
    assert_eq!(
        streams.read_group("a", "late", "c", 10).await.unwrap()[0].id,
        more[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn open_provides_streams() {
    let dir = tempfile::tempdir().unwrap();
    for (url, kind) in [("memory", "memory"), ("embedded", "embedded")] {
        let stores = shoal_store::open(url, dir.path()).await.unwrap();
        assert_eq!(stores.streams.kind(), kind);
        let ids = stores.streams.append(&[rec("s", "", b"x")], 10).await.unwrap();
        assert_eq!(ids.len(), 1);
        assert!(format!("{stores:?}").contains(&format!("streams: \"{kind}\"")));
    }
    let server = RedisServer::start().await;
    let stores = shoal_store::open(&server.url(), dir.path()).await.unwrap();
    assert_eq!(stores.streams.kind(), "redis");
    stores.streams.append(&[rec("s", "", b"x")], 10).await.unwrap();
    assert_eq!(stores.streams.info("s").await.unwrap().length, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_streams_conform() {
    let server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), "shoal").await.unwrap();
    let streams = store.stream_store();
    run_stream_suite(&streams).await;
    // Two runs at once on one Redis (as two test processes sharing a server would).
    let other = RedisStore::connect(&server.url(), "shoal")
        .await
        .unwrap()
        .stream_store();
    tokio::join!(run_stream_suite(&streams), run_stream_suite(&other));
    // A second prefix sees nothing of the first.
    let elsewhere = RedisStore::connect(&server.url(), "other")
        .await
        .unwrap()
        .stream_store();
    streams.append(&[rec("only-here", "", b"")], 10).await.unwrap();
    assert!(elsewhere.list().await.unwrap().is_empty());
    assert!(matches!(
        elsewhere.info("only-here").await,
        Err(StreamError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_streams_unavailable_when_killed() {
    let mut server = RedisServer::start().await;
    let streams = RedisStore::connect(&server.url(), "shoal")
        .await
        .unwrap()
        .stream_store();
    let first = streams.append(&[rec("s", "k", b"before")], 10).await.unwrap();
    streams
        .create_group("s", "g", GroupStart::Beginning)
        .await
        .unwrap();

    server.kill();
    let started = Instant::now();
    let r = streams.append(&[rec("s", "k", b"during")], 10).await;
    let took = started.elapsed();
    assert!(matches!(r, Err(StreamError::Unavailable(_))), "{r:?}");
    assert!(took < Duration::from_secs(6), "append took {took:?} to fail");
    for (what, r) in [
        ("info", streams.info("s").await.map(|_| ())),
        (
            "read_group",
            streams.read_group("s", "g", "c", 10).await.map(|_| ()),
        ),
        ("ack", streams.ack("s", "g", &first).await.map(|_| ())),
    ] {
        assert!(matches!(r, Err(StreamError::Unavailable(_))), "{what}: {r:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));

    // A fresh (empty) server on the same port: the connection comes back by itself.
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let ids = loop {
        match streams.append(&[rec("s", "k", b"after")], 10).await {
            Ok(ids) => break ids,
            Err(e) if Instant::now() < deadline => {
                assert!(matches!(e, StreamError::Unavailable(_)), "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("Redis did not come back: {e:?}"),
        }
    };
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0], StreamId::ZERO);
    let got = streams.range("s", None, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"after");
}
