//! One client connection: its state on the ntex worker that owns it, and the writer task that
//! drains its session queue into the socket.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::num::{NonZeroU16, NonZeroU32};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use ntex::util::ByteString;
use ntex_mqtt::{v3, v5};

use crate::auth::Principal;
use crate::broker::{Broker, Will};
use crate::lifecycle::{self, DisconnectReason};
use crate::message::{ClientId, QoS, now_ms};
use crate::metrics::BrokerMetrics;
use crate::session::{ConnCtl, KickReason, Outgoing, Session};

/// Messages taken from the session queue per lock.
const BATCH: usize = 64;

/// Per-connection state (the ntex session state). Dropping it (when ntex ends the connection)
/// detaches the session and fires the will.
pub struct Conn {
    pub(crate) broker: Arc<Broker>,
    pub(crate) session: Arc<Session>,
    pub(crate) ctl: Arc<ConnCtl>,
    pub(crate) client_id: ClientId,
    pub(crate) principal: Arc<Principal>,
    pub(crate) will: RefCell<Option<Will>>,
    /// v5: the client asked for no reason strings outside CONNACK/DISCONNECT.
    pub(crate) problem_info: bool,
    /// v5: CONNECT carried a Session Expiry Interval of 0 `[MQTT-3.14.2-2]`.
    pub(crate) zero_expiry_at_connect: bool,
    pub(crate) listener: &'static str,
    pub(crate) protocol_errors: Cell<u32>,
    /// Keeps PUBLISH packets routed in arrival order (see [`Turn`]).
    pub(crate) order: PublishOrder,
    /// Why the connection is ending, once known (the first reason wins).
    pub(crate) ending: Cell<Option<DisconnectReason>>,
}

impl Conn {
    /// Whether this client may publish to `topic`: never to the broker's own `$aws/events/`,
    /// elsewhere as its policy says.
    pub(crate) fn may_publish(&self, topic: &crate::topic::Topic, retain: bool) -> bool {
        !lifecycle::is_reserved(topic)
            && self.broker.authorizer().authorize(
                &self.principal,
                &self.client_id,
                crate::auth::Action::Publish { topic, retain },
            )
    }

    /// Records why the connection ends, unless a reason was recorded already.
    pub(crate) fn ending(&self, reason: DisconnectReason) {
        if self.ending.get().is_none() {
            self.ending.set(Some(reason));
        }
    }
}

/// ntex-mqtt runs publish handlers of one connection concurrently, and a payload that spans
/// socket reads is streamed: a handler waiting for its payload would otherwise be overtaken by
/// the next packet's handler, breaking ordered delivery `[MQTT-4.6.0-6]`. Each handler takes a
/// turn number when it starts (in packet order) and routes only when every earlier turn ended.
#[derive(Debug, Default)]
pub(crate) struct PublishOrder {
    next: Cell<u64>,
    done: Cell<u64>,
    /// Turns that ended before all earlier ones did.
    ended_early: RefCell<std::collections::BTreeSet<u64>>,
    wake: tokio::sync::Notify,
}

/// One PUBLISH handler's place in line; dropping it ends the turn.
pub(crate) struct Turn<'a> {
    order: &'a PublishOrder,
    seq: u64,
}

impl PublishOrder {
    /// Takes the next turn (call first thing in the handler).
    pub(crate) fn take(&self) -> Turn<'_> {
        let seq = self.next.get();
        self.next.set(seq + 1);
        Turn { order: self, seq }
    }
}

impl Turn<'_> {
    /// Waits until every earlier PUBLISH of this connection was routed or refused.
    pub(crate) async fn wait(&self) {
        while self.order.done.get() != self.seq {
            self.order.wake.notified().await;
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let o = self.order;
        if o.done.get() == self.seq {
            let mut next = self.seq + 1;
            let mut early = o.ended_early.borrow_mut();
            while early.remove(&next) {
                next += 1;
            }
            o.done.set(next);
        } else {
            o.ended_early.borrow_mut().insert(self.seq);
        }
        o.wake.notify_waiters();
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let will = self.will.borrow_mut().take();
        self.broker.detach(&self.session, self.ctl.generation, will);
        let reason = match self.ctl.kicked() {
            Some(KickReason::SessionTakenOver) => DisconnectReason::DuplicateClientId,
            Some(KickReason::ServerShuttingDown) => DisconnectReason::ServerInitiated,
            Some(KickReason::NotAuthorized) => DisconnectReason::ForbiddenAccess,
            Some(KickReason::QuotaExceeded) => DisconnectReason::Throttled,
            None => self.ending.get().unwrap_or(DisconnectReason::ConnectionLost),
        };
        lifecycle::disconnected(
            &self.broker,
            &self.client_id,
            &self.principal,
            self.ctl.generation,
            reason,
        );
        self.broker.metrics.connections.fetch_sub(1, Relaxed);
        // Wake the writer so it sees the session is no longer attached to it.
        self.ctl.notify.notify_one();
        tracing::debug!(client_id = %self.client_id, listener = self.listener, "connection closed");
    }
}

/// What the writer needs to know about the client it writes to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerLimits {
    /// Most QoS 1/2 messages in flight to it.
    pub window: usize,
    /// Its Maximum Packet Size (v5), 0 for none.
    pub max_packet: u32,
    /// Its Topic Alias Maximum (v5).
    pub topic_alias_max: u16,
}

/// The protocol-specific sink a writer sends through.
pub(crate) enum Sink {
    V3(v3::MqttSink),
    V5(v5::MqttSink),
}

impl Sink {
    fn is_open(&self) -> bool {
        match self {
            Sink::V3(s) => s.is_open(),
            Sink::V5(s) => s.is_open(),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Sink::V3(s) => s.is_ready(),
            Sink::V5(s) => s.is_ready(),
        }
    }

    async fn ready(&self) -> bool {
        match self {
            Sink::V3(s) => s.ready().await,
            Sink::V5(s) => s.ready().await,
        }
    }

    fn close(&self, reason: KickReason) {
        match self {
            Sink::V3(s) => s.close(),
            Sink::V5(s) => {
                use v5::codec::DisconnectReasonCode as D;
                let (code, text) = match reason {
                    KickReason::SessionTakenOver => {
                        (D::SessionTakenOver, "another connection took this client id over")
                    }
                    KickReason::ServerShuttingDown => (D::ServerShuttingDown, "server shutting down"),
                    KickReason::NotAuthorized => (D::NotAuthorized, "not authorized"),
                    KickReason::QuotaExceeded => (D::QuotaExceeded, "quota exceeded"),
                };
                s.close_with_reason(v5::codec::Disconnect {
                    reason_code: code,
                    reason_string: Some(ByteString::from_static(text)),
                    ..Default::default()
                });
            }
        }
    }
}

/// Starts the writer task of a connection on the current ntex worker.
pub(crate) fn spawn_writer(
    broker: Arc<Broker>,
    session: Arc<Session>,
    ctl: Arc<ConnCtl>,
    sink: Sink,
    limits: PeerLimits,
) {
    // QoS 1 acks come back through this callback, on this worker, while the sink is borrowed:
    // it only touches the session (never the sink).
    match &sink {
        Sink::V3(s) => {
            let (b, sess) = (broker.clone(), session.clone());
            s.publish_ack_cb(move |pid: NonZeroU16, disconnected| {
                if !disconnected {
                    b.acked(&sess, pid.get());
                }
            });
        }
        Sink::V5(s) => {
            let (b, sess) = (broker.clone(), session.clone());
            s.publish_ack_cb(move |ack: v5::codec::PublishAck, disconnected| {
                if !disconnected {
                    b.acked(&sess, ack.packet_id.get());
                }
            });
        }
    }
    ntex::rt::spawn(async move {
        Writer {
            broker,
            session,
            ctl,
            sink: Rc::new(sink),
            limits,
            aliases: HashMap::new(),
        }
        .run()
        .await;
    });
}

struct Writer {
    broker: Arc<Broker>,
    session: Arc<Session>,
    ctl: Arc<ConnCtl>,
    sink: Rc<Sink>,
    limits: PeerLimits,
    aliases: HashMap<ByteString, NonZeroU16>,
}

impl Writer {
    async fn run(mut self) {
        // Let the CONNACK go out first: it is encoded when the handshake future resumes.
        tokio::task::yield_now().await;
        // Allocated on first use: most connections of a large fleet are idle.
        let mut batch: Vec<Outgoing> = Vec::new();
        loop {
            if let Some(reason) = self.ctl.kicked() {
                self.sink.close(reason);
                return;
            }
            if !self.sink.is_open() {
                return;
            }
            batch.clear();
            let generation = self.ctl.generation;
            if !self
                .broker
                .take_sendable(&self.session, generation, self.limits.window, BATCH, &mut batch)
            {
                return;
            }
            if batch.is_empty() {
                self.ctl.notify.notified().await;
                continue;
            }
            // Boxed (once per batch) so the idle writer, which spends its life awaiting
            // `notified`, stays small: the send state machine is large and only needed while
            // sending. Idle connections dominate a fleet's memory.
            if !Box::pin(self.send_all(&mut batch)).await {
                // A kick interrupts a send that waits: the goodbye is still owed.
                if let Some(reason) = self.ctl.kicked() {
                    self.sink.close(reason);
                }
                return;
            }
            if batch.capacity() > BATCH {
                batch.shrink_to(BATCH);
            }
        }
    }

    /// Sends a batch in order; `false` when the connection is gone.
    async fn send_all(&mut self, batch: &mut Vec<Outgoing>) -> bool {
        for o in batch.drain(..) {
            if !self.send(o).await {
                return false;
            }
        }
        true
    }

    /// Sends one message; `false` when the connection is gone.
    async fn send(&mut self, o: Outgoing) -> bool {
        if o.qos != QoS::AtMostOnce && !self.sink.is_ready() {
            let ready = ntex::util::select(self.sink.ready(), self.ctl.kick_notified()).await;
            match ready {
                ntex::util::Either::Left(true) => {}
                _ => return false,
            }
        }
        let payload_len = o.msg.payload.len() as u64;
        let now = now_ms();
        let sent = match &*self.sink {
            Sink::V3(s) => {
                let pkt = v3::codec::Publish {
                    dup: o.dup,
                    retain: o.retain,
                    qos: o.qos,
                    topic: o.msg.topic.as_bytestring().clone(),
                    packet_id: NonZeroU16::new(o.pid),
                    payload_size: 0,
                };
                let payload = o.msg.payload.clone();
                match o.qos {
                    QoS::AtMostOnce => {
                        let fut = s.publish_pkt(pkt).send_at_most_once(payload);
                        matches!(
                            ntex::util::select(fut, self.ctl.kick_notified()).await,
                            ntex::util::Either::Left(Ok(()))
                        )
                    }
                    QoS::AtLeastOnce => s.publish_pkt(pkt).send_at_least_once_no_block(payload).is_ok(),
                    QoS::ExactlyOnce => {
                        let (b, sess, pid) = (self.broker.clone(), self.session.clone(), o.pid);
                        let fut = s.publish_pkt(pkt).send_exactly_once(payload);
                        spawn_polled(async move {
                            if let Ok(rec) = fut.await {
                                b.released(&sess, pid);
                                if rec.release().await.is_ok() {
                                    b.acked(&sess, pid);
                                }
                            }
                        });
                        true
                    }
                }
            }
            Sink::V5(s) => {
                let mut props = v5::codec::PublishProperties {
                    user_properties: o.msg.props.user_properties.clone(),
                    content_type: o.msg.props.content_type.clone(),
                    response_topic: o.msg.props.response_topic.clone(),
                    correlation_data: o.msg.props.correlation_data.clone(),
                    is_utf8_payload: o.msg.props.utf8_payload,
                    message_expiry_interval: o.msg.remaining_expiry_secs(now),
                    subscription_ids: o.sub_ids.iter().filter_map(|i| NonZeroU32::new(*i)).collect(),
                    topic_alias: None,
                };
                let mut topic = o.msg.topic.as_bytestring().clone();
                if self.limits.topic_alias_max > 0 {
                    if let Some(a) = self.aliases.get(&topic) {
                        props.topic_alias = Some(*a);
                        topic = ByteString::new();
                    } else if (self.aliases.len() as u16) < self.limits.topic_alias_max {
                        let a = NonZeroU16::new(self.aliases.len() as u16 + 1);
                        if let Some(a) = a {
                            self.aliases.insert(topic.clone(), a);
                            props.topic_alias = Some(a);
                        }
                    }
                }
                let pkt = v5::codec::Publish {
                    dup: o.dup,
                    retain: o.retain,
                    qos: o.qos,
                    topic,
                    packet_id: NonZeroU16::new(o.pid),
                    payload_size: 0,
                    properties: props,
                };
                let builder = s.publish_pkt(pkt);
                if self.limits.max_packet > 0 && builder.size(o.msg.payload.len()) > self.limits.max_packet {
                    // [MQTT-3.1.2-25]: never send a packet above the client's maximum; drop it.
                    BrokerMetrics::inc(&self.broker.metrics.dropped_too_large);
                    tracing::debug!(client_id = %self.session.client_id, "message larger than the client's maximum packet size dropped");
                    self.broker.discard(&self.session, &o);
                    return true;
                }
                let payload = o.msg.payload.clone();
                match o.qos {
                    QoS::AtMostOnce => {
                        let fut = builder.send_at_most_once(payload);
                        matches!(
                            ntex::util::select(fut, self.ctl.kick_notified()).await,
                            ntex::util::Either::Left(Ok(()))
                        )
                    }
                    QoS::AtLeastOnce => builder.send_at_least_once_no_block(payload).is_ok(),
                    QoS::ExactlyOnce => {
                        let (b, sess, pid) = (self.broker.clone(), self.session.clone(), o.pid);
                        let fut = builder.send_exactly_once(payload);
                        spawn_polled(async move {
                            if let Ok(rec) = fut.await {
                                if u8::from(rec.packet().reason_code) >= 0x80 {
                                    b.acked(&sess, pid);
                                    return;
                                }
                                b.released(&sess, pid);
                                if rec.release().await.is_ok() {
                                    b.acked(&sess, pid);
                                }
                            }
                        });
                        true
                    }
                }
            }
        };
        if sent {
            let m = &self.broker.metrics;
            BrokerMetrics::inc(&m.messages_out);
            m.bytes_out.fetch_add(payload_len, Relaxed);
        }
        sent
    }
}

/// Polls `fut` once right away (so a PUBLISH it encodes goes out in queue order), then leaves
/// the rest to a task on this worker.
fn spawn_polled<F: Future<Output = ()> + 'static>(fut: F) {
    let mut fut = Box::pin(fut);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    if fut.as_mut().poll(&mut cx).is_pending() {
        ntex::rt::spawn(fut);
    }
}
