//! Actions: what a plugin asks the host to do. Each constructor on [`Action`] returns a typed
//! builder; `.into()` (or `Vec<Action>::push(x.into())`) makes it an [`Action`].

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// Something the host does on the plugin's behalf. A plugin never opens a socket: actions and
/// host calls are the only ways out of the sandbox.
///
/// ```
/// use shoal_sdk::{Action, Severity};
/// use shoal_sdk::serde_json::json;
///
/// let actions: Vec<Action> = vec![
///     Action::publish("fleet/t1/alerts", r#"{"temp":-3}"#).qos(1).into(),
///     Action::shadow_update("t1", json!({"state": {"reported": {"alarm": true}}})).into(),
///     Action::alert(Severity::Critical, "too warm", "-3 > -15").thing("t1").into(),
///     Action::stream_append("cold-chain", "…").into(),
///     Action::webhook("ops-pager", "t1 too warm").into(),
/// ];
/// assert_eq!(actions[0].as_publish().unwrap().qos, 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Publish a message.
    Publish(Publish),
    /// Update a device shadow.
    ShadowUpdate(ShadowUpdate),
    /// Raise an alert.
    Alert(Alert),
    /// Append to a stream.
    StreamAppend(StreamAppend),
    /// Call an operator-configured webhook target.
    Webhook(Webhook),
}

impl Action {
    /// Publish `payload` to `topic` (QoS 0, not retained; see [`Publish::qos`],
    /// [`Publish::retain`]). The host authorizes it as the rule.
    pub fn publish(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Publish {
        Publish {
            topic: topic.into(),
            payload: payload.into(),
            qos: 0,
            retain: false,
        }
    }

    /// Publish `value` as JSON text to `topic`.
    pub fn publish_json(topic: impl Into<String>, value: &Value) -> Publish {
        Action::publish(topic, value.to_string())
    }

    /// Update `thing`'s classic shadow with an AWS shadow request document, e.g.
    /// `json!({"state": {"reported": {"alarm": true}}})`; [`ShadowUpdate::named`] picks a named
    /// shadow.
    pub fn shadow_update(thing: impl Into<String>, document: Value) -> ShadowUpdate {
        ShadowUpdate {
            thing: thing.into(),
            shadow_name: None,
            document: document.to_string(),
        }
    }

    /// Raise an alert; the operator decides where alerts go. [`Alert::thing`] names the thing
    /// it concerns.
    pub fn alert(severity: Severity, title: impl Into<String>, body: impl Into<String>) -> Alert {
        Alert {
            severity,
            title: title.into(),
            body: body.into(),
            thing: None,
        }
    }

    /// Append `payload` to the stream named `stream` (`[a-zA-Z0-9_.-]{1,128}`).
    pub fn stream_append(stream: impl Into<String>, payload: impl Into<Vec<u8>>) -> StreamAppend {
        StreamAppend {
            stream: stream.into(),
            payload: payload.into(),
        }
    }

    /// Call the webhook target the operator configured under `target` (the plugin never sees
    /// its URL) with `body`.
    pub fn webhook(target: impl Into<String>, body: impl Into<Vec<u8>>) -> Webhook {
        Webhook {
            target: target.into(),
            body: body.into(),
        }
    }

    /// Bytes of strings and payloads this action carries: what the host's per-call output limit
    /// (`max_output_bytes`, default 1 MiB) counts.
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

    /// The publish, if this is one.
    pub fn as_publish(&self) -> Option<&Publish> {
        match self {
            Action::Publish(p) => Some(p),
            _ => None,
        }
    }

    /// The shadow update, if this is one.
    pub fn as_shadow_update(&self) -> Option<&ShadowUpdate> {
        match self {
            Action::ShadowUpdate(s) => Some(s),
            _ => None,
        }
    }

    /// The alert, if this is one.
    pub fn as_alert(&self) -> Option<&Alert> {
        match self {
            Action::Alert(a) => Some(a),
            _ => None,
        }
    }

    /// The stream append, if this is one.
    pub fn as_stream_append(&self) -> Option<&StreamAppend> {
        match self {
            Action::StreamAppend(s) => Some(s),
            _ => None,
        }
    }

    /// The webhook call, if this is one.
    pub fn as_webhook(&self) -> Option<&Webhook> {
        match self {
            Action::Webhook(w) => Some(w),
            _ => None,
        }
    }
}

/// Publish a message through the broker ([`Action::publish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Publish {
    /// Topic name (no wildcards).
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// QoS 0 or 1 (the host refuses 2).
    pub qos: u8,
    /// Keep it as the topic's retained message.
    pub retain: bool,
}

impl Publish {
    /// Sets the QoS (0 or 1).
    pub fn qos(mut self, qos: u8) -> Self {
        self.qos = qos;
        self
    }

    /// Sets whether the broker keeps it as the topic's retained message.
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// The payload as UTF-8 text, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}

/// Update a device shadow ([`Action::shadow_update`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShadowUpdate {
    /// Thing name.
    pub thing: String,
    /// Named shadow; `None` for the classic shadow.
    pub shadow_name: Option<String>,
    /// The request document, JSON text.
    pub document: String,
}

impl ShadowUpdate {
    /// Targets the named shadow `name` instead of the classic one.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.shadow_name = Some(name.into());
        self
    }
}

/// Raise an alert ([`Action::alert`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Alert {
    /// Urgency.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// Details (plain text).
    pub body: String,
    /// The thing it concerns, if any.
    pub thing: Option<String>,
}

impl Alert {
    /// Names the thing this alert concerns.
    pub fn thing(mut self, thing: impl Into<String>) -> Self {
        self.thing = Some(thing.into());
        self
    }
}

/// Append a record to a stream ([`Action::stream_append`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamAppend {
    /// Stream name.
    pub stream: String,
    /// The record.
    pub payload: Vec<u8>,
}

/// Call an operator-configured webhook target ([`Action::webhook`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Webhook {
    /// The target's name in the operator's configuration.
    pub target: String,
    /// The request body.
    pub body: Vec<u8>,
}

macro_rules! into_action {
    ($($ty:ident),*) => {$(
        impl From<$ty> for Action {
            fn from(a: $ty) -> Action {
                Action::$ty(a)
            }
        }
    )*};
}
into_action!(Publish, ShadowUpdate, Alert, StreamAppend, Webhook);

/// How urgent an alert is. Parses from `info`, `warning` (or `warn`), `critical`, any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// For the record.
    Info,
    /// Someone should look soon.
    Warning,
    /// Someone must act now.
    Critical,
}

impl Severity {
    /// The lower-case name: `info`, `warning`, `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Ok(Severity::Info),
            "warning" | "warn" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            other => Err(format!("unknown severity {other:?} (info, warning, critical)")),
        }
    }
}
