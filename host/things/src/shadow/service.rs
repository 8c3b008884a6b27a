//! The shadow service: one code path for MQTT and HTTP requests.
//!
//! A request is validated by the document engine, applied through [`ShadowStore::mutate`]
//! (atomic), and its outcome published through the broker on the AWS response topics
//! (`…/accepted`, `…/update/delta`, `…/update/documents`; `…/rejected` for MQTT requests only,
//! as AWS does). HTTP callers get the accepted payload or the error as the response.
//!
//! MQTT requests arrive through [`ShadowHook`] on the broker's I/O threads, which must not
//! block: the hook hands each request to one of [`SHARDS`] worker tasks chosen by the shadow's
//! key, so requests for one shadow are applied in the order they were published while
//! different shadows proceed in parallel (within a worker too, see [`worker`]). Each client may have at most
//! [`ShadowConfig::max_inflight_per_client`] requests waiting (AWS: 10); beyond that the
//! request is rejected with 429.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{Value, json};
use shoal_broker::Broker;
use shoal_broker::auth::Principal;
use shoal_broker::hook::{HookOutcome, MessageHook, Origin};
use shoal_broker::message::{ClientId, Message, QoS};
use shoal_broker::topic::{Topic, TopicLimits};
use tokio::sync::mpsc;

use super::{
    Mutated, ShadowError, ShadowKey, ShadowLimits, ShadowName, ShadowOp, ShadowResponse, ShadowStore,
    ShadowStoreError, ShadowTopic, StoredShadow, ThingName, UpdateRequest, apply_delete, get_response,
    request_client_token, response_topic,
};

/// Worker tasks serving MQTT shadow requests (per-shadow order is kept within a worker).
pub const SHARDS: usize = 32;

/// Queue length per worker; a full queue rejects the request with 429.
const SHARD_QUEUE: usize = 4096;

/// Tunables of the shadow service.
#[derive(Debug, Clone)]
pub struct ShadowConfig {
    /// Document limits.
    pub limits: ShadowLimits,
    /// MQTT requests one client may have waiting (AWS: 10).
    pub max_inflight_per_client: usize,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            limits: ShadowLimits::default(),
            max_inflight_per_client: 10,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An error with the clientToken to echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The error.
    pub error: ShadowError,
    /// The request's clientToken, when it could be read.
    pub client_token: Option<String>,
}

impl Rejection {
    fn new(error: ShadowError, client_token: Option<String>) -> Self {
        Rejection { error, client_token }
    }

    /// The AWS error body (`{"code","message","timestamp","clientToken"?}`).
    pub fn payload(&self) -> Value {
        self.error
            .rejected_payload(self.client_token.as_deref(), now_secs())
    }
}

fn store_failure(e: ShadowStoreError, client_token: Option<String>) -> Rejection {
    tracing::error!(error = %e, "shadow store failure");
    let error = match e {
        ShadowStoreError::Unavailable(_) => ShadowError::new(
            503,
            "Service unavailable: the shadow store is not reachable; retry later",
        ),
        ShadowStoreError::Contention(_) => ShadowError::internal(),
        ShadowStoreError::Corrupt(_) => ShadowError::internal(),
    };
    Rejection::new(error, client_token)
}

/// Shadow requests (MQTT and HTTP) by operation and answer, for `/metrics`.
#[derive(Debug, Default)]
pub struct ShadowMetrics {
    counts: [[AtomicU64; CODES.len()]; 3],
}

const OPS: [&str; 3] = ["get", "update", "delete"];
const CODES: [u16; 10] = [200, 400, 401, 403, 404, 409, 413, 415, 429, 500];

impl ShadowMetrics {
    fn record(&self, op: ShadowOp, code: u16) {
        let o = match op {
            ShadowOp::Get => 0,
            ShadowOp::Update => 1,
            ShadowOp::Delete => 2,
        };
        let c = CODES.iter().position(|x| *x == code).unwrap_or(CODES.len() - 1);
        self.counts[o][c].fetch_add(1, Ordering::Relaxed);
    }

    fn answered<T>(&self, op: ShadowOp, r: &Result<T, Rejection>) {
        self.record(op, r.as_ref().map_or_else(|e| e.error.code, |_| 200));
    }

    /// Prometheus text: `shoal_shadow_requests_total{operation,code}` (code 200 is accepted).
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str(
            "# HELP shoal_shadow_requests_total Shadow requests (MQTT and HTTP) by operation and answer.\n",
        );
        out.push_str("# TYPE shoal_shadow_requests_total counter\n");
        for (op, row) in OPS.iter().zip(&self.counts) {
            for (code, n) in CODES.iter().zip(row) {
                let _ = writeln!(
                    out,
                    "shoal_shadow_requests_total{{operation=\"{op}\",code=\"{code}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
    }
}

struct Job {
    topic: ShadowTopic,
    payload: Vec<u8>,
    client_id: ClientId,
}

/// The shadow service.
pub struct ShadowService {
    store: Arc<dyn ShadowStore>,
    broker: Arc<Broker>,
    cfg: ShadowConfig,
    shards: Vec<mpsc::Sender<Job>>,
    inflight: Mutex<HashMap<ClientId, usize>>,
    /// The origin of responses to requests with no requester (HTTP): hooks (the rules engine)
    /// see every response, attributed to the requester's client id when there is one.
    service_id: ClientId,
    principal: Principal,
    /// Requests by operation and answer.
    pub metrics: ShadowMetrics,
}

impl std::fmt::Debug for ShadowService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowService")
            .field("store", &self.store.kind())
            .finish_non_exhaustive()
    }
}

impl ShadowService {
    /// Starts the service (its MQTT workers run on `rt`) and registers its hook with `broker`.
    pub fn start(
        store: Arc<dyn ShadowStore>,
        broker: Arc<Broker>,
        cfg: ShadowConfig,
        rt: &tokio::runtime::Handle,
    ) -> Arc<ShadowService> {
        let mut senders = Vec::with_capacity(SHARDS);
        let mut receivers = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            senders.push(tx);
            receivers.push(rx);
        }
        let svc = Arc::new(ShadowService {
            store,
            broker: broker.clone(),
            cfg,
            shards: senders,
            inflight: Mutex::new(HashMap::new()),
            service_id: ClientId::generate(),
            principal: Principal {
                id: Arc::from("shadow-service"),
                attributes: Default::default(),
                grants: None,
            },
            metrics: ShadowMetrics::default(),
        });
        for rx in receivers {
            rt.spawn(worker(Arc::downgrade(&svc), rx, SHARD_QUEUE));
        }
        broker.add_hook(Arc::new(ShadowHook {
            svc: Arc::downgrade(&svc),
        }));
        svc
    }

    /// The store backend's name.
    pub fn store_kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Publishes a service message (responses go out at QoS 1, downgraded per subscription)
    /// with the service as its origin.
    fn publish(&self, topic: &str, payload: &Value) {
        self.publish_as(topic, payload, None);
    }

    /// Publishes a service message in answer to `requester` (the service itself when `None`).
    /// Hooks see it with that client id as its origin: rules may watch `/update/accepted`,
    /// `/update/delta` and `/update/documents` as on AWS, and the rules engine skips the
    /// answers to its own requests, so a rule cannot loop through a shadow.
    fn publish_as(&self, topic: &str, payload: &Value, requester: Option<&ClientId>) {
        if let Some(t) = self.audience(topic.to_owned()) {
            // A `Value` always serializes.
            self.send(t, serde_json::to_vec(payload).unwrap_or_default(), requester);
        }
    }

    /// The response topic parsed, when a message on it would reach anyone: a subscriber, or a
    /// hook such as a rule selecting from it ([`Broker::has_audience`]). A response nobody
    /// would receive is neither built nor published: most devices subscribe to
    /// `/update/accepted` and `/update/delta` only, and HTTP callers often to nothing.
    fn audience(&self, topic: String) -> Option<Topic> {
        let unlimited = TopicLimits {
            max_length: usize::MAX,
            max_levels: usize::MAX,
        };
        match Topic::parse(topic, &unlimited) {
            Ok(t) => self.broker.has_audience(&t).then_some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish a shadow response");
                None
            }
        }
    }

    /// Publishes `body` on `topic` (see [`ShadowService::publish_as`]).
    fn send(&self, topic: Topic, body: Vec<u8>, requester: Option<&ClientId>) {
        let origin = Origin {
            client_id: requester.unwrap_or(&self.service_id),
            principal: &self.principal,
        };
        self.broker.publish(
            Message::new(topic, body.into(), QoS::AtLeastOnce, false),
            Some(origin),
        );
    }

    /// Update (`POST /things/{thing}/shadow`, `…/update`): the `/update/accepted` payload, as
    /// JSON. Accepted, delta and documents messages are published for every caller.
    pub async fn update(&self, key: &ShadowKey, body: &[u8]) -> Result<Vec<u8>, Rejection> {
        self.update_as(key, body, None).await
    }

    /// [`ShadowService::update`] on behalf of `requester`, whose client id the published
    /// responses carry as their origin (see [`ShadowService::publish_as`]).
    pub async fn update_as(
        &self,
        key: &ShadowKey,
        body: &[u8],
        requester: Option<&ClientId>,
    ) -> Result<Vec<u8>, Rejection> {
        let r = self.apply_update(key, body, requester).await;
        self.metrics.answered(ShadowOp::Update, &r);
        r
    }

    async fn apply_update(
        &self,
        key: &ShadowKey,
        body: &[u8],
        requester: Option<&ClientId>,
    ) -> Result<Vec<u8>, Rejection> {
        let limits = self.cfg.limits;
        let req = UpdateRequest::parse(body, &limits).map_err(|r| Rejection::new(r.error, r.client_token))?;
        let now = now_secs();
        let req = Arc::new(req);
        // Only the merge runs inside the store's critical section (for the embedded store, its
        // one writer thread); the payloads are built here afterwards from the documents before
        // and after.
        let for_store = Arc::clone(&req);
        let mutation: super::Mutation =
            Arc::new(move |cur: Option<&StoredShadow>| super::updated_shadow(cur, &for_store, now, &limits));
        match self.store.mutate(key, mutation).await {
            Ok(Mutated::Applied { previous, current }) => {
                // Each response is built only if someone would receive it (see `audience`).
                let (thing, shadow) = (&key.thing, key.shadow.as_ref());
                let client_token = req.client_token();
                let accepted = super::accepted_json(&req, current.version, now);
                if let Some(t) = self.audience(response_topic(thing, shadow, ShadowResponse::UpdateAccepted))
                {
                    self.send(t, accepted.clone(), requester);
                }
                // Without a desired section there is no delta: no topic to check.
                if current.desired.is_some()
                    && let Some(t) = self.audience(response_topic(thing, shadow, ShadowResponse::UpdateDelta))
                    && let Some(delta) = super::delta_payload(&current, client_token, now)
                {
                    // A `Value` always serializes.
                    self.send(t, serde_json::to_vec(&delta).unwrap_or_default(), requester);
                }
                if let Some(t) = self.audience(response_topic(thing, shadow, ShadowResponse::UpdateDocuments))
                {
                    let body = super::documents_json(previous.as_deref(), &current, client_token, now);
                    self.send(t, body, requester);
                }
                Ok(accepted)
            }
            Ok(Mutated::Rejected(e)) => Err(Rejection::new(e, req.client_token().map(str::to_owned))),
            Err(e) => Err(store_failure(e, req.client_token().map(str::to_owned))),
        }
    }

    /// Get (`GET /things/{thing}/shadow`, `…/get`): the full document.
    pub async fn get(&self, key: &ShadowKey, body: &[u8]) -> Result<Value, Rejection> {
        let r = self.read(key, body).await;
        self.metrics.answered(ShadowOp::Get, &r);
        r
    }

    async fn read(&self, key: &ShadowKey, body: &[u8]) -> Result<Value, Rejection> {
        let token = request_client_token(body, &self.cfg.limits);
        match self.store.get(key).await {
            Ok(cur) => get_response(
                cur.as_ref(),
                &key.thing,
                key.shadow.as_ref(),
                token.as_deref(),
                now_secs(),
            )
            .map_err(|e| Rejection::new(e, token)),
            Err(e) => Err(store_failure(e, token)),
        }
    }

    /// Delete (`DELETE /things/{thing}/shadow`, `…/delete`): `{"version","timestamp"}`.
    pub async fn delete(&self, key: &ShadowKey, body: &[u8]) -> Result<Value, Rejection> {
        self.delete_as(key, body, None).await
    }

    /// [`ShadowService::delete`] on behalf of `requester` (see [`ShadowService::update_as`]).
    pub async fn delete_as(
        &self,
        key: &ShadowKey,
        body: &[u8],
        requester: Option<&ClientId>,
    ) -> Result<Value, Rejection> {
        let r = self.apply_delete(key, body, requester).await;
        self.metrics.answered(ShadowOp::Delete, &r);
        r
    }

    async fn apply_delete(
        &self,
        key: &ShadowKey,
        body: &[u8],
        requester: Option<&ClientId>,
    ) -> Result<Value, Rejection> {
        let token = request_client_token(body, &self.cfg.limits);
        let now = now_secs();
        let (thing, shadow) = (key.thing.clone(), key.shadow.clone());
        let t2 = token.clone();
        let slot: Arc<Mutex<Option<Value>>> = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let mutation: super::Mutation = Arc::new(move |cur: Option<&StoredShadow>| {
            let o = apply_delete(cur, &thing, shadow.as_ref(), t2.as_deref(), now)?;
            *out.lock() = Some(o.accepted);
            Ok(o.shadow)
        });
        match self.store.mutate(key, mutation).await {
            Ok(Mutated::Applied { .. }) => {
                let accepted = slot.lock().take().unwrap_or(Value::Null);
                let topic = response_topic(&key.thing, key.shadow.as_ref(), ShadowResponse::DeleteAccepted);
                self.publish_as(&topic, &accepted, requester);
                Ok(accepted)
            }
            Ok(Mutated::Rejected(e)) => Err(Rejection::new(e, token)),
            Err(e) => Err(store_failure(e, token)),
        }
    }

    /// `ListNamedShadowsForThing`: `{"results":[…],"nextToken"?,"timestamp"}` (the classic
    /// shadow is not listed; an unknown thing has an empty list).
    pub async fn list_named(
        &self,
        thing: &ThingName,
        next_token: Option<&str>,
        page_size: Option<usize>,
    ) -> Result<Value, Rejection> {
        let size = page_size.unwrap_or(25).clamp(1, 100);
        let mut names = self
            .store
            .list_named(thing, next_token, size + 1)
            .await
            .map_err(|e| store_failure(e, None))?;
        let more = names.len() > size;
        names.truncate(size);
        let mut body = json!({
            "results": names.iter().map(ShadowName::as_str).collect::<Vec<_>>(),
            "timestamp": now_secs(),
        });
        if more && let Some(last) = names.last() {
            body["nextToken"] = json!(last.as_str());
        }
        Ok(body)
    }

    /// Runs one MQTT request and publishes its outcome (rejections to `…/rejected`).
    async fn serve_mqtt(&self, job: Job, key: &ShadowKey) {
        let result = match job.topic.op {
            ShadowOp::Get => self.get(key, &job.payload).await.map(Some),
            // Update and delete publish their own accepted messages.
            ShadowOp::Update => self
                .update_as(key, &job.payload, Some(&job.client_id))
                .await
                .map(|_| None),
            ShadowOp::Delete => self
                .delete_as(key, &job.payload, Some(&job.client_id))
                .await
                .map(|_| None),
        };
        match result {
            Ok(Some(doc)) => {
                self.publish_as(
                    &response_topic(&key.thing, key.shadow.as_ref(), job.topic.op.accepted()),
                    &doc,
                    Some(&job.client_id),
                );
            }
            Ok(None) => {}
            Err(r) => self.publish_as(&job.topic.rejected_topic(), &r.payload(), Some(&job.client_id)),
        }
        self.done(&job.client_id);
    }

    fn done(&self, client: &ClientId) {
        let mut m = self.inflight.lock();
        if let Some(n) = m.get_mut(client) {
            *n -= 1;
            if *n == 0 {
                m.remove(client);
            }
        }
    }

    /// Takes an MQTT request from the broker's I/O thread (never blocks).
    fn submit(&self, topic: ShadowTopic, payload: Vec<u8>, client_id: &ClientId) {
        {
            let mut m = self.inflight.lock();
            let n = m.entry(client_id.clone()).or_insert(0);
            if *n >= self.cfg.max_inflight_per_client {
                drop(m);
                let token = request_client_token(&payload, &self.cfg.limits);
                self.metrics.record(topic.op, 429);
                let r = Rejection::new(ShadowError::too_many_requests(), token);
                self.publish(&topic.rejected_topic(), &r.payload());
                return;
            }
            *n += 1;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&topic.thing, &topic.shadow).hash(&mut h);
        let shard = (h.finish() as usize) % self.shards.len();
        let job = Job {
            topic,
            payload,
            client_id: client_id.clone(),
        };
        if let Err(e) = self.shards[shard].try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            let token = request_client_token(&job.payload, &self.cfg.limits);
            self.metrics.record(job.topic.op, 429);
            self.publish(
                &job.topic.rejected_topic(),
                &Rejection::new(ShadowError::too_many_requests(), token).payload(),
            );
            self.done(client_id);
        }
    }
}

/// One shard: runs its requests concurrently, except that requests for the same shadow run one
/// after another in arrival order.
///
/// A request waits for its store round trip (for the embedded store, the commit of its batch),
/// so a worker that ran one request at a time would cap the service at [`SHARDS`] requests per
/// commit however many devices report at once. Instead every request whose shadow is idle
/// starts at once; one for a shadow that is busy waits in that shadow's queue and starts when
/// the request before it has been answered. The worker holds at most `limit` requests
/// (running or waiting; [`SHARD_QUEUE`] in service); beyond that it stops taking requests
/// from its channel, which then fills up (another [`SHARD_QUEUE`]) until the hook answers 429.
/// Each client may also have at most [`ShadowConfig::max_inflight_per_client`] requests
/// waiting.
async fn worker(svc: std::sync::Weak<ShadowService>, mut rx: mpsc::Receiver<Job>, limit: usize) {
    use futures::StreamExt as _;
    use futures::stream::FuturesUnordered;
    use std::collections::VecDeque;

    /// Serves `job` and gives back its shadow's key, so the next request for it can start. A
    /// panic (say, from a store) loses this request only, not the worker and every request it
    /// holds: it is logged and the client's in-flight slot released.
    async fn run(svc: Arc<ShadowService>, job: Job, key: ShadowKey) -> ShadowKey {
        use futures::FutureExt as _;
        let client_id = job.client_id.clone();
        let served = std::panic::AssertUnwindSafe(svc.serve_mqtt(job, &key))
            .catch_unwind()
            .await;
        if served.is_err() {
            tracing::error!(
                shadow = %key.storage_name(),
                client_id = %client_id,
                "a shadow request panicked; it is dropped unanswered"
            );
            svc.done(&client_id);
        }
        key
    }

    let mut running = FuturesUnordered::new();
    // A shadow is busy while it has an entry here; the entry holds the requests waiting for it.
    let mut busy: HashMap<ShadowKey, VecDeque<Job>> = HashMap::new();
    let mut open = true;
    // Requests taken from the channel and not yet answered (running or waiting).
    let mut held = 0usize;
    while open || !running.is_empty() {
        tokio::select! {
            job = rx.recv(), if open && held < limit => {
                let Some(job) = job else {
                    // Every sender is gone: finish what was taken, then stop.
                    open = false;
                    continue;
                };
                held += 1;
                let key = ShadowKey::new(job.topic.thing.clone(), job.topic.shadow.clone());
                match busy.get_mut(&key) {
                    Some(waiting) => waiting.push_back(job),
                    None => {
                        let Some(s) = svc.upgrade() else { return };
                        busy.insert(key.clone(), VecDeque::new());
                        running.push(run(s, job, key));
                    }
                }
            }
            Some(key) = running.next() => {
                held -= 1;
                let next = busy.get_mut(&key).and_then(VecDeque::pop_front);
                match (next, svc.upgrade()) {
                    (Some(job), Some(s)) => running.push(run(s, job, key)),
                    (Some(_), None) => return,
                    (None, _) => {
                        busy.remove(&key);
                    }
                }
            }
        }
    }
}

/// Sees `$aws/things/…/shadow/…` requests on the broker and hands them to the service.
struct ShadowHook {
    svc: std::sync::Weak<ShadowService>,
}

impl MessageHook for ShadowHook {
    /// Only shadow requests (never the service's own responses).
    fn wants(&self, topic: &Topic) -> bool {
        ShadowTopic::parse(topic.as_str()).is_some()
    }

    fn on_publish(&self, msg: &Arc<Message>, origin: Origin<'_>) -> HookOutcome {
        let Some(parsed) = ShadowTopic::parse(msg.topic.as_str()) else {
            return HookOutcome::Continue;
        };
        let Some(svc) = self.svc.upgrade() else {
            return HookOutcome::Continue;
        };
        match parsed {
            Ok(topic) => svc.submit(topic, msg.payload.to_vec(), origin.client_id),
            Err(invalid) => {
                let token = request_client_token(&msg.payload, &svc.cfg.limits);
                let r = Rejection::new(invalid.shadow_error(), token);
                svc.publish(&invalid.rejected_topic(), &r.payload());
            }
        }
        HookOutcome::Consumed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use async_trait::async_trait;
    use shoal_broker::auth::AllowAll;
    use shoal_broker::config::BrokerConfig;
    use shoal_broker::store::MemoryStore;

    use super::*;
    use crate::shadow::{MemoryShadowStore, Mutation};

    /// A memory store whose mutations are held up: for a varying 0-2 ms (long enough that a
    /// worker running requests of one shadow concurrently would apply them out of order), or,
    /// with a gate, until the test adds permits. Counts mutations started and running at once.
    #[derive(Default)]
    struct TestStore {
        inner: MemoryShadowStore,
        gate: Option<tokio::sync::Semaphore>,
        /// The first mutation of this thing panics.
        panic_thing: Option<&'static str>,
        panicked: std::sync::atomic::AtomicBool,
        started: AtomicUsize,
        running: AtomicUsize,
        most: AtomicUsize,
    }

    #[async_trait]
    impl ShadowStore for TestStore {
        fn kind(&self) -> &'static str {
            "test"
        }

        async fn get(&self, key: &ShadowKey) -> Result<Option<StoredShadow>, ShadowStoreError> {
            self.inner.get(key).await
        }

        async fn mutate(&self, key: &ShadowKey, f: Mutation) -> Result<Mutated, ShadowStoreError> {
            if self.panic_thing == Some(key.thing.as_str()) && !self.panicked.swap(true, Ordering::SeqCst) {
                panic!("test store: {} panics", key.thing.as_str());
            }
            let call = self.started.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            match &self.gate {
                Some(gate) => match gate.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return Err(ShadowStoreError::Unavailable("gate closed".into())),
                },
                None => tokio::time::sleep(Duration::from_micros(((call * 7919) % 2000) as u64)).await,
            }
            let r = self.inner.mutate(key, f).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            r
        }

        async fn list_named(
            &self,
            thing: &ThingName,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<ShadowName>, ShadowStoreError> {
            self.inner.list_named(thing, after, limit).await
        }
    }

    async fn test_broker() -> Arc<Broker> {
        let rt = tokio::runtime::Handle::current();
        Broker::start(
            BrokerConfig::default(),
            Arc::new(MemoryStore::default()),
            Arc::new(AllowAll),
            &rt,
        )
        .await
        .unwrap()
    }

    /// Every `/update/accepted` payload, per thing, in publish order.
    #[derive(Default)]
    struct Accepted(parking_lot::Mutex<BTreeMap<String, Vec<Value>>>);

    impl MessageHook for Accepted {
        fn on_publish(&self, msg: &Arc<Message>, _origin: Origin<'_>) -> HookOutcome {
            let topic = msg.topic.as_str();
            if let (Some(rest), true) = (
                topic.strip_prefix("$aws/things/"),
                topic.ends_with("/shadow/update/accepted"),
            ) && let Some((thing, _)) = rest.split_once('/')
                && let Ok(v) = serde_json::from_slice(&msg.payload)
            {
                self.0.lock().entry(thing.to_owned()).or_default().push(v);
            }
            HookOutcome::Continue
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mqtt_requests_of_one_shadow_apply_in_order_while_shadows_run_concurrently() {
        const THINGS: usize = 8;
        const PER_THING: usize = 40;
        let rt = tokio::runtime::Handle::current();
        let broker = test_broker().await;
        let store = Arc::new(TestStore::default());
        let cfg = ShadowConfig::default();
        let svc = ShadowService::start(store.clone(), broker.clone(), cfg, &rt);
        let accepted = Arc::new(Accepted::default());
        broker.add_hook(accepted.clone());

        // Every request goes to one worker (a shard of its own), so the concurrency seen is
        // within a worker, not between shards.
        let (tx, rx) = mpsc::channel(THINGS * PER_THING);
        rt.spawn(worker(Arc::downgrade(&svc), rx, SHARD_QUEUE));
        // Interleaved: n-th request of every thing, then the next.
        for n in 0..PER_THING {
            for t in 0..THINGS {
                let topic = ShadowTopic::parse(&format!("$aws/things/thing-{t}/shadow/update"))
                    .unwrap()
                    .unwrap();
                let job = Job {
                    topic,
                    payload: format!(r#"{{"state":{{"reported":{{"n":{n}}}}}}}"#).into_bytes(),
                    client_id: ClientId::parse(format!("dev-{t}").as_str(), 64).unwrap(),
                };
                tx.send(job).await.unwrap();
            }
        }

        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while accepted.0.lock().values().map(Vec::len).sum::<usize>() < THINGS * PER_THING {
            assert!(
                std::time::Instant::now() < deadline,
                "not every request was answered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen = accepted.0.lock();
        assert_eq!(seen.len(), THINGS);
        for (thing, payloads) in seen.iter() {
            for (i, p) in payloads.iter().enumerate() {
                // Request n of a thing must be its (n+1)-th update, answered n-th.
                assert_eq!(p["version"], json!(i + 1), "{thing}: answer {i}: {p}");
                assert_eq!(p["state"]["reported"]["n"], json!(i), "{thing}: answer {i}: {p}");
            }
        }
        let most = store.most.load(Ordering::SeqCst);
        assert!(
            most > 1,
            "one worker must update different shadows concurrently; at most {most} mutation ran at once"
        );
    }

    /// Records the topic of every message it sees; wants only topics ending in `suffix`.
    struct Tap {
        suffix: &'static str,
        seen: parking_lot::Mutex<Vec<String>>,
    }

    impl MessageHook for Tap {
        fn wants(&self, topic: &Topic) -> bool {
            topic.as_str().ends_with(self.suffix)
        }

        fn on_publish(&self, msg: &Arc<Message>, _origin: Origin<'_>) -> HookOutcome {
            self.seen.lock().push(msg.topic.as_str().to_owned());
            HookOutcome::Continue
        }
    }

    #[tokio::test]
    async fn responses_nobody_would_receive_are_not_published() {
        let rt = tokio::runtime::Handle::current();
        let broker = test_broker().await;
        let svc = ShadowService::start(
            Arc::new(MemoryShadowStore::default()),
            broker.clone(),
            ShadowConfig::default(),
            &rt,
        );
        let accepted = Arc::new(Tap {
            suffix: "/update/accepted",
            seen: Default::default(),
        });
        broker.add_hook(accepted.clone());
        let key = ShadowKey::new(ThingName::parse("lamp").unwrap(), None);
        // desired differs from reported: there is a delta too.
        let body = br#"{"state":{"desired":{"on":true},"reported":{"on":false}}}"#;
        svc.update(&key, body).await.unwrap();
        assert_eq!(
            *accepted.seen.lock(),
            ["$aws/things/lamp/shadow/update/accepted"],
            "only /update/accepted has an audience"
        );

        // Someone wants `/update/documents` now: it is built and published (and every hook
        // sees it); `/update/delta` still has no audience.
        broker.add_hook(Arc::new(Tap {
            suffix: "/update/documents",
            seen: Default::default(),
        }));
        accepted.seen.lock().clear();
        svc.update(&key, br#"{"state":{"reported":{"x":1}}}"#)
            .await
            .unwrap();
        assert_eq!(
            *accepted.seen.lock(),
            [
                "$aws/things/lamp/shadow/update/accepted",
                "$aws/things/lamp/shadow/update/documents"
            ]
        );
    }

    #[tokio::test]
    async fn a_worker_holds_at_most_its_limit_and_leaves_the_rest_in_its_channel() {
        let rt = tokio::runtime::Handle::current();
        let broker = test_broker().await;
        let store = Arc::new(TestStore {
            gate: Some(tokio::sync::Semaphore::new(0)),
            ..TestStore::default()
        });
        let svc = ShadowService::start(store.clone(), broker.clone(), ShadowConfig::default(), &rt);
        let (tx, rx) = mpsc::channel(16);
        rt.spawn(worker(Arc::downgrade(&svc), rx, 3));
        // Five shadows plus a second request for the first: nothing is answered yet.
        for t in [0, 1, 2, 3, 4, 0] {
            let job = Job {
                topic: ShadowTopic::parse(&format!("$aws/things/t{t}/shadow/update"))
                    .unwrap()
                    .unwrap(),
                payload: br#"{"state":{"reported":{"a":1}}}"#.to_vec(),
                client_id: ClientId::parse(format!("c{t}").as_str(), 64).unwrap(),
            };
            tx.send(job).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            store.started.load(Ordering::SeqCst),
            3,
            "three requests taken and running"
        );
        assert_eq!(tx.capacity(), 16 - 3, "the other three wait in the channel");
        // Answer everything: the rest is taken, the second request of t0 after its first.
        if let Some(gate) = &store.gate {
            gate.add_permits(100);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.started.load(Ordering::SeqCst) < 6 || tx.capacity() < 16 {
            assert!(
                std::time::Instant::now() < deadline,
                "the worker did not drain its channel"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let key = ShadowKey::new(ThingName::parse("t0").unwrap(), None);
        loop {
            let version = store.inner.get(&key).await.unwrap().map(|d| d.version);
            if version == Some(2) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "t0 is at version {version:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_panicking_request_loses_only_itself() {
        let rt = tokio::runtime::Handle::current();
        let broker = test_broker().await;
        let store = Arc::new(TestStore {
            panic_thing: Some("boom"),
            ..TestStore::default()
        });
        let cfg = ShadowConfig {
            max_inflight_per_client: 1,
            ..ShadowConfig::default()
        };
        let svc = ShadowService::start(store.clone(), broker.clone(), cfg, &rt);
        let accepted = Arc::new(Accepted::default());
        broker.add_hook(accepted.clone());
        let client = ClientId::parse("dev", 64).unwrap();
        let principal = Principal::anonymous();
        let update = |thing: &str| {
            let topic = Topic::parse(
                format!("$aws/things/{thing}/shadow/update"),
                &TopicLimits::default(),
            )
            .unwrap();
            let body = br#"{"state":{"reported":{"a":1}}}"#.to_vec();
            broker.publish(
                Message::new(topic, body.into(), QoS::AtLeastOnce, false),
                Some(Origin {
                    client_id: &client,
                    principal: &principal,
                }),
            );
        };
        update("boom");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // The client's one slot is released although its request was never answered...
        while !svc.inflight.lock().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the in-flight slot leaked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // ...and the same worker (same shadow, so the same shard) serves the next request.
        update("boom");
        while accepted.0.lock().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the retry was not served");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen = accepted.0.lock();
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["boom"]);
        assert_eq!(
            seen["boom"][0]["version"],
            json!(1),
            "the panicked update wrote nothing"
        );
    }
}
