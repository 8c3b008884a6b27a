//! Sessions: what the broker keeps for one client id across its connections.
//!
//! A [`Session`] outlives connections when it is persistent (v3 clean session 0, v5 session
//! expiry > 0). Its queue is both the offline queue and the online outbox: publishers on any
//! thread push into it under its mutex, and the connection's writer task (on the ntex worker
//! that owns the socket) drains it. The mutex is a `parking_lot` one and not an async one:
//! nothing awaits while holding it, every critical section is a few pushes and pops.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use ntex::util::ByteString;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::auth::Principal;
use crate::message::{ClientId, Message, QoS, qos_from_u8};
use crate::store::{QueuedRecord, StoredSession, StoredSubscription};
use crate::topic::{TopicFilter, TopicLimits};

/// Options of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS delivered on it.
    pub qos: QoS,
    /// v5 No Local: never deliver the client's own messages on it.
    pub no_local: bool,
    /// v5 Retain As Published: keep the RETAIN flag on forwarded messages.
    pub retain_as_published: bool,
    /// v5 Subscription Identifier.
    pub subscription_id: Option<NonZeroU32>,
}

impl SubOptions {
    /// Plain options at `qos` (v3 subscriptions).
    pub fn qos(qos: QoS) -> Self {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            subscription_id: None,
        }
    }
}

/// A message waiting in a session queue or in flight to its client.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// Order within the session; the store key.
    pub seq: u64,
    pub msg: Arc<Message>,
    /// QoS after downgrade to the subscription's.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    pub sub_ids: Vec<u32>,
    /// Packet id once sent (0 before).
    pub pid: u16,
    /// Sent before on an earlier connection: resend with DUP `[MQTT-3.3.1-1]`.
    pub dup: bool,
    /// QoS 2: PUBREC received.
    pub released: bool,
    /// A `PutQueued` was written for it, so its completion must `DeleteQueued`.
    pub persisted: bool,
}

impl Outgoing {
    pub(crate) fn to_record(&self) -> QueuedRecord {
        QueuedRecord {
            message: self.msg.to_stored(),
            qos: self.qos as u8,
            retain: self.retain,
            subscription_ids: self.sub_ids.clone(),
            packet_id: (self.pid != 0).then_some(self.pid),
            released: self.released,
        }
    }
}

/// Why a connection is being closed from outside its own task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KickReason {
    /// Another connection took the client id over (v5 0x8E).
    SessionTakenOver = 1,
    /// The server is shutting down (v5 0x8B).
    ServerShuttingDown = 2,
    /// An operator or policy change cut it off (v5 0x87).
    NotAuthorized = 3,
    /// The client never read and its queue overflowed (v5 0x97).
    QuotaExceeded = 4,
}

/// The link between a session and the connection currently attached to it.
#[derive(Debug)]
pub struct ConnCtl {
    /// Connection generation, unique per broker.
    pub generation: u64,
    kicked: AtomicU8,
    /// Wakes the connection's writer task: new messages, freed credit, or a kick.
    pub notify: Notify,
    /// Wakes a writer blocked on socket backpressure: only kicks.
    kick_notify: Notify,
}

impl ConnCtl {
    pub(crate) fn new(generation: u64) -> Self {
        ConnCtl {
            generation,
            kicked: AtomicU8::new(0),
            notify: Notify::new(),
            kick_notify: Notify::new(),
        }
    }

    /// Asks the connection to close with `reason`.
    pub fn kick(&self, reason: KickReason) {
        self.kicked.store(reason as u8, Ordering::Release);
        self.notify.notify_one();
        self.kick_notify.notify_one();
    }

    /// Completes once the connection is kicked.
    pub async fn kick_notified(&self) {
        if self.kicked().is_none() {
            self.kick_notify.notified().await;
        }
    }

    /// The reason it was asked to close, if it was.
    pub fn kicked(&self) -> Option<KickReason> {
        match self.kicked.load(Ordering::Acquire) {
            1 => Some(KickReason::SessionTakenOver),
            2 => Some(KickReason::ServerShuttingDown),
            3 => Some(KickReason::NotAuthorized),
            4 => Some(KickReason::QuotaExceeded),
            _ => None,
        }
    }
}

/// Mutable session state, behind [`Session::state`].
#[derive(Debug)]
pub(crate) struct SessionState {
    /// Session Expiry Interval in seconds; 0 ends the session with its connection,
    /// `u32::MAX` never expires (v3 clean session 0).
    pub expiry_secs: u32,
    /// Protocol level of the last connection (4 or 5).
    pub protocol: u8,
    /// Subscriptions by the filter text the client sent.
    pub subs: HashMap<ByteString, (TopicFilter, SubOptions)>,
    /// Messages not yet sent.
    pub queue: VecDeque<Outgoing>,
    /// Messages sent and not yet acknowledged, in send order.
    pub inflight: VecDeque<Outgoing>,
    pub next_pid: u16,
    pub next_seq: u64,
    /// The attached connection, while online.
    pub conn: Option<Arc<ConnCtl>>,
    /// Who the session belongs to now (set at each CONNECT).
    pub principal: Arc<Principal>,
    /// When it went offline (ms since epoch).
    pub disconnected_ms: Option<u64>,
    /// The session was discarded (clean start over it, or expiry): deliveries stop.
    pub ended: bool,
    /// Messages dropped because its queue was full, since the last log line.
    pub dropped_since_log: u64,
    /// When that log line was written (ms since epoch).
    pub drop_logged_ms: u64,
}

/// One client id's session.
#[derive(Debug)]
pub struct Session {
    /// Broker-unique id (a new one when a clean start replaces a session).
    pub id: u64,
    /// The client id it belongs to.
    pub client_id: ClientId,
    online: AtomicBool,
    pub(crate) state: Mutex<SessionState>,
}

impl Session {
    pub(crate) fn new(id: u64, client_id: ClientId, principal: Arc<Principal>) -> Self {
        Session {
            id,
            client_id,
            online: AtomicBool::new(false),
            state: Mutex::new(SessionState {
                expiry_secs: 0,
                protocol: 4,
                subs: HashMap::new(),
                queue: VecDeque::new(),
                inflight: VecDeque::new(),
                next_pid: 1,
                next_seq: 1,
                conn: None,
                principal,
                disconnected_ms: None,
                ended: false,
                dropped_since_log: 0,
                drop_logged_ms: 0,
            }),
        }
    }

    /// Whether a connection is attached (lock-free; used to pick a shared-subscription member).
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    pub(crate) fn set_online(&self, v: bool) {
        self.online.store(v, Ordering::Release);
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.state.lock().subs.len()
    }

    /// Messages queued plus in flight.
    pub fn pending_count(&self) -> usize {
        let s = self.state.lock();
        s.queue.len() + s.inflight.len()
    }
}

impl SessionState {
    /// Whether it outlives its connection (and so lives in the store).
    pub fn persistent(&self) -> bool {
        self.expiry_secs > 0
    }

    /// Next free packet id (skips ids still in flight) `[MQTT-2.2.1-3]`.
    pub fn alloc_pid(&mut self) -> u16 {
        loop {
            let pid = self.next_pid;
            self.next_pid = if self.next_pid == u16::MAX {
                1
            } else {
                self.next_pid + 1
            };
            if !self.inflight.iter().any(|o| o.pid == pid) {
                return pid;
            }
        }
    }

    pub fn to_stored(&self) -> StoredSession {
        StoredSession {
            expiry_secs: self.expiry_secs,
            disconnected_ms: self.disconnected_ms,
            protocol: self.protocol,
            subscriptions: self
                .subs
                .values()
                .map(|(f, o)| StoredSubscription {
                    filter: f.as_str().to_owned(),
                    qos: o.qos as u8,
                    no_local: o.no_local,
                    retain_as_published: o.retain_as_published,
                    subscription_id: o.subscription_id.map(NonZeroU32::get),
                })
                .collect(),
        }
    }
}

/// Rebuilds subscriptions from their stored form (invalid ones are skipped and logged).
pub(crate) fn subs_from_stored(stored: &[StoredSubscription]) -> Vec<(TopicFilter, SubOptions)> {
    let limits = TopicLimits {
        max_length: usize::MAX,
        max_levels: usize::MAX,
    };
    stored
        .iter()
        .filter_map(|s| match TopicFilter::parse(s.filter.as_str(), &limits) {
            Ok(f) => Some((
                f,
                SubOptions {
                    qos: qos_from_u8(s.qos),
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                    subscription_id: s.subscription_id.and_then(NonZeroU32::new),
                },
            )),
            Err(e) => {
                tracing::warn!(filter = %s.filter, error = %e, "skipping a stored subscription");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_allocation_skips_inflight_and_wraps() {
        let s = Session::new(
            1,
            ClientId::parse("c", 10).unwrap(),
            Arc::new(Principal::anonymous()),
        );
        let mut st = s.state.lock();
        st.next_pid = u16::MAX;
        assert_eq!(st.alloc_pid(), u16::MAX);
        let topic = crate::topic::Topic::parse("t", &TopicLimits::default()).unwrap();
        let msg = Arc::new(Message::new(topic, Default::default(), QoS::AtLeastOnce, false));
        st.inflight.push_back(Outgoing {
            seq: 1,
            msg,
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: vec![],
            pid: 1,
            dup: false,
            released: false,
            persisted: false,
        });
        assert_eq!(st.alloc_pid(), 2);
    }

    #[test]
    fn kick_is_seen() {
        let c = ConnCtl::new(7);
        assert_eq!(c.kicked(), None);
        c.kick(KickReason::SessionTakenOver);
        assert_eq!(c.kicked(), Some(KickReason::SessionTakenOver));
    }
}
