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
//! different shadows proceed in parallel. Each client may have at most
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
    ShadowStoreError, ShadowTopic, StoredShadow, ThingName, UpdateOutcome, UpdateRequest, apply_delete,
    get_response, request_client_token, response_topic,
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
            rt.spawn(worker(Arc::downgrade(&svc), rx));
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
        let unlimited = TopicLimits {
            max_length: usize::MAX,
            max_levels: usize::MAX,
        };
        match Topic::parse(topic.to_owned(), &unlimited) {
            Ok(t) => {
                let body = serde_json::to_vec(payload).unwrap_or_default();
                let origin = Origin {
                    client_id: requester.unwrap_or(&self.service_id),
                    principal: &self.principal,
                };
                self.broker.publish(
                    Message::new(t, body.into(), QoS::AtLeastOnce, false),
                    Some(origin),
                );
            }
            Err(e) => tracing::warn!(%topic, error = %e, "cannot publish a shadow response"),
        }
    }

    /// Update (`POST /things/{thing}/shadow`, `…/update`): the `/update/accepted` payload.
    /// Accepted, delta and documents messages are published for every caller.
    pub async fn update(&self, key: &ShadowKey, body: &[u8]) -> Result<Value, Rejection> {
        self.update_as(key, body, None).await
    }

    /// [`ShadowService::update`] on behalf of `requester`, whose client id the published
    /// responses carry as their origin (see [`ShadowService::publish_as`]).
    pub async fn update_as(
        &self,
        key: &ShadowKey,
        body: &[u8],
        requester: Option<&ClientId>,
    ) -> Result<Value, Rejection> {
        let r = self.apply_update(key, body, requester).await;
        self.metrics.answered(ShadowOp::Update, &r);
        r
    }

    async fn apply_update(
        &self,
        key: &ShadowKey,
        body: &[u8],
        requester: Option<&ClientId>,
    ) -> Result<Value, Rejection> {
        let limits = self.cfg.limits;
        let req = UpdateRequest::parse(body, &limits).map_err(|r| Rejection::new(r.error, r.client_token))?;
        let token = req.client_token().map(str::to_owned);
        let now = now_secs();
        let req = Arc::new(req);
        let slot: Arc<Mutex<Option<UpdateOutcome>>> = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let mutation: super::Mutation = Arc::new(move |cur: Option<&StoredShadow>| {
            let o = super::apply_update(cur, &req, now, &limits)?;
            let doc = o.shadow.clone();
            *out.lock() = Some(o);
            Ok(doc)
        });
        match self.store.mutate(key, mutation).await {
            Ok(Mutated::Applied { .. }) => {
                let Some(o) = slot.lock().take() else {
                    return Err(Rejection::new(ShadowError::internal(), token));
                };
                let (thing, shadow) = (&key.thing, key.shadow.as_ref());
                self.publish_as(
                    &response_topic(thing, shadow, ShadowResponse::UpdateAccepted),
                    &o.accepted,
                    requester,
                );
                if let Some(delta) = &o.delta {
                    self.publish_as(
                        &response_topic(thing, shadow, ShadowResponse::UpdateDelta),
                        delta,
                        requester,
                    );
                }
                self.publish_as(
                    &response_topic(thing, shadow, ShadowResponse::UpdateDocuments),
                    &o.documents,
                    requester,
                );
                Ok(o.accepted)
            }
            Ok(Mutated::Rejected(e)) => Err(Rejection::new(e, token)),
            Err(e) => Err(store_failure(e, token)),
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
    async fn serve_mqtt(&self, job: Job) {
        let key = ShadowKey::new(job.topic.thing.clone(), job.topic.shadow.clone());
        let result = match job.topic.op {
            ShadowOp::Get => self.get(&key, &job.payload).await.map(Some),
            // Update and delete publish their own accepted messages.
            ShadowOp::Update => self
                .update_as(&key, &job.payload, Some(&job.client_id))
                .await
                .map(|_| None),
            ShadowOp::Delete => self
                .delete_as(&key, &job.payload, Some(&job.client_id))
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
        let rejected = topic.rejected_topic();
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
                &rejected,
                &Rejection::new(ShadowError::too_many_requests(), token).payload(),
            );
            self.done(client_id);
        }
    }
}

async fn worker(svc: std::sync::Weak<ShadowService>, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.recv().await {
        let Some(s) = svc.upgrade() else { return };
        s.serve_mqtt(job).await;
    }
}

/// Sees `$aws/things/…/shadow/…` requests on the broker and hands them to the service.
struct ShadowHook {
    svc: std::sync::Weak<ShadowService>,
}

impl MessageHook for ShadowHook {
    fn on_publish(&self, msg: &Arc<Message>, origin: Origin<'_>) -> HookOutcome {
        if !msg.topic.as_str().starts_with("$aws/things/") {
            return HookOutcome::Continue;
        }
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
