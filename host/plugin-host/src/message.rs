//! Host-side message and action types: what a caller hands a plugin and what it gets back.
//!
//! They mirror the WIT records of `shoal:plugin/types` but are plain owned Rust values that do
//! not depend on the WIT package version: when a `0.2` world ships, both versions' bindings
//! convert into these, and the rules engine never sees generated code.

use crate::bindings::wit;
use bytes::Bytes;

/// One MQTT message as a rule saw it (the input of `on-message`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// The payload, unchanged (`Bytes`, so the broker's buffer is shared, not copied).
    pub payload: Bytes,
    /// QoS it was published with (0, 1 or 2).
    pub qos: u8,
    /// When the broker received it, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The publishing client's id, if it came from an MQTT client.
    pub client_id: Option<String>,
    /// The registry thing the publishing connection is attached to, if any.
    pub thing_name: Option<String>,
    /// MQTT 5 user properties, in order.
    pub user_properties: Vec<(String, String)>,
}

impl Message {
    /// A message with just a topic and a payload (QoS 0, no client, no properties).
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            ..Message::default()
        }
    }
}

/// A borrowed [`Message`]: what a caller that already holds the message's parts (the rules
/// engine, with the broker's message) passes to [`crate::PluginHost::invoke_ref`], so a call
/// copies nothing before the guest's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageRef<'a> {
    /// The topic it was published to.
    pub topic: &'a str,
    /// The payload, unchanged.
    pub payload: &'a [u8],
    /// QoS it was published with (0, 1 or 2).
    pub qos: u8,
    /// When the broker received it, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The publishing client's id, if it came from an MQTT client.
    pub client_id: Option<&'a str>,
    /// The registry thing the publishing connection is attached to, if any.
    pub thing_name: Option<&'a str>,
    /// MQTT 5 user properties, in order.
    pub user_properties: &'a [(&'a str, &'a str)],
}

impl Message {
    /// Calls `f` with this message borrowed as a [`MessageRef`].
    pub fn with_ref<R>(&self, f: impl FnOnce(&MessageRef<'_>) -> R) -> R {
        f(&self.borrowed(&self.properties()))
    }

    /// The user properties borrowed, as a [`MessageRef`] holds them.
    pub(crate) fn properties(&self) -> Vec<(&str, &str)> {
        let props = &self.user_properties;
        props.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// This message borrowed, with its `properties` (from [`Message::properties`]).
    pub(crate) fn borrowed<'a>(&'a self, properties: &'a [(&'a str, &'a str)]) -> MessageRef<'a> {
        MessageRef {
            topic: &self.topic,
            payload: &self.payload,
            qos: self.qos,
            timestamp_ms: self.timestamp_ms,
            client_id: self.client_id.as_deref(),
            thing_name: self.thing_name.as_deref(),
            user_properties: properties,
        }
    }
}

/// Something the host should do on the plugin's behalf.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Publish (or republish) a message.
    Publish(Publish),
    /// Update a device shadow.
    ShadowUpdate(ShadowUpdate),
    /// Raise an alert.
    Alert(Alert),
    /// Append a record to a stream.
    StreamAppend(StreamAppend),
    /// Call an operator-configured webhook target.
    Webhook(Webhook),
}

/// Publish a message through the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// Topic name (the executor validates it; no wildcards).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS 0 or 1.
    pub qos: u8,
    /// Keep as the retained message.
    pub retain: bool,
}

/// Update a thing's shadow with an AWS shadow request document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowUpdate {
    /// Thing name.
    pub thing: String,
    /// Named shadow, or `None` for the classic one.
    pub shadow_name: Option<String>,
    /// The request document (JSON text).
    pub document: String,
}

/// How urgent an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    /// For the record.
    Info,
    /// Someone should look soon.
    Warning,
    /// Someone must act now.
    Critical,
}

/// An alert for the operator's alert routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// Urgency.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// Details.
    pub body: String,
    /// The thing it concerns.
    pub thing: Option<String>,
}

/// Append a record to a named stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAppend {
    /// Stream name.
    pub stream: String,
    /// The record.
    pub payload: Bytes,
}

/// Call a webhook target by its configured name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    /// The target's name in the operator's configuration.
    pub target: String,
    /// Request body.
    pub body: Bytes,
}

impl Action {
    /// Bytes of variable-sized data the action carries (strings and payloads): what the
    /// per-call output limit counts.
    pub fn data_len(&self) -> usize {
        match self {
            Action::Publish(p) => p.topic.len() + p.payload.len(),
            Action::ShadowUpdate(s) => {
                s.thing.len() + s.shadow_name.as_ref().map_or(0, String::len) + s.document.len()
            }
            Action::Alert(a) => a.title.len() + a.body.len() + a.thing.as_ref().map_or(0, String::len),
            Action::StreamAppend(s) => s.stream.len() + s.payload.len(),
            Action::Webhook(w) => w.target.len() + w.body.len(),
        }
    }
}

impl From<wit::Action> for Action {
    fn from(action: wit::Action) -> Self {
        match action {
            wit::Action::Publish(p) => Action::Publish(Publish {
                topic: p.topic,
                payload: Bytes::from(p.payload),
                qos: p.qos,
                retain: p.retain,
            }),
            wit::Action::ShadowUpdate(s) => Action::ShadowUpdate(ShadowUpdate {
                thing: s.thing,
                shadow_name: s.shadow_name,
                document: s.document,
            }),
            wit::Action::Alert(a) => Action::Alert(Alert {
                severity: match a.severity {
                    wit::Severity::Info => Severity::Info,
                    wit::Severity::Warning => Severity::Warning,
                    wit::Severity::Critical => Severity::Critical,
                },
                title: a.title,
                body: a.body,
                thing: a.thing,
            }),
            wit::Action::StreamAppend(s) => Action::StreamAppend(StreamAppend {
                stream: s.stream,
                payload: Bytes::from(s.payload),
            }),
            wit::Action::Webhook(w) => Action::Webhook(Webhook {
                target: w.target,
                body: Bytes::from(w.body),
            }),
        }
    }
}
