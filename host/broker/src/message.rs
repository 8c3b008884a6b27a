//! Application messages and the identities attached to them.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ntex::util::{ByteString, Bytes};
pub use ntex_mqtt::QoS;
use serde::{Deserialize, Serialize};

use crate::topic::{Topic, TopicLimits};

/// A client identifier, as sent in CONNECT (or assigned by the server for an empty one).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(ByteString);

/// Why a client identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdError {
    /// Longer than the configured limit (AWS IoT: 128 bytes).
    #[error("client id is {len} bytes, the limit is {max}")]
    TooLong {
        /// Actual length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// Contains a character we refuse (U+0000).
    #[error("client id must not contain the null character")]
    NullCharacter,
}

impl ClientId {
    /// Parses a non-empty client id no longer than `max_len` bytes.
    pub fn parse(s: impl Into<ByteString>, max_len: usize) -> Result<Self, ClientIdError> {
        let s = s.into();
        if s.len() > max_len {
            return Err(ClientIdError::TooLong {
                len: s.len(),
                max: max_len,
            });
        }
        if s.contains('\0') {
            return Err(ClientIdError::NullCharacter);
        }
        Ok(ClientId(s))
    }

    /// A fresh server-assigned identifier (MQTT 5 Assigned Client Identifier).
    pub fn generate() -> Self {
        ClientId(ByteString::from(format!(
            "shoal-{}",
            uuid::Uuid::new_v4().simple()
        )))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier as a shared byte string.
    pub fn as_bytestring(&self) -> &ByteString {
        &self.0
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({:?})", &*self.0)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// MQTT 5 properties that travel with a message from publisher to subscribers unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProps {
    /// User Property pairs, in order.
    pub user_properties: Vec<(ByteString, ByteString)>,
    /// Content Type.
    pub content_type: Option<ByteString>,
    /// Response Topic (a topic name, never a filter).
    pub response_topic: Option<ByteString>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// Payload Format Indicator: `true` when the payload is UTF-8 text.
    pub utf8_payload: bool,
}

impl MessageProps {
    /// `true` when no property is set (v3 messages, and most v5 ones).
    pub fn is_empty(&self) -> bool {
        self.user_properties.is_empty()
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && !self.utf8_payload
    }
}

/// An application message on its way through the broker. Shared as `Arc<Message>` between all
/// the sessions it is delivered to; the payload is reference counted, never copied per subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where it was published.
    pub topic: Topic,
    /// The payload bytes.
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// MQTT 5 properties passed through to subscribers.
    pub props: MessageProps,
    /// The publishing client (for No Local), `None` for messages the server makes.
    pub publisher: Option<ClientId>,
    /// When the broker received it, in milliseconds since the Unix epoch.
    pub received_ms: u64,
    /// When it expires (MQTT 5 Message Expiry Interval), in milliseconds since the Unix epoch.
    pub expires_ms: Option<u64>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Message {
    /// A message with no properties, received now.
    pub fn new(topic: Topic, payload: Bytes, qos: QoS, retain: bool) -> Self {
        Message {
            topic,
            payload,
            qos,
            retain,
            props: MessageProps::default(),
            publisher: None,
            received_ms: now_ms(),
            expires_ms: None,
        }
    }

    /// Sets the expiry from an MQTT 5 Message Expiry Interval in seconds.
    pub fn with_expiry_interval(mut self, secs: Option<u32>) -> Self {
        self.expires_ms = secs.map(|s| self.received_ms + u64::from(s) * 1000);
        self
    }

    /// `true` once its expiry has passed `[MQTT-3.3.2-5]`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }

    /// The expiry interval left, in whole seconds, to send on `[MQTT-3.3.2-6]`.
    pub fn remaining_expiry_secs(&self, now_ms: u64) -> Option<u32> {
        self.expires_ms
            .map(|e| Duration::from_millis(e.saturating_sub(now_ms)).as_secs().max(1) as u32)
    }

    /// Encodes it for a store.
    pub fn to_stored(&self) -> StoredMessage {
        StoredMessage {
            topic: self.topic.as_str().to_owned(),
            payload: self.payload.to_vec(),
            qos: self.qos as u8,
            retain: self.retain,
            user_properties: self
                .props
                .user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            content_type: self.props.content_type.as_ref().map(|s| s.to_string()),
            response_topic: self.props.response_topic.as_ref().map(|s| s.to_string()),
            correlation_data: self.props.correlation_data.as_ref().map(|b| b.to_vec()),
            utf8_payload: self.props.utf8_payload,
            publisher: self.publisher.as_ref().map(|c| c.as_str().to_owned()),
            received_ms: self.received_ms,
            expires_ms: self.expires_ms,
        }
    }

    /// Decodes one read back from a store. Topic limits are not applied: it was valid when
    /// it was stored.
    pub fn from_stored(s: StoredMessage) -> Result<Self, crate::topic::TopicError> {
        let limits = TopicLimits {
            max_length: usize::MAX,
            max_levels: usize::MAX,
        };
        Ok(Message {
            topic: Topic::parse(s.topic, &limits)?,
            payload: Bytes::from(s.payload),
            qos: qos_from_u8(s.qos),
            retain: s.retain,
            props: MessageProps {
                user_properties: s
                    .user_properties
                    .into_iter()
                    .map(|(k, v)| (ByteString::from(k), ByteString::from(v)))
                    .collect(),
                content_type: s.content_type.map(ByteString::from),
                response_topic: s.response_topic.map(ByteString::from),
                correlation_data: s.correlation_data.map(Bytes::from),
                utf8_payload: s.utf8_payload,
            },
            publisher: s.publisher.map(|c| ClientId(ByteString::from(c))),
            received_ms: s.received_ms,
            expires_ms: s.expires_ms,
        })
    }
}

/// QoS from its wire number (anything above 2 is clamped to 2).
pub fn qos_from_u8(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The stored form of a [`Message`] (plain owned data for serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Topic name.
    pub topic: String,
    /// Payload.
    #[serde(with = "serde_bytes_vec")]
    pub payload: Vec<u8>,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// User properties.
    pub user_properties: Vec<(String, String)>,
    /// Content type.
    pub content_type: Option<String>,
    /// Response topic.
    pub response_topic: Option<String>,
    /// Correlation data.
    pub correlation_data: Option<Vec<u8>>,
    /// Payload format indicator.
    pub utf8_payload: bool,
    /// Publishing client.
    pub publisher: Option<String>,
    /// Receive time (ms since epoch).
    pub received_ms: u64,
    /// Expiry time (ms since epoch).
    pub expires_ms: Option<u64>,
}

/// Serializes a `Vec<u8>` as bytes rather than a sequence of numbers.
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_roundtrip() {
        let topic = Topic::parse("a/b", &TopicLimits::default()).unwrap();
        let mut m = Message::new(topic, Bytes::from_static(b"hi"), QoS::AtLeastOnce, true)
            .with_expiry_interval(Some(10));
        m.props.user_properties.push(("k".into(), "v".into()));
        m.props.correlation_data = Some(Bytes::from_static(b"\x00\x01"));
        m.publisher = Some(ClientId::parse("c1", 128).unwrap());
        let back = Message::from_stored(m.to_stored()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn expiry() {
        let topic = Topic::parse("a", &TopicLimits::default()).unwrap();
        let m = Message::new(topic, Bytes::new(), QoS::AtMostOnce, false).with_expiry_interval(Some(5));
        assert!(!m.is_expired(m.received_ms + 4_999));
        assert!(m.is_expired(m.received_ms + 5_000));
        assert_eq!(m.remaining_expiry_secs(m.received_ms + 2_000), Some(3));
    }

    #[test]
    fn client_ids() {
        assert!(ClientId::parse("abc", 128).is_ok());
        assert!(matches!(
            ClientId::parse("x".repeat(129), 128),
            Err(ClientIdError::TooLong { .. })
        ));
        assert!(ClientId::generate().as_str().starts_with("shoal-"));
    }
}
