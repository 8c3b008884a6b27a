//! Watchdogs: a dead man's switch in the broker, for noticing what did *not* happen.
//!
//! A client (a device, an app, a rule's republish, a plugin's publish action) publishes to
//! `$shoal/watchdog/{name}` (`name`: one or more topic levels) a JSON object
//!
//! ```json
//! {"timeoutMs": 30000, "topic": "fleet/truck-7/silence", "payload": {"truck": "truck-7"},
//!  "qos": 1, "retain": false}
//! ```
//!
//! which arms the watchdog `name`, or re-arms it (replacing what it held and restarting its
//! clock). Unless it is re-armed or cancelled within `timeoutMs`, the broker publishes
//! `payload` on `topic` once and forgets the watchdog. An empty payload cancels it. A device
//! that re-arms its watchdog with every reading gets an alarm when its readings stop while its
//! connection looks alive (a hung modem keeps TCP open for the whole keep-alive), which neither
//! a will nor a lifecycle event reports.
//!
//! - `payload`: a JSON string is published as its text, any other JSON value as its JSON;
//!   absent, an empty payload; at most [`MAX_MESSAGE_BYTES`] (4 KiB) either way. `qos` (0 or 1) and `retain` default to 0 and `false`.
//! - The message to `$shoal/watchdog/...` is authorized like any publish (`iot:Publish` on its
//!   topic), goes through the hooks (rules see it) and is never delivered to subscribers. At
//!   arming, the publisher must also be allowed to publish `topic` (with `retain` if set);
//!   `topic` may not be under `$shoal/watchdog/` or `$aws/events/`.
//! - The fired message goes through the hooks (rules, the shadow service) and the router like a
//!   client's, from the client id `$watchdog` with the arming principal's attributes (a device
//!   that armed it keeps its thing name), at the broker's clock, swept every
//!   `sweep_interval` (250 ms by default): it fires no earlier than `timeoutMs` after the last
//!   arming and normally within one sweep interval of it.
//! - A malformed arming (not a JSON object, unknown field, bad `timeoutMs`, topic, `qos`...) is
//!   refused, logged and counted (`shoal_watchdogs_rejected_total`), and leaves a watchdog
//!   already armed under that name as it was; so does arming beyond `max_watchdogs`
//!   ([`crate::config::Limits`]), any request to `$shoal/watchdog/` itself (no name), and a
//!   will on a watchdog topic (which is never delivered either). The
//!   publisher learns why where the protocol can say it: an MQTT 5 QoS 1 PUBACK's reason code
//!   (0x83 malformed, 0x87 forbidden, 0x97 the limit) and reason string, the data plane's 400,
//!   403 or 429; MQTT 3.1.1 and QoS 0 publishers only from the log. A rule's republish that is
//!   refused is that action's failure (its error action runs).
//! - A `payload` that is not a string is published as its JSON re-serialized: the same JSON,
//!   but object keys may come out in another order than they were sent.
//! - Watchdogs live in the memory of the node that received the arming: a restart forgets them
//!   (the next arming starts them again), and two nodes hold separate ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering::Relaxed;

use ntex::util::Bytes;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value;

use crate::message::QoS;
use crate::topic::{Topic, TopicLimits};

/// Where watchdogs are armed: `$shoal/watchdog/{name}`.
pub const PREFIX: &str = "$shoal/watchdog/";

/// The longest timeout: 30 days.
pub const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;

/// The largest message a watchdog holds (it is a notification, and `max_watchdogs` of them
/// stay in memory: 100,000 x 4 KiB is 400 MiB at most).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// The watchdog name of a topic under [`PREFIX`], if it is one (empty for `$shoal/watchdog/`
/// itself, which is refused but never delivered either).
pub fn name_of(topic: &Topic) -> Option<&str> {
    topic.as_str().strip_prefix(PREFIX)
}

/// Why an arming was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArmError {
    /// The payload is not the JSON object described above.
    #[error("watchdog payload: {0}")]
    Payload(String),
    /// `topic` is not a topic name.
    #[error("watchdog `topic`: {0}")]
    Topic(String),
    /// `topic` is one only the broker publishes on, or another watchdog.
    #[error("watchdog `topic` {0:?} is reserved (under $shoal/watchdog/ or $aws/events/)")]
    Reserved(String),
    /// The publisher may not publish on `topic`.
    #[error("not authorized to publish to the watchdog's topic {0:?}")]
    Forbidden(String),
    /// `max_watchdogs` are armed.
    #[error("{0} watchdogs are armed, the most this broker holds (limits.max_watchdogs)")]
    Full(usize),
    /// `$shoal/watchdog/` with nothing after it.
    #[error("a watchdog needs a name: publish to $shoal/watchdog/{{name}}")]
    NoName,
    /// A message the server publishes (a will): no principal to authorize the target with.
    #[error("only a client's own publish can arm or cancel a watchdog (not a will)")]
    NoOrigin,
}

/// What kind of refusal an [`ArmError`] is, for the protocols' codes (MQTT 5 PUBACK 0x83 /
/// 0x87 / 0x97, HTTP 400 / 403 / 429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request itself is wrong.
    Malformed,
    /// The target is not the publisher's to publish on.
    Forbidden,
    /// `max_watchdogs` is reached.
    Limit,
}

impl ArmError {
    /// The kind of refusal.
    pub fn refusal(&self) -> Refusal {
        match self {
            ArmError::Forbidden(_) | ArmError::Reserved(_) => Refusal::Forbidden,
            ArmError::Full(_) => Refusal::Limit,
            ArmError::Payload(_) | ArmError::Topic(_) | ArmError::NoName | ArmError::NoOrigin => {
                Refusal::Malformed
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ArmJson {
    timeout_ms: Value,
    topic: String,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    qos: Option<Value>,
    #[serde(default)]
    retain: Option<bool>,
}

/// A parsed arming: what to publish, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    /// After how long without re-arming.
    pub timeout_ms: u64,
    /// Where to publish.
    pub topic: Topic,
    /// What.
    pub payload: Bytes,
    /// With which QoS.
    pub qos: QoS,
    /// Retained or not.
    pub retain: bool,
}

/// What a message to `$shoal/watchdog/{name}` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Arm or re-arm.
    Arm(Arm),
    /// Cancel (an empty payload).
    Cancel,
}

/// Parses a request to `$shoal/watchdog/{name}`: its name and payload.
pub fn parse(name: &str, payload: &[u8], limits: &TopicLimits) -> Result<Request, ArmError> {
    if name.is_empty() {
        return Err(ArmError::NoName);
    }
    if payload.is_empty() {
        return Ok(Request::Cancel);
    }
    let arm: ArmJson = serde_json::from_slice(payload).map_err(|e| {
        ArmError::Payload(format!(
            "{e} (expected {{\"timeoutMs\": N, \"topic\": \"...\", \"payload\": ..., \"qos\": 0|1, \"retain\": false}}, or an empty payload to cancel)"
        ))
    })?;
    let timeout_ms = arm
        .timeout_ms
        .as_u64()
        .filter(|t| (1..=MAX_TIMEOUT_MS).contains(t))
        .ok_or_else(|| {
            ArmError::Payload(format!(
                "`timeoutMs` must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}, not {}",
                arm.timeout_ms
            ))
        })?;
    let qos = match &arm.qos {
        None => QoS::AtMostOnce,
        Some(v) => match v.as_u64() {
            Some(0) => QoS::AtMostOnce,
            Some(1) => QoS::AtLeastOnce,
            _ => return Err(ArmError::Payload(format!("`qos` must be 0 or 1, not {v}"))),
        },
    };
    let topic = Topic::parse(arm.topic.clone(), limits).map_err(|e| ArmError::Topic(e.to_string()))?;
    if topic.as_str().starts_with(PREFIX) || crate::lifecycle::is_reserved(&topic) {
        return Err(ArmError::Reserved(arm.topic));
    }
    let payload = match arm.payload {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) => Bytes::from(s.into_bytes()),
        Some(v) => Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
    };
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(ArmError::Payload(format!(
            "the message to publish is {} bytes, more than a watchdog holds ({MAX_MESSAGE_BYTES})",
            payload.len()
        )));
    }
    Ok(Request::Arm(Arm {
        timeout_ms,
        topic,
        payload,
        qos,
        retain: arm.retain.unwrap_or(false),
    }))
}

/// An armed watchdog.
#[derive(Debug)]
pub(crate) struct Armed {
    /// Its name.
    pub name: String,
    /// What to publish.
    pub arm: Arm,
    /// The arming principal's attributes (its thing name...), carried by the fired message.
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct State {
    /// Name -> its key in `due`, and the watchdog.
    by_name: HashMap<String, ((u64, u64), Armed)>,
    /// `(deadline ms, sequence)` -> name, earliest first.
    due: BTreeMap<(u64, u64), String>,
    seq: u64,
}

/// The broker's watchdogs.
#[derive(Debug)]
pub(crate) struct Watchdogs {
    state: Mutex<State>,
    max: usize,
    /// Armed (gauge, shared with the broker's metrics).
    armed: std::sync::Arc<AtomicI64>,
}

impl Watchdogs {
    pub(crate) fn new(max: usize, armed: std::sync::Arc<AtomicI64>) -> Self {
        Watchdogs {
            state: Mutex::new(State::default()),
            max,
            armed,
        }
    }

    /// Arms (or re-arms) `name`, due `arm.timeout_ms` after `now`.
    pub(crate) fn arm(
        &self,
        name: &str,
        arm: Arm,
        attributes: BTreeMap<String, String>,
        now: u64,
    ) -> Result<(), ArmError> {
        let mut st = self.state.lock();
        let st = &mut *st;
        st.seq += 1;
        let key = (now.saturating_add(arm.timeout_ms), st.seq);
        let armed = Armed {
            name: name.to_owned(),
            arm,
            attributes,
        };
        match st.by_name.get_mut(name) {
            Some(slot) => {
                st.due.remove(&slot.0);
                *slot = (key, armed);
            }
            None => {
                if st.by_name.len() >= self.max {
                    return Err(ArmError::Full(self.max));
                }
                st.by_name.insert(name.to_owned(), (key, armed));
            }
        }
        st.due.insert(key, name.to_owned());
        self.armed.store(st.by_name.len() as i64, Relaxed);
        Ok(())
    }

    /// Cancels `name`; `false` when it was not armed.
    pub(crate) fn cancel(&self, name: &str) -> bool {
        let mut st = self.state.lock();
        let Some((key, _)) = st.by_name.remove(name) else {
            return false;
        };
        st.due.remove(&key);
        self.armed.store(st.by_name.len() as i64, Relaxed);
        true
    }

    /// Removes and returns the watchdogs due at `now`, earliest first.
    pub(crate) fn take_due(&self, now: u64) -> Vec<Armed> {
        let mut st = self.state.lock();
        let mut out = Vec::new();
        while let Some(entry) = st.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let name = entry.remove();
            if let Some((_, armed)) = st.by_name.remove(&name) {
                out.push(armed);
            }
        }
        if !out.is_empty() {
            self.armed.store(st.by_name.len() as i64, Relaxed);
        }
        out
    }

    /// When `name` fires (broker ms), if it is armed.
    pub(crate) fn deadline(&self, name: &str) -> Option<u64> {
        self.state.lock().by_name.get(name).map(|(k, _)| k.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TopicLimits {
        TopicLimits {
            max_length: 256,
            max_levels: 8,
        }
    }

    fn arm(body: &str) -> Arm {
        match parse("n", body.as_bytes(), &limits()).unwrap() {
            Request::Arm(a) => a,
            Request::Cancel => panic!("not an arming"),
        }
    }

    fn err(body: &str) -> String {
        parse("n", body.as_bytes(), &limits()).unwrap_err().to_string()
    }

    #[test]
    fn parses_arming_and_cancel() {
        let a = arm(
            r#"{"timeoutMs": 1500, "topic": "fleet/t/silence", "payload": {"truck": "t"}, "qos": 1, "retain": true}"#,
        );
        assert_eq!(a.timeout_ms, 1500);
        assert_eq!(a.topic.as_str(), "fleet/t/silence");
        assert_eq!(&a.payload[..], br#"{"truck":"t"}"#);
        assert_eq!(a.qos, QoS::AtLeastOnce);
        assert!(a.retain);
        let s = arm(r#"{"timeoutMs": 1, "topic": "a", "payload": "gone quiet"}"#);
        assert_eq!(&s.payload[..], b"gone quiet");
        assert_eq!(s.qos, QoS::AtMostOnce);
        assert!(!s.retain);
        assert!(arm(r#"{"timeoutMs": 5, "topic": "a"}"#).payload.is_empty());
        assert_eq!(parse("n", b"", &limits()).unwrap(), Request::Cancel);
        assert_eq!(parse("", b"", &limits()), Err(ArmError::NoName));
    }

    #[test]
    fn refuses_bad_armings_with_the_reason() {
        assert!(err("not json").contains("expected {\"timeoutMs\""));
        assert!(err("[1]").contains("watchdog payload"));
        assert!(err(r#"{"topic": "a"}"#).contains("timeoutMs"));
        assert!(err(r#"{"timeoutMs": 0, "topic": "a"}"#).contains("from 1 to"));
        assert!(err(r#"{"timeoutMs": -5, "topic": "a"}"#).contains("from 1 to"));
        assert!(err(r#"{"timeoutMs": 1.5, "topic": "a"}"#).contains("from 1 to"));
        assert!(err(r#"{"timeoutMs": 99999999999999, "topic": "a"}"#).contains("from 1 to"));
        assert!(err(r#"{"timeoutMs": 5, "topic": "a/+"}"#).contains("watchdog `topic`"));
        assert!(err(r#"{"timeoutMs": 5, "topic": ""}"#).contains("watchdog `topic`"));
        assert!(err(r#"{"timeoutMs": 5, "topic": "a", "qos": 2}"#).contains("`qos` must be 0 or 1"));
        assert!(err(r#"{"timeoutMs": 5, "topic": "a", "timeout": 3}"#).contains("unknown field"));
        assert!(err(r#"{"timeoutMs": 5, "topic": "$shoal/watchdog/x"}"#).contains("reserved"));
        assert!(err(r#"{"timeoutMs": 5, "topic": "$aws/events/presence/connected/x"}"#).contains("reserved"));
        let big = format!(
            r#"{{"timeoutMs": 5, "topic": "a", "payload": "{}"}}"#,
            "x".repeat(4097)
        );
        assert!(err(&big).contains("more than a watchdog holds"));
        let fits = format!(
            r#"{{"timeoutMs": 5, "topic": "a", "payload": "{}"}}"#,
            "x".repeat(4096)
        );
        assert_eq!(arm(&fits).payload.len(), 4096);
    }

    #[test]
    fn names_come_from_the_topic() {
        let t = |s: &str| Topic::parse(s.to_string(), &limits()).unwrap();
        assert_eq!(
            name_of(&t("$shoal/watchdog/cold-chain/truck-7")),
            Some("cold-chain/truck-7")
        );
        assert_eq!(name_of(&t("$shoal/watchdog/")), Some(""));
        assert_eq!(name_of(&t("$shoal/watchdog")), None);
        assert_eq!(name_of(&t("fleet/$shoal/watchdog/x")), None);
    }

    #[test]
    fn rearming_moves_the_deadline_and_cancel_forgets() {
        let gauge = std::sync::Arc::new(AtomicI64::new(0));
        let w = Watchdogs::new(2, gauge.clone());
        let a = arm(r#"{"timeoutMs": 100, "topic": "x/1"}"#);
        w.arm("one", a.clone(), BTreeMap::new(), 1000).unwrap();
        w.arm("one", a.clone(), BTreeMap::new(), 1050).unwrap();
        assert_eq!(w.deadline("one"), Some(1150));
        assert!(
            w.take_due(1100).is_empty(),
            "re-armed: not due at the first deadline"
        );
        w.arm("two", a.clone(), BTreeMap::new(), 1000).unwrap();
        assert_eq!(gauge.load(Relaxed), 2);
        assert_eq!(
            w.arm("three", a.clone(), BTreeMap::new(), 1000),
            Err(ArmError::Full(2))
        );
        // Re-arming a held name is allowed at the limit.
        w.arm("two", a.clone(), BTreeMap::new(), 1010).unwrap();
        let due: Vec<_> = w.take_due(1200).into_iter().map(|d| d.name).collect();
        assert_eq!(due, ["two", "one"], "earliest first");
        assert!(w.take_due(5000).is_empty(), "fired once");
        assert_eq!(gauge.load(Relaxed), 0);
        w.arm("one", a, BTreeMap::new(), 0).unwrap();
        assert!(w.cancel("one"));
        assert!(!w.cancel("one"));
        assert!(w.take_due(u64::MAX).is_empty());
    }
}
