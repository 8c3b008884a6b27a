//! The storage seam for the broker: persistent sessions, their queued messages, and retained
//! messages. The `shoal-store` crate implements [`BrokerStore`] twice (embedded redb and Redis)
//! and runs one conformance suite against both.
//!
//! The trait is byte-oriented on purpose: the broker encodes its own records
//! ([`StoredSession`], [`crate::message::StoredMessage`]) and a backend only keeps keys and
//! values. Writes arrive in batches ([`BrokerStore::apply`]) so a backend can commit a whole
//! batch at once (one redb transaction, one Redis pipeline): the broker's writer task groups
//! everything that piled up while the previous batch was committing.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Create or replace a session record.
    PutSession {
        /// Client identifier.
        client_id: String,
        /// Encoded [`StoredSession`].
        data: Vec<u8>,
    },
    /// Delete a session record and every queued message of that client.
    DeleteSession {
        /// Client identifier.
        client_id: String,
    },
    /// Create or replace one queued message of a session.
    PutQueued {
        /// Client identifier.
        client_id: String,
        /// Sequence number, increasing per session: the delivery order.
        seq: u64,
        /// Encoded [`QueuedRecord`].
        data: Vec<u8>,
    },
    /// Delete one queued message (delivered and acknowledged, or dropped).
    DeleteQueued {
        /// Client identifier.
        client_id: String,
        /// Sequence number.
        seq: u64,
    },
    /// Create or replace the retained message of a topic.
    PutRetained {
        /// Topic name.
        topic: String,
        /// Encoded [`crate::message::StoredMessage`].
        data: Vec<u8>,
    },
    /// Delete the retained message of a topic.
    DeleteRetained {
        /// Topic name.
        topic: String,
    },
}

/// A session read back at start-up, with its queued messages in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSession {
    /// Client identifier.
    pub client_id: String,
    /// Encoded [`StoredSession`].
    pub data: Vec<u8>,
    /// `(seq, encoded QueuedRecord)`, ascending by `seq`.
    pub queued: Vec<(u64, Vec<u8>)>,
}

/// A store failure: the backend says what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend is unreachable or refused the operation.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with something we cannot use.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

/// Durable state for the broker. Implementations must apply a batch in order, and must make it
/// durable before `apply` returns `Ok`.
#[async_trait]
pub trait BrokerStore: Send + Sync + 'static {
    /// A short name for logs and `/health` (`embedded`, `redis`).
    fn kind(&self) -> &'static str;

    /// Applies writes in order; durable when it returns `Ok`.
    async fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError>;

    /// Every stored session with its queued messages.
    async fn load_sessions(&self) -> Result<Vec<LoadedSession>, StoreError>;

    /// Every retained message as `(topic, encoded StoredMessage)`.
    async fn load_retained(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Cheap liveness check (`PING` on Redis).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// A shared store handle.
pub type SharedStore = Arc<dyn BrokerStore>;

/// One subscription as stored with its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// The filter as the client sent it (with any `$share/group/` prefix).
    pub filter: String,
    /// Maximum QoS.
    pub qos: u8,
    /// v5 No Local.
    pub no_local: bool,
    /// v5 Retain As Published.
    pub retain_as_published: bool,
    /// v5 Subscription Identifier.
    pub subscription_id: Option<u32>,
}

/// A persistent session's durable part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// When the client was last connected (ms since epoch); `None` while connected.
    pub disconnected_ms: Option<u64>,
    /// Its subscriptions.
    pub subscriptions: Vec<StoredSubscription>,
    /// The MQTT protocol level the client last used (4 or 5).
    pub protocol: u8,
}

/// A queued message with the delivery state it had when written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRecord {
    /// The message.
    pub message: crate::message::StoredMessage,
    /// The QoS it is delivered with (after downgrade to the subscription's).
    pub qos: u8,
    /// The RETAIN flag it is delivered with.
    pub retain: bool,
    /// Subscription identifiers to send with it.
    pub subscription_ids: Vec<u32>,
    /// Packet id, once it was sent (resent with DUP after a reconnect).
    pub packet_id: Option<u16>,
    /// QoS 2: PUBREC was received, only PUBREL/PUBCOMP remain.
    pub released: bool,
}

/// Encodes a record for a store (compact binary).
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

/// Decodes a record read from a store.
pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// An in-memory store for unit tests and `--store memory` (nothing survives a restart).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: parking_lot::Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    sessions: std::collections::BTreeMap<String, Vec<u8>>,
    queued: std::collections::BTreeMap<(String, u64), Vec<u8>>,
    retained: std::collections::BTreeMap<String, Vec<u8>>,
}

#[async_trait]
impl BrokerStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let mut g = self.inner.lock();
        for op in ops {
            match op {
                StoreOp::PutSession { client_id, data } => {
                    g.sessions.insert(client_id.clone(), data.clone());
                }
                StoreOp::DeleteSession { client_id } => {
                    g.sessions.remove(client_id);
                    g.queued.retain(|(c, _), _| c != client_id);
                }
                StoreOp::PutQueued { client_id, seq, data } => {
                    g.queued.insert((client_id.clone(), *seq), data.clone());
                }
                StoreOp::DeleteQueued { client_id, seq } => {
                    g.queued.remove(&(client_id.clone(), *seq));
                }
                StoreOp::PutRetained { topic, data } => {
                    g.retained.insert(topic.clone(), data.clone());
                }
                StoreOp::DeleteRetained { topic } => {
                    g.retained.remove(topic);
                }
            }
        }
        Ok(())
    }

    async fn load_sessions(&self) -> Result<Vec<LoadedSession>, StoreError> {
        let g = self.inner.lock();
        Ok(g.sessions
            .iter()
            .map(|(c, d)| LoadedSession {
                client_id: c.clone(),
                data: d.clone(),
                queued: g
                    .queued
                    .range((c.clone(), 0)..=(c.clone(), u64::MAX))
                    .map(|((_, s), d)| (*s, d.clone()))
                    .collect(),
            })
            .collect())
    }

    async fn load_retained(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let g = self.inner.lock();
        Ok(g.retained.iter().map(|(t, d)| (t.clone(), d.clone())).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
