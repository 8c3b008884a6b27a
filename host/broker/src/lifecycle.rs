//! AWS IoT's lifecycle events: the broker publishes `$aws/events/presence/connected/{clientId}`
//! when a client connects and `$aws/events/presence/disconnected/{clientId}` when its
//! connection ends, with AWS's JSON documents, so fleet software that watches presence on AWS
//! works unchanged (and a rule can turn a lost truck into an alert).
//!
//! ```json
//! {"clientId":"truck-7","timestamp":1767225600000,"eventType":"disconnected",
//!  "sessionIdentifier":"0000018c1d2e3f4a0000000000000005","principalIdentifier":"3f2a…",
//!  "clientInitiatedDisconnect":false,"disconnectReason":"MQTT_KEEP_ALIVE_TIMEOUT","versionNumber":5}
//! ```
//!
//! `versionNumber` is the connection's generation: it rises with every connection the broker
//! accepts (seeded from the clock at start, so it keeps rising across restarts), and a
//! connection's disconnected event carries the number of its connected event. A consumer that
//! sees a disconnected event with a lower number than the last connected one of that client
//! knows it is stale (the client id was taken over), as AWS documents.
//!
//! The events are QoS 0, not retained, and go through the broker's hooks as if published by
//! the client they are about (so a rule's `clientid()` and a plugin's thing name name that
//! client). As on AWS, clients whose id holds `+` or `#` get no events (nor do ids that make
//! the topic longer or deeper than the broker's topic limits); an id with `/` is published
//! that many levels deeper.

use std::net::SocketAddr;

use ntex::util::Bytes;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::broker::Broker;
use crate::hook::Origin;
use crate::message::{ClientId, Message, QoS, now_ms};
use crate::topic::Topic;

/// The topics only the broker publishes on (`$aws/events/...`): a client's publish there is
/// refused as unauthorized whatever its policy says, as on AWS, so nobody can forge a
/// lifecycle event.
pub fn is_reserved(topic: &Topic) -> bool {
    topic.as_str().starts_with("$aws/events/")
}

/// Why a connection ended, named as AWS IoT's `disconnectReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    ClientInitiated,
    /// Nothing arrived within 1.5 times the keep-alive.
    KeepAliveTimeout,
    /// The client broke the protocol (a malformed packet, a refused publish...).
    ClientError,
    /// The socket closed without DISCONNECT.
    ConnectionLost,
    /// Another connection took the client id over.
    DuplicateClientId,
    /// The server is shutting down.
    ServerInitiated,
    /// An operator or a policy change cut the client off.
    ForbiddenAccess,
    /// The client did not read and its queue overflowed.
    Throttled,
}

impl DisconnectReason {
    /// AWS's name.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientInitiated => "CLIENT_INITIATED_DISCONNECT",
            DisconnectReason::KeepAliveTimeout => "MQTT_KEEP_ALIVE_TIMEOUT",
            DisconnectReason::ClientError => "CLIENT_ERROR",
            DisconnectReason::ConnectionLost => "CONNECTION_LOST",
            DisconnectReason::DuplicateClientId => "DUPLICATE_CLIENTID",
            DisconnectReason::ServerInitiated => "SERVER_INITIATED_DISCONNECT",
            DisconnectReason::ForbiddenAccess => "FORBIDDEN_ACCESS",
            DisconnectReason::Throttled => "THROTTLED",
        }
    }
}

/// The topic of a client's presence event, unless its id holds a wildcard.
fn topic(b: &Broker, kind: &str, client_id: &ClientId) -> Option<Topic> {
    let id = client_id.as_str();
    Topic::parse(format!("$aws/events/presence/{kind}/{id}"), b.topic_limits()).ok()
}

/// `sessionIdentifier`: 32 hex digits, unique per connection.
fn session_identifier(generation: u64) -> String {
    format!("{generation:032x}")
}

fn emit(b: &Broker, topic: Topic, doc: Value, client_id: &ClientId, principal: &Principal) {
    let payload = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
    let msg = Message::new(topic, payload, QoS::AtMostOnce, false);
    b.publish(msg, Some(Origin { client_id, principal }));
}

/// Publishes a client's `connected` event.
pub fn connected(
    b: &Broker,
    client_id: &ClientId,
    principal: &Principal,
    generation: u64,
    peer: Option<SocketAddr>,
) {
    let Some(topic) = topic(b, "connected", client_id) else {
        return;
    };
    let mut doc = json!({
        "clientId": client_id.as_str(),
        "timestamp": now_ms(),
        "eventType": "connected",
        "sessionIdentifier": session_identifier(generation),
        "principalIdentifier": &*principal.id,
        "versionNumber": generation,
    });
    if let (Some(addr), Some(obj)) = (peer, doc.as_object_mut()) {
        obj.insert("ipAddress".into(), Value::String(addr.ip().to_string()));
    }
    emit(b, topic, doc, client_id, principal);
}

/// Publishes a client's `disconnected` event.
pub fn disconnected(
    b: &Broker,
    client_id: &ClientId,
    principal: &Principal,
    generation: u64,
    reason: DisconnectReason,
) {
    let Some(topic) = topic(b, "disconnected", client_id) else {
        return;
    };
    let doc = json!({
        "clientId": client_id.as_str(),
        "timestamp": now_ms(),
        "eventType": "disconnected",
        "sessionIdentifier": session_identifier(generation),
        "principalIdentifier": &*principal.id,
        "clientInitiatedDisconnect": reason == DisconnectReason::ClientInitiated,
        "disconnectReason": reason.as_str(),
        "versionNumber": generation,
    });
    emit(b, topic, doc, client_id, principal);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_aws_names() {
        assert_eq!(
            DisconnectReason::KeepAliveTimeout.as_str(),
            "MQTT_KEEP_ALIVE_TIMEOUT"
        );
        assert_eq!(
            DisconnectReason::ClientInitiated.as_str(),
            "CLIENT_INITIATED_DISCONNECT"
        );
        assert_eq!(DisconnectReason::DuplicateClientId.as_str(), "DUPLICATE_CLIENTID");
    }

    #[test]
    fn only_the_events_tree_is_reserved() {
        let limits = crate::topic::TopicLimits::default();
        let t = |s: &str| Topic::parse(s.to_string(), &limits).unwrap();
        assert!(is_reserved(&t("$aws/events/presence/connected/x")));
        assert!(!is_reserved(&t("$aws/things/x/shadow/update")));
        assert!(!is_reserved(&t("fleet/x/$aws/events/y")));
    }

    #[test]
    fn session_identifiers_are_32_hex_digits() {
        let s = session_identifier(0x18c_1d2e_3f4a);
        assert_eq!(s.len(), 32);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
