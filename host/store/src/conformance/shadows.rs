//! The [`ShadowStore`] contract as an executable check (see [`run_shadow_suite`]).

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shoal_things::shadow::{
    Mutated, Mutation, ShadowError, ShadowKey, ShadowLimits, ShadowName, ShadowStore, StoredShadow,
    ThingName, UpdateRequest, apply_delete, apply_update,
};

/// The `now_secs` every mutation of the suite uses.
const NOW: u64 = 1_700_000_000;

/// How many concurrent mutations [`run_shadow_suite`] runs on one shadow.
pub const CONCURRENT_MUTATIONS: usize = 1000;

/// Runs every shadow conformance check against `store`, which must hold no shadows.
///
/// Covers: reading a missing shadow; create, replace and tombstone through `mutate`, with the
/// `previous` document the function saw; a rejection writing nothing; `list_named` ordering,
/// paging, and exclusion of tombstones, the classic shadow and other things (`a` vs `ab`); a
/// panicking mutation writing nothing; and [`CONCURRENT_MUTATIONS`] concurrent mutations of one
/// shadow (see [`shadow_concurrency`]). It needs a multi-threaded tokio runtime (it spawns tasks).
///
/// # Panics
///
/// On the first deviation from the contract, naming the case.
pub async fn run_shadow_suite(store: Arc<dyn ShadowStore>) {
    let s = store.as_ref();
    missing(s).await;
    create_replace_tombstone(s).await;
    rejected_writes_nothing(s).await;
    list_named(s).await;
    panicking_mutation(Arc::clone(&store)).await;
    let stats = shadow_concurrency(&[store], key("conf-hot", Some("counter")), CONCURRENT_MUTATIONS).await;
    tracing::info!(?stats, "shadow concurrency");
}

/// A key; panics on an invalid name (the suite only uses valid ones).
pub fn key(thing: &str, shadow: Option<&str>) -> ShadowKey {
    ShadowKey::new(thing_name(thing), shadow.map(shadow_name))
}

fn thing_name(thing: &str) -> ThingName {
    match ThingName::parse(thing) {
        Ok(t) => t,
        Err(e) => panic!("bad thing name {thing:?} in the suite: {e}"),
    }
}

fn shadow_name(shadow: &str) -> ShadowName {
    match ShadowName::parse(shadow) {
        Ok(s) => s,
        Err(e) => panic!("bad shadow name {shadow:?} in the suite: {e}"),
    }
}

fn request(body: &str) -> UpdateRequest {
    match UpdateRequest::parse(body.as_bytes(), &ShadowLimits::default()) {
        Ok(r) => r,
        Err(e) => panic!("bad update body in the suite: {body}: {e}"),
    }
}

/// A mutation applying the update `body` with [`apply_update`].
pub fn update(body: &str) -> Mutation {
    let request = request(body);
    Arc::new(move |current| {
        apply_update(current, &request, NOW, &ShadowLimits::default()).map(|outcome| outcome.shadow)
    })
}

/// A mutation deleting the shadow with [`apply_delete`] (404 if it does not exist).
pub fn delete(key: &ShadowKey) -> Mutation {
    let key = key.clone();
    Arc::new(move |current| {
        apply_delete(current, &key.thing, key.shadow.as_ref(), None, NOW).map(|outcome| outcome.shadow)
    })
}

/// The counter the concurrency check increments: `reported.n`, 0 when absent.
pub fn counter(doc: Option<&StoredShadow>) -> u64 {
    doc.and_then(|d| d.reported.as_ref())
        .and_then(|s| s.state.get("n"))
        .and_then(|n| n.as_u64())
        .unwrap_or(0)
}

/// A mutation incrementing [`counter`] through a real update (`{"state":{"reported":{"n":…}}}`),
/// which also increments the version. With `expected_version`, the update carries `"version"`
/// and is rejected with 409 unless the stored version still equals it. `calls` counts the
/// function's invocations (a backend may call it more than once).
pub fn increment(expected_version: Option<u64>, calls: Arc<AtomicUsize>) -> Mutation {
    Arc::new(move |current| {
        calls.fetch_add(1, Ordering::Relaxed);
        let next = counter(current) + 1;
        let body = match expected_version {
            Some(v) => format!(r#"{{"state":{{"reported":{{"n":{next}}}}},"version":{v}}}"#),
            None => format!(r#"{{"state":{{"reported":{{"n":{next}}}}}}}"#),
        };
        let request = UpdateRequest::parse(body.as_bytes(), &ShadowLimits::default())
            .map_err(|rejection| rejection.error)?;
        apply_update(current, &request, NOW, &ShadowLimits::default()).map(|outcome| outcome.shadow)
    })
}

async fn get(s: &dyn ShadowStore, case: &str, k: &ShadowKey) -> Option<StoredShadow> {
    match s.get(k).await {
        Ok(doc) => doc,
        Err(e) => panic!("[{}] {case}: get {k:?} failed: {e}", s.kind()),
    }
}

async fn mutate(s: &dyn ShadowStore, case: &str, k: &ShadowKey, f: Mutation) -> Mutated {
    match s.mutate(k, f).await {
        Ok(m) => m,
        Err(e) => panic!("[{}] {case}: mutate {k:?} failed: {e}", s.kind()),
    }
}

/// Mutates and expects `Applied` with the given previous document; returns the current one.
async fn applied(
    s: &dyn ShadowStore,
    case: &str,
    k: &ShadowKey,
    f: Mutation,
    want_previous: Option<&StoredShadow>,
) -> StoredShadow {
    match mutate(s, case, k, f).await {
        Mutated::Applied { previous, current } => {
            assert_eq!(
                previous.as_deref(),
                want_previous,
                "[{}] {case}: previous document of {k:?}",
                s.kind()
            );
            let stored = get(s, case, k).await;
            assert_eq!(
                stored.as_ref(),
                Some(&*current),
                "[{}] {case}: get {k:?} must return what mutate stored",
                s.kind()
            );
            StoredShadow::clone(&current)
        }
        Mutated::Rejected(e) => panic!("[{}] {case}: mutate {k:?} was rejected: {e}", s.kind()),
    }
}

async fn names(
    s: &dyn ShadowStore,
    case: &str,
    thing: &str,
    after: Option<&str>,
    limit: usize,
) -> Vec<String> {
    match s.list_named(&thing_name(thing), after, limit).await {
        Ok(n) => n.iter().map(|n| n.as_str().to_owned()).collect(),
        Err(e) => panic!(
            "[{}] {case}: list_named({thing}, {after:?}, {limit}) failed: {e}",
            s.kind()
        ),
    }
}

async fn missing(s: &dyn ShadowStore) {
    let case = "missing shadow";
    for k in [key("conf-missing", None), key("conf-missing", Some("named"))] {
        assert_eq!(get(s, case, &k).await, None, "[{}] {case}: get {k:?}", s.kind());
    }
    assert!(
        names(s, case, "conf-missing", None, 10).await.is_empty(),
        "[{}] {case}: list_named of a thing without shadows",
        s.kind()
    );
}

async fn create_replace_tombstone(s: &dyn ShadowStore) {
    let kind = s.kind();
    for k in [key("conf-crud", None), key("conf-crud", Some("cfg"))] {
        let case = &format!("create {k:?}");
        // Nested state, metadata, unicode, numbers that must survive the encoding.
        let v1 = applied(
            s,
            case,
            &k,
            update(
                r#"{"state":{"desired":{"mode":"éco ☀","limits":{"lo":-1.5,"hi":1e3}},
                    "reported":{"list":[1,{"a":true}],"big":18446744073709551615}}}"#,
            ),
            None,
        )
        .await;
        assert_eq!(v1.version, 1, "[{kind}] {case}: version");

        let case = &format!("replace {k:?}");
        let v2 = applied(
            s,
            case,
            &k,
            update(r#"{"state":{"desired":{"limits":{"lo":null}},"reported":null}}"#),
            Some(&v1),
        )
        .await;
        assert_eq!(v2.version, 2, "[{kind}] {case}: version");
        assert!(v2.reported.is_none(), "[{kind}] {case}: reported removed");

        let case = &format!("tombstone {k:?}");
        let t = applied(s, case, &k, delete(&k), Some(&v2)).await;
        assert!(t.deleted, "[{kind}] {case}: tombstone flag");
        assert_eq!(t.version, 2, "[{kind}] {case}: a delete keeps the version");

        let case = &format!("re-create {k:?}");
        // The function sees the tombstone, so the version continues.
        let v3 = applied(
            s,
            case,
            &k,
            update(r#"{"state":{"reported":{"on":true}}}"#),
            Some(&t),
        )
        .await;
        assert_eq!(v3.version, 3, "[{kind}] {case}: version after the tombstone");
        assert!(v3.exists(), "[{kind}] {case}: exists again");
        assert!(
            v3.desired.is_none(),
            "[{kind}] {case}: re-created from an empty state"
        );

        // And the same again, so the key ends as a tombstone (checked by later cases).
        let case = &format!("tombstone again {k:?}");
        applied(s, case, &k, delete(&k), Some(&v3)).await;
    }
    let case = "tombstone of a never-created shadow";
    let k = key("conf-crud", Some("ghost"));
    let tomb: Mutation = Arc::new(|current: Option<&StoredShadow>| {
        assert!(current.is_none(), "the ghost shadow must not exist yet");
        Ok(StoredShadow {
            desired: None,
            reported: None,
            version: 7,
            updated_secs: NOW,
            deleted: true,
        })
    });
    let t = applied(s, case, &k, tomb, None).await;
    assert!(t.deleted && t.version == 7, "[{kind}] {case}: {t:?}");
    assert!(
        names(s, case, "conf-crud", None, 10).await.is_empty(),
        "[{kind}] {case}: tombstones are not listed"
    );
}

async fn rejected_writes_nothing(s: &dyn ShadowStore) {
    let kind = s.kind();
    let case = "rejected create";
    let k = key("conf-reject", Some("r"));
    let seen = Arc::new(AtomicUsize::new(0));
    let reject = |seen: Arc<AtomicUsize>, want: Option<StoredShadow>| -> Mutation {
        Arc::new(move |current: Option<&StoredShadow>| {
            assert_eq!(
                current,
                want.as_ref(),
                "the function must see the stored document"
            );
            seen.fetch_add(1, Ordering::Relaxed);
            Err(ShadowError::version_conflict())
        })
    };
    match mutate(s, case, &k, reject(Arc::clone(&seen), None)).await {
        Mutated::Rejected(e) => assert_eq!(e, ShadowError::version_conflict(), "[{kind}] {case}"),
        other => panic!("[{kind}] {case}: expected Rejected, got {other:?}"),
    }
    assert!(
        seen.load(Ordering::Relaxed) >= 1,
        "[{kind}] {case}: function not called"
    );
    assert_eq!(get(s, case, &k).await, None, "[{kind}] {case}: nothing stored");
    assert!(
        names(s, case, "conf-reject", None, 10).await.is_empty(),
        "[{kind}] {case}: nothing listed"
    );

    let case = "rejected replace";
    let v1 = applied(s, case, &k, update(r#"{"state":{"desired":{"x":1}}}"#), None).await;
    match mutate(s, case, &k, reject(Arc::clone(&seen), Some(v1.clone()))).await {
        Mutated::Rejected(e) => assert_eq!(e.code, 409, "[{kind}] {case}"),
        other => panic!("[{kind}] {case}: expected Rejected, got {other:?}"),
    }
    assert_eq!(
        get(s, case, &k).await,
        Some(v1.clone()),
        "[{kind}] {case}: unchanged"
    );

    let case = "rejected delete of a tombstone";
    let t = applied(s, case, &k, delete(&k), Some(&v1)).await;
    match mutate(s, case, &k, delete(&k)).await {
        Mutated::Rejected(e) => assert_eq!(e.code, 404, "[{kind}] {case}"),
        other => panic!("[{kind}] {case}: expected Rejected, got {other:?}"),
    }
    assert_eq!(
        get(s, case, &k).await,
        Some(t),
        "[{kind}] {case}: tombstone unchanged"
    );

    let case = "rejected versioned update";
    let k = key("conf-reject", None);
    let v1 = applied(s, case, &k, update(r#"{"state":{"reported":{"n":1}}}"#), None).await;
    match mutate(
        s,
        case,
        &k,
        update(r#"{"state":{"reported":{"n":2}},"version":5}"#),
    )
    .await
    {
        Mutated::Rejected(e) => assert_eq!(e, ShadowError::version_conflict(), "[{kind}] {case}"),
        other => panic!("[{kind}] {case}: expected Rejected, got {other:?}"),
    }
    assert_eq!(
        get(s, case, &k).await,
        Some(v1.clone()),
        "[{kind}] {case}: unchanged"
    );
    applied(
        s,
        case,
        &k,
        update(r#"{"state":{"reported":{"n":2}},"version":1}"#),
        Some(&v1),
    )
    .await;
}

async fn list_named(s: &dyn ShadowStore) {
    let kind = s.kind();
    let case = "list_named setup";
    // Bytewise order: $ < 0-9 < : < A-Z < _ < a-z, and `-` < `:` < `_` inside names.
    let for_a = ["z", "$x", "B", "b", "a_1", "a-1", "a:1", "0", "a", "ab", "b$"];
    for n in for_a {
        applied(
            s,
            case,
            &key("a", Some(n)),
            update(r#"{"state":{"desired":{"v":1}}}"#),
            None,
        )
        .await;
    }
    // The classic shadow and another thing whose name extends `a`.
    applied(
        s,
        case,
        &key("a", None),
        update(r#"{"state":{"desired":{"v":1}}}"#),
        None,
    )
    .await;
    for n in ["m", "b", "0"] {
        applied(
            s,
            case,
            &key("ab", Some(n)),
            update(r#"{"state":{"desired":{"v":1}}}"#),
            None,
        )
        .await;
    }
    let mut want: Vec<String> = for_a.iter().map(|n| (*n).to_owned()).collect();
    want.sort();
    assert_eq!(
        want,
        ["$x", "0", "B", "a", "a-1", "a:1", "a_1", "ab", "b", "b$", "z"],
        "the suite's own expectation"
    );

    let case = "list_named order";
    assert_eq!(
        names(s, case, "a", None, 100).await,
        want,
        "[{kind}] {case}: thing a"
    );
    assert_eq!(
        names(s, case, "ab", None, 100).await,
        ["0", "b", "m"],
        "[{kind}] {case}: thing ab"
    );
    assert!(
        names(s, case, "abc", None, 100).await.is_empty(),
        "[{kind}] {case}: thing abc has none"
    );

    let case = "list_named paging";
    for limit in [1, 2, 3, 4, 11, 12] {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = names(s, case, "a", after.as_deref(), limit).await;
            assert!(page.len() <= limit, "[{kind}] {case}: page longer than {limit}");
            let Some(last) = page.last().cloned() else { break };
            all.extend(page);
            after = Some(last);
            assert!(all.len() <= want.len(), "[{kind}] {case}: paging does not end");
        }
        assert_eq!(all, want, "[{kind}] {case}: pages of {limit}");
    }
    assert!(
        names(s, case, "a", None, 0).await.is_empty(),
        "[{kind}] {case}: limit 0"
    );
    assert_eq!(
        names(s, case, "a", Some("a"), 2).await,
        ["a-1", "a:1"],
        "[{kind}] {case}: after a"
    );
    assert_eq!(
        names(s, case, "a", Some("a0"), 2).await,
        ["a:1", "a_1"],
        "[{kind}] {case}: after a0"
    );
    assert_eq!(
        names(s, case, "a", Some(""), 1).await,
        ["$x"],
        "[{kind}] {case}: after \"\""
    );
    assert_eq!(
        names(s, case, "a", Some("b$"), 5).await,
        ["z"],
        "[{kind}] {case}: after b$"
    );
    assert!(
        names(s, case, "a", Some("z"), 5).await.is_empty(),
        "[{kind}] {case}: after z"
    );
    assert!(
        names(s, case, "a", Some("~"), 5).await.is_empty(),
        "[{kind}] {case}: after ~"
    );

    let case = "list_named tombstones";
    for n in ["b", "$x", "z"] {
        let k = key("a", Some(n));
        let before = get(s, case, &k).await;
        applied(s, case, &k, delete(&k), before.as_ref()).await;
    }
    let left: Vec<String> = want
        .iter()
        .filter(|n| !["b", "$x", "z"].contains(&n.as_str()))
        .cloned()
        .collect();
    assert_eq!(names(s, case, "a", None, 100).await, left, "[{kind}] {case}");
    assert_eq!(
        names(s, case, "a", Some("ab"), 1).await,
        ["b$"],
        "[{kind}] {case}: skips b"
    );
    assert_eq!(
        names(s, case, "ab", None, 100).await,
        ["0", "b", "m"],
        "[{kind}] {case}: ab untouched"
    );
    let k = key("a", None);
    let before = get(s, case, &k).await;
    applied(s, case, &k, delete(&k), before.as_ref()).await;
    assert_eq!(
        names(s, case, "a", None, 100).await,
        left,
        "[{kind}] {case}: classic delete"
    );

    let case = "list_named re-created";
    let k = key("a", Some("b"));
    let before = get(s, case, &k).await;
    applied(
        s,
        case,
        &k,
        update(r#"{"state":{"reported":{"v":2}}}"#),
        before.as_ref(),
    )
    .await;
    let mut now = left.clone();
    now.push("b".into());
    now.sort();
    assert_eq!(names(s, case, "a", None, 100).await, now, "[{kind}] {case}");
}

async fn panicking_mutation(store: Arc<dyn ShadowStore>) {
    let kind = store.kind();
    let case = "panicking mutation";
    let k = key("conf-panic", None);
    let v1 = applied(
        store.as_ref(),
        case,
        &k,
        update(r#"{"state":{"desired":{"x":1}}}"#),
        None,
    )
    .await;
    let boom: Mutation = Arc::new(|_: Option<&StoredShadow>| panic!("deliberate panic in a shadow mutation"));
    let task = {
        let (store, k) = (Arc::clone(&store), k.clone());
        tokio::spawn(async move { store.mutate(&k, boom).await })
    };
    match task.await {
        Err(e) if e.is_panic() => {}
        other => panic!("[{kind}] {case}: the caller should see the panic, got {other:?}"),
    }
    assert_eq!(
        get(store.as_ref(), case, &k).await,
        Some(v1.clone()),
        "[{kind}] {case}: unchanged"
    );
    applied(
        store.as_ref(),
        case,
        &k,
        update(r#"{"state":{"desired":{"x":2}}}"#),
        Some(&v1),
    )
    .await;
}

/// A random duration below `max` (fresh `RandomState` keys are random; no generator needed).
fn jitter(max: Duration) -> Duration {
    let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(RandomState::new().build_hasher().finish() % max_nanos)
}

/// What [`shadow_concurrency`] observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyStats {
    /// Mutations applied (equals the number requested).
    pub applied: usize,
    /// 409 rejections of versioned mutations (each retried by the caller).
    pub rejected: usize,
    /// Calls of the mutation functions; more than `applied + rejected` means the backend
    /// retried internally (optimistic concurrency).
    pub calls: usize,
}

/// Runs `total` concurrent increments of one shadow, spread round-robin over `nodes` (several
/// stores on one backend act as several Shoal nodes), and checks that they serialised.
///
/// Half the increments are unversioned; the other half are versioned: they read the version,
/// send it with the update, and retry from a fresh read when rejected with 409. At the end the
/// version and the counter equal `total`, every `Applied` saw the version and counter before
/// it (+1), and no version was returned twice. `key` must not exist yet.
///
/// # Panics
///
/// On any store error or lost or duplicated update.
pub async fn shadow_concurrency(
    nodes: &[Arc<dyn ShadowStore>],
    key: ShadowKey,
    total: usize,
) -> ConcurrencyStats {
    assert!(!nodes.is_empty(), "shadow_concurrency needs at least one store");
    let kind = nodes[0].kind();
    let case = "concurrent mutations";
    assert_eq!(
        get(nodes[0].as_ref(), case, &key).await,
        None,
        "[{kind}] {case}: key must be new"
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let store = Arc::clone(&nodes[i % nodes.len()]);
        let (key, calls) = (key.clone(), Arc::clone(&calls));
        let versioned = i % 2 == 1;
        tasks.spawn(async move {
            let mut rejected = 0usize;
            loop {
                let expected = if versioned {
                    let doc = match store.get(&key).await {
                        Ok(doc) => doc,
                        Err(e) => panic!("[{kind}] {case}: get failed: {e}"),
                    };
                    Some(doc.map_or(0, |d| d.version))
                } else {
                    None
                };
                match store.mutate(&key, increment(expected, Arc::clone(&calls))).await {
                    Ok(Mutated::Applied { previous, current }) => {
                        return (previous, current, rejected);
                    }
                    Ok(Mutated::Rejected(e)) if versioned && e.code == 409 => {
                        // Like a well-behaved client: back off (exponentially, randomly) before
                        // re-reading, so hundreds of versioned writers do not all race for every
                        // single version (each race has one winner and hundreds of 409s).
                        rejected += 1;
                        let ceiling = Duration::from_millis(1 << rejected.min(9));
                        tokio::time::sleep(jitter(ceiling)).await;
                    }
                    Ok(Mutated::Rejected(e)) => panic!("[{kind}] {case}: unexpected rejection: {e}"),
                    Err(e) => panic!("[{kind}] {case}: mutate failed: {e}"),
                }
            }
        });
    }
    let mut versions = BTreeSet::new();
    let mut counters = BTreeSet::new();
    let mut rejected = 0;
    while let Some(joined) = tasks.join_next().await {
        let (previous, current, r) = match joined {
            Ok(outcome) => outcome,
            Err(e) => panic!("[{kind}] {case}: a task failed: {e}"),
        };
        rejected += r;
        let before = previous.as_ref().map_or(0, |p| p.version);
        assert_eq!(current.version, before + 1, "[{kind}] {case}: version step");
        assert_eq!(
            counter(Some(&current)),
            counter(previous.as_deref()) + 1,
            "[{kind}] {case}: counter step"
        );
        assert!(
            versions.insert(current.version),
            "[{kind}] {case}: version {} returned twice",
            current.version
        );
        counters.insert(counter(Some(&current)));
    }
    let want: BTreeSet<u64> = (1..=total as u64).collect();
    assert_eq!(versions, want, "[{kind}] {case}: versions applied");
    assert_eq!(counters, want, "[{kind}] {case}: counter values applied");
    for node in nodes {
        let Some(last) = get(node.as_ref(), case, &key).await else {
            panic!("[{kind}] {case}: shadow missing at the end");
        };
        assert_eq!(last.version, total as u64, "[{kind}] {case}: final version");
        assert_eq!(
            counter(Some(&last)),
            total as u64,
            "[{kind}] {case}: final counter (lost updates)"
        );
    }
    ConcurrencyStats {
        applied: total,
        rejected,
        calls: calls.load(Ordering::Relaxed),
    }
}
