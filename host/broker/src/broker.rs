//! The broker core: sessions, routing, retained messages and wills, independent of the wire.
//!
//! [`Broker`] is shared (`Arc`) by every ntex worker thread and by the tokio side (HTTP API,
//! sweeper, store writer). All of its methods on the message path are synchronous: they take a
//! few short `parking_lot` locks and never await, so an ntex worker can call them inline. Lock
//! order, to stay deadlock-free: the session map, then one session's state, then the router or
//! the retained tree. Routing reads the router, releases it, and only then locks sessions.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::auth::{Action, Authorizer, Principal};
use crate::config::BrokerConfig;
use crate::hook::{Admission, HookOutcome, MessageHook, Origin};
use crate::message::{ClientId, Message, QoS, StoredMessage, now_ms};
use crate::metrics::BrokerMetrics;
use crate::persist::Persister;
use crate::retained::RetainedTree;
use crate::router::Router;
use crate::session::{ConnCtl, KickReason, Outgoing, Session, SubOptions, subs_from_stored};
use crate::store::{self, QueuedRecord, SharedStore, StoreError, StoreOp, StoredSession};
use crate::topic::{Topic, TopicFilter, TopicLimits};
use crate::watchdog::{self, ArmError, Request, Watchdogs};

/// What a CONNECT asks of the session layer (after authentication).
#[derive(Debug, Clone)]
pub struct ConnectParams {
    /// The client id.
    pub client_id: ClientId,
    /// v5 Clean Start / v3 Clean Session.
    pub clean_start: bool,
    /// Session Expiry Interval (seconds, already capped; `0` ends with the connection).
    pub expiry_secs: u32,
    /// Who connected.
    pub principal: Arc<Principal>,
    /// Protocol level (4 or 5).
    pub protocol: u8,
}

/// A connection attached to its session.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The session.
    pub session: Arc<Session>,
    /// The connection's control block.
    pub ctl: Arc<ConnCtl>,
    /// CONNACK Session Present.
    pub session_present: bool,
}

/// A will to publish when a connection ends without a normal DISCONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    /// The message.
    pub message: Message,
    /// v5 Will Delay Interval in seconds.
    pub delay_secs: u32,
}

/// The result of routing a message.
#[derive(Debug, Clone, Default)]
pub struct Routed {
    /// Sessions it was queued for.
    pub matched: usize,
    /// A store ticket to wait for before acknowledging (an offline persistent session, a
    /// retained message), if any.
    pub durable_ticket: Option<u64>,
    /// A hook consumed it (reserved topic).
    pub consumed: bool,
    /// It was a watchdog request (`$shoal/watchdog/...`) the broker refused, and why.
    pub refused: Option<ArmError>,
}

/// Why a SUBSCRIBE entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The session was discarded meanwhile.
    #[error("session ended")]
    SessionEnded,
    /// Too many subscriptions on this session.
    #[error("subscription limit of {0} reached")]
    TooMany(usize),
}

#[derive(Debug)]
struct DelayedWill {
    due_ms: u64,
    session_id: u64,
    message: Message,
}

#[derive(Debug, Default)]
struct Timers {
    wills: Vec<DelayedWill>,
    /// `(deadline ms, session id)` -> client id, for offline sessions.
    expiring: BTreeMap<(u64, u64), ClientId>,
}

/// A snapshot of one session for the API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    /// Client id.
    pub client_id: String,
    /// Connected now.
    pub online: bool,
    /// Session expiry in seconds.
    pub expiry_secs: u32,
    /// Subscription filters.
    pub subscriptions: Vec<String>,
    /// Messages queued.
    pub queued: usize,
    /// Messages in flight.
    pub inflight: usize,
}

/// The broker core.
pub struct Broker {
    /// Configuration.
    pub cfg: BrokerConfig,
    topic_limits: TopicLimits,
    router: RwLock<Router>,
    sessions: Mutex<HashMap<ClientId, Arc<Session>>>,
    retained: RwLock<RetainedTree>,
    persist: Persister,
    authorizer: Arc<dyn Authorizer>,
    /// Swapped whole when a hook is added (at start-up); read without a lock, so a hook may
    /// publish from inside `on_publish` (the rules engine's inline republish).
    hooks: arc_swap::ArcSwap<Vec<Arc<dyn MessageHook>>>,
    /// Telemetry.
    pub metrics: Arc<BrokerMetrics>,
    ids: AtomicU64,
    timers: Mutex<Timers>,
    store_kind: &'static str,
    closing: AtomicBool,
    watchdogs: Watchdogs,
    /// The client id of the messages watchdogs fire.
    watchdog_id: ClientId,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("store", &self.store_kind)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Loads retained messages and persistent sessions from `store` and starts the store
    /// writer and the sweeper on `rt`.
    pub async fn start(
        cfg: BrokerConfig,
        store: SharedStore,
        authorizer: Arc<dyn Authorizer>,
        rt: &tokio::runtime::Handle,
    ) -> Result<Arc<Broker>, StoreError> {
        let metrics = Arc::new(BrokerMetrics::default());
        let retained_rows = store.load_retained().await?;
        let session_rows = store.load_sessions().await?;
        let store_kind = store.kind();
        let persist = Persister::start(store, metrics.clone(), rt);
        let watchdogs = Watchdogs::new(cfg.limits.max_watchdogs, metrics.watchdogs.clone());
        let broker = Arc::new(Broker {
            topic_limits: cfg.limits.topic_limits(),
            cfg,
            router: RwLock::new(Router::default()),
            sessions: Mutex::new(HashMap::new()),
            retained: RwLock::new(RetainedTree::default()),
            persist,
            authorizer,
            hooks: arc_swap::ArcSwap::from_pointee(Vec::new()),
            metrics,
            // Seeded from the clock so connection generations (the lifecycle events'
            // `versionNumber`) keep rising across restarts.
            ids: AtomicU64::new((now_ms() << 10).max(1)),
            timers: Mutex::new(Timers::default()),
            store_kind,
            closing: AtomicBool::new(false),
            watchdogs,
            watchdog_id: ClientId::parse("$watchdog", usize::MAX).unwrap_or_else(|_| ClientId::generate()),
        });
        broker.load_retained(retained_rows);
        broker.load_sessions(session_rows);
        let weak = Arc::downgrade(&broker);
        let interval = broker.cfg.sweep_interval;
        rt.spawn(sweeper(weak, interval));
        Ok(broker)
    }

    /// Topic limits in force.
    pub fn topic_limits(&self) -> &TopicLimits {
        &self.topic_limits
    }

    /// The authorizer in force.
    pub fn authorizer(&self) -> &Arc<dyn Authorizer> {
        &self.authorizer
    }

    /// Adds a hook that sees every client PUBLISH before routing.
    pub fn add_hook(&self, hook: Arc<dyn MessageHook>) {
        self.hooks.rcu(|current| {
            let mut next = Vec::clone(current);
            next.push(hook.clone());
            next
        });
    }

    /// The store backend's name.
    pub fn store_kind(&self) -> &'static str {
        self.store_kind
    }

    /// Whether the store answers, and its last error.
    pub fn store_health(&self) -> (bool, Option<String>) {
        self.persist.health()
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Relaxed)
    }

    fn load_retained(&self, rows: Vec<(String, Vec<u8>)>) {
        let mut tree = self.retained.write();
        let now = now_ms();
        for (topic, data) in rows {
            match store::decode::<StoredMessage>(&data).map(Message::from_stored) {
                Ok(Ok(m)) if !m.is_expired(now) => tree.set(&topic, Some(Arc::new(m))),
                Ok(Ok(_)) => {
                    self.persist.submit(StoreOp::DeleteRetained { topic });
                }
                Ok(Err(e)) => tracing::warn!(%topic, error = %e, "skipping a stored retained message"),
                Err(e) => tracing::warn!(%topic, error = %e, "skipping a stored retained message"),
            }
        }
        self.metrics.retained.store(tree.len() as i64, Relaxed);
        tracing::info!(count = tree.len(), "retained messages loaded");
    }

    fn load_sessions(&self, rows: Vec<store::LoadedSession>) {
        let now = now_ms();
        let mut loaded = 0usize;
        let mut queued = 0usize;
        for row in rows {
            let stored: StoredSession = match store::decode(&row.data) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(client_id = %row.client_id, error = %e, "dropping an unreadable stored session");
                    self.persist.submit(StoreOp::DeleteSession {
                        client_id: row.client_id,
                    });
                    continue;
                }
            };
            let disconnected = stored.disconnected_ms.unwrap_or(now);
            let deadline = deadline_ms(disconnected, stored.expiry_secs);
            let Ok(client_id) = ClientId::parse(row.client_id.as_str(), usize::MAX) else {
                continue;
            };
            if stored.expiry_secs == 0 || deadline.is_some_and(|d| d <= now) {
                self.persist.submit(StoreOp::DeleteSession {
                    client_id: row.client_id,
                });
                continue;
            }
            let session = Arc::new(Session::new(
                self.next_id(),
                client_id.clone(),
                Arc::new(Principal::anonymous()),
            ));
            {
                let mut st = session.state.lock();
                st.expiry_secs = stored.expiry_secs;
                st.protocol = stored.protocol;
                st.disconnected_ms = Some(disconnected);
                let mut router = self.router.write();
                for (filter, opts) in subs_from_stored(&stored.subscriptions) {
                    router.subscribe(&filter, &session, opts);
                    st.subs.insert(filter.as_str().into(), (filter, opts));
                }
                self.metrics
                    .subscriptions
                    .fetch_add(st.subs.len() as i64, Relaxed);
                for (seq, data) in row.queued {
                    let rec: QueuedRecord = match store::decode(&data) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(client_id = %client_id, seq, error = %e, "dropping an unreadable queued message");
                            continue;
                        }
                    };
                    let Ok(msg) = Message::from_stored(rec.message) else {
                        continue;
                    };
                    st.queue.push_back(Outgoing {
                        seq,
                        msg: Arc::new(msg),
                        qos: crate::message::qos_from_u8(rec.qos),
                        retain: rec.retain,
                        sub_ids: rec.subscription_ids,
                        pid: rec.packet_id.unwrap_or(0),
                        dup: false,
                        released: rec.released,
                        persisted: true,
                    });
                    st.next_seq = st.next_seq.max(seq + 1);
                    queued += 1;
                }
                if let Some(max_pid) = st.queue.iter().map(|o| o.pid).max() {
                    st.next_pid = max_pid.wrapping_add(1).max(1);
                }
            }
            if let Some(d) = deadline {
                self.timers
                    .lock()
                    .expiring
                    .insert((d, session.id), client_id.clone());
            }
            self.sessions.lock().insert(client_id, session);
            self.metrics.sessions.fetch_add(1, Relaxed);
            loaded += 1;
        }
        tracing::info!(sessions = loaded, queued, "persistent sessions loaded");
    }

    // ----- connections -------------------------------------------------------------------

    /// Attaches a new connection to its session: takes over a connected client id (the old
    /// connection is kicked with [`KickReason::SessionTakenOver`]), resumes or replaces the
    /// session, and cancels its pending will `[MQTT-3.1.3-9]`.
    pub fn attach(&self, p: ConnectParams) -> Attached {
        let ctl = Arc::new(ConnCtl::new(self.next_id()));
        let mut sessions = self.sessions.lock();
        if let Some(old) = sessions.get(&p.client_id).cloned() {
            let mut st = old.state.lock();
            if let Some(c) = st.conn.take() {
                tracing::info!(client_id = %p.client_id, "client id taken over by a new connection");
                c.kick(KickReason::SessionTakenOver);
            }
            if !(p.clean_start || st.ended) {
                let was_persistent = st.persistent();
                st.disconnected_ms = None;
                st.conn = Some(ctl.clone());
                st.principal = p.principal;
                st.protocol = p.protocol;
                st.expiry_secs = p.expiry_secs;
                // Unacknowledged messages go back to the front of the queue, to be resent
                // with DUP and their packet ids [MQTT-4.4.0-1].
                while let Some(o) = st.inflight.pop_back() {
                    st.queue.push_front(o);
                }
                if st.persistent() {
                    self.persist.submit(StoreOp::PutSession {
                        client_id: old.client_id.to_string(),
                        data: store::encode(&st.to_stored()),
                    });
                } else if was_persistent {
                    // v5: a resume with expiry 0 makes the session transient.
                    self.persist.submit(StoreOp::DeleteSession {
                        client_id: old.client_id.to_string(),
                    });
                    for o in st.queue.iter_mut() {
                        o.persisted = false;
                    }
                }
                old.set_online(true);
                ctl.notify.notify_one();
                drop(st);
                self.cancel_timers(old.id);
                return Attached {
                    session: old,
                    ctl,
                    session_present: true,
                };
            }
            // Clean start: the old session is discarded.
            self.end_session_locked(&old, st);
            sessions.remove(&p.client_id);
            self.cancel_timers(old.id);
        }
        let session = Arc::new(Session::new(self.next_id(), p.client_id.clone(), p.principal));
        {
            let mut st = session.state.lock();
            st.expiry_secs = p.expiry_secs;
            st.protocol = p.protocol;
            st.conn = Some(ctl.clone());
            if st.persistent() {
                self.persist.submit(StoreOp::PutSession {
                    client_id: p.client_id.to_string(),
                    data: store::encode(&st.to_stored()),
                });
            }
        }
        session.set_online(true);
        sessions.insert(p.client_id, session.clone());
        self.metrics.sessions.fetch_add(1, Relaxed);
        Attached {
            session,
            ctl,
            session_present: false,
        }
    }

    /// Marks `session` ended, removes its subscriptions and stored state. The caller holds the
    /// session map lock and removes the map entry itself.
    fn end_session_locked(
        &self,
        session: &Arc<Session>,
        mut st: parking_lot::MutexGuard<'_, crate::session::SessionState>,
    ) {
        if st.ended {
            return;
        }
        st.ended = true;
        let subs: Vec<TopicFilter> = st.subs.drain().map(|(_, (f, _))| f).collect();
        st.queue.clear();
        st.inflight.clear();
        if st.persistent() || st.disconnected_ms.is_some() {
            self.persist.submit(StoreOp::DeleteSession {
                client_id: session.client_id.to_string(),
            });
        }
        session.set_online(false);
        let mut router = self.router.write();
        for f in &subs {
            router.unsubscribe(f, session.id);
        }
        drop(router);
        drop(st);
        self.metrics.subscriptions.fetch_sub(subs.len() as i64, Relaxed);
        self.metrics.sessions.fetch_sub(1, Relaxed);
    }

    fn cancel_timers(&self, session_id: u64) {
        let mut t = self.timers.lock();
        t.wills.retain(|w| w.session_id != session_id);
        t.expiring.retain(|(_, id), _| *id != session_id);
    }

    /// A connection ended. `will` is the will to publish (already `None` after a normal
    /// DISCONNECT). Ends a transient session; starts the expiry clock of a persistent one.
    pub fn detach(&self, session: &Arc<Session>, generation: u64, will: Option<Will>) {
        let mut sessions = self.sessions.lock();
        let mut st = session.state.lock();
        let current = st.conn.as_ref().is_some_and(|c| c.generation == generation);
        // Some(delay): the session lives on and the will may wait that long.
        let mut will_delay: Option<u32> = None;
        if current && !st.ended {
            st.conn = None;
            session.set_online(false);
            if st.expiry_secs == 0 {
                self.end_session_locked(session, st);
                if sessions
                    .get(&session.client_id)
                    .is_some_and(|s| s.id == session.id)
                {
                    sessions.remove(&session.client_id);
                }
            } else {
                let now = now_ms();
                st.disconnected_ms = Some(now);
                // Inflight messages keep their packet ids across a restart.
                for o in st.inflight.iter().filter(|o| o.persisted) {
                    self.persist.submit(StoreOp::PutQueued {
                        client_id: session.client_id.to_string(),
                        seq: o.seq,
                        data: store::encode(&o.to_record()),
                    });
                }
                self.persist.submit(StoreOp::PutSession {
                    client_id: session.client_id.to_string(),
                    data: store::encode(&st.to_stored()),
                });
                if let Some(d) = deadline_ms(now, st.expiry_secs) {
                    self.timers
                        .lock()
                        .expiring
                        .insert((d, session.id), session.client_id.clone());
                }
                will_delay = Some(st.expiry_secs);
                drop(st);
            }
        } else if !current && !st.ended {
            // Taken over by a connection that resumed the session: a delayed will is
            // cancelled by that reconnection [MQTT-3.1.3-9]; an immediate one still fires.
            will_delay = Some(0);
            drop(st);
            if let Some(w) = &will
                && w.delay_secs > 0
            {
                return;
            }
        } else {
            drop(st);
        }
        drop(sessions);
        if let Some(w) = will {
            let delay = will_delay.map_or(0, |expiry| w.delay_secs.min(expiry));
            if delay > 0 {
                self.timers.lock().wills.push(DelayedWill {
                    due_ms: now_ms() + u64::from(delay) * 1000,
                    session_id: session.id,
                    message: w.message,
                });
            } else {
                self.publish_will(w.message);
            }
        }
    }

    fn publish_will(&self, mut message: Message) {
        BrokerMetrics::inc(&self.metrics.wills_published);
        message.received_ms = now_ms();
        tracing::debug!(topic = %message.topic, "publishing will");
        self.publish(message, None);
    }

    /// Closes the connection of `client_id`, if it is connected.
    pub fn kick(&self, client_id: &ClientId, reason: KickReason) -> bool {
        let sessions = self.sessions.lock();
        let Some(s) = sessions.get(client_id) else {
            return false;
        };
        let st = s.state.lock();
        match &st.conn {
            Some(c) => {
                c.kick(reason);
                true
            }
            None => false,
        }
    }

    /// Closes every connection whose principal matches `pred` (revocation, policy change).
    /// Returns how many were asked to close.
    pub fn kick_where(&self, pred: impl Fn(&Principal) -> bool, reason: KickReason) -> usize {
        let mut n = 0;
        for s in self.sessions.lock().values() {
            let st = s.state.lock();
            if let Some(c) = &st.conn
                && pred(&st.principal)
            {
                c.kick(reason);
                n += 1;
            }
        }
        n
    }

    /// Asks every connection to close (shutdown).
    pub fn kick_all(&self, reason: KickReason) {
        self.closing.store(true, Relaxed);
        for s in self.sessions.lock().values() {
            if let Some(c) = &s.state.lock().conn {
                c.kick(reason);
            }
        }
    }

    /// Waits (at most `timeout`) until every queued store write is committed.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.persist.close(timeout).await
    }

    /// Whether shutdown began.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Relaxed)
    }

    // ----- subscriptions -----------------------------------------------------------------

    /// Adds or replaces a subscription. Returns whether one existed on that filter before.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: TopicFilter,
        opts: SubOptions,
    ) -> Result<bool, SubscribeError> {
        let mut st = session.state.lock();
        if st.ended {
            return Err(SubscribeError::SessionEnded);
        }
        let key: ntex::util::ByteString = filter.as_str().into();
        let existed = st.subs.contains_key(&key);
        if !existed && st.subs.len() >= self.cfg.limits.max_subscriptions_per_session {
            return Err(SubscribeError::TooMany(
                self.cfg.limits.max_subscriptions_per_session,
            ));
        }
        self.router.write().subscribe(&filter, session, opts);
        st.subs.insert(key, (filter, opts));
        if !existed {
            self.metrics.subscriptions.fetch_add(1, Relaxed);
        }
        if st.persistent() {
            self.persist.submit(StoreOp::PutSession {
                client_id: session.client_id.to_string(),
                data: store::encode(&st.to_stored()),
            });
        }
        Ok(existed)
    }

    /// Changes a session's expiry (v5 DISCONNECT with a Session Expiry Interval).
    pub fn set_session_expiry(&self, session: &Arc<Session>, secs: u32) {
        let mut st = session.state.lock();
        let was = st.persistent();
        st.expiry_secs = secs;
        if st.persistent() {
            self.persist.submit(StoreOp::PutSession {
                client_id: session.client_id.to_string(),
                data: store::encode(&st.to_stored()),
            });
        } else if was {
            self.persist.submit(StoreOp::DeleteSession {
                client_id: session.client_id.to_string(),
            });
            let st = &mut *st;
            for o in st.queue.iter_mut().chain(st.inflight.iter_mut()) {
                o.persisted = false;
            }
        }
    }

    /// Removes a subscription. Returns whether there was one.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &TopicFilter) -> bool {
        let mut st = session.state.lock();
        if st.subs.remove(filter.as_str()).is_none() {
            return false;
        }
        self.router.write().unsubscribe(filter, session.id);
        self.metrics.subscriptions.fetch_sub(1, Relaxed);
        if st.persistent() {
            self.persist.submit(StoreOp::PutSession {
                client_id: session.client_id.to_string(),
                data: store::encode(&st.to_stored()),
            });
        }
        true
    }

    /// Queues the retained messages matching `filter` for `session` (RETAIN set
    /// `[MQTT-3.3.1-8]`, QoS downgraded to the subscription's).
    pub fn send_retained(&self, session: &Arc<Session>, filter: &TopicFilter, opts: SubOptions) -> usize {
        let now = now_ms();
        let msgs: Vec<Arc<Message>> = self
            .retained
            .read()
            .matching(filter.filter())
            .into_iter()
            .filter(|m| !m.is_expired(now))
            .collect();
        let sub_ids: Vec<u32> = opts.subscription_id.map(|i| vec![i.get()]).unwrap_or_default();
        let mut n = 0;
        for m in msgs {
            let qos = m.qos.min(opts.qos);
            if self.enqueue(session, &m, qos, true, sub_ids.clone()).0 {
                n += 1;
            }
        }
        n
    }

    /// The retained message on `topic`.
    pub fn retained(&self, topic: &str) -> Option<Arc<Message>> {
        self.retained
            .read()
            .get(topic)
            .filter(|m| !m.is_expired(now_ms()))
    }

    /// Every retained message.
    pub fn retained_all(&self) -> Vec<Arc<Message>> {
        let now = now_ms();
        self.retained
            .read()
            .all()
            .into_iter()
            .filter(|m| !m.is_expired(now))
            .collect()
    }

    // ----- publishing --------------------------------------------------------------------

    /// Whether a message published on `topic` would reach anyone: a matching subscription
    /// (online or not, shared or not), or a hook that might act on it ([`MessageHook::wants`]),
    /// or the broker's own watchdog service. A service may skip building a message for which
    /// this is `false` (say, a shadow's `/update/documents` nobody subscribes to); it is a
    /// snapshot, so a subscription made right after may miss that message, as it would miss
    /// one published just before.
    pub fn has_audience(&self, topic: &Topic) -> bool {
        watchdog::name_of(topic).is_some()
            || self.hooks.load().iter().any(|h| h.wants(topic))
            || self.router.read().has_match(topic)
    }

    /// Back-pressure from the hooks ([`MessageHook::admit`]): a client's publishing path
    /// awaits this before [`Broker::publish`]; it returns at once unless a hook has no room
    /// for a message on `topic`.
    pub async fn admit(&self, topic: &Topic, client_id: &ClientId) {
        let wait: Option<Admission> = self.hooks.load().iter().find_map(|h| h.admit(topic, client_id));
        if let Some(wait) = wait {
            wait.await;
        }
    }

    /// Routes a message: hooks first, then the retained store, then every matching session.
    pub fn publish(&self, msg: Message, origin: Option<Origin<'_>>) -> Routed {
        let msg = Arc::new(msg);
        // Every hook sees the message (a rule may watch shadow requests the shadow service
        // consumes); it is routed only if none consumed it.
        let mut consumed = false;
        if let Some(o) = origin {
            for h in self.hooks.load().iter() {
                consumed |= h.on_publish(&msg, o) == HookOutcome::Consumed;
            }
        }
        if let Some(name) = watchdog::name_of(&msg.topic) {
            // Never delivered: the broker serves these topics itself.
            return Routed {
                consumed: true,
                refused: self.watchdog_request(name, &msg.payload, origin).err(),
                ..Routed::default()
            };
        }
        if consumed {
            return Routed {
                consumed: true,
                ..Routed::default()
            };
        }
        let mut durable_ticket = None;
        if msg.retain {
            durable_ticket = Some(self.set_retained(&msg));
        }
        let targets = self.router.read().targets(&msg.topic, msg.publisher.as_ref());
        let mut matched = 0;
        for t in &targets {
            let qos = msg.qos.min(t.qos);
            let retain = msg.retain && t.retain_as_published;
            let (queued, ticket) = self.enqueue(&t.session, &msg, qos, retain, t.sub_ids.clone());
            if queued {
                matched += 1;
            }
            if ticket.is_some() {
                durable_ticket = durable_ticket.max(ticket);
            }
        }
        Routed {
            matched,
            durable_ticket,
            consumed: false,
            refused: None,
        }
    }

    /// Arms, re-arms or cancels the watchdog `name` (see [`crate::watchdog`]). Without an
    /// origin (a will) there is no principal to check the target against: refused.
    fn watchdog_request(
        &self,
        name: &str,
        payload: &[u8],
        origin: Option<Origin<'_>>,
    ) -> Result<(), ArmError> {
        let result = match origin {
            Some(o) => self.watchdog_request_from(name, payload, o),
            None => Err(ArmError::NoOrigin),
        };
        if let Err(e) = &result {
            let n = self.metrics.watchdogs_rejected.fetch_add(1, Relaxed);
            if n < 10 || n.is_power_of_two() {
                let client_id = origin.map_or("-", |o| o.client_id.as_str());
                tracing::warn!(client_id, watchdog = name, error = %e, "watchdog request refused");
            }
        }
        result
    }

    fn watchdog_request_from(&self, name: &str, payload: &[u8], o: Origin<'_>) -> Result<(), ArmError> {
        let arm = match watchdog::parse(name, payload, &self.topic_limits)? {
            Request::Cancel => {
                self.watchdogs.cancel(name);
                return Ok(());
            }
            Request::Arm(arm) => arm,
        };
        let target = Action::Publish {
            topic: &arm.topic,
            retain: arm.retain,
        };
        if !self.authorizer.authorize(o.principal, o.client_id, target) {
            return Err(ArmError::Forbidden(arm.topic.as_str().to_owned()));
        }
        self.watchdogs
            .arm(name, arm, o.principal.attributes.clone(), now_ms())
    }

    /// When the watchdog `name` fires (broker clock, ms since the epoch), if it is armed.
    pub fn watchdog_deadline(&self, name: &str) -> Option<u64> {
        self.watchdogs.deadline(name)
    }

    /// Publishes the watchdogs that are due.
    fn fire_watchdogs(&self, now: u64) {
        for due in self.watchdogs.take_due(now) {
            BrokerMetrics::inc(&self.metrics.watchdogs_fired);
            tracing::debug!(watchdog = %due.name, topic = %due.arm.topic, "watchdog fired");
            let principal = Principal {
                id: Arc::from("watchdog"),
                attributes: due.attributes,
                grants: None,
            };
            let mut msg = Message::new(due.arm.topic, due.arm.payload, due.arm.qos, due.arm.retain);
            msg.received_ms = now;
            self.publish(
                msg,
                Some(Origin {
                    client_id: &self.watchdog_id,
                    principal: &principal,
                }),
            );
        }
    }

    fn set_retained(&self, msg: &Arc<Message>) -> u64 {
        let mut tree = self.retained.write();
        let topic = msg.topic.as_str();
        let ticket = if msg.payload.is_empty() {
            tree.set(topic, None);
            self.persist.submit(StoreOp::DeleteRetained {
                topic: topic.to_owned(),
            })
        } else {
            tree.set(topic, Some(msg.clone()));
            self.persist.submit(StoreOp::PutRetained {
                topic: topic.to_owned(),
                data: store::encode(&msg.to_stored()),
            })
        };
        self.metrics.retained.store(tree.len() as i64, Relaxed);
        ticket
    }

    /// Waits until a store ticket is committed (bounded by the configured timeout).
    /// While the store is known to be down the wait is skipped: the message is held in memory
    /// and written when the store is back, and publishers are not stalled by the outage.
    pub async fn wait_durable(&self, ticket: u64) -> bool {
        if self.metrics.store_up.load(Relaxed) == 0 {
            return false;
        }
        let ok = self.persist.wait(ticket, self.cfg.durable_ack_timeout).await;
        if !ok {
            tracing::warn!(
                ticket,
                "store did not confirm a write in time; acknowledging anyway"
            );
        }
        ok
    }

    /// Queues one message for one session. Returns whether it was queued, and a store ticket
    /// when the session is offline and persistent.
    fn enqueue(
        &self,
        s: &Arc<Session>,
        msg: &Arc<Message>,
        qos: QoS,
        retain: bool,
        sub_ids: Vec<u32>,
    ) -> (bool, Option<u64>) {
        let mut st = s.state.lock();
        if st.ended {
            return (false, None);
        }
        if !self
            .authorizer
            .authorize(&st.principal, &s.client_id, Action::Receive { topic: &msg.topic })
        {
            BrokerMetrics::inc(&self.metrics.dropped_unauthorized);
            return (false, None);
        }
        let online = st.conn.is_some();
        if !online && qos == QoS::AtMostOnce {
            return (false, None);
        }
        if st.queue.len() >= self.cfg.limits.max_queued_messages {
            BrokerMetrics::inc(&self.metrics.dropped_queue_full);
            st.dropped_since_log += 1;
            // One line per session per 10 s at most, with the count since the last one.
            let now = now_ms();
            if now.saturating_sub(st.drop_logged_ms) >= 10_000 {
                tracing::warn!(
                    client_id = %s.client_id,
                    limit = self.cfg.limits.max_queued_messages,
                    dropped = st.dropped_since_log,
                    "session queue full; dropping new messages"
                );
                st.drop_logged_ms = now;
                st.dropped_since_log = 0;
            }
            return (false, None);
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let persisted = st.persistent() && qos != QoS::AtMostOnce;
        let mut o = Outgoing {
            seq,
            msg: msg.clone(),
            qos,
            retain,
            sub_ids,
            pid: 0,
            dup: false,
            released: false,
            persisted,
        };
        let mut ticket = None;
        if persisted {
            let t = self.persist.submit(StoreOp::PutQueued {
                client_id: s.client_id.to_string(),
                seq,
                data: store::encode(&o.to_record()),
            });
            if !online {
                ticket = Some(t);
            }
        }
        o.persisted = persisted;
        st.queue.push_back(o);
        if let Some(c) = &st.conn {
            c.notify.notify_one();
        }
        (true, ticket)
    }

    // ----- delivery (called by the connection's writer task) -----------------------------

    /// Takes up to `max` messages to send now, moving QoS 1/2 ones into flight (packet ids
    /// assigned) while fewer than `window` are in flight. Expired messages are dropped
    /// `[MQTT-3.3.2-5]`. Returns `None` when this connection is no longer the session's.
    pub(crate) fn take_sendable(
        &self,
        s: &Session,
        generation: u64,
        window: usize,
        max: usize,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        let mut st = s.state.lock();
        if st.ended || !st.conn.as_ref().is_some_and(|c| c.generation == generation) {
            return false;
        }
        let now = now_ms();
        while out.len() < max {
            let Some(front) = st.queue.front() else { break };
            if front.msg.is_expired(now) {
                if let Some(o) = st.queue.pop_front() {
                    BrokerMetrics::inc(&self.metrics.dropped_expired);
                    self.forget(s, &o);
                }
                continue;
            }
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= window {
                break;
            }
            let Some(mut o) = st.queue.pop_front() else { break };
            if o.qos != QoS::AtMostOnce {
                o.dup = o.pid != 0;
                if o.pid == 0 {
                    o.pid = st.alloc_pid();
                }
                st.inflight.push_back(o.clone());
            }
            out.push(o);
        }
        true
    }

    fn forget(&self, s: &Session, o: &Outgoing) {
        if o.persisted {
            self.persist.submit(StoreOp::DeleteQueued {
                client_id: s.client_id.to_string(),
                seq: o.seq,
            });
        }
    }

    /// The client acknowledged packet `pid` (PUBACK, or PUBCOMP for QoS 2).
    pub(crate) fn acked(&self, s: &Session, pid: u16) {
        let mut st = s.state.lock();
        if let Some(i) = st.inflight.iter().position(|o| o.pid == pid) {
            if let Some(o) = st.inflight.remove(i) {
                self.forget(s, &o);
            }
            // The writer may be waiting for room in the window, only if something is queued
            // (with nothing queued, the next enqueue wakes it): most acknowledgements find an
            // empty queue, and a wake-up per PUBACK would take the session lock for nothing.
            if let Some(c) = &st.conn
                && !st.queue.is_empty()
            {
                c.notify.notify_one();
            }
        }
    }

    /// QoS 2: PUBREC received for `pid`.
    pub(crate) fn released(&self, s: &Session, pid: u16) {
        let mut st = s.state.lock();
        if let Some(o) = st.inflight.iter_mut().find(|o| o.pid == pid) {
            o.released = true;
        }
    }

    /// A message could not be sent (too large for the client): forget it.
    pub(crate) fn discard(&self, s: &Session, o: &Outgoing) {
        if o.qos != QoS::AtMostOnce {
            let mut st = s.state.lock();
            if let Some(i) = st.inflight.iter().position(|x| x.pid == o.pid) {
                st.inflight.remove(i);
            }
            if let Some(c) = &st.conn {
                c.notify.notify_one();
            }
        }
        self.forget(s, o);
    }

    // ----- housekeeping ------------------------------------------------------------------

    fn sweep(&self) {
        let now = now_ms();
        self.fire_watchdogs(now);
        let (wills, expired) = {
            let mut t = self.timers.lock();
            let mut wills = Vec::new();
            let mut i = 0;
            while i < t.wills.len() {
                if t.wills[i].due_ms <= now {
                    wills.push(t.wills.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            let mut expired = Vec::new();
            while let Some(entry) = t.expiring.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((_, id), cid) = entry.remove_entry();
                expired.push((id, cid));
            }
            (wills, expired)
        };
        for w in wills {
            self.publish_will(w.message);
        }
        for (id, cid) in expired {
            let mut sessions = self.sessions.lock();
            let Some(s) = sessions.get(&cid).cloned() else {
                continue;
            };
            if s.id != id {
                continue;
            }
            let st = s.state.lock();
            if st.conn.is_some() {
                continue;
            }
            tracing::info!(client_id = %cid, "session expired");
            self.end_session_locked(&s, st);
            sessions.remove(&cid);
        }
    }

    /// Number of sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// A snapshot of one session.
    pub fn session_info(&self, client_id: &str) -> Option<SessionInfo> {
        let sessions = self.sessions.lock();
        let cid = ClientId::parse(client_id, usize::MAX).ok()?;
        let s = sessions.get(&cid)?;
        let st = s.state.lock();
        Some(SessionInfo {
            client_id: client_id.to_owned(),
            online: st.conn.is_some(),
            expiry_secs: st.expiry_secs,
            subscriptions: st.subs.values().map(|(f, _)| f.to_string()).collect(),
            queued: st.queue.len(),
            inflight: st.inflight.len(),
        })
    }
}

fn deadline_ms(from_ms: u64, expiry_secs: u32) -> Option<u64> {
    (expiry_secs != u32::MAX).then(|| from_ms + u64::from(expiry_secs) * 1000)
}

async fn sweeper(broker: Weak<Broker>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(b) = broker.upgrade() else { return };
        b.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AllowAll;
    use crate::store::{BrokerStore, MemoryStore};
    use ntex::util::Bytes;

    async fn broker_with(store: Arc<MemoryStore>, tweak: impl FnOnce(&mut BrokerConfig)) -> Arc<Broker> {
        let mut cfg = BrokerConfig {
            sweep_interval: Duration::from_millis(20),
            ..BrokerConfig::default()
        };
        tweak(&mut cfg);
        Broker::start(cfg, store, Arc::new(AllowAll), &tokio::runtime::Handle::current())
            .await
            .unwrap()
    }

    fn params(id: &str, clean: bool, expiry: u32) -> ConnectParams {
        ConnectParams {
            client_id: ClientId::parse(id, 128).unwrap(),
            clean_start: clean,
            expiry_secs: expiry,
            principal: Arc::new(Principal::anonymous()),
            protocol: 5,
        }
    }

    fn msg(b: &Broker, topic: &str, payload: &str, qos: QoS) -> Message {
        Message::new(
            crate::topic::Topic::parse(topic, b.topic_limits()).unwrap(),
            Bytes::copy_from_slice(payload.as_bytes()),
            qos,
            false,
        )
    }

    fn filter(b: &Broker, f: &str) -> TopicFilter {
        TopicFilter::parse(f, b.topic_limits()).unwrap()
    }

    fn drain(b: &Broker, a: &Attached) -> Vec<Outgoing> {
        let mut out = Vec::new();
        assert!(b.take_sendable(&a.session, a.ctl.generation, 100, 1000, &mut out));
        out
    }

    #[tokio::test]
    async fn offline_persistent_delivery_is_durable_before_ack() {
        let store = Arc::new(MemoryStore::default());
        let b = broker_with(store.clone(), |_| {}).await;
        let a = b.attach(params("sub", false, 3600));
        b.subscribe(&a.session, filter(&b, "t/#"), SubOptions::qos(QoS::AtLeastOnce))
            .unwrap();
        b.detach(&a.session, a.ctl.generation, None);
        let routed = b.publish(msg(&b, "t/1", "x", QoS::AtLeastOnce), None);
        assert_eq!(routed.matched, 1);
        let ticket = routed
            .durable_ticket
            .expect("offline persistent delivery needs a ticket");
        assert!(b.wait_durable(ticket).await);
        let sessions = store.load_sessions().await.unwrap();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].queued.len(), 1);
        // QoS 0 is not queued for an offline session.
        assert_eq!(b.publish(msg(&b, "t/1", "y", QoS::AtMostOnce), None).matched, 0);
    }

    #[tokio::test]
    async fn takeover_kicks_and_resume_resends_with_dup() {
        let store = Arc::new(MemoryStore::default());
        let b = broker_with(store, |_| {}).await;
        let a = b.attach(params("c", false, 3600));
        b.subscribe(&a.session, filter(&b, "x"), SubOptions::qos(QoS::AtLeastOnce))
            .unwrap();
        b.publish(msg(&b, "x", "1", QoS::AtLeastOnce), None);
        let sent = drain(&b, &a);
        assert_eq!(sent.len(), 1);
        assert!(!sent[0].dup);
        let pid = sent[0].pid;
        // A second connection with the same id and clean start 0 takes over.
        let a2 = b.attach(params("c", false, 3600));
        assert!(a2.session_present);
        assert_eq!(a.ctl.kicked(), Some(KickReason::SessionTakenOver));
        // The old connection's end does not detach the new one.
        b.detach(&a.session, a.ctl.generation, None);
        assert!(a2.session.is_online());
        let resent = drain(&b, &a2);
        assert_eq!(resent.len(), 1);
        assert!(resent[0].dup, "[MQTT-4.4.0-1] resend with DUP");
        assert_eq!(resent[0].pid, pid, "same packet id on resend");
        b.acked(&a2.session, pid);
        assert_eq!(a2.session.pending_count(), 0);
    }

    #[tokio::test]
    async fn clean_start_discards_the_old_session() {
        let store = Arc::new(MemoryStore::default());
        let b = broker_with(store, |_| {}).await;
        let a = b.attach(params("c", false, 3600));
        b.subscribe(&a.session, filter(&b, "x"), SubOptions::qos(QoS::AtLeastOnce))
            .unwrap();
        b.detach(&a.session, a.ctl.generation, None);
        let a2 = b.attach(params("c", true, 0));
        assert!(!a2.session_present);
        assert_eq!(b.publish(msg(&b, "x", "1", QoS::AtLeastOnce), None).matched, 0);
        assert_eq!(b.metrics.subscriptions.load(Relaxed), 0);
        b.detach(&a2.session, a2.ctl.generation, None);
        assert_eq!(b.session_count(), 0);
    }

    /// Who published each message on `alarm/...`, as hooks see it: (client id, thing name).
    #[derive(Default)]
    struct AlarmOrigins(Mutex<Vec<(String, Option<String>)>>);

    impl MessageHook for AlarmOrigins {
        fn on_publish(&self, msg: &Arc<Message>, origin: Origin<'_>) -> HookOutcome {
            if msg.topic.as_str().starts_with("alarm/") {
                let thing = origin.principal.attributes.get("thingName").cloned();
                self.0.lock().push((origin.client_id.as_str().to_owned(), thing));
            }
            HookOutcome::Continue
        }
    }

    #[tokio::test]
    async fn watchdogs_fire_unless_rearmed_and_are_never_delivered() {
        let b = broker_with(Arc::new(MemoryStore::default()), |_| {}).await;
        let origins = Arc::new(AlarmOrigins::default());
        b.add_hook(origins.clone());
        let watcher = b.attach(params("watcher", true, 0));
        for f in ["alarm/#", "$shoal/#"] {
            b.subscribe(&watcher.session, filter(&b, f), SubOptions::qos(QoS::AtLeastOnce))
                .unwrap();
        }
        let id = ClientId::parse("dev", 64).unwrap();
        let mut principal = Principal::anonymous();
        principal.attributes.insert("thingName".into(), "truck-7".into());
        let origin = Origin {
            client_id: &id,
            principal: &principal,
        };
        let arm = |timeout: u64| {
            msg(
                &b,
                "$shoal/watchdog/dev/silence",
                &format!(
                    r#"{{"timeoutMs":{timeout},"topic":"alarm/dev","payload":{{"quiet":true}},"qos":1}}"#
                ),
                QoS::AtMostOnce,
            )
        };
        let r = b.publish(arm(1000), Some(origin));
        assert!(r.consumed && r.refused.is_none() && r.matched == 0);
        let first = b.watchdog_deadline("dev/silence").unwrap();
        // Re-armed before it is due: it moves, and does not fire at the first deadline.
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.publish(arm(1000), Some(origin));
        assert!(b.watchdog_deadline("dev/silence").unwrap() >= first + 450);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(drain(&b, &watcher).is_empty(), "neither delivered nor fired yet");
        tokio::time::sleep(Duration::from_millis(900)).await;
        let got = drain(&b, &watcher);
        assert_eq!(got.len(), 1, "fired once");
        assert_eq!(got[0].msg.topic.as_str(), "alarm/dev");
        assert_eq!(&got[0].msg.payload[..], br#"{"quiet":true}"#);
        assert_eq!(got[0].msg.qos, QoS::AtLeastOnce);
        assert_eq!(b.watchdog_deadline("dev/silence"), None);
        assert_eq!(b.metrics.watchdogs_fired.load(Relaxed), 1);
        // Hooks (the rules) see it from `$watchdog`, with the arming device's thing name.
        assert_eq!(
            *origins.0.lock(),
            [("$watchdog".to_owned(), Some("truck-7".to_owned()))]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(drain(&b, &watcher).is_empty(), "fires once");
        // An empty payload cancels.
        b.publish(arm(100), Some(origin));
        b.publish(
            msg(&b, "$shoal/watchdog/dev/silence", "", QoS::AtMostOnce),
            Some(origin),
        );
        assert_eq!(b.watchdog_deadline("dev/silence"), None);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(drain(&b, &watcher).is_empty(), "cancelled");
        // A bad arming is refused and leaves the armed one alone.
        b.publish(arm(10_000), Some(origin));
        let bad = b.publish(
            msg(
                &b,
                "$shoal/watchdog/dev/silence",
                r#"{"timeoutMs":"soon","topic":"x"}"#,
                QoS::AtMostOnce,
            ),
            Some(origin),
        );
        assert!(bad.refused.unwrap().to_string().contains("timeoutMs"));
        assert!(b.watchdog_deadline("dev/silence").is_some());
        assert_eq!(b.metrics.watchdogs_rejected.load(Relaxed), 1);
        assert!(b.metrics.render().contains("shoal_watchdogs 1\n"));
        // A will (no origin) neither arms nor is delivered.
        let will = b.publish(
            msg(
                &b,
                "$shoal/watchdog/dev/will",
                r#"{"timeoutMs":1,"topic":"alarm/w"}"#,
                QoS::AtMostOnce,
            ),
            None,
        );
        assert_eq!(will.refused, Some(ArmError::NoOrigin));
        assert!(will.consumed && will.matched == 0);
        assert_eq!(b.watchdog_deadline("dev/will"), None);
    }

    #[tokio::test]
    async fn the_watchdog_limit_holds() {
        let b = broker_with(Arc::new(MemoryStore::default()), |c| c.limits.max_watchdogs = 1).await;
        let id = ClientId::parse("dev", 64).unwrap();
        let principal = Principal::anonymous();
        let origin = Origin {
            client_id: &id,
            principal: &principal,
        };
        let arm = |name: &str| {
            let body = r#"{"timeoutMs":60000,"topic":"a"}"#;
            let topic = format!("$shoal/watchdog/{name}");
            b.publish(msg(&b, &topic, body, QoS::AtMostOnce), Some(origin))
                .refused
        };
        assert_eq!(arm("one"), None);
        assert_eq!(arm("two"), Some(ArmError::Full(1)));
        assert_eq!(arm("one"), None, "re-arming a held name is allowed at the limit");
    }

    #[tokio::test]
    async fn session_expiry_and_delayed_will() {
        let store = Arc::new(MemoryStore::default());
        let b = broker_with(store.clone(), |_| {}).await;
        let watcher = b.attach(params("watcher", true, 0));
        b.subscribe(
            &watcher.session,
            filter(&b, "will/#"),
            SubOptions::qos(QoS::AtLeastOnce),
        )
        .unwrap();
        let a = b.attach(params("dev", true, 1));
        let will = Will {
            message: msg(&b, "will/dev", "gone", QoS::AtLeastOnce),
            delay_secs: 1,
        };
        b.detach(&a.session, a.ctl.generation, Some(will));
        assert_eq!(drain(&b, &watcher).len(), 0, "will is delayed");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let got = drain(&b, &watcher);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].msg.payload[..], b"gone");
        assert_eq!(b.session_count(), 1, "expired session removed");
        assert!(store.load_sessions().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn reconnect_within_will_delay_cancels_the_will() {
        let store = Arc::new(MemoryStore::default());
        let b = broker_with(store, |_| {}).await;
        let watcher = b.attach(params("watcher", true, 0));
        b.subscribe(
            &watcher.session,
            filter(&b, "will/#"),
            SubOptions::qos(QoS::AtLeastOnce),
        )
        .unwrap();
        let a = b.attach(params("dev", false, 60));
        let will = Will {
            message: msg(&b, "will/dev", "gone", QoS::AtLeastOnce),
            delay_secs: 1,
        };
        b.detach(&a.session, a.ctl.generation, Some(will));
        let _a2 = b.attach(params("dev", false, 60));
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(
            drain(&b, &watcher).len(),
            0,
            "[MQTT-3.1.3-9] will cancelled by reconnect"
        );
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts() {
        let store = Arc::new(MemoryStore::default());
        let b = broker_with(store, |c| c.limits.max_queued_messages = 3).await;
        let a = b.attach(params("slow", true, 0));
        b.subscribe(&a.session, filter(&b, "x"), SubOptions::qos(QoS::AtMostOnce))
            .unwrap();
        for i in 0..5 {
            b.publish(msg(&b, "x", &i.to_string(), QoS::AtMostOnce), None);
        }
        assert_eq!(b.metrics.dropped_queue_full.load(Relaxed), 2);
        let got: Vec<_> = drain(&b, &a).iter().map(|o| o.msg.payload.clone()).collect();
        assert_eq!(
            got,
            vec![
                Bytes::from_static(b"0"),
                Bytes::from_static(b"1"),
                Bytes::from_static(b"2")
            ]
        );
    }

    #[tokio::test]
    async fn restart_reloads_sessions_and_retained() {
        let store = Arc::new(MemoryStore::default());
        {
            let b = broker_with(store.clone(), |_| {}).await;
            let a = b.attach(params("p", false, 3600));
            b.subscribe(&a.session, filter(&b, "s/+"), SubOptions::qos(QoS::ExactlyOnce))
                .unwrap();
            b.detach(&a.session, a.ctl.generation, None);
            for i in 0..3 {
                b.publish(msg(&b, "s/a", &i.to_string(), QoS::ExactlyOnce), None);
            }
            let mut r = msg(&b, "s/r", "kept", QoS::AtLeastOnce);
            r.retain = true;
            b.publish(r, None);
            assert!(b.flush(Duration::from_secs(2)).await);
        }
        let b = broker_with(store, |_| {}).await;
        assert_eq!(
            b.retained("s/r").map(|m| m.payload.clone()),
            Some(Bytes::from_static(b"kept"))
        );
        let a = b.attach(params("p", false, 3600));
        assert!(a.session_present);
        let got: Vec<_> = drain(&b, &a)
            .iter()
            .map(|o| (o.qos, o.msg.payload.clone()))
            .collect();
        assert_eq!(got.len(), 4, "3 queued + the retained one routed live: {got:?}");
        assert!(got[..3].iter().all(|(q, _)| *q == QoS::ExactlyOnce));
    }
}
