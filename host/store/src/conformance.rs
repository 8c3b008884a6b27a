//! The [`BrokerStore`] and [`ShadowStore`] contracts as executable checks: [`run_all`] for
//! the broker store, [`run_shadow_suite`] (and [`shadow_concurrency`] for several nodes on one
//! backend) for shadows, [`run_registry_suite`] (and [`registry_concurrency`]) for the thing
//! registry, [`run_stream_suite`] for streams.
//!
//! Every backend must behave exactly like [`MemoryStore`]; [`run_all`] drives a store through the
//! cases that matter to the broker and, after every step, also compares the store's full
//! contents with a `MemoryStore` that received the same batches. It panics with a message naming
//! the failing case, so it is meant to be called from tests (this crate's, and any other
//! backend's).
//!
//! It is compiled into the normal build because it depends on nothing beyond the trait; the
//! linker drops it from binaries that do not call it.

use shoal_broker::store::{BrokerStore, LoadedSession, MemoryStore, StoreOp};
#[cfg(doc)]
use shoal_things::shadow::ShadowStore;

mod registry;
mod shadows;
mod streams;

pub use registry::{
    RegistryConcurrencyStats, assert_memberships_consistent, registry_concurrency, run_registry_suite,
    suite_config,
};
pub use shadows::{
    CONCURRENT_MUTATIONS, ConcurrencyStats, counter, delete, increment, key, run_shadow_suite,
    shadow_concurrency, update,
};
pub use streams::run_stream_suite;

/// Runs every conformance check against `store`, which must start empty. Leaves it empty.
///
/// # Panics
///
/// On the first deviation from the contract, naming the case.
pub async fn run_all(store: &dyn BrokerStore) {
    let mut c = Checker {
        store,
        model: MemoryStore::default(),
    };
    empty_store(&mut c).await;
    sessions(&mut c).await;
    queued_order_and_isolation(&mut c).await;
    delete_session_drops_queue(&mut c).await;
    delete_missing_is_ok(&mut c).await;
    retained(&mut c).await;
    batch_order(&mut c).await;
    binary_data(&mut c).await;
    awkward_keys(&mut c).await;
    large_batch(&mut c).await;
    c.expect_empty("end of the suite").await;
    if let Err(e) = store.ping().await {
        panic!("[{}] ping at the end failed: {e}", store.kind());
    }
}

struct Checker<'a> {
    store: &'a dyn BrokerStore,
    model: MemoryStore,
}

impl Checker<'_> {
    /// Applies `ops` to the store and the model, then compares both completely.
    async fn apply(&mut self, case: &str, ops: Vec<StoreOp>) {
        if let Err(e) = self.store.apply(&ops).await {
            panic!("[{}] {case}: apply failed: {e}", self.store.kind());
        }
        if let Err(e) = self.model.apply(&ops).await {
            panic!("[model] {case}: apply failed: {e}");
        }
        self.compare_with_model(case).await;
    }

    async fn sessions(&self, case: &str) -> Vec<LoadedSession> {
        match self.store.load_sessions().await {
            Ok(s) => s,
            Err(e) => panic!("[{}] {case}: load_sessions failed: {e}", self.store.kind()),
        }
    }

    async fn retained(&self, case: &str) -> Vec<(String, Vec<u8>)> {
        match self.store.load_retained().await {
            Ok(r) => r,
            Err(e) => panic!("[{}] {case}: load_retained failed: {e}", self.store.kind()),
        }
    }

    async fn compare_with_model(&self, case: &str) {
        let kind = self.store.kind();
        let (got_s, got_r) = (self.sessions(case).await, self.retained(case).await);
        let want_s = match self.model.load_sessions().await {
            Ok(s) => s,
            Err(e) => panic!("[model] {case}: {e}"),
        };
        let want_r = match self.model.load_retained().await {
            Ok(r) => r,
            Err(e) => panic!("[model] {case}: {e}"),
        };
        assert_eq!(
            got_s, want_s,
            "[{kind}] {case}: sessions differ from the MemoryStore reference"
        );
        assert_eq!(
            got_r, want_r,
            "[{kind}] {case}: retained messages differ from the MemoryStore reference"
        );
    }

    async fn session(&self, case: &str, client_id: &str) -> Option<LoadedSession> {
        self.sessions(case)
            .await
            .into_iter()
            .find(|s| s.client_id == client_id)
    }

    async fn expect_session(&self, case: &str, client_id: &str, data: &[u8], queued: &[(u64, &[u8])]) {
        let kind = self.store.kind();
        let Some(s) = self.session(case, client_id).await else {
            panic!("[{kind}] {case}: session {client_id:?} is missing");
        };
        assert_eq!(s.data, data, "[{kind}] {case}: data of session {client_id:?}");
        let want: Vec<(u64, Vec<u8>)> = queued.iter().map(|(s, d)| (*s, d.to_vec())).collect();
        assert_eq!(s.queued, want, "[{kind}] {case}: queue of session {client_id:?}");
    }

    async fn expect_no_session(&self, case: &str, client_id: &str) {
        if self.session(case, client_id).await.is_some() {
            panic!(
                "[{}] {case}: session {client_id:?} should be gone",
                self.store.kind()
            );
        }
    }

    async fn expect_retained(&self, case: &str, topic: &str, data: Option<&[u8]>) {
        let got = self
            .retained(case)
            .await
            .into_iter()
            .find(|(t, _)| t == topic)
            .map(|(_, d)| d);
        assert_eq!(
            got.as_deref(),
            data,
            "[{}] {case}: retained message of {topic:?}",
            self.store.kind()
        );
    }

    async fn expect_empty(&self, case: &str) {
        let kind = self.store.kind();
        assert_eq!(
            self.sessions(case).await,
            vec![],
            "[{kind}] {case}: sessions should be empty"
        );
        assert_eq!(
            self.retained(case).await,
            vec![],
            "[{kind}] {case}: retained should be empty"
        );
    }
}

fn put_session(client_id: &str, data: &[u8]) -> StoreOp {
    StoreOp::PutSession {
        client_id: client_id.to_owned(),
        data: data.to_vec(),
    }
}

fn del_session(client_id: &str) -> StoreOp {
    StoreOp::DeleteSession {
        client_id: client_id.to_owned(),
    }
}

fn put_queued(client_id: &str, seq: u64, data: &[u8]) -> StoreOp {
    StoreOp::PutQueued {
        client_id: client_id.to_owned(),
        seq,
        data: data.to_vec(),
    }
}

fn del_queued(client_id: &str, seq: u64) -> StoreOp {
    StoreOp::DeleteQueued {
        client_id: client_id.to_owned(),
        seq,
    }
}

fn put_retained(topic: &str, data: &[u8]) -> StoreOp {
    StoreOp::PutRetained {
        topic: topic.to_owned(),
        data: data.to_vec(),
    }
}

fn del_retained(topic: &str) -> StoreOp {
    StoreOp::DeleteRetained {
        topic: topic.to_owned(),
    }
}

async fn empty_store(c: &mut Checker<'_>) {
    let kind = c.store.kind();
    if let Err(e) = c.store.ping().await {
        panic!("[{kind}] ping on an empty store failed: {e}");
    }
    c.expect_empty("empty store").await;
    c.apply("empty batch", vec![]).await;
    c.expect_empty("after an empty batch").await;
}

async fn sessions(c: &mut Checker<'_>) {
    let case = "sessions";
    c.apply(case, vec![put_session("s1", b"one")]).await;
    c.apply(case, vec![put_session("s2", b"two")]).await;
    c.expect_session(case, "s1", b"one", &[]).await;
    c.expect_session(case, "s2", b"two", &[]).await;

    let case = "session replace";
    c.apply(case, vec![put_session("s1", b"one, again")]).await;
    c.expect_session(case, "s1", b"one, again", &[]).await;
    c.expect_session(case, "s2", b"two", &[]).await;
    assert_eq!(
        c.sessions(case).await.len(),
        2,
        "[{}] {case}: replace must not add a session",
        c.store.kind()
    );

    let case = "session delete";
    c.apply(case, vec![del_session("s2")]).await;
    c.expect_no_session(case, "s2").await;
    c.expect_session(case, "s1", b"one, again", &[]).await;
    c.apply(case, vec![del_session("s1")]).await;
    c.expect_empty(case).await;
}

async fn queued_order_and_isolation(c: &mut Checker<'_>) {
    let case = "queued order";
    c.apply(case, vec![put_session("a", b"A"), put_session("ab", b"AB")])
        .await;
    // Out of order, across batches and within one; decimal strings would sort 10 < 2 < 300 < 7.
    c.apply(case, vec![put_queued("a", 10, b"q10"), put_queued("a", 2, b"q2")])
        .await;
    c.apply(case, vec![put_queued("ab", 5, b"ab5")]).await;
    c.apply(
        case,
        vec![put_queued("a", 300, b"q300"), put_queued("a", 7, b"q7")],
    )
    .await;
    c.apply(case, vec![put_queued("ab", 1, b"ab1")]).await;
    c.expect_session(
        case,
        "a",
        b"A",
        &[(2, b"q2"), (7, b"q7"), (10, b"q10"), (300, b"q300")],
    )
    .await;
    c.expect_session(case, "ab", b"AB", &[(1, b"ab1"), (5, b"ab5")])
        .await;

    let case = "queued extreme seqs";
    c.apply(
        case,
        vec![put_queued("a", u64::MAX, b"max"), put_queued("a", 0, b"zero")],
    )
    .await;
    c.expect_session(
        case,
        "a",
        b"A",
        &[
            (0, b"zero"),
            (2, b"q2"),
            (7, b"q7"),
            (10, b"q10"),
            (300, b"q300"),
            (u64::MAX, b"max"),
        ],
    )
    .await;

    let case = "queued replace and delete";
    c.apply(
        case,
        vec![
            put_queued("a", 7, b"q7 again"),
            del_queued("a", 10),
            del_queued("a", 0),
        ],
    )
    .await;
    c.expect_session(
        case,
        "a",
        b"A",
        &[(2, b"q2"), (7, b"q7 again"), (300, b"q300"), (u64::MAX, b"max")],
    )
    .await;
    c.expect_session(case, "ab", b"AB", &[(1, b"ab1"), (5, b"ab5")])
        .await;

    // A queue is only loaded with its session; it shows up once the session exists.
    let case = "queue without session";
    c.apply(case, vec![put_queued("orphan", 3, b"o3")]).await;
    c.expect_no_session(case, "orphan").await;
    c.apply(case, vec![put_session("orphan", b"O")]).await;
    c.expect_session(case, "orphan", b"O", &[(3, b"o3")]).await;
    c.apply(case, vec![del_session("orphan")]).await;
    c.expect_no_session(case, "orphan").await;
}

async fn delete_session_drops_queue(c: &mut Checker<'_>) {
    let case = "delete session drops its queue";
    c.apply(case, vec![del_session("a")]).await;
    c.expect_no_session(case, "a").await;
    c.expect_session(case, "ab", b"AB", &[(1, b"ab1"), (5, b"ab5")])
        .await;
    // The queue must really be gone, not just hidden with the session.
    c.apply(case, vec![put_session("a", b"A2")]).await;
    c.expect_session(case, "a", b"A2", &[]).await;
    c.expect_session(case, "ab", b"AB", &[(1, b"ab1"), (5, b"ab5")])
        .await;
    c.apply(case, vec![del_session("a"), del_session("ab")]).await;
    c.expect_empty(case).await;
}

async fn delete_missing_is_ok(c: &mut Checker<'_>) {
    let case = "deleting what is not there";
    c.apply(case, vec![put_session("m", b"M"), put_queued("m", 1, b"m1")])
        .await;
    c.apply(
        case,
        vec![
            del_queued("m", 2),
            del_queued("nobody", 1),
            del_session("nobody"),
            del_retained("no/such/topic"),
        ],
    )
    .await;
    c.expect_session(case, "m", b"M", &[(1, b"m1")]).await;
    c.apply(case, vec![del_queued("m", 1)]).await;
    c.apply(case, vec![del_queued("m", 1)]).await;
    c.expect_session(case, "m", b"M", &[]).await;
    c.apply(case, vec![del_session("m")]).await;
    c.apply(case, vec![del_session("m")]).await;
    c.expect_empty(case).await;
}

async fn retained(c: &mut Checker<'_>) {
    let case = "retained";
    c.apply(case, vec![put_retained("t/1", b"r1"), put_retained("t/2", b"r2")])
        .await;
    c.expect_retained(case, "t/1", Some(b"r1")).await;
    c.expect_retained(case, "t/2", Some(b"r2")).await;
    c.apply(case, vec![put_retained("t/1", b"r1 again")]).await;
    c.expect_retained(case, "t/1", Some(b"r1 again")).await;
    c.apply(case, vec![del_retained("t/2")]).await;
    c.expect_retained(case, "t/2", None).await;
    c.expect_retained(case, "t/1", Some(b"r1 again")).await;
    // Retained messages and sessions live apart even under the same name.
    c.apply(case, vec![put_session("t/1", b"session named like a topic")])
        .await;
    c.apply(case, vec![del_session("t/1")]).await;
    c.expect_retained(case, "t/1", Some(b"r1 again")).await;
    c.apply(case, vec![del_retained("t/1")]).await;
    c.expect_empty(case).await;
}

async fn batch_order(c: &mut Checker<'_>) {
    let case = "batch: put then delete";
    c.apply(
        case,
        vec![
            put_session("x", b"X"),
            put_queued("x", 1, b"x1"),
            put_retained("bt", b"b"),
            del_queued("x", 1),
            del_retained("bt"),
            del_session("x"),
        ],
    )
    .await;
    c.expect_no_session(case, "x").await;
    c.expect_retained(case, "bt", None).await;

    let case = "batch: delete then put";
    c.apply(
        case,
        vec![
            del_session("y"),
            del_retained("bt"),
            del_queued("y", 4),
            put_session("y", b"Y"),
            put_queued("y", 4, b"y4"),
            put_retained("bt", b"b2"),
        ],
    )
    .await;
    c.expect_session(case, "y", b"Y", &[(4, b"y4")]).await;
    c.expect_retained(case, "bt", Some(b"b2")).await;

    let case = "batch: queue, delete session, recreate";
    c.apply(
        case,
        vec![
            put_queued("y", 5, b"y5"),
            del_session("y"),
            put_session("y", b"Y2"),
            put_queued("y", 6, b"y6"),
        ],
    )
    .await;
    c.expect_session(case, "y", b"Y2", &[(6, b"y6")]).await;

    let case = "batch: last write wins";
    c.apply(
        case,
        vec![
            put_session("y", b"first"),
            put_session("y", b"second"),
            put_queued("y", 6, b"first"),
            put_queued("y", 6, b"second"),
            put_retained("bt", b"first"),
            put_retained("bt", b"second"),
        ],
    )
    .await;
    c.expect_session(case, "y", b"second", &[(6, b"second")]).await;
    c.expect_retained(case, "bt", Some(b"second")).await;

    c.apply(case, vec![del_session("y"), del_retained("bt")]).await;
    c.expect_empty(case).await;
}

async fn binary_data(c: &mut Checker<'_>) {
    let case = "binary data";
    let all: Vec<u8> = (0..=255u8).collect();
    let reversed: Vec<u8> = (0..=255u8).rev().collect();
    c.apply(
        case,
        vec![
            put_session("bin", &all),
            put_queued("bin", 1, &reversed),
            put_queued("bin", 2, &[]),
            put_retained("bin/all", &all),
            put_retained("bin/empty", &[]),
        ],
    )
    .await;
    c.expect_session(case, "bin", &all, &[(1, &reversed), (2, &[])])
        .await;
    c.expect_retained(case, "bin/all", Some(&all)).await;
    c.expect_retained(case, "bin/empty", Some(&[])).await;
    c.apply(
        case,
        vec![
            del_session("bin"),
            del_retained("bin/all"),
            del_retained("bin/empty"),
        ],
    )
    .await;
    c.expect_empty(case).await;
}

async fn awkward_keys(c: &mut Checker<'_>) {
    let case = "awkward keys";
    let ids = [
        "ünïcødé-客户端-🚀",
        "a:b",
        "a:b:queue:c",
        "sessions",
        "x/y/#/+",
        "$share/g/t",
        "with space",
        "",
    ];
    let mut ops = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let seq = i as u64 + 1;
        ops.push(put_session(id, id.as_bytes()));
        ops.push(put_queued(id, seq, format!("q{seq}").as_bytes()));
        ops.push(put_retained(id, id.as_bytes()));
    }
    c.apply(case, ops).await;
    for (i, id) in ids.iter().enumerate() {
        let seq = i as u64 + 1;
        c.expect_session(case, id, id.as_bytes(), &[(seq, format!("q{seq}").as_bytes())])
            .await;
        c.expect_retained(case, id, Some(id.as_bytes())).await;
    }
    // Deleting one must not touch its look-alikes.
    c.apply(case, vec![del_session("a:b"), del_retained("x/y/#/+")])
        .await;
    c.expect_no_session(case, "a:b").await;
    c.expect_session(case, "a:b:queue:c", b"a:b:queue:c", &[(3, b"q3")])
        .await;
    c.expect_retained(case, "x/y/#/+", None).await;
    let mut ops = Vec::new();
    for id in ids {
        ops.push(del_session(id));
        ops.push(del_retained(id));
    }
    c.apply(case, ops).await;
    c.expect_empty(case).await;
}

async fn large_batch(c: &mut Checker<'_>) {
    let case = "large batch";
    let mut ops = vec![put_session("big", b"B")];
    // Descending, so storage order cannot come from insertion order.
    ops.extend(
        (0..1000u64)
            .rev()
            .map(|s| put_queued("big", s * 3, &s.to_be_bytes())),
    );
    c.apply(case, ops).await;
    let Some(s) = c.session(case, "big").await else {
        panic!("[{}] {case}: session missing", c.store.kind());
    };
    let seqs: Vec<u64> = s.queued.iter().map(|(s, _)| *s).collect();
    let want: Vec<u64> = (0..1000u64).map(|s| s * 3).collect();
    assert_eq!(seqs, want, "[{}] {case}: queue order", c.store.kind());
    c.apply(case, vec![del_session("big")]).await;
    c.expect_empty(case).await;
}
