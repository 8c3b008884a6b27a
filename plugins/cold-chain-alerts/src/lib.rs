//! `cold-chain-alerts`: the alert logic of a refrigerated-truck fleet, for telemetry such as
//! `fleet/{truck}/telemetry`:
//!
//! ```json
//! {"truck":"truck-7","ts":1767225600000,"lat":53.55,"lon":9.99,"speedKmh":62.5,"tempC":-19.2,
//!  "humidity":71,"door":"closed","presence":false,"setpoint":-20,"route":"hamburg-copenhagen","seq":42}
//! ```
//!
//! and for the broker's AWS IoT lifecycle events, `$aws/events/presence/connected/{clientId}` and
//! `$aws/events/presence/disconnected/{clientId}`:
//!
//! ```json
//! {"clientId":"truck-7","timestamp":1767225600000,"eventType":"disconnected",
//!  "sessionIdentifier":"0000018c1d2e3f4a0000000000000005","principalIdentifier":"3f2a…",
//!  "clientInitiatedDisconnect":false,"disconnectReason":"MQTT_KEEP_ALIVE_TIMEOUT","versionNumber":5}
//! ```
//!
//! Point two rules at the plugin: one selecting the telemetry (`SELECT * FROM
//! 'fleet/+/telemetry'`) and one selecting the lifecycle events (`SELECT * FROM
//! '$aws/events/presence/+/+'`; add e.g. `WHERE startswith(clientId, 'truck-')` when other
//! clients connect to the broker too, or their disconnections alert as well). With silence
//! detection on (`silence_intervals`, see below), point a third rule at the fired watchdogs
//! (`SELECT * FROM 'fleet/+/silence'`, after `silence_topic`). A message whose topic starts with
//! `$aws/events/presence/` is a lifecycle event, one whose topic matches `silence_topic` (whether
//! or not silence detection is on) a silence message; every other message is a reading.
//!
//! Six checks, each raising an alert once when its condition starts and an `info` recovery alert
//! once when it clears:
//!
//! * `temperature`: at least `temp_n` of the last `temp_m` readings of `tempC` are above the
//!   truck's maximum (debounced like `debounce-alert`, so a single spike stays quiet). The maximum
//!   is the truck's shadow `state.desired.maxTempC` when set, else `max_temp_c`.
//! * `humidity`: the same for `humidity` against `state.desired.maxHumidity`, else `max_humidity`.
//! * `corridor`: at least `corridor_n` of the last `corridor_m` positions (`lat`, `lon`) are
//!   farther from the truck's planned route than the corridor width (debounced the same way).
//!   The route is the `state.desired` of the truck's named shadow `route_shadow`:
//!   `{"name": "hamburg-copenhagen", "points": [[53.55, 9.99], [54.32, 10.12], ...],
//!   "corridorM": 2000}`. The distance is the great-circle distance to the nearest point of the
//!   line through `points` (segments are great-circle arcs); the width is `corridorM` when it is
//!   a positive number, else `corridor_width_m` (a `corridorM` that is not is logged). A reading
//!   is skipped by this check (its window unchanged) when the truck has no such shadow, or the
//!   shadow no usable `points`: absent, `null` or empty, or malformed (not an array of
//!   `[lat, lon]` number pairs with lat in -90..=90 and lon in -180..=180), which is logged as a
//!   warning (once per reading).
//! * `door`: `door` is `"open"` while `speedKmh` is above `moving_kmh`; raised once per opening,
//!   recovered when the door reports `"closed"` (stopping with the door still open does not
//!   recover it, opening it while parked does not raise it).
//! * `presence`: `presence` is `true` (someone in the cargo space); raised once per episode,
//!   recovered when it is `false` again.
//! * `connectivity`: a `disconnected` lifecycle event whose `disconnectReason` is not in
//!   `connectivity_ignore` (a truck switched off cleanly, or every truck at once when Shoal
//!   itself shuts down, is not a loss) raises it, unless it is
//!   already raised. A `connected` event of a newer connection (a higher `versionNumber` than
//!   the lost one), or any reading of the truck that the broker received after the
//!   disconnection, recovers it. A `disconnected` event whose `versionNumber` is lower than the
//!   highest of the truck's `connected` events is stale (the client id was taken over by a
//!   newer connection) and ignored. With `silence_intervals` K above 0, it also raises when a
//!   truck stays connected but goes silent: no reading for K reporting intervals (`value`
//!   `NO_TELEMETRY`; see *Silence* below), recovered the same way (a reading the broker received
//!   after the last one before the silence, or a `connected` event of a newer connection).
//!
//! Every alert and recovery is an [`Action::alert`] naming the truck and, unless `republish` is
//! empty, a QoS 1 publish of this JSON event:
//!
//! ```json
//! {"truck":"truck-7","kind":"temperature","state":"raised","value":-12.5,"limit":-18.0,
//!  "ts":1767225600000,"lat":53.55,"lon":9.99}
//! ```
//!
//! `kind` is `temperature`, `humidity`, `corridor`, `door`, `presence` or `connectivity`; `state`
//! is `raised` or `recovered`. `value` and `limit` are:
//!
//! | `kind` | `value` | `limit` |
//! |---|---|---|
//! | `temperature` | the reading's `tempC` (°C) | the maximum (°C) |
//! | `humidity` | the reading's `humidity` (%) | the maximum (%) |
//! | `corridor` | the distance from the planned route, rounded to whole metres | the corridor width (m) |
//! | `door` | the speed (km/h; `null` when a closing reading has none) | `moving_kmh` (km/h) |
//! | `presence` | `presence` | `null` |
//! | `connectivity` | raised: the `disconnectReason`, or `NO_TELEMETRY` for a silent truck; recovered: how many seconds (whole) the truck was away, from the disconnected event's `timestamp` (for `NO_TELEMETRY`: the broker receiving the last reading before the silence) to the broker receiving the `connected` event or the reading | `null` |
//!
//! For the events of a reading, `ts` is the reading's `ts`, else the broker's receive time, and
//! `lat`/`lon` are the reading's (`null` when absent). For the events of a lifecycle event
//! (`connectivity` only), `ts` is the event's `timestamp` and `lat`/`lon` the truck's last known
//! position: that of its latest reading (by `ts`) with a position, remembered while
//! `connectivity` runs (`null` when none is known). The same holds for the events of a silence
//! message, with `ts` the broker's receive time of the silence message.
//!
//! Configuration (all values are strings, as the host passes them):
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `checks` | comma-separated checks to run: `temperature`, `humidity`, `corridor`, `door`, `presence`, `connectivity` | all six |
//! | `max_temp_c` | maximum cargo temperature (°C) of a truck whose shadow has no `desired.maxTempC` | `-18` |
//! | `temp_n`, `temp_m` | raise when at least `n` of the last `m` temperatures are above it (1 ≤ n ≤ m ≤ 64) | `3`, `5` |
//! | `temp_severity` | of the temperature alert: `info`, `warning`, `critical` | `critical` |
//! | `max_humidity` | maximum relative humidity (%) of a truck whose shadow has no `desired.maxHumidity` | `85` |
//! | `humidity_n`, `humidity_m` | as `temp_n`, `temp_m`, for humidity | `3`, `5` |
//! | `humidity_severity` | of the humidity alert | `warning` |
//! | `route_shadow` | the named shadow holding a truck's planned route (1 to 64 characters of `a-z A-Z 0-9 : _ - $`) | `route` |
//! | `corridor_width_m` | how far (m, > 0) a truck may be from its planned route when the route has no `corridorM` | `2000` |
//! | `corridor_n`, `corridor_m` | as `temp_n`, `temp_m`, for positions outside the corridor | `2`, `3` |
//! | `corridor_severity` | of the corridor alert | `warning` |
//! | `moving_kmh` | above this speed (km/h) the truck is moving, and an open door alerts | `5` |
//! | `door_severity` | of the door alert | `critical` |
//! | `presence_severity` | of the presence alert | `critical` |
//! | `connectivity_ignore` | comma-separated `disconnectReason`s that are not a loss (AWS's names, e.g. `CLIENT_INITIATED_DISCONNECT`, `SERVER_INITIATED_DISCONNECT`; an unknown name is refused); empty: none | `CLIENT_INITIATED_DISCONNECT,SERVER_INITIATED_DISCONNECT` |
//! | `connectivity_severity` | of the connectivity alert | `warning` |
//! | `shadow_limits` | read per-truck maxima from the shadow's desired state (`true`/`false`) | `true` |
//! | `shadow_name` | read this named shadow instead of the classic one (for the maxima) | classic |
//! | `republish` | topic template of the JSON events (`{thing}` is the truck; a lifecycle event's topic levels are not a reading's, so prefer `{thing}` to `{level:N}`); empty: none | `fleet/{thing}/alerts` |
//! | `thing_level` | topic level naming the truck of a reading when the connection has no registry thing | `1` |
//! | `state_ttl_secs` | forget a truck's state after this long without readings or lifecycle events | `86400` |
//! | `silence_intervals` | K: raise `connectivity` when a truck sends no reading for K reporting intervals (0 to 1000; only while `connectivity` runs); `0`: off, no watchdog traffic at all | `0` |
//! | `interval_s` | a truck's reporting interval (s, > 0) when its shadow gives none | `60` |
//! | `interval_field` | the field of the truck's shadow (`state.reported`, else `state.desired`) holding its reporting interval (s); empty: never read the shadow for it | `interval` |
//! | `time_scale` | simulated seconds per real second of the trucks' clock (> 0; a simulator at 60 reports an interval of 10 s every 1/6 s) | `1` |
//! | `silence_min_ms` | the shortest silence timeout (ms, 1 to 2592000000) | `1000` |
//! | `silence_watchdog` | the name of a truck's watchdog (`$shoal/watchdog/{name}`): a template whose only placeholder is `{thing}`, which it must contain | `cold-chain/{thing}` |
//! | `silence_topic` | the topic of a truck's fired watchdog: a template whose only placeholder is `{thing}`, exactly once and as a whole topic level (not under `$shoal/watchdog/` or `$aws/events/`) | `fleet/{thing}/silence` |
//!
//! The truck of a reading is the connection's registry thing, else topic level `thing_level`,
//! else the payload's `truck`. The truck of a lifecycle event is the client's registry thing,
//! else the event's `clientId`, else the topic's client id level (the last one): a truck without
//! a registry thing must connect with its name as client id for its readings and its lifecycle
//! events to meet. The shadow is read on every message that has a temperature or humidity to
//! judge (and, while silence detection is on, on every reading, for the reporting interval),
//! the route shadow on every reading with a position while `corridor` runs (nothing is cached
//! in the instance, so a new desired maximum, interval or route applies to the next reading);
//! a desired maximum that is not a number is logged and the configured one used.
//!
//! A reading without the fields a check needs is ignored by that check (a `null` counts as
//! absent); `connectivity` needs none (any reading recovers it), `corridor` needs `lat` and `lon`.
//! A payload that is not a JSON object, or a field of the wrong type (`tempC` not a number,
//! `door` neither `"open"` nor `"closed"`, `presence` not a boolean, ...), is rejected before any
//! state changes. A position out of range (lat outside -90..=90, lon outside -180..=180) is
//! logged, and neither judged by `corridor` nor remembered. A lifecycle event that is not AWS's
//! JSON (not an object, no numeric `timestamp` or `versionNumber`, an `eventType` other than
//! the topic's `connected` or `disconnected`, a `disconnected` event without a non-empty string
//! `disconnectReason`, ...) is rejected with the reason, state untouched, even when
//! `connectivity` is off (which otherwise ignores lifecycle events). A key-value or shadow store
//! failure is a plugin failure.
//!
//! A truck's state (the three windows, the door, presence and connectivity flags, the highest
//! `connected` `versionNumber`, the last known position, when the truck went offline and, for
//! silence detection, when the broker received its latest reading) is one JSON document in the
//! host's key-value store, scope the truck, so it survives the host discarding instances, new
//! plugin versions and restarts; documents written by earlier versions of the plugin load (what
//! they lack starts empty). A connectivity alert open for longer than `state_ttl_secs` is
//! forgotten with the rest, and never recovered. As with `debounce-alert`, two instances
//! handling the same truck at the same moment may both read the old state (no compare-and-swap
//! yet): route one truck's messages to one node if exactly-once alerts matter.
//!
//! *Silence.* A truck can stay connected and send nothing (a hung telemetry process, a modem
//! that keeps TCP alive): no lifecycle event tells. With `silence_intervals` K above 0 (and
//! `connectivity` running), the plugin uses the broker's watchdogs (a dead man's switch). Every
//! reading it accepts (re-)arms the truck's watchdog with a QoS 0 publish to
//! `$shoal/watchdog/{silence_watchdog}` (here K = 3 and an interval of 20 s):
//!
//! ```json
//! {"timeoutMs":60000,"topic":"fleet/truck-7/silence",
//!  "payload":{"truck":"truck-7","lastSeen":1767225600000,"timeoutMs":60000}}
//! ```
//!
//! `lastSeen` is the broker's receive time of the reading, and `timeoutMs` is
//! `max(silence_min_ms, round(K × interval × 1000 / time_scale))`, at most 30 days (the
//! broker's longest), with `interval` the truck's reporting interval in seconds: its shadow's
//! `state.reported.{interval_field}`, else `state.desired.{interval_field}`, else `interval_s`
//! (a value that is neither absent nor `null` nor a positive number is logged and skipped). The
//! shadow is `shadow_name`'s (the one the maxima come from), read once per reading: the read for
//! the maxima serves both, and while silence detection is on it is read for the interval even
//! when no maximum is needed or `shadow_limits` is `false` (an empty `interval_field` never
//! reads it). A reading the broker received before the truck's latest (not stale)
//! `disconnected` event does not arm; neither does a truck whose name is not one topic level
//! (empty, or with `/`, `+`, `#`), which is logged. Every `disconnected` event that is not
//! stale cancels the watchdog (an empty publish to the same topic), so a truck switched off, or
//! lost, raises no silence later; a `connected` event that leaves the truck online arms it
//! (`lastSeen` the event's receive time, the interval read as for a reading), so a truck that
//! connects and never reports is noticed too.
//!
//! Unless a reading re-arms it within `timeoutMs`, the broker publishes the `payload` on the
//! `topic`: the silence message. Its truck is the topic's `{thing}` level (so a client allowed
//! to publish on one truck's silence topic can speak for that truck only); a payload that is
//! not a JSON object with a numeric `lastSeen` no later than the message's broker time, or
//! whose `truck` is not a string naming that same truck, is rejected, state untouched, even
//! with silence detection off. It raises
//! the `connectivity` alert (`value` `NO_TELEMETRY`, `ts` the silence message's broker time,
//! the last known position) unless silence detection or `connectivity` is off, the alert is
//! already raised, the broker received a reading of the truck after `lastSeen` (the message is
//! stale), or the truck is offline (its latest `disconnected` event that is not stale came after
//! every `connected` event and every reading the broker received); then it is ignored.
//! Raised, it is open like a lost connection: a reading the broker received after `lastSeen`
//! recovers it (`value`: the seconds from `lastSeen` to that reading), and so does a `connected`
//! event of a connection newer than the truck's highest `versionNumber` seen. The rule running
//! the plugin must be allowed to publish on `$shoal/watchdog/...` and on the `silence_topic`
//! (the broker checks both at arming). Watchdogs live in the broker's memory: after a broker
//! restart, a truck's next reading arms it again.

use serde::{Deserialize, Serialize};
use shoal_sdk::geo::{self, Position};
use shoal_sdk::kv::{self, Scope};
use shoal_sdk::prelude::*;
use shoal_sdk::shadow;

/// The key of a truck's state in its key-value scope.
const STATE_KEY: &str = "cold-chain-state";

/// The topics of the broker's lifecycle events: `{prefix}{connected|disconnected}/{clientId}`.
const LIFECYCLE_PREFIX: &str = "$aws/events/presence/";

/// Where the broker's watchdogs are armed and cancelled: `{prefix}{name}`.
const WATCHDOG_PREFIX: &str = "$shoal/watchdog/";

/// The broker's longest watchdog timeout: 30 days.
const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3_600 * 1_000;

/// The connectivity alert's `value` (in place of a `disconnectReason`) for a silent truck.
const NO_TELEMETRY: &str = "NO_TELEMETRY";

/// AWS IoT's `disconnectReason` names (Shoal's broker uses a subset), for `connectivity_ignore`.
const DISCONNECT_REASONS: [&str; 13] = [
    "API_INITIATED_DISCONNECT",
    "AUTH_ERROR",
    "CLIENT_ERROR",
    "CLIENT_INITIATED_DISCONNECT",
    "CONNECTION_LOST",
    "CUSTOMAUTH_TTL_EXPIRATION",
    "DUPLICATE_CLIENTID",
    "FORBIDDEN_ACCESS",
    "MQTT_KEEP_ALIVE_TIMEOUT",
    "SERVER_ERROR",
    "SERVER_INITIATED_DISCONNECT",
    "THROTTLED",
    "WEBSOCKET_TTL_EXPIRATION",
];

/// The fields of a reading the checks use; the rest of the payload is skipped.
#[derive(Debug, Deserialize)]
struct Telemetry {
    truck: Option<String>,
    ts: Option<u64>,
    lat: Option<f64>,
    lon: Option<f64>,
    #[serde(rename = "speedKmh")]
    speed_kmh: Option<f64>,
    #[serde(rename = "tempC")]
    temp_c: Option<f64>,
    humidity: Option<f64>,
    door: Option<Door>,
    presence: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Door {
    Open,
    Closed,
}

/// The fields of a lifecycle event the plugin uses; the rest is skipped.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LifecycleEvent {
    client_id: Option<String>,
    /// When the broker saw the connection start or end, ms since the Unix epoch.
    timestamp: u64,
    event_type: String,
    disconnect_reason: Option<String>,
    /// The connection's generation: rises with every connection the broker accepts.
    version_number: u64,
}

/// What a lifecycle event says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Connected,
    Disconnected { reason: String },
}

impl LifecycleEvent {
    /// The event of `msg` and what it says; anything but AWS's JSON is rejected.
    fn parse(msg: &Message) -> Result<(Self, Change), PluginError> {
        let topic = msg.topic();
        let bad = |why: String| PluginError::rejected(format!("lifecycle event on {topic}: {why}"));
        let doc: Value =
            serde_json::from_slice(msg.payload()).map_err(|e| bad(format!("payload is not JSON: {e}")))?;
        if !doc.is_object() {
            return Err(bad("payload is not a JSON object".to_string()));
        }
        let event: LifecycleEvent = serde_json::from_value(doc)
            .map_err(|e| bad(format!("payload is not AWS's lifecycle JSON: {e}")))?;
        let kind = msg.topic_level(3).unwrap_or_default();
        if !matches!(kind, "connected" | "disconnected") {
            return Err(bad(
                "not a presence topic ($aws/events/presence/{connected|disconnected}/{clientId})".to_string(),
            ));
        }
        if event.event_type != kind {
            return Err(bad(format!("eventType {:?} on a {kind} topic", event.event_type)));
        }
        let change = if kind == "connected" {
            Change::Connected
        } else {
            match &event.disconnect_reason {
                Some(reason) if !reason.is_empty() => Change::Disconnected {
                    reason: reason.clone(),
                },
                _ => {
                    return Err(bad("a disconnected event without a disconnectReason".to_string()));
                }
            }
        };
        Ok((event, change))
    }
}

/// Whether `(lat, lon)` is a position on Earth, in degrees.
fn in_range((lat, lon): Position) -> bool {
    (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)
}

/// `s` seconds as text for alert titles: `42 s`, `12 min 5 s`, `3 h 20 min`, `2 d 4 h`.
fn duration_text(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min {} s", s / 60, s % 60),
        3_600..86_400 => format!("{} h {} min", s / 3_600, s % 3_600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// Whole seconds (rounded) from `from_ms` to `to_ms`; 0 when `to_ms` is earlier.
fn seconds_between(from_ms: u64, to_ms: u64) -> u64 {
    to_ms.saturating_sub(from_ms).saturating_add(500) / 1000
}

/// The last readings of one debounced check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Window {
    /// Bit i: whether the i-th most recent reading was a breach (bit 0 is the newest).
    bits: u64,
    /// How many readings the bits hold (at most m).
    len: u32,
    /// Whether an alert is open (raised and not yet recovered).
    alerting: bool,
}

impl Window {
    fn push(&mut self, breach: bool, m: u32) {
        let mask = if m == 64 { u64::MAX } else { (1u64 << m) - 1 };
        self.bits = ((self.bits << 1) | u64::from(breach)) & mask;
        self.len = (self.len + 1).min(m);
    }

    fn breaches(&self) -> u32 {
        self.bits.count_ones()
    }
}

/// A position the truck reported, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fix {
    lat: f64,
    lon: f64,
    /// The reading's `ts`, else the broker's receive time.
    ts: u64,
}

/// A lost connection (or a silent truck): the open connectivity alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Lost {
    /// The disconnected event's `timestamp`; for a silent truck, the silence message's
    /// `lastSeen` (the broker's receive time of the last reading before the silence).
    at_ms: u64,
    /// Its `disconnectReason`; for a silent truck, [`NO_TELEMETRY`].
    reason: String,
    /// Its `versionNumber`; for a silent truck, the highest `connected` one then (0 if none).
    version: u64,
    /// Raised by a silence message, not by a disconnected event.
    #[serde(default)]
    silent: bool,
}

/// What the connectivity check remembers of a truck's connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Link {
    /// The highest `versionNumber` of the truck's `connected` events.
    connected_version: Option<u64>,
    /// The open alert, if any.
    lost: Option<Lost>,
    /// When the broker received the truck's latest reading (kept while silence detection runs).
    last_rx_ms: Option<u64>,
    /// The `timestamp` of the truck's latest `disconnected` event that is not stale, while no
    /// `connected` event or reading the broker received after it came: the truck is offline.
    offline: Option<u64>,
}

/// Everything the plugin remembers about one truck: one key-value document. Every field has a
/// default, so documents written by earlier versions (without the later fields) still load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct TruckState {
    temperature: Window,
    humidity: Window,
    /// A door-open-while-moving alert is open.
    door_open: bool,
    /// A presence alert is open.
    presence: bool,
    /// Positions outside the route corridor.
    #[serde(default)]
    corridor: Window,
    /// The connections, for the connectivity check.
    #[serde(default)]
    link: Link,
    /// The latest reading with a position (kept while the connectivity check runs).
    #[serde(default)]
    position: Option<Fix>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Temperature,
    Humidity,
    Corridor,
    Door,
    Presence,
    Connectivity,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Temperature,
        Kind::Humidity,
        Kind::Corridor,
        Kind::Door,
        Kind::Presence,
        Kind::Connectivity,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Kind::Temperature => "temperature",
            Kind::Humidity => "humidity",
            Kind::Corridor => "corridor",
            Kind::Door => "door",
            Kind::Presence => "presence",
            Kind::Connectivity => "connectivity",
        }
    }
}

/// "At least `n` of the last `m` readings breach": the debouncing of the temperature, humidity
/// and corridor checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Debounce {
    n: u32,
    m: u32,
}

impl Debounce {
    /// `{prefix}_n` and `{prefix}_m`, with 1 <= n <= m <= 64.
    fn from_config(
        config: &Config,
        prefix: &str,
        default_n: u32,
        default_m: u32,
    ) -> Result<Self, PluginError> {
        let n = config.parse_or(&format!("{prefix}_n"), default_n)?;
        let m = config.parse_or(&format!("{prefix}_m"), default_m)?;
        if !(1..=m).contains(&n) || m > 64 {
            return Err(PluginError::config(format!(
                "need 1 <= {prefix}_n <= {prefix}_m <= 64, got {n} and {m}"
            )));
        }
        Ok(Debounce { n, m })
    }

    /// Adds one reading to `window`: `Some(true)` when the alert just started, `Some(false)`
    /// when it just ended, `None` when nothing changed.
    fn step(self, window: &mut Window, breach: bool) -> Option<bool> {
        window.push(breach, self.m);
        let breaches = window.breaches();
        let raised = if !window.alerting && breaches >= self.n {
            true
        } else if window.alerting && breaches < self.n {
            false
        } else {
            return None;
        };
        window.alerting = raised;
        Some(raised)
    }
}

/// A debounced "above a maximum" check (temperature, humidity).
#[derive(Debug, Clone, PartialEq)]
struct Excursion {
    kind: Kind,
    /// In alert texts: "cargo temperature", "humidity".
    what: &'static str,
    unit: &'static str,
    /// The field of the shadow's desired state that overrides `max`.
    shadow_key: &'static str,
    max: f64,
    debounce: Debounce,
    severity: Severity,
}

impl Excursion {
    fn from_config(
        config: &Config,
        kind: Kind,
        prefix: &str,
        max_key: &str,
        default_max: f64,
        default_severity: Severity,
    ) -> Result<Self, PluginError> {
        let max = config.parse_or(max_key, default_max)?;
        if !max.is_finite() {
            return Err(PluginError::config(format!(
                "`{max_key}` must be a finite number"
            )));
        }
        let debounce = Debounce::from_config(config, prefix, 3, 5)?;
        let (what, unit, shadow_key) = match kind {
            Kind::Temperature => ("cargo temperature", "°C", "maxTempC"),
            _ => ("humidity", "%", "maxHumidity"),
        };
        Ok(Excursion {
            kind,
            what,
            unit,
            shadow_key,
            max,
            debounce,
            severity: config.parse_or(&format!("{prefix}_severity"), default_severity)?,
        })
    }

    /// The truck's maximum: the shadow's desired one when it is a number, else the configured.
    fn limit(&self, desired: Option<&Value>, truck: &str) -> f64 {
        let Some(raw) = desired.and_then(|d| d.get(self.shadow_key)) else {
            return self.max;
        };
        let parsed = match raw {
            Value::Null => return self.max,
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match parsed.filter(|x| x.is_finite()) {
            Some(limit) => limit,
            None => {
                shoal_sdk::warn!(
                    "{truck}: shadow desired.{} = {raw} is not a number; using {}",
                    self.shadow_key,
                    self.max
                );
                self.max
            }
        }
    }

    /// Adds `value` to the window; an event when the excursion just started or just ended.
    fn step(&self, window: &mut Window, truck: &str, value: f64, limit: f64) -> Option<Event> {
        let raised = self.debounce.step(window, value > limit)?;
        let (what, unit, len, breaches) = (self.what, self.unit, window.len, window.breaches());
        let (title, body) = if raised {
            (
                format!("{truck}: {what} {value} {unit}, above {limit} {unit}"),
                format!(
                    "{breaches} of the last {len} {what} readings above the maximum of {limit} {unit} \
                     (alerting at {} of {}); {value} {unit} now",
                    self.debounce.n, self.debounce.m
                ),
            )
        } else {
            (
                format!("{truck}: {what} back under {limit} {unit}"),
                format!(
                    "{value} {unit} now; only {breaches} of the last {len} {what} readings above \
                     {limit} {unit}"
                ),
            )
        };
        Some(Event {
            kind: self.kind,
            raised,
            severity: self.severity,
            title,
            body,
            value: json!(value),
            limit: json!(limit),
        })
    }
}

/// A truck's planned route, from the desired state of its route shadow.
#[derive(Debug, Clone, PartialEq)]
struct Route {
    /// `desired.name`, when it is a non-empty string.
    name: Option<String>,
    points: Vec<Position>,
    /// `desired.corridorM`, else the configured width.
    width_m: f64,
}

/// `desired.points` as positions: an array of `[lat, lon]` number pairs, in range.
fn route_points(raw: &Value) -> Result<Vec<Position>, String> {
    let Value::Array(items) = raw else {
        return Err("is not an array".to_string());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.as_array().map(Vec::as_slice) {
            Some([lat, lon]) => match (lat.as_f64(), lon.as_f64()) {
                (Some(lat), Some(lon)) if in_range((lat, lon)) => Ok((lat, lon)),
                (Some(_), Some(_)) => Err(format!("[{i}] = {item} is out of range")),
                _ => Err(format!("[{i}] = {item} is not a pair of numbers")),
            },
            _ => Err(format!("[{i}] = {item} is not a [lat, lon] pair")),
        })
        .collect()
}

/// The debounced route-corridor check.
#[derive(Debug, Clone, PartialEq)]
struct Corridor {
    /// The named shadow holding the route.
    shadow: String,
    /// The width when the route has no `corridorM`.
    width_m: f64,
    debounce: Debounce,
    severity: Severity,
}

impl Corridor {
    fn from_config(config: &Config) -> Result<Self, PluginError> {
        let shadow = config.get("route_shadow").unwrap_or("route").trim();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || ":_-$".contains(c);
        if shadow.is_empty() || shadow.len() > 64 || !shadow.chars().all(valid_char) {
            return Err(PluginError::config(format!(
                "`route_shadow` = {shadow:?}: need a shadow name, 1 to 64 characters of \
                 a-z A-Z 0-9 : _ - $"
            )));
        }
        let width_m: f64 = config.parse_or("corridor_width_m", 2_000.0)?;
        if !width_m.is_finite() || width_m <= 0.0 {
            return Err(PluginError::config(format!(
                "`corridor_width_m` = {width_m}: need a number > 0"
            )));
        }
        Ok(Corridor {
            shadow: shadow.to_string(),
            width_m,
            debounce: Debounce::from_config(config, "corridor", 2, 3)?,
            severity: config.parse_or("corridor_severity", Severity::Warning)?,
        })
    }

    /// The truck's planned route, `None` when it has none usable (logged when malformed).
    fn route(&self, truck: &str) -> Result<Option<Route>, PluginError> {
        let Some(mut doc) = shadow::get(truck, Some(&self.shadow))? else {
            return Ok(None);
        };
        let Some(desired) = doc.pointer_mut("/state/desired").map(Value::take) else {
            return Ok(None);
        };
        let points = match desired.get("points") {
            None | Some(Value::Null) => return Ok(None),
            Some(raw) => match route_points(raw) {
                Ok(points) if points.is_empty() => return Ok(None),
                Ok(points) => points,
                Err(why) => {
                    shoal_sdk::warn!(
                        "{truck}: shadow {} desired.points {why}; corridor not checked",
                        self.shadow
                    );
                    return Ok(None);
                }
            },
        };
        let width_m = match desired.get("corridorM") {
            None | Some(Value::Null) => self.width_m,
            Some(raw) => match raw.as_f64().filter(|w| w.is_finite() && *w > 0.0) {
                Some(width) => width,
                None => {
                    shoal_sdk::warn!(
                        "{truck}: shadow {} desired.corridorM = {raw} is not a positive number; \
                         using {}",
                        self.shadow,
                        self.width_m
                    );
                    self.width_m
                }
            },
        };
        let name = desired
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        Ok(Some(Route {
            name,
            points,
            width_m,
        }))
    }

    /// Adds the distance of `position` from the route to the window; an event when the
    /// deviation just started or just ended.
    fn step(&self, window: &mut Window, truck: &str, route: &Route, position: Position) -> Option<Event> {
        let distance = geo::distance_to_polyline_m(position, &route.points);
        let width = route.width_m;
        let raised = self.debounce.step(window, distance > width)?;
        // Finite and non-negative (the route has a point); `as` saturates anyway.
        let metres = distance.round() as u64;
        let route_name = match &route.name {
            Some(name) => format!("the planned route {name}"),
            None => "the planned route".to_string(),
        };
        let (len, breaches) = (window.len, window.breaches());
        let (title, body) = if raised {
            (
                format!("{truck}: {metres} m off {route_name} (corridor {width} m)"),
                format!(
                    "{breaches} of the last {len} positions more than {width} m from {route_name} \
                     (alerting at {} of {}); {metres} m off now",
                    self.debounce.n, self.debounce.m
                ),
            )
        } else {
            (
                format!("{truck}: back within {width} m of {route_name}"),
                format!(
                    "{metres} m from {route_name} now; only {breaches} of the last {len} \
                     positions outside the {width} m corridor"
                ),
            )
        };
        Some(Event {
            kind: Kind::Corridor,
            raised,
            severity: self.severity,
            title,
            body,
            value: json!(metres),
            limit: json!(width),
        })
    }
}

/// The connectivity check.
#[derive(Debug, Clone, PartialEq)]
struct Connectivity {
    /// `disconnectReason`s that are not a loss.
    ignore: Vec<String>,
    severity: Severity,
}

impl Connectivity {
    fn from_config(config: &Config) -> Result<Self, PluginError> {
        let raw = config
            .get("connectivity_ignore")
            .unwrap_or("CLIENT_INITIATED_DISCONNECT,SERVER_INITIATED_DISCONNECT");
        let mut ignore = Vec::new();
        for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !DISCONNECT_REASONS.contains(&name) {
                return Err(PluginError::config(format!(
                    "`connectivity_ignore`: unknown disconnectReason {name:?} ({})",
                    DISCONNECT_REASONS.join(", ")
                )));
            }
            ignore.push(name.to_string());
        }
        Ok(Connectivity {
            ignore,
            severity: config.parse_or("connectivity_severity", Severity::Warning)?,
        })
    }

    /// The recovery of `lost`, `back_ms` the broker's time of the message that ends it.
    fn recovery(truck: &str, lost: &Lost, back_ms: u64, how: &str) -> Event {
        let away = seconds_between(lost.at_ms, back_ms);
        let since = if lost.silent {
            "its last reading before it went silent"
        } else {
            "the connection was lost"
        };
        Event {
            kind: Kind::Connectivity,
            raised: false,
            severity: Severity::Info,
            title: format!("{truck}: {how} after {}", duration_text(away)),
            body: format!("{how} {away} s after {since} ({})", lost.reason),
            value: json!(away),
            limit: Value::Null,
        }
    }

    /// A reading of the truck, received by the broker at `received_ms`: ends the truck being
    /// offline, and recovers an open alert, when it came after the disconnection (or the last
    /// reading before the silence).
    fn on_reading(&self, link: &mut Link, truck: &str, received_ms: u64) -> Option<Event> {
        if link.offline.is_some_and(|at| at <= received_ms) {
            link.offline = None;
        }
        if link.lost.as_ref()?.at_ms > received_ms {
            return None;
        }
        let lost = link.lost.take()?;
        Some(Self::recovery(truck, &lost, received_ms, "reporting again"))
    }

    /// A lifecycle event of the truck: the event it raises or recovers, and whether it is a
    /// `disconnected` event that is not stale (the truck is offline now).
    fn on_event(
        &self,
        link: &mut Link,
        truck: &str,
        event: &LifecycleEvent,
        change: Change,
        received_ms: u64,
    ) -> (Option<Event>, bool) {
        let version = event.version_number;
        match change {
            Change::Connected => {
                link.connected_version = Some(link.connected_version.map_or(version, |v| v.max(version)));
                // Back online, unless this is a late event of the connection that ended.
                if link.offline.is_some_and(|at| at <= event.timestamp) {
                    link.offline = None;
                }
                // Only a newer connection ends the loss (events may arrive out of order).
                let Some(lost) = link.lost.take_if(|lost| lost.version < version) else {
                    return (None, false);
                };
                (
                    Some(Self::recovery(truck, &lost, received_ms, "connected again")),
                    false,
                )
            }
            Change::Disconnected { reason } => {
                if let Some(newest) = link.connected_version
                    && version < newest
                {
                    shoal_sdk::info!(
                        "{truck}: stale disconnected event ignored (versionNumber {version}; \
                         connection {newest} is newer)"
                    );
                    return (None, false);
                }
                link.offline = Some(link.offline.map_or(event.timestamp, |at| at.max(event.timestamp)));
                if self.ignore.contains(&reason) || link.lost.is_some() {
                    return (None, true);
                }
                let alert = Event {
                    kind: Kind::Connectivity,
                    raised: true,
                    severity: self.severity,
                    title: format!("{truck}: connection lost ({reason})"),
                    body: format!(
                        "the truck's connection (versionNumber {version}) ended with {reason} \
                         and it has not reconnected"
                    ),
                    value: json!(reason),
                    limit: Value::Null,
                };
                link.lost = Some(Lost {
                    at_ms: event.timestamp,
                    reason,
                    version,
                    silent: false,
                });
                (Some(alert), true)
            }
        }
    }

    /// A silence message of the truck: the watchdog armed by the reading the broker received
    /// at `last_seen_ms` fired at `now_ms` (after `timeout_ms`, when the message says). Raises
    /// the alert unless it is open, the message is stale or the truck is offline.
    fn on_silence(
        &self,
        link: &mut Link,
        truck: &str,
        last_seen_ms: u64,
        now_ms: u64,
        timeout_ms: Option<u64>,
    ) -> Option<Event> {
        if link.lost.is_some() {
            return None;
        }
        if let Some(rx) = link.last_rx_ms
            && rx > last_seen_ms
        {
            shoal_sdk::info!(
                "{truck}: stale silence message ignored (lastSeen {last_seen_ms}; a reading \
                 arrived at {rx})"
            );
            return None;
        }
        if let Some(at) = link.offline {
            shoal_sdk::info!("{truck}: silence message ignored: the truck is offline (disconnected at {at})");
            return None;
        }
        let silent_s = seconds_between(last_seen_ms, now_ms);
        let timeout = match timeout_ms {
            Some(ms) => format!(" (silence timeout {ms} ms)"),
            None => String::new(),
        };
        let alert = Event {
            kind: Kind::Connectivity,
            raised: true,
            severity: self.severity,
            title: format!("{truck}: no telemetry for {}", duration_text(silent_s)),
            body: format!(
                "no reading of the truck reached the broker for {silent_s} s{timeout}, although \
                 no disconnection was reported"
            ),
            value: json!(NO_TELEMETRY),
            limit: Value::Null,
        };
        link.lost = Some(Lost {
            at_ms: last_seen_ms,
            reason: NO_TELEMETRY.to_string(),
            version: link.connected_version.unwrap_or(0),
            silent: true,
        });
        Some(alert)
    }
}

/// A template whose only placeholder is `{thing}` (`{{` and `}}` are literal braces), rendered
/// as the `republish` template renders `{thing}`: the watchdog name and the silence topic, which
/// must come out the same for a reading, a lifecycle event and the fired watchdog (whose topic
/// levels differ, so `{topic}`, `{client_id}` and `{level:N}` are refused).
#[derive(Debug, Clone, PartialEq)]
struct ThingTemplate {
    template: Template,
}

impl ThingTemplate {
    /// Parses `source`, the value of config key `key`; it must be (part of) a topic name.
    fn parse(key: &str, source: &str) -> Result<Self, PluginError> {
        let bad = |why: &str| PluginError::config(format!("`{key}` = {source:?}: {why}"));
        let template = Template::parse(source).map_err(|e| bad(&e.to_string()))?;
        let Some(literal) = template.render_thing("") else {
            return Err(bad("the only placeholder it may have is {thing}"));
        };
        if literal.contains(['+', '#', '\0']) {
            return Err(bad("a topic name has no `+`, `#` or NUL"));
        }
        if !template.has_thing() {
            return Err(bad("needs {thing}, or every truck would share it"));
        }
        Ok(ThingTemplate { template })
    }

    fn render(&self, truck: &str) -> String {
        // Parsing checked that `{thing}` is the only placeholder.
        self.template.render_thing(truck).unwrap_or_default()
    }
}

/// `silence_topic`: a [`ThingTemplate`] with `{thing}` exactly once, as a whole topic level, so
/// that a topic tells whether it is a silence message, and of which truck.
#[derive(Debug, Clone, PartialEq)]
struct SilenceTopic {
    template: ThingTemplate,
    /// Each level: literal text, or (`None`) the truck.
    levels: Vec<Option<String>>,
}

impl SilenceTopic {
    fn parse(source: &str) -> Result<Self, PluginError> {
        let template = ThingTemplate::parse("silence_topic", source)?;
        let bad = |why: &str| PluginError::config(format!("`silence_topic` = {source:?}: {why}"));
        // NUL is in no literal, so it marks where the truck goes.
        let marked = template.render("\0");
        let levels: Vec<Option<String>> = marked
            .split('/')
            .map(|level| match level {
                "\0" => Ok(None),
                _ if level.contains('\0') => Err(bad("{thing} must be a whole topic level")),
                _ => Ok(Some(level.to_string())),
            })
            .collect::<Result<_, _>>()?;
        if levels.iter().filter(|l| l.is_none()).count() != 1 {
            return Err(bad("{thing} must be there exactly once"));
        }
        if [WATCHDOG_PREFIX, "$aws/events/"]
            .iter()
            .any(|prefix| template.render("x").starts_with(prefix))
        {
            return Err(bad(
                "topics under $shoal/watchdog/ and $aws/events/ are the broker's",
            ));
        }
        Ok(SilenceTopic { template, levels })
    }

    /// The truck of `topic` when it is a silence topic: its `{thing}` level (never empty).
    fn truck_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let mut truck = None;
        let mut levels = topic.split('/');
        for want in &self.levels {
            let level = levels.next()?;
            match want {
                Some(text) if text != level => return None,
                Some(_) => {}
                None if level.is_empty() => return None,
                None => truck = Some(level),
            }
        }
        if levels.next().is_some() {
            return None;
        }
        truck
    }
}

/// Silence detection: a broker watchdog per truck, re-armed by every reading.
#[derive(Debug, Clone, PartialEq)]
struct Silence {
    /// K: how many reporting intervals without a reading are a silence; 0: off.
    intervals: u32,
    /// The reporting interval (s) when the shadow gives none.
    interval_s: f64,
    /// The shadow field holding the interval; `None`: never read.
    interval_field: Option<String>,
    /// Simulated seconds per real second.
    time_scale: f64,
    /// The shortest timeout (ms).
    min_ms: u64,
    watchdog: ThingTemplate,
    topic: SilenceTopic,
}

impl Silence {
    fn from_config(config: &Config) -> Result<Self, PluginError> {
        let intervals: u32 = config.parse_or("silence_intervals", 0)?;
        if intervals > 1_000 {
            return Err(PluginError::config(format!(
                "`silence_intervals` = {intervals}: need 0 (off) to 1000"
            )));
        }
        let positive = |key: &str, default: f64| -> Result<f64, PluginError> {
            let value: f64 = config.parse_or(key, default)?;
            if !value.is_finite() || value <= 0.0 {
                return Err(PluginError::config(format!(
                    "`{key}` = {value}: need a finite number > 0"
                )));
            }
            Ok(value)
        };
        let interval_s = positive("interval_s", 60.0)?;
        let time_scale = positive("time_scale", 1.0)?;
        let min_ms: u64 = config.parse_or("silence_min_ms", 1_000)?;
        if !(1..=MAX_TIMEOUT_MS).contains(&min_ms) {
            return Err(PluginError::config(format!(
                "`silence_min_ms` = {min_ms}: need 1 to {MAX_TIMEOUT_MS} (30 days)"
            )));
        }
        let interval_field = config.get("interval_field").unwrap_or("interval").trim();
        let watchdog = config
            .get("silence_watchdog")
            .unwrap_or("cold-chain/{thing}")
            .trim();
        let topic = config
            .get("silence_topic")
            .unwrap_or("fleet/{thing}/silence")
            .trim();
        Ok(Silence {
            intervals,
            interval_s,
            interval_field: (!interval_field.is_empty()).then(|| interval_field.to_string()),
            time_scale,
            min_ms,
            watchdog: ThingTemplate::parse("silence_watchdog", watchdog)?,
            topic: SilenceTopic::parse(topic)?,
        })
    }

    /// The truck's reporting interval (s): the shadow's reported one, else its desired one,
    /// else `interval_s`; a value that is not a positive number is logged and skipped.
    fn interval(&self, shadow: Option<&Value>, truck: &str) -> f64 {
        let (Some(field), Some(state)) = (&self.interval_field, shadow.and_then(|d| d.get("state"))) else {
            return self.interval_s;
        };
        for part in ["reported", "desired"] {
            match state.get(part).and_then(|s| s.get(field)) {
                None | Some(Value::Null) => {}
                Some(raw) => match raw.as_f64().filter(|s| s.is_finite() && *s > 0.0) {
                    Some(interval) => return interval,
                    None => shoal_sdk::warn!(
                        "{truck}: shadow {part}.{field} = {raw} is not a positive number of \
                         seconds; ignored"
                    ),
                },
            }
        }
        self.interval_s
    }

    /// How long (ms) without a reading is a silence, for a reporting interval of `interval_s`.
    fn timeout_ms(&self, interval_s: f64) -> u64 {
        let ms = (f64::from(self.intervals) * interval_s * 1_000.0 / self.time_scale).round();
        // `as` saturates (an infinite product too); the broker takes at most 30 days.
        (ms as u64).clamp(self.min_ms, MAX_TIMEOUT_MS)
    }

    /// The topic of the truck's watchdog, `None` (logged) when the truck's name is not one
    /// topic level (the fired message would not come back as a silence message).
    fn watchdog_topic(&self, truck: &str) -> Option<String> {
        if truck.is_empty() || truck.contains(['/', '+', '#', '\0']) {
            shoal_sdk::warn!("{truck:?} is not a topic level; no silence watchdog for it");
            return None;
        }
        Some(format!("{WATCHDOG_PREFIX}{}", self.watchdog.render(truck)))
    }

    /// (Re-)arms the truck's watchdog for its reading the broker received at `received_ms`.
    fn arm(&self, truck: &str, received_ms: u64, interval_s: f64) -> Option<Action> {
        let watchdog = self.watchdog_topic(truck)?;
        let timeout_ms = self.timeout_ms(interval_s);
        let arming = json!({
            "timeoutMs": timeout_ms,
            "topic": self.topic.template.render(truck),
            "payload": {"truck": truck, "lastSeen": received_ms, "timeoutMs": timeout_ms},
        });
        Some(Action::publish_json(watchdog, &arming).into())
    }

    /// Cancels the truck's watchdog: an empty publish.
    fn cancel(&self, truck: &str) -> Option<Action> {
        Some(Action::publish(self.watchdog_topic(truck)?, Vec::new()).into())
    }
}

/// One alert (or recovery) to emit.
#[derive(Debug)]
struct Event {
    kind: Kind,
    raised: bool,
    /// Of the raised alert (a recovery is always `info`).
    severity: Severity,
    title: String,
    body: String,
    value: Value,
    limit: Value,
}

/// Where and when the events of one message happened, for their JSON and alert texts.
struct Stamp {
    ts: u64,
    lat: Option<f64>,
    lon: Option<f64>,
    /// Appended to every alert's body.
    note: String,
}

impl Stamp {
    /// For the events of a message without a position (a lifecycle event, a silence message)
    /// at `ts`: the truck's last known position.
    fn last_known(position: Option<&Fix>, ts: u64) -> Self {
        Stamp {
            ts,
            lat: position.map(|p| p.lat),
            lon: position.map(|p| p.lon),
            note: match position {
                Some(p) => format!(
                    " (last known position {}, {}, reported {} before this event)",
                    p.lat,
                    p.lon,
                    duration_text(seconds_between(p.ts, ts))
                ),
                None => " (no known position)".to_string(),
            },
        }
    }
}

/// The configured plugin.
pub struct ColdChainAlerts {
    temperature: Option<Excursion>,
    humidity: Option<Excursion>,
    corridor: Option<Corridor>,
    /// `moving_kmh` and the severity, when the door check runs.
    door: Option<(f64, Severity)>,
    presence: Option<Severity>,
    connectivity: Option<Connectivity>,
    /// Parsed even when off (its topic tells silence messages apart); see [`Self::silence`].
    silence: Silence,
    shadow_limits: bool,
    shadow_name: Option<String>,
    republish: Option<Template>,
    thing_level: usize,
    state_ttl_secs: u32,
}

fn parse_checks(raw: Option<&str>) -> Result<Vec<Kind>, PluginError> {
    let Some(raw) = raw else {
        return Ok(Kind::ALL.to_vec());
    };
    let mut checks = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| {
                PluginError::config(format!(
                    "`checks`: unknown check {name:?} (temperature, humidity, corridor, door, \
                     presence, connectivity)"
                ))
            })?;
        checks.push(kind);
    }
    if checks.is_empty() {
        return Err(PluginError::config("`checks` names no check"));
    }
    Ok(checks)
}

impl ColdChainAlerts {
    /// Silence detection, when it is on: `silence_intervals` above 0 and `connectivity` running.
    fn silence(&self) -> Option<&Silence> {
        Some(&self.silence).filter(|s| s.intervals > 0 && self.connectivity.is_some())
    }

    /// Loads the truck's state: the state and whether it was stored.
    fn load(truck: &str) -> Result<(TruckState, bool), PluginError> {
        let stored: Option<TruckState> = kv::get_json(Scope::Thing(truck), STATE_KEY)?;
        let existed = stored.is_some();
        Ok((stored.unwrap_or_default(), existed))
    }

    /// Stores the truck's state (renewing its TTL), unless there is nothing to remember.
    fn save(&self, truck: &str, state: &TruckState, existed: bool) -> Result<(), PluginError> {
        if existed || *state != TruckState::default() {
            kv::set_json(Scope::Thing(truck), STATE_KEY, state, Some(self.state_ttl_secs))?;
        }
        Ok(())
    }

    /// The alert and (unless `republish` is empty) the JSON event of each event.
    fn emit(
        &self,
        msg: &Message,
        truck: &str,
        events: Vec<Event>,
        stamp: &Stamp,
    ) -> Result<Vec<Action>, PluginError> {
        let mut actions = Vec::with_capacity(events.len() * 2);
        if events.is_empty() {
            return Ok(actions);
        }
        let topic = self
            .republish
            .as_ref()
            .map(|t| t.render(msg, Some(truck)))
            .transpose()?;
        for event in events {
            let (severity, state_word, counter) = if event.raised {
                (event.severity, "raised", "alerts_raised")
            } else {
                (Severity::Info, "recovered", "alerts_recovered")
            };
            shoal_sdk::metrics::counter_add(counter, 1);
            actions.push(
                Action::alert(severity, event.title, format!("{}{}", event.body, stamp.note))
                    .thing(truck)
                    .into(),
            );
            if let Some(topic) = &topic {
                let body = json!({
                    "truck": truck,
                    "kind": event.kind.as_str(),
                    "state": state_word,
                    "value": event.value,
                    "limit": event.limit,
                    "ts": stamp.ts,
                    "lat": stamp.lat,
                    "lon": stamp.lon,
                });
                actions.push(Action::publish_json(topic.clone(), &body).qos(1).into());
            }
        }
        Ok(actions)
    }

    /// A telemetry reading.
    fn on_reading(&self, msg: &Message) -> Result<Vec<Action>, PluginError> {
        let reading: Telemetry = msg.payload_json()?;
        let temperature = self.temperature.as_ref().zip(reading.temp_c);
        let humidity = self.humidity.as_ref().zip(reading.humidity);
        let door = self.door.zip(reading.door);
        let presence = self.presence.zip(reading.presence);
        let located = reading.lat.zip(reading.lon);
        let corridor = self.corridor.as_ref().filter(|_| located.is_some());
        let judged = temperature.is_some()
            || humidity.is_some()
            || corridor.is_some()
            || door.is_some()
            || presence.is_some();
        if !judged && self.connectivity.is_none() {
            return Ok(vec![]);
        }
        let truck = msg
            .thing_or_level(self.thing_level)
            .or(reading.truck.as_deref().filter(|t| !t.is_empty()));
        let Some(truck) = truck else {
            if !judged {
                // Only connectivity would look at it, and it is about no truck we know.
                return Ok(vec![]);
            }
            return Err(PluginError::rejected(format!(
                "no truck in {} or its payload",
                msg.topic()
            )));
        };
        // A position to judge or remember, when it is one.
        let position = located.filter(|&p| {
            let ok = in_range(p);
            if !ok && (corridor.is_some() || self.connectivity.is_some()) {
                shoal_sdk::warn!("{truck}: position {}, {} is out of range; ignored", p.0, p.1);
            }
            ok
        });

        // The shadow, read once per message and only when a maximum or, for silence
        // detection, the reporting interval is needed.
        let limits = self.shadow_limits && (temperature.is_some() || humidity.is_some());
        let silence = self.silence();
        let shadow_doc = if limits || silence.is_some_and(|s| s.interval_field.is_some()) {
            shadow::get(truck, self.shadow_name.as_deref())?
        } else {
            None
        };
        let desired = shadow_doc
            .as_ref()
            .filter(|_| limits)
            .and_then(|doc| doc.pointer("/state/desired"));
        // The planned route, read only for a position to judge.
        let route = match corridor.zip(position) {
            Some((check, position)) => check.route(truck)?.map(|route| (check, route, position)),
            None => None,
        };

        let (mut state, existed) = Self::load(truck)?;
        let mut events = Vec::new();
        let mut watchdog = None;
        if let Some(check) = &self.connectivity {
            let received_ms = msg.timestamp_ms();
            events.extend(check.on_reading(&mut state.link, truck, received_ms));
            if let Some((lat, lon)) = position {
                let ts = reading.ts.unwrap_or(received_ms);
                if state.position.as_ref().is_none_or(|last| ts >= last.ts) {
                    state.position = Some(Fix { lat, lon, ts });
                }
            }
            if let Some(silence) = silence {
                let link = &mut state.link;
                link.last_rx_ms = Some(link.last_rx_ms.map_or(received_ms, |rx| rx.max(received_ms)));
                // Not for a reading from before the truck went offline (its watchdog is off).
                if link.offline.is_none() {
                    let interval_s = silence.interval(shadow_doc.as_ref(), truck);
                    watchdog = silence.arm(truck, received_ms, interval_s);
                }
            }
        }
        if let Some((check, value)) = temperature {
            let limit = check.limit(desired, truck);
            events.extend(check.step(&mut state.temperature, truck, value, limit));
        }
        if let Some((check, value)) = humidity {
            let limit = check.limit(desired, truck);
            events.extend(check.step(&mut state.humidity, truck, value, limit));
        }
        if let Some((check, route, position)) = &route {
            events.extend(check.step(&mut state.corridor, truck, route, *position));
        }
        if let Some(((moving_kmh, severity), door)) = door {
            let speed = reading.speed_kmh;
            let event = |raised, title, body| Event {
                kind: Kind::Door,
                raised,
                severity,
                title,
                body,
                value: json!(speed),
                limit: json!(moving_kmh),
            };
            match door {
                Door::Open if !state.door_open => {
                    if let Some(speed) = speed
                        && speed > moving_kmh
                    {
                        state.door_open = true;
                        events.push(event(
                            true,
                            format!("{truck}: door open while moving at {speed} km/h"),
                            format!(
                                "the cargo door is open at {speed} km/h (moving: above {moving_kmh} km/h)"
                            ),
                        ));
                    }
                }
                Door::Closed if state.door_open => {
                    state.door_open = false;
                    events.push(event(
                        false,
                        format!("{truck}: door closed"),
                        "the cargo door that opened while moving is closed again".to_string(),
                    ));
                }
                _ => {}
            }
        }
        if let Some((severity, present)) = presence
            && present != state.presence
        {
            state.presence = present;
            let (title, body) = if present {
                (
                    format!("{truck}: person detected in the cargo space"),
                    "the presence sensor reports someone inside the refrigerated container".to_string(),
                )
            } else {
                (
                    format!("{truck}: cargo space clear again"),
                    "the presence sensor no longer reports anyone inside".to_string(),
                )
            };
            events.push(Event {
                kind: Kind::Presence,
                raised: present,
                severity,
                title,
                body,
                value: json!(present),
                limit: Value::Null,
            });
        }

        let stamp = Stamp {
            ts: reading.ts.unwrap_or(msg.timestamp_ms()),
            lat: reading.lat,
            lon: reading.lon,
            note: match located {
                Some((lat, lon)) => format!(" (at {lat}, {lon})"),
                None => String::new(),
            },
        };
        let mut actions = self.emit(msg, truck, events, &stamp)?;
        actions.extend(watchdog);
        self.save(truck, &state, existed)?;
        Ok(actions)
    }

    /// A lifecycle event (`$aws/events/presence/...`).
    fn on_lifecycle(&self, msg: &Message) -> Result<Vec<Action>, PluginError> {
        let (event, change) = LifecycleEvent::parse(msg)?;
        let Some(check) = &self.connectivity else {
            return Ok(vec![]);
        };
        let named = |t: &&str| !t.is_empty();
        let truck = msg
            .thing_name()
            .filter(named)
            .or(event.client_id.as_deref().filter(named))
            .or(msg.topic_level(4).filter(named))
            .ok_or_else(|| {
                PluginError::rejected(format!(
                    "lifecycle event on {}: no thing, clientId or client id level",
                    msg.topic()
                ))
            })?;
        let (mut state, existed) = Self::load(truck)?;
        let connected = matches!(change, Change::Connected);
        let (event_out, offline) = check.on_event(&mut state.link, truck, &event, change, msg.timestamp_ms());
        let stamp = Stamp::last_known(state.position.as_ref(), event.timestamp);
        let mut actions = self.emit(msg, truck, event_out.into_iter().collect(), &stamp)?;
        if let Some(silence) = self.silence() {
            if offline {
                // Gone (cleanly or not): no silence alert for it later.
                actions.extend(silence.cancel(truck));
            } else if connected && state.link.offline.is_none() {
                // Back (or new): watched from now on, even if no reading ever comes.
                let shadow_doc = match silence.interval_field {
                    Some(_) => shadow::get(truck, self.shadow_name.as_deref())?,
                    None => None,
                };
                let interval_s = silence.interval(shadow_doc.as_ref(), truck);
                actions.extend(silence.arm(truck, msg.timestamp_ms(), interval_s));
            }
        }
        self.save(truck, &state, existed)?;
        Ok(actions)
    }

    /// A silence message: the payload of a truck's fired watchdog, on a `silence_topic` whose
    /// `{thing}` level is `level_truck`.
    fn on_silence(&self, msg: &Message, level_truck: &str) -> Result<Vec<Action>, PluginError> {
        let topic = msg.topic();
        let bad = |why: String| PluginError::rejected(format!("silence message on {topic}: {why}"));
        let doc: Value =
            serde_json::from_slice(msg.payload()).map_err(|e| bad(format!("payload is not JSON: {e}")))?;
        let Value::Object(fields) = &doc else {
            return Err(bad("payload is not a JSON object".to_string()));
        };
        let last_seen_ms = fields
            .get("lastSeen")
            .and_then(|raw| {
                raw.as_u64().or_else(|| {
                    raw.as_f64()
                        .filter(|ms| ms.is_finite() && *ms >= 0.0)
                        .map(|ms| ms.round() as u64)
                })
            })
            .ok_or_else(|| {
                bad("no numeric `lastSeen` (the broker's receive time of the last reading, ms)".to_string())
            })?;
        // The truck is the topic's: whoever may publish on a truck's silence topic can only
        // speak for that truck. A payload naming another one is refused.
        let truck = level_truck;
        match fields.get("truck") {
            None | Some(Value::Null) => {}
            Some(Value::String(named)) if named.is_empty() || named == truck => {}
            Some(Value::String(named)) => {
                return Err(bad(format!(
                    "`truck` {named:?} is not the topic's truck {truck:?}"
                )));
            }
            Some(other) => return Err(bad(format!("`truck` = {other} is not a string"))),
        }
        // A `lastSeen` in the future would hold the alert open against every reading.
        if last_seen_ms > msg.timestamp_ms() {
            return Err(bad(format!(
                "`lastSeen` {last_seen_ms} is later than the message ({})",
                msg.timestamp_ms()
            )));
        }
        let (Some(check), Some(_)) = (&self.connectivity, self.silence()) else {
            return Ok(vec![]);
        };
        let timeout_ms = fields.get("timeoutMs").and_then(Value::as_u64);
        let (mut state, existed) = Self::load(truck)?;
        let now_ms = msg.timestamp_ms();
        let events: Vec<Event> = check
            .on_silence(&mut state.link, truck, last_seen_ms, now_ms, timeout_ms)
            .into_iter()
            .collect();
        if events.is_empty() {
            return Ok(vec![]);
        }
        let stamp = Stamp::last_known(state.position.as_ref(), now_ms);
        let actions = self.emit(msg, truck, events, &stamp)?;
        self.save(truck, &state, existed)?;
        Ok(actions)
    }
}

impl Plugin for ColdChainAlerts {
    fn init(config: Config) -> Result<Self, PluginError> {
        let checks = parse_checks(config.get("checks"))?;
        // Every key is checked even when its check is off, so a typo'd value never hides.
        let temperature = Excursion::from_config(
            &config,
            Kind::Temperature,
            "temp",
            "max_temp_c",
            -18.0,
            Severity::Critical,
        )?;
        let humidity = Excursion::from_config(
            &config,
            Kind::Humidity,
            "humidity",
            "max_humidity",
            85.0,
            Severity::Warning,
        )?;
        let corridor = Corridor::from_config(&config)?;
        let moving_kmh: f64 = config.parse_or("moving_kmh", 5.0)?;
        if !moving_kmh.is_finite() || moving_kmh < 0.0 {
            return Err(PluginError::config(format!(
                "`moving_kmh` = {moving_kmh}: need a number >= 0"
            )));
        }
        let door_severity = config.parse_or("door_severity", Severity::Critical)?;
        let presence_severity = config.parse_or("presence_severity", Severity::Critical)?;
        let connectivity = Connectivity::from_config(&config)?;
        let silence = Silence::from_config(&config)?;
        let republish = match config.get("republish") {
            None => Some(Template::parse("fleet/{thing}/alerts")?),
            Some(raw) if raw.trim().is_empty() => None,
            Some(raw) => Some(Template::parse(raw.trim())?),
        };
        let state_ttl_secs = config.parse_or("state_ttl_secs", 86_400u32)?;
        if state_ttl_secs == 0 {
            return Err(PluginError::config("`state_ttl_secs` must be at least 1"));
        }
        let on = |kind| checks.contains(&kind);
        Ok(ColdChainAlerts {
            temperature: on(Kind::Temperature).then_some(temperature),
            humidity: on(Kind::Humidity).then_some(humidity),
            corridor: on(Kind::Corridor).then_some(corridor),
            door: on(Kind::Door).then_some((moving_kmh, door_severity)),
            presence: on(Kind::Presence).then_some(presence_severity),
            connectivity: on(Kind::Connectivity).then_some(connectivity),
            silence,
            shadow_limits: config.parse_or("shadow_limits", true)?,
            shadow_name: config
                .get("shadow_name")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            republish,
            thing_level: config.parse_or("thing_level", 1)?,
            state_ttl_secs,
        })
    }

    fn on_message(&mut self, msg: &Message) -> Result<Vec<Action>, PluginError> {
        if msg.topic().starts_with(LIFECYCLE_PREFIX) {
            self.on_lifecycle(msg)
        } else if let Some(truck) = self.silence.topic.truck_of(msg.topic()) {
            self.on_silence(msg, truck)
        } else {
            self.on_reading(msg)
        }
    }
}

export_plugin!(ColdChainAlerts);

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_sdk::Publish;
    use shoal_sdk::testing::Harness;

    const TS: u64 = 1_767_225_600_000;

    /// A normal reading of `truck`: cold, dry, closed, moving, nobody inside.
    fn reading(truck: &str) -> Value {
        json!({
            "truck": truck, "ts": TS, "lat": 53.55, "lon": 9.99, "speedKmh": 62.5,
            "tempC": -20.0, "humidity": 70.0, "door": "closed", "presence": false,
            "setpoint": -20, "route": "hamburg-copenhagen", "seq": 1,
        })
    }

    /// `reading(truck)` with some fields replaced.
    fn reading_with(truck: &str, fields: Value) -> Message {
        let mut r = reading(truck);
        for (k, v) in fields.as_object().unwrap() {
            r[k] = v.clone();
        }
        Message::json(format!("fleet/{truck}/telemetry"), r)
    }

    fn harness(config: &[(&str, &str)]) -> Harness<ColdChainAlerts> {
        Harness::new(config).unwrap()
    }

    /// What came out: (kind, state, alert severity) per event, checking that each alert is
    /// followed by its republish, on `fleet/{truck}/alerts` at QoS 1, about the same truck.
    fn events(truck: &str, actions: &[Action]) -> Vec<(String, String, Severity)> {
        assert_eq!(actions.len() % 2, 0, "{actions:?}");
        actions
            .chunks(2)
            .map(|pair| {
                let alert = pair[0].as_alert().unwrap();
                assert_eq!(alert.thing.as_deref(), Some(truck));
                let publish = pair[1].as_publish().unwrap();
                assert_eq!(publish.topic, format!("fleet/{truck}/alerts"));
                assert_eq!(publish.qos, 1);
                let body: Value = serde_json::from_slice(&publish.payload).unwrap();
                assert_eq!(body["truck"], truck);
                (
                    body["kind"].as_str().unwrap().to_string(),
                    body["state"].as_str().unwrap().to_string(),
                    alert.severity,
                )
            })
            .collect()
    }

    fn ev(kind: &str, state: &str, severity: Severity) -> (String, String, Severity) {
        (kind.to_string(), state.to_string(), severity)
    }

    /// Sends one reading with `tempC` per entry; the events of each send, flattened.
    fn temps(
        h: &mut Harness<ColdChainAlerts>,
        truck: &str,
        temps: &[f64],
    ) -> Vec<(String, String, Severity)> {
        let mut out = Vec::new();
        for &t in temps {
            let actions = h.send(reading_with(truck, json!({"tempC": t}))).unwrap();
            out.extend(events(truck, &actions));
        }
        out
    }

    fn publish_body(action: &Action) -> Value {
        serde_json::from_slice(&action.as_publish().unwrap().payload).unwrap()
    }

    #[test]
    fn temperature_three_of_five_raises_once_then_recovers_once() {
        let mut h = harness(&[]);
        // Default maximum -18 °C: two breaches out of five stay quiet.
        assert_eq!(temps(&mut h, "truck-7", &[-20.0, -15.0, -20.0, -14.0, -20.0]), []);
        // The third breach within the last five raises, once.
        let raised = temps(&mut h, "truck-7", &[-12.5]);
        assert_eq!(raised, [ev("temperature", "raised", Severity::Critical)]);
        assert_eq!(
            temps(&mut h, "truck-7", &[-11.0, -10.0, -12.0]),
            [],
            "still breaching: no repeat"
        );
        // 4 of the last 5 breach now; the third good reading brings it to 2 of 5.
        assert_eq!(temps(&mut h, "truck-7", &[-20.0, -20.0]), []);
        assert_eq!(
            temps(&mut h, "truck-7", &[-20.0]),
            [ev("temperature", "recovered", Severity::Info)]
        );
        assert_eq!(
            temps(&mut h, "truck-7", &[-20.0, -20.0, -20.0]),
            [],
            "one recovery only"
        );
        assert_eq!(h.counter("alerts_raised"), 1);
        assert_eq!(h.counter("alerts_recovered"), 1);
    }

    #[test]
    fn the_limit_itself_is_not_a_breach_and_trucks_are_apart() {
        let mut h = harness(&[("temp_n", "2"), ("temp_m", "2")]);
        assert_eq!(temps(&mut h, "t1", &[-18.0, -18.0]), []);
        assert_eq!(temps(&mut h, "t1", &[-17.0]), []);
        assert_eq!(temps(&mut h, "t2", &[-17.0]), []);
        assert_eq!(
            temps(&mut h, "t1", &[-17.0]),
            [ev("temperature", "raised", Severity::Critical)]
        );
        assert_eq!(
            temps(&mut h, "t2", &[-17.0]),
            [ev("temperature", "raised", Severity::Critical)]
        );
    }

    #[test]
    fn maximum_comes_from_the_shadows_desired_state() {
        let mut h = harness(&[("temp_n", "1"), ("temp_m", "1")]);
        // A chilled-goods truck allows up to -10 °C; truck-2 has no shadow (config: -18).
        h.set_shadow(
            "truck-1",
            None,
            json!({"state": {"desired": {"maxTempC": -10, "setpoint": -12}, "reported": {"maxTempC": 99}}}),
        );
        assert_eq!(
            temps(&mut h, "truck-1", &[-15.0]),
            [],
            "above -18 but under the shadow's -10"
        );
        assert_eq!(
            temps(&mut h, "truck-2", &[-15.0]),
            [ev("temperature", "raised", Severity::Critical)]
        );
        let actions = h.send(reading_with("truck-1", json!({"tempC": -9.5}))).unwrap();
        let body = publish_body(&actions[1]);
        assert_eq!(
            (body["value"].clone(), body["limit"].clone()),
            (json!(-9.5), json!(-10.0))
        );
        assert!(actions[0].as_alert().unwrap().title.contains("above -10 °C"));

        // Nothing is cached: a new desired maximum applies to the next reading.
        h.set_shadow("truck-1", None, json!({"state": {"desired": {"maxTempC": -5}}}));
        let actions = h.send(reading_with("truck-1", json!({"tempC": -9.0}))).unwrap();
        assert_eq!(
            events("truck-1", &actions),
            [ev("temperature", "recovered", Severity::Info)]
        );
        assert_eq!(publish_body(&actions[1])["limit"], json!(-5.0));

        // A desired value that is not a number falls back to the configuration, with a warning.
        h.set_shadow(
            "truck-1",
            None,
            json!({"state": {"desired": {"maxTempC": "warm"}}}),
        );
        assert_eq!(
            temps(&mut h, "truck-1", &[-9.0]),
            [ev("temperature", "raised", Severity::Critical)]
        );
        assert!(h.logs().iter().any(|l| l.message.contains("maxTempC")));
    }

    #[test]
    fn shadow_limits_can_be_off_or_come_from_a_named_shadow() {
        let doc = json!({"state": {"desired": {"maxTempC": -10}}});
        let mut off = harness(&[("temp_n", "1"), ("temp_m", "1"), ("shadow_limits", "false")]);
        off.set_shadow("t1", None, doc.clone());
        assert_eq!(temps(&mut off, "t1", &[-15.0]).len(), 1, "the shadow is ignored");

        let mut named = harness(&[("temp_n", "1"), ("temp_m", "1"), ("shadow_name", "reefer")]);
        named.set_shadow("t1", Some("reefer"), doc);
        named.set_shadow("t1", None, json!({"state": {"desired": {"maxTempC": -30}}}));
        assert_eq!(temps(&mut named, "t1", &[-15.0]), []);
    }

    #[test]
    fn humidity_uses_its_own_window_limit_and_severity() {
        let mut h = harness(&[("checks", "humidity")]);
        h.set_shadow("t1", None, json!({"state": {"desired": {"maxHumidity": 90}}}));
        let mut got = Vec::new();
        for rh in [88.0, 91.0, 95.0, 70.0, 97.0, 60.0, 60.0, 60.0] {
            // Hot readings too: the temperature check is off.
            let actions = h
                .send(reading_with("t1", json!({"humidity": rh, "tempC": 5})))
                .unwrap();
            got.extend(events("t1", &actions));
        }
        assert_eq!(
            got,
            [
                ev("humidity", "raised", Severity::Warning),
                ev("humidity", "recovered", Severity::Info)
            ]
        );
        // Without a shadow: the configured maximum.
        let mut h = harness(&[("max_humidity", "50"), ("humidity_n", "1"), ("humidity_m", "1")]);
        let actions = h.send(reading_with("t2", json!({"humidity": 60}))).unwrap();
        assert_eq!(publish_body(&actions[1])["limit"], json!(50.0));
    }

    #[test]
    fn door_open_while_moving_alerts_once_per_opening() {
        let mut h = harness(&[]);
        let send = |h: &mut Harness<ColdChainAlerts>, door: &str, speed: f64| {
            let actions = h
                .send(reading_with("t1", json!({"door": door, "speedKmh": speed})))
                .unwrap();
            events("t1", &actions)
        };
        // Parked (or crawling at the limit) with the door open: loading, not an incident.
        assert_eq!(send(&mut h, "open", 0.0), []);
        assert_eq!(send(&mut h, "open", 5.0), []);
        assert_eq!(
            send(&mut h, "closed", 0.0),
            [],
            "no recovery for what never raised"
        );
        // Moving with the door open: one alert however many readings.
        assert_eq!(
            send(&mut h, "open", 42.0),
            [ev("door", "raised", Severity::Critical)]
        );
        assert_eq!(send(&mut h, "open", 50.0), []);
        assert_eq!(send(&mut h, "open", 0.0), [], "stopping does not close the door");
        assert_eq!(
            send(&mut h, "closed", 0.0),
            [ev("door", "recovered", Severity::Info)]
        );
        assert_eq!(send(&mut h, "closed", 60.0), []);
        // Opened while parked, then driving off with it open: raised then.
        assert_eq!(send(&mut h, "open", 0.0), []);
        let actions = h
            .send(reading_with("t1", json!({"door": "open", "speedKmh": 12.5})))
            .unwrap();
        assert_eq!(events("t1", &actions), [ev("door", "raised", Severity::Critical)]);
        let body = publish_body(&actions[1]);
        assert_eq!(
            (body["value"].clone(), body["limit"].clone()),
            (json!(12.5), json!(5.0))
        );
        assert!(
            actions[0]
                .as_alert()
                .unwrap()
                .title
                .contains("door open while moving")
        );
        // A reading without a speed cannot raise, but a closing one recovers.
        let mut h = harness(&[("moving_kmh", "20")]);
        assert!(
            h.send(reading_with("t2", json!({"door": "open", "speedKmh": null})))
                .unwrap()
                .is_empty()
        );
        assert!(
            h.send(reading_with("t2", json!({"door": "open", "speedKmh": 15})))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            h.send(reading_with("t2", json!({"door": "open", "speedKmh": 21})))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn presence_episode_raised_once_and_recovered_once() {
        let mut h = harness(&[]);
        let mut got = Vec::new();
        for present in [false, true, true, true, false, false] {
            let actions = h.send(reading_with("t1", json!({"presence": present}))).unwrap();
            got.extend(events("t1", &actions));
        }
        assert_eq!(
            got,
            [
                ev("presence", "raised", Severity::Critical),
                ev("presence", "recovered", Severity::Info)
            ]
        );
        // A reading without `presence` neither raises nor recovers.
        h.send(reading_with("t1", json!({"presence": true}))).unwrap();
        let mut r = reading("t1");
        r.as_object_mut().unwrap().remove("presence");
        assert!(h.send(Message::json("fleet/t1/telemetry", r)).unwrap().is_empty());
    }

    #[test]
    fn events_carry_the_documented_fields() {
        let mut h = harness(&[("temp_n", "1"), ("temp_m", "1")]);
        let actions = h
            .send(reading_with("truck-7", json!({"tempC": -3.5, "presence": true})))
            .unwrap();
        assert_eq!(actions.len(), 4, "two events, each an alert and a publish");
        let temp = publish_body(&actions[1]);
        assert_eq!(
            temp,
            json!({
                "truck": "truck-7", "kind": "temperature", "state": "raised", "value": -3.5,
                "limit": -18.0, "ts": TS, "lat": 53.55, "lon": 9.99,
            })
        );
        let presence = publish_body(&actions[3]);
        assert_eq!(
            presence,
            json!({
                "truck": "truck-7", "kind": "presence", "state": "raised", "value": true,
                "limit": null, "ts": TS, "lat": 53.55, "lon": 9.99,
            })
        );
        let alert = actions[0].as_alert().unwrap();
        assert!(alert.body.contains("(at 53.55, 9.99)"), "{}", alert.body);

        // Without ts/lat/lon: the broker's time and nulls.
        let msg = Message::json("fleet/truck-8/telemetry", json!({"tempC": 0})).with_timestamp_ms(1234);
        let body = publish_body(&h.send(msg).unwrap()[1]);
        assert_eq!(
            (body["ts"].clone(), body["lat"].clone()),
            (json!(1234), Value::Null)
        );
    }

    #[test]
    fn republish_topic_is_configurable_or_off_and_the_registry_thing_wins() {
        let mut h = harness(&[("checks", "presence"), ("republish", "cold-chain/{thing}/events")]);
        let msg = reading_with("t1", json!({"presence": true})).with_thing_name("reg-truck");
        let actions = h.send(msg).unwrap();
        assert_eq!(actions[0].as_alert().unwrap().thing.as_deref(), Some("reg-truck"));
        let publish = actions[1].as_publish().unwrap();
        assert_eq!(publish.topic, "cold-chain/reg-truck/events");
        assert_eq!(publish_body(&actions[1])["truck"], "reg-truck");

        let mut quiet = harness(&[("checks", "presence"), ("republish", "")]);
        let actions = quiet.send(reading_with("t1", json!({"presence": true}))).unwrap();
        assert_eq!(actions.len(), 1);
        assert!(actions[0].as_alert().is_some());
    }

    #[test]
    fn disabled_checks_stay_quiet() {
        let mut h = harness(&[("checks", "door, presence")]);
        for _ in 0..5 {
            let hot = reading_with("t1", json!({"tempC": 10, "humidity": 99}));
            assert!(h.send(hot).unwrap().is_empty());
        }
        assert_eq!(
            h.send(reading_with("t1", json!({"presence": true})))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn malformed_payloads_are_rejected_without_touching_state() {
        let mut h = harness(&[]);
        for payload in [
            &b"not json"[..],
            b"[1,2]",
            b"42",
            br#"{"tempC":"warm"}"#,
            br#"{"tempC":-20,"door":"ajar"}"#,
            br#"{"presence":"yes"}"#,
            br#"{"speedKmh":"fast","door":"open"}"#,
            br#"{"ts":"yesterday","tempC":-20}"#,
        ] {
            let result = h.send(Message::new("fleet/t1/telemetry", payload));
            assert!(
                matches!(result, Err(PluginError::Rejected(_))),
                "{}: {result:?}",
                String::from_utf8_lossy(payload)
            );
        }
        assert_eq!(h.kv_keys(), [], "nothing stored");
        // Without any field a check needs: ignored, still nothing stored.
        let other = Message::json(
            "fleet/t1/telemetry",
            json!({"truck": "t1", "seq": 3, "route": "x"}),
        );
        assert!(h.send(other).unwrap().is_empty());
        assert_eq!(h.kv_keys(), []);
        // No truck anywhere.
        let nowhere = Message::json("telemetry", json!({"tempC": -20}));
        assert!(matches!(h.send(nowhere), Err(PluginError::Rejected(_))));
        // ...but the payload's `truck` names it when the topic does not.
        let mut h = harness(&[("checks", "presence"), ("thing_level", "3")]);
        let msg = Message::json("fleet/x/telemetry", json!({"truck": "t9", "presence": true}));
        assert_eq!(
            h.send(msg).unwrap()[0].as_alert().unwrap().thing.as_deref(),
            Some("t9")
        );
    }

    #[test]
    fn state_is_one_document_per_truck_that_survives_restarts_and_expires() {
        let mut h = harness(&[]);
        temps(&mut h, "t1", &[-10.0, -10.0]);
        h.send(reading_with("t1", json!({"presence": true}))).unwrap();
        assert_eq!(h.kv_keys(), [(Some("t1".to_string()), STATE_KEY.to_string())]);
        let state: TruckState = h.kv_get_json(Scope::Thing("t1"), STATE_KEY).unwrap();
        assert!(state.presence);
        assert_eq!((state.temperature.len, state.temperature.breaches()), (3, 2));

        h.restart().unwrap();
        assert_eq!(
            temps(&mut h, "t1", &[-10.0]),
            [
                ev("temperature", "raised", Severity::Critical),
                ev("presence", "recovered", Severity::Info)
            ],
            "the window and the open episode were in kv"
        );
        h.advance_secs(86_401);
        assert_eq!(
            temps(&mut h, "t1", &[-10.0, -10.0]),
            [],
            "a forgotten window starts over"
        );
        assert_eq!(
            h.send(reading_with("t1", json!({"presence": true})))
                .unwrap()
                .len(),
            2,
            "a forgotten episode is raised again"
        );
    }

    #[test]
    fn store_outages_are_failures() {
        let mut h = harness(&[]);
        h.set_kv_unavailable(Some("down"));
        assert!(matches!(
            h.send(reading_with("t1", json!({}))),
            Err(PluginError::Failed(_))
        ));
        h.set_kv_unavailable(None);
        h.fail_shadow_reads(Some("timeout"));
        assert!(matches!(
            h.send(reading_with("t1", json!({}))),
            Err(PluginError::Failed(_))
        ));
        // Door and presence alone do not need the shadow.
        let mut h = harness(&[("checks", "door,presence")]);
        h.fail_shadow_reads(Some("timeout"));
        assert!(h.send(reading_with("t1", json!({}))).unwrap().is_empty());
    }

    #[test]
    fn bad_configs_are_refused() {
        for config in [
            &[("checks", "temperature,smoke")][..],
            &[("checks", " , ")],
            &[("max_temp_c", "cold")],
            &[("max_temp_c", "NaN")],
            &[("temp_n", "6")],
            &[("humidity_n", "0")],
            &[("humidity_m", "65"), ("humidity_n", "3")],
            &[("temp_severity", "meh")],
            &[("moving_kmh", "-1")],
            &[("shadow_limits", "yes")],
            &[("republish", "fleet/{truck}/alerts")],
            &[("state_ttl_secs", "0")],
            &[("checks", "corridor,wifi")],
            &[("corridor_n", "4")],
            &[("corridor_m", "0")],
            &[("corridor_m", "65"), ("corridor_n", "2")],
            &[("corridor_width_m", "0")],
            &[("corridor_width_m", "-5")],
            &[("corridor_width_m", "inf")],
            &[("corridor_width_m", "wide")],
            &[("corridor_severity", "loud")],
            &[("route_shadow", "")],
            &[("route_shadow", "my route")],
            &[("route_shadow", "a/b")],
            &[("route_shadow", &"r".repeat(65))],
            &[("connectivity_ignore", "CLIENT_INITIATED")],
            &[("connectivity_ignore", "client_initiated_disconnect")],
            &[("connectivity_severity", "urgent")],
        ] {
            assert!(
                matches!(
                    Harness::<ColdChainAlerts>::new(config),
                    Err(PluginError::Config(_))
                ),
                "{config:?}"
            );
        }
        // Off checks are validated too; these are fine.
        for config in [
            &[("checks", "corridor, connectivity")][..],
            &[
                ("checks", "connectivity"),
                ("corridor_n", "3"),
                ("corridor_m", "3"),
            ],
            &[("checks", "door"), ("route_shadow", "plan")],
            &[("connectivity_ignore", "")],
            &[(
                "connectivity_ignore",
                "CLIENT_INITIATED_DISCONNECT,API_INITIATED_DISCONNECT",
            )],
            &[("route_shadow", " route-v2:$eu ")],
            &[("corridor_width_m", "500.5"), ("corridor_severity", "info")],
        ] {
            assert!(Harness::<ColdChainAlerts>::new(config).is_ok(), "{config:?}");
        }
        assert!(matches!(
            Harness::<ColdChainAlerts>::new(&[("checks", "connectivity"), ("corridor_n", "9")]),
            Err(PluginError::Config(m)) if m.contains("corridor_n")
        ));
    }
    // --- corridor ---

    /// A simplified Hamburg–Copenhagen route: Hamburg, Kiel, Fehmarn, Copenhagen.
    const ROUTE: [(f64, f64); 4] = [
        (53.5511, 9.9937),
        (54.3233, 10.1228),
        (54.4500, 11.1900),
        (55.6761, 12.5683),
    ];
    /// Near the route, between Hamburg and Kiel.
    const ON: (f64, f64) = (53.9400, 10.0600);
    /// About 5 km east of the route, between Hamburg and Kiel.
    const OFF: (f64, f64) = (53.9400, 10.1350);

    /// The route shadow's document, with `desired` fields replaced or added.
    fn route_doc(fields: Value) -> Value {
        let points: Vec<[f64; 2]> = ROUTE.iter().map(|&(lat, lon)| [lat, lon]).collect();
        let mut desired = json!({"name": "hamburg-copenhagen", "points": points, "corridorM": 2000});
        for (k, v) in fields.as_object().unwrap() {
            desired[k] = v.clone();
        }
        json!({"state": {"desired": desired}, "version": 3})
    }

    /// A reading of `truck` at `position`.
    fn at(truck: &str, (lat, lon): (f64, f64)) -> Message {
        reading_with(truck, json!({"lat": lat, "lon": lon}))
    }

    fn off_m(position: (f64, f64)) -> f64 {
        shoal_sdk::geo::distance_to_polyline_m(position, &ROUTE)
    }

    fn state_of(h: &Harness<ColdChainAlerts>, truck: &str) -> TruckState {
        h.kv_get_json(Scope::Thing(truck), STATE_KEY).unwrap()
    }

    #[test]
    fn corridor_two_of_three_raises_once_then_recovers_once() {
        assert!(off_m(ON) < 500.0 && (4_000.0..6_000.0).contains(&off_m(OFF)));
        let mut h = harness(&[]);
        h.set_shadow("truck-7", Some("route"), route_doc(json!({})));
        let go = |h: &mut Harness<ColdChainAlerts>, position| {
            let actions = h.send(at("truck-7", position)).unwrap();
            (events("truck-7", &actions), actions)
        };
        assert_eq!(go(&mut h, ON).0, []);
        assert_eq!(go(&mut h, OFF).0, [], "one of three is a blip");
        h.restart().unwrap();
        assert_eq!(go(&mut h, ON).0, []);
        // OFF, ON, OFF: two of the last three, and the window survived the restart.
        let (got, actions) = go(&mut h, OFF);
        assert_eq!(got, [ev("corridor", "raised", Severity::Warning)]);
        let metres = off_m(OFF).round();
        assert_eq!(
            publish_body(&actions[1]),
            json!({
                "truck": "truck-7", "kind": "corridor", "state": "raised", "value": metres as u64,
                "limit": 2000.0, "ts": TS, "lat": OFF.0, "lon": OFF.1,
            })
        );
        let alert = actions[0].as_alert().unwrap();
        assert_eq!(
            alert.title,
            format!("truck-7: {metres} m off the planned route hamburg-copenhagen (corridor 2000 m)")
        );
        assert!(alert.body.contains("2 of the last 3 positions"), "{}", alert.body);
        assert_eq!(go(&mut h, OFF).0, [], "still off: no repeat");
        assert_eq!(go(&mut h, ON).0, [], "OFF, OFF, ON: still two of three");
        let (got, actions) = go(&mut h, ON);
        assert_eq!(got, [ev("corridor", "recovered", Severity::Info)]);
        assert_eq!(
            actions[0].as_alert().unwrap().title,
            "truck-7: back within 2000 m of the planned route hamburg-copenhagen"
        );
        let body = publish_body(&actions[1]);
        assert_eq!(
            (body["value"].clone(), body["limit"].clone()),
            (json!(off_m(ON).round() as u64), json!(2000.0))
        );
        assert_eq!(go(&mut h, ON).0, [], "one recovery only");
        assert_eq!(h.counter("alerts_raised"), 1);
        assert_eq!(h.counter("alerts_recovered"), 1);
    }

    #[test]
    fn corridor_width_and_route_come_from_the_shadow_or_the_config() {
        let config = [("checks", "corridor"), ("corridor_n", "1"), ("corridor_m", "1")];
        let mut h = harness(&config);
        // A wider corridor in the route: 5 km off is inside 10 km.
        h.set_shadow("t1", Some("route"), route_doc(json!({"corridorM": 10_000})));
        assert_eq!(events("t1", &h.send(at("t1", OFF)).unwrap()), []);
        // Nothing is cached: a narrower one applies to the next reading.
        h.set_shadow("t1", Some("route"), route_doc(json!({"corridorM": 4_000.5})));
        let actions = h.send(at("t1", OFF)).unwrap();
        assert_eq!(
            events("t1", &actions),
            [ev("corridor", "raised", Severity::Warning)]
        );
        assert_eq!(publish_body(&actions[1])["limit"], json!(4_000.5));
        assert!(
            actions[0]
                .as_alert()
                .unwrap()
                .title
                .ends_with("(corridor 4000.5 m)")
        );

        // Without corridorM, or with one that is not a positive number: the configuration's.
        let mut h = harness(&[
            ("checks", "corridor"),
            ("corridor_n", "1"),
            ("corridor_m", "1"),
            ("corridor_width_m", "6000"),
            ("corridor_severity", "critical"),
        ]);
        h.set_shadow("t1", Some("route"), route_doc(json!({"corridorM": null})));
        assert_eq!(events("t1", &h.send(at("t1", OFF)).unwrap()), []);
        for bad in [json!("wide"), json!(0), json!(-500), json!([1])] {
            h.take_logs();
            h.set_shadow("t1", Some("route"), route_doc(json!({"corridorM": bad})));
            assert_eq!(events("t1", &h.send(at("t1", OFF)).unwrap()), [], "{bad}");
            assert!(
                h.logs().iter().any(|l| l.message.contains("corridorM")),
                "{bad} is logged"
            );
        }
        h.set_shadow("t1", Some("route"), route_doc(json!({"corridorM": 3000})));
        assert_eq!(
            events("t1", &h.send(at("t1", OFF)).unwrap()),
            [ev("corridor", "raised", Severity::Critical)]
        );

        // Another shadow name; a route without a name.
        let mut h = harness(&[
            ("checks", "corridor"),
            ("corridor_n", "1"),
            ("corridor_m", "1"),
            ("route_shadow", "plan"),
        ]);
        h.set_shadow("t1", Some("route"), route_doc(json!({"corridorM": 1})));
        assert_eq!(
            events("t1", &h.send(at("t1", ON)).unwrap()),
            [],
            "not the configured shadow"
        );
        h.set_shadow("t1", Some("plan"), route_doc(json!({"name": null})));
        let actions = h.send(at("t1", OFF)).unwrap();
        assert!(
            actions[0]
                .as_alert()
                .unwrap()
                .title
                .contains("m off the planned route (corridor 2000 m)"),
            "{:?}",
            actions[0]
        );
    }

    #[test]
    fn corridor_skips_readings_without_a_usable_route_or_position() {
        let mut h = harness(&[("checks", "corridor"), ("corridor_n", "1"), ("corridor_m", "1")]);
        let skipped = |h: &mut Harness<ColdChainAlerts>, msg: Message| {
            assert_eq!(events("t1", &h.send(msg).unwrap()), []);
            let state: Option<TruckState> = h.kv_get_json(Scope::Thing("t1"), STATE_KEY);
            assert_eq!(
                state.unwrap_or_default().corridor,
                Window::default(),
                "window unchanged"
            );
        };
        // No route shadow at all.
        skipped(&mut h, at("t1", OFF));
        // No points, or no desired state: skipped quietly.
        for doc in [
            json!({"state": {"reported": {"points": [[0, 0]]}}}),
            route_doc(json!({"points": null})),
            route_doc(json!({"points": []})),
            json!({"state": {"desired": {"name": "depot"}}}),
        ] {
            h.take_logs();
            h.set_shadow("t1", Some("route"), doc);
            skipped(&mut h, at("t1", OFF));
            assert_eq!(h.logs(), [], "nothing to warn about");
        }
        // Malformed points: one warning per reading.
        for points in [
            json!("hamburg, kiel"),
            json!({"0": [53.5, 9.9]}),
            json!([[53.5, 9.9], [54.3]]),
            json!([[53.5, 9.9, 0.0]]),
            json!([["53.5", "9.9"]]),
            json!([[91.0, 9.9]]),
            json!([[53.5, -180.5]]),
            json!([null]),
        ] {
            h.take_logs();
            h.set_shadow("t1", Some("route"), route_doc(json!({"points": points})));
            skipped(&mut h, at("t1", OFF));
            let warnings: Vec<_> = h
                .logs()
                .into_iter()
                .filter(|l| l.level == shoal_sdk::log::Level::Warn)
                .collect();
            assert_eq!(warnings.len(), 1, "{points}: {warnings:?}");
            assert!(warnings[0].message.contains("desired.points"), "{warnings:?}");
        }
        // A usable route, but readings without a (valid) position.
        h.set_shadow("t1", Some("route"), route_doc(json!({})));
        h.take_logs();
        skipped(&mut h, reading_with("t1", json!({"lat": null})));
        let mut r = reading("t1");
        r.as_object_mut().unwrap().remove("lon");
        skipped(&mut h, Message::json("fleet/t1/telemetry", r));
        assert_eq!(h.logs(), []);
        skipped(&mut h, reading_with("t1", json!({"lat": 123.0})));
        assert!(h.logs().iter().any(|l| l.message.contains("out of range")));
        // The range is inclusive.
        h.set_shadow(
            "t1",
            Some("route"),
            route_doc(json!({"points": [[90, 180], [-90, -180]]})),
        );
        assert_eq!(h.send(at("t1", (0.0, 0.0))).unwrap().len(), 2);
        // The route shadow unreadable: a failure.
        h.fail_shadow_reads(Some("timeout"));
        assert!(matches!(h.send(at("t1", OFF)), Err(PluginError::Failed(_))));
        // ...but nothing reads it for a reading without a position.
        assert!(
            h.send(reading_with("t1", json!({"lat": null})))
                .unwrap()
                .is_empty()
        );
    }

    // --- connectivity ---

    /// A lifecycle event as the broker publishes it (its broker time is its `timestamp`):
    /// `connected` when `reason` is `None`.
    fn lifecycle(client: &str, version: u64, at_ms: u64, reason: Option<&str>) -> Message {
        let kind = if reason.is_some() {
            "disconnected"
        } else {
            "connected"
        };
        let mut doc = json!({
            "clientId": client, "timestamp": at_ms, "eventType": kind,
            "sessionIdentifier": format!("{version:032x}"), "principalIdentifier": "3f2a9c",
            "versionNumber": version,
        });
        match reason {
            Some(reason) => {
                doc["clientInitiatedDisconnect"] = json!(reason == "CLIENT_INITIATED_DISCONNECT");
                doc["disconnectReason"] = json!(reason);
            }
            None => doc["ipAddress"] = json!("192.0.2.7"),
        }
        Message::json(format!("$aws/events/presence/{kind}/{client}"), doc)
            .with_client_id(client)
            .with_timestamp_ms(at_ms)
    }

    fn connected(client: &str, version: u64, at_ms: u64) -> Message {
        lifecycle(client, version, at_ms, None)
    }

    fn disconnected(client: &str, version: u64, at_ms: u64, reason: &str) -> Message {
        lifecycle(client, version, at_ms, Some(reason))
    }

    #[test]
    fn connection_loss_raises_once_and_reconnection_recovers_once() {
        let mut h = harness(&[]);
        // The last reading with a position is where the truck was last seen.
        h.send(reading_with("truck-7", json!({"lat": 54.1, "lon": 10.2})))
            .unwrap();
        h.send(reading_with("truck-7", json!({"lat": null, "lon": null})))
            .unwrap();
        assert_eq!(
            events("truck-7", &h.send(connected("truck-7", 5, TS)).unwrap()),
            []
        );
        h.advance_secs(60);
        let lost_at = h.now_ms();
        let actions = h
            .send(disconnected("truck-7", 5, lost_at, "MQTT_KEEP_ALIVE_TIMEOUT"))
            .unwrap();
        assert_eq!(
            events("truck-7", &actions),
            [ev("connectivity", "raised", Severity::Warning)]
        );
        assert_eq!(
            publish_body(&actions[1]),
            json!({
                "truck": "truck-7", "kind": "connectivity", "state": "raised",
                "value": "MQTT_KEEP_ALIVE_TIMEOUT", "limit": null, "ts": lost_at,
                "lat": 54.1, "lon": 10.2,
            })
        );
        let alert = actions[0].as_alert().unwrap();
        assert_eq!(alert.title, "truck-7: connection lost (MQTT_KEEP_ALIVE_TIMEOUT)");
        assert!(
            alert
                .body
                .contains("last known position 54.1, 10.2, reported 1 min 0 s before"),
            "{}",
            alert.body
        );
        // A duplicate, or another loss: no repeat.
        assert_eq!(
            h.send(disconnected("truck-7", 5, lost_at, "MQTT_KEEP_ALIVE_TIMEOUT"))
                .unwrap(),
            []
        );
        assert_eq!(
            h.send(disconnected("truck-7", 6, lost_at + 5, "CONNECTION_LOST"))
                .unwrap(),
            []
        );
        // The open alert is in kv.
        h.restart().unwrap();
        h.advance_secs(95);
        let actions = h.send(connected("truck-7", 7, h.now_ms())).unwrap();
        assert_eq!(
            events("truck-7", &actions),
            [ev("connectivity", "recovered", Severity::Info)]
        );
        assert_eq!(
            publish_body(&actions[1]),
            json!({
                "truck": "truck-7", "kind": "connectivity", "state": "recovered", "value": 95,
                "limit": null, "ts": lost_at + 95_000, "lat": 54.1, "lon": 10.2,
            })
        );
        assert_eq!(
            actions[0].as_alert().unwrap().title,
            "truck-7: connected again after 1 min 35 s"
        );
        assert_eq!(h.send(connected("truck-7", 7, h.now_ms())).unwrap(), [], "once");
        assert_eq!(
            events("truck-7", &h.send(reading_with("truck-7", json!({}))).unwrap()),
            []
        );
        assert_eq!(h.counter("alerts_raised"), 1);
        assert_eq!(h.counter("alerts_recovered"), 1);
        // The next loss raises again; without any known position, lat/lon are null.
        let mut h = harness(&[("checks", "connectivity"), ("connectivity_severity", "critical")]);
        let actions = h.send(disconnected("truck-8", 2, TS, "CONNECTION_LOST")).unwrap();
        assert_eq!(
            events("truck-8", &actions),
            [ev("connectivity", "raised", Severity::Critical)]
        );
        let body = publish_body(&actions[1]);
        assert_eq!(
            (body["lat"].clone(), body["lon"].clone()),
            (Value::Null, Value::Null)
        );
        assert!(actions[0].as_alert().unwrap().body.contains("no known position"));
    }

    #[test]
    fn clean_stale_and_early_messages_do_not_raise_or_recover() {
        let mut h = harness(&[("checks", "connectivity")]);
        let send = |h: &mut Harness<ColdChainAlerts>, msg| events("t1", &h.send(msg).unwrap());
        // Switched off cleanly: not a loss.
        assert_eq!(send(&mut h, connected("t1", 7, TS)), []);
        assert_eq!(
            send(
                &mut h,
                disconnected("t1", 7, TS + 1_000, "CLIENT_INITIATED_DISCONNECT")
            ),
            []
        );
        // Connection 8 took the client id over; connection 7's late disconnection is stale.
        assert_eq!(send(&mut h, connected("t1", 8, TS + 2_000)), []);
        h.take_logs();
        assert_eq!(
            send(&mut h, disconnected("t1", 7, TS + 2_001, "DUPLICATE_CLIENTID")),
            []
        );
        assert!(h.logs().iter().any(|l| l.message.contains("stale")));
        assert_eq!(state_of(&h, "t1").link.lost, None);
        // Connection 8 lost.
        h.set_now_ms(TS + 10_000);
        assert_eq!(
            send(&mut h, disconnected("t1", 8, TS + 10_000, "CONNECTION_LOST")),
            [ev("connectivity", "raised", Severity::Warning)]
        );
        // A connected event of that connection or an older one (out of order): not a recovery.
        assert_eq!(send(&mut h, connected("t1", 8, TS + 11_000)), []);
        assert_eq!(send(&mut h, connected("t1", 6, TS + 11_000)), []);
        // A reading the broker received before the disconnection: not a recovery either.
        let early = reading_with("t1", json!({})).with_timestamp_ms(TS + 9_000);
        assert_eq!(send(&mut h, early), []);
        // A reading received after it is: the truck is back (its connected event got lost).
        let actions = h
            .send(reading_with("t1", json!({"lat": 55.0, "lon": 12.0})).with_timestamp_ms(TS + 40_400))
            .unwrap();
        assert_eq!(
            events("t1", &actions),
            [ev("connectivity", "recovered", Severity::Info)]
        );
        let body = publish_body(&actions[1]);
        assert_eq!(
            (body["value"].clone(), body["ts"].clone(), body["lat"].clone()),
            (json!(30), json!(TS), json!(55.0)),
            "the reading's ts and position"
        );
        assert!(
            actions[0]
                .as_alert()
                .unwrap()
                .title
                .contains("reporting again after 30 s")
        );
        assert_eq!(send(&mut h, reading_with("t1", json!({}))), [], "once");

        // What is ignored is configurable; empty: every disconnection is a loss.
        let mut h = harness(&[("checks", "connectivity"), ("connectivity_ignore", "")]);
        assert_eq!(
            send(&mut h, disconnected("t1", 1, TS, "CLIENT_INITIATED_DISCONNECT")).len(),
            1
        );
        let mut h = harness(&[
            ("checks", "connectivity"),
            (
                "connectivity_ignore",
                " SERVER_INITIATED_DISCONNECT , MQTT_KEEP_ALIVE_TIMEOUT",
            ),
        ]);
        assert_eq!(
            send(&mut h, disconnected("t1", 1, TS, "SERVER_INITIATED_DISCONNECT")),
            []
        );
        assert_eq!(
            send(&mut h, disconnected("t1", 1, TS, "MQTT_KEEP_ALIVE_TIMEOUT")),
            []
        );
        assert_eq!(
            send(&mut h, disconnected("t1", 1, TS, "CLIENT_INITIATED_DISCONNECT")),
            [ev("connectivity", "raised", Severity::Warning)]
        );
    }

    #[test]
    fn lifecycle_events_name_the_truck_by_thing_client_id_or_topic() {
        let mut h = harness(&[("checks", "connectivity")]);
        let msg = disconnected("client-9", 1, TS, "CONNECTION_LOST").with_thing_name("truck-9");
        let actions = h.send(msg).unwrap();
        assert_eq!(events("truck-9", &actions).len(), 1, "the registry thing wins");
        assert!(state_of(&h, "truck-9").link.lost.is_some());
        let actions = h.send(disconnected("t2", 1, TS, "CONNECTION_LOST")).unwrap();
        assert_eq!(events("t2", &actions).len(), 1, "else the clientId");
        let mut doc: Value =
            serde_json::from_slice(disconnected("x", 1, TS, "CONNECTION_LOST").payload()).unwrap();
        doc.as_object_mut().unwrap().remove("clientId");
        let msg = Message::json("$aws/events/presence/disconnected/t3", doc.clone());
        assert_eq!(events("t3", &h.send(msg).unwrap()).len(), 1, "else the topic");
        let msg = Message::json("$aws/events/presence/disconnected/", doc);
        assert!(matches!(h.send(msg), Err(PluginError::Rejected(_))), "else none");
        // Lifecycle events are never readings, whatever `thing_level` says.
        let mut h = harness(&[("thing_level", "3")]);
        assert_eq!(h.send(connected("t4", 1, TS)).unwrap(), []);
        assert_eq!(h.kv_keys(), [(Some("t4".to_string()), STATE_KEY.to_string())]);
    }

    #[test]
    fn malformed_lifecycle_events_are_rejected_without_touching_state() {
        let mut h = harness(&[]);
        h.send(reading_with("t1", json!({}))).unwrap();
        h.send(connected("t1", 5, TS)).unwrap();
        let before = h.kv_get(Scope::Thing("t1"), STATE_KEY).unwrap();
        let good = |kind: &str| {
            let reason = (kind == "disconnected").then_some("CONNECTION_LOST");
            serde_json::from_slice::<Value>(lifecycle("t1", 6, TS, reason).payload()).unwrap()
        };
        let with = |kind: &str, field: &str, value: Value| {
            let mut doc = good(kind);
            if value.is_null() {
                doc.as_object_mut().unwrap().remove(field);
            } else {
                doc[field] = value;
            }
            doc.to_string().into_bytes()
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("connected", b"not json".to_vec()),
            ("connected", b"[1,2]".to_vec()),
            ("connected", b"\"connected\"".to_vec()),
            ("connected", with("connected", "timestamp", Value::Null)),
            ("connected", with("connected", "timestamp", json!("now"))),
            ("connected", with("connected", "versionNumber", Value::Null)),
            ("connected", with("connected", "versionNumber", json!(-1))),
            ("connected", with("connected", "eventType", Value::Null)),
            ("connected", with("connected", "eventType", json!("disconnected"))),
            ("connected", with("connected", "clientId", json!(7))),
            (
                "disconnected",
                with("disconnected", "disconnectReason", Value::Null),
            ),
            (
                "disconnected",
                with("disconnected", "disconnectReason", json!("")),
            ),
            (
                "disconnected",
                with("disconnected", "disconnectReason", json!(42)),
            ),
            ("subscribed", with("connected", "eventType", json!("subscribed"))),
        ];
        for (kind, payload) in cases {
            let msg = Message::new(format!("$aws/events/presence/{kind}/t1"), payload.clone());
            let result = h.send(msg);
            assert!(
                matches!(&result, Err(PluginError::Rejected(why)) if why.starts_with("lifecycle event on $aws/events/presence/")),
                "{kind}: {}: {result:?}",
                String::from_utf8_lossy(&payload)
            );
        }
        assert_eq!(
            h.kv_get(Scope::Thing("t1"), STATE_KEY).unwrap(),
            before,
            "untouched"
        );
        let Err(PluginError::Rejected(why)) = h.send(Message::new(
            "$aws/events/presence/connected/t1",
            with("connected", "versionNumber", Value::Null),
        )) else {
            panic!()
        };
        assert!(why.contains("versionNumber"), "{why}");

        // With the check off, lifecycle events are ignored, but malformed ones still rejected.
        let mut h = harness(&[("checks", "temperature")]);
        let msg = disconnected("t1", 1, TS, "CONNECTION_LOST");
        assert_eq!(h.send(msg).unwrap(), []);
        assert_eq!(h.kv_keys(), []);
        let msg = Message::new("$aws/events/presence/connected/t1", "{}");
        assert!(matches!(h.send(msg), Err(PluginError::Rejected(_))));
    }

    #[test]
    fn documents_of_the_previous_version_load() {
        let mut h = harness(&[]);
        // As the version without corridor and connectivity wrote it: two hot readings of two,
        // a door alert open.
        let old = br#"{"temperature":{"bits":3,"len":2,"alerting":false},"humidity":{"bits":0,"len":1,"alerting":false},"door_open":true,"presence":false}"#;
        h.kv_set(Scope::Thing("t1"), STATE_KEY, old, Some(86_400));
        let actions = h
            .send(reading_with("t1", json!({"tempC": -10.0, "door": "closed"})))
            .unwrap();
        assert_eq!(
            events("t1", &actions),
            [
                ev("temperature", "raised", Severity::Critical),
                ev("door", "recovered", Severity::Info)
            ]
        );
        let state = state_of(&h, "t1");
        assert_eq!((state.temperature.len, state.temperature.breaches()), (3, 3));
        assert_eq!(state.corridor, Window::default());
        assert_eq!(state.link, Link::default());
        assert_eq!(
            state.position,
            Some(Fix {
                lat: 53.55,
                lon: 9.99,
                ts: TS
            })
        );
        // The connectivity part starts empty and works.
        h.send(connected("t1", 3, TS)).unwrap();
        assert_eq!(
            events("t1", &h.send(disconnected("t1", 3, TS, "THROTTLED")).unwrap()),
            [ev("connectivity", "raised", Severity::Warning)]
        );
    }

    #[test]
    fn the_last_position_is_the_latest_reading_with_one() {
        let mut h = harness(&[("checks", "connectivity")]);
        let send = |h: &mut Harness<ColdChainAlerts>, fields: Value| {
            h.send(reading_with("t1", fields)).unwrap();
            state_of(h, "t1").position.map(|p| (p.lat, p.lon, p.ts))
        };
        assert_eq!(
            send(&mut h, json!({"lat": 54.0, "lon": 10.0, "ts": 2_000})),
            Some((54.0, 10.0, 2_000))
        );
        assert_eq!(
            send(&mut h, json!({"lat": 54.5, "lon": 10.5, "ts": 1_000})),
            Some((54.0, 10.0, 2_000)),
            "an older reading"
        );
        assert_eq!(
            send(&mut h, json!({"lat": 91.0, "lon": 10.5, "ts": 3_000})),
            Some((54.0, 10.0, 2_000)),
            "out of range"
        );
        assert_eq!(
            send(&mut h, json!({"lat": null, "ts": 3_000})),
            Some((54.0, 10.0, 2_000))
        );
        let mut r = reading("t1");
        r.as_object_mut().unwrap().remove("ts");
        h.send(Message::json("fleet/t1/telemetry", r).with_timestamp_ms(5_000))
            .unwrap();
        assert_eq!(
            state_of(&h, "t1").position.map(|p| p.ts),
            Some(5_000),
            "else the broker's time"
        );
        // Other checks off: connectivity alone needs no shadow.
        h.fail_shadow_reads(Some("timeout"));
        assert!(h.send(reading_with("t1", json!({}))).unwrap().is_empty());
        // Without connectivity, positions are not kept.
        let mut h = harness(&[("checks", "presence,corridor")]);
        h.send(reading_with("t1", json!({}))).unwrap();
        assert_eq!(h.kv_keys(), [], "nothing to remember");
    }

    // --- silence ---

    /// A silence message as the broker publishes it when `truck`'s watchdog, armed by the
    /// reading it received at `last_seen`, fires at `at_ms` (from `$watchdog`, no thing name).
    fn silence(truck: &str, last_seen: u64, at_ms: u64) -> Message {
        Message::json(
            format!("fleet/{truck}/silence"),
            json!({"truck": truck, "lastSeen": last_seen, "timeoutMs": 180_000}),
        )
        .with_client_id("$watchdog")
        .with_timestamp_ms(at_ms)
    }

    /// `actions` without the watchdog publishes (to `$shoal/watchdog/...`), and those.
    fn split_watchdogs(actions: Vec<Action>) -> (Vec<Action>, Vec<Publish>) {
        let (watchdogs, rest): (Vec<Action>, Vec<Action>) = actions.into_iter().partition(|a| {
            a.as_publish()
                .is_some_and(|p| p.topic.starts_with(WATCHDOG_PREFIX))
        });
        let watchdogs = watchdogs
            .iter()
            .map(|a| a.as_publish().unwrap().clone())
            .collect();
        (rest, watchdogs)
    }

    /// The one arming among `actions`, the last one: its topic and JSON, checking it is QoS 0.
    fn arming(actions: &[Action]) -> (String, Value) {
        let (_, watchdogs) = split_watchdogs(actions.to_vec());
        assert_eq!(watchdogs.len(), 1, "{actions:?}");
        assert_eq!(actions.last().and_then(Action::as_publish), Some(&watchdogs[0]));
        let publish = &watchdogs[0];
        assert_eq!((publish.qos, publish.retain), (0, false));
        (
            publish.topic.clone(),
            serde_json::from_slice(&publish.payload).unwrap(),
        )
    }

    /// The `timeoutMs` a reading of `truck` arms its watchdog with.
    fn timeout(h: &mut Harness<ColdChainAlerts>, truck: &str) -> u64 {
        let (_, doc) = arming(&h.send(reading_with(truck, json!({}))).unwrap());
        assert_eq!(doc["payload"]["timeoutMs"], doc["timeoutMs"]);
        doc["timeoutMs"].as_u64().unwrap()
    }

    /// Whether `action` cancels `truck`'s watchdog (the default name): an empty QoS 0 publish.
    fn is_cancel(action: &Action, truck: &str) -> bool {
        action.as_publish().is_some_and(|p| {
            p.topic == format!("$shoal/watchdog/cold-chain/{truck}")
                && p.payload.is_empty()
                && p.qos == 0
                && !p.retain
        })
    }

    #[test]
    fn readings_arm_the_watchdog_with_k_reporting_intervals() {
        let mut h = harness(&[("silence_intervals", "3")]);
        let rx = h.now_ms();
        let actions = h.send(reading_with("truck-7", json!({}))).unwrap();
        assert_eq!(actions.len(), 1, "no alert, one arming");
        let (topic, doc) = arming(&actions);
        assert_eq!(topic, "$shoal/watchdog/cold-chain/truck-7");
        assert_eq!(
            doc,
            json!({
                "timeoutMs": 180_000, "topic": "fleet/truck-7/silence",
                "payload": {"truck": "truck-7", "lastSeen": rx, "timeoutMs": 180_000},
            }),
            "3 × the default 60 s"
        );
        assert_eq!(state_of(&h, "truck-7").link.last_rx_ms, Some(rx));
        // The broker's receive time, not the reading's `ts`.
        let msg = reading_with("truck-7", json!({"ts": 5})).with_timestamp_ms(rx + 2_000);
        let (_, doc) = arming(&h.send(msg).unwrap());
        assert_eq!(doc["payload"]["lastSeen"], json!(rx + 2_000));
        assert_eq!(state_of(&h, "truck-7").link.last_rx_ms, Some(rx + 2_000));

        // The shadow's reported interval, else its desired one (read with the maxima).
        h.set_shadow(
            "t1",
            None,
            json!({"state": {"reported": {"interval": 10}, "desired": {"interval": 20}}}),
        );
        assert_eq!(timeout(&mut h, "t1"), 30_000);
        h.set_shadow(
            "t1",
            None,
            json!({"state": {"desired": {"interval": 20, "maxTempC": -10}}}),
        );
        assert_eq!(timeout(&mut h, "t1"), 60_000, "the desired one");
        h.set_reported("t1", json!({"interval": 2.5}));
        assert_eq!(timeout(&mut h, "t1"), 7_500);
        // Values that are not a positive number are logged and skipped.
        for bad in [json!("10"), json!(0), json!(-10), json!(true), json!({"s": 5})] {
            h.take_logs();
            h.set_shadow(
                "t1",
                None,
                json!({"state": {"reported": {"interval": bad}, "desired": {"interval": 20}}}),
            );
            assert_eq!(timeout(&mut h, "t1"), 60_000, "{bad}");
            assert!(
                h.logs().iter().any(|l| l.message.contains("reported.interval")),
                "{bad}: {:?}",
                h.logs()
            );
            h.set_reported("t1", json!({"interval": bad}));
            assert_eq!(timeout(&mut h, "t1"), 180_000, "{bad}: the configured interval");
        }
        h.take_logs();
        h.set_reported("t1", json!({"interval": null}));
        assert_eq!(timeout(&mut h, "t1"), 180_000);
        assert_eq!(h.logs(), [], "null is absent");
        // Nothing is cached; the broker takes at most 30 days.
        h.remove_shadow("t1", None);
        assert_eq!(timeout(&mut h, "t1"), 180_000);
        h.set_reported("t1", json!({"interval": 1e12}));
        assert_eq!(timeout(&mut h, "t1"), MAX_TIMEOUT_MS);

        // The trucks' clock: interval / time_scale real seconds; silence_min_ms is the floor.
        let mut h = harness(&[
            ("silence_intervals", "3"),
            ("time_scale", "60"),
            ("interval_s", "30"),
        ]);
        assert_eq!(timeout(&mut h, "t1"), 1_500, "3 × 30 s / 60");
        h.set_reported("t1", json!({"interval": 10}));
        assert_eq!(timeout(&mut h, "t1"), 1_000, "500 ms is under the floor");
        let mut h = harness(&[
            ("silence_intervals", "5"),
            ("time_scale", "60"),
            ("silence_min_ms", "100"),
        ]);
        h.set_reported("t1", json!({"interval": 5}));
        assert_eq!(timeout(&mut h, "t1"), 417, "416.7 rounded");

        // Read for the interval even without maxima to judge, from `shadow_name`'s shadow.
        let mut h = harness(&[
            ("silence_intervals", "2"),
            ("shadow_limits", "false"),
            ("shadow_name", "reefer"),
            ("interval_field", "periodS"),
        ]);
        h.set_shadow(
            "t1",
            Some("reefer"),
            json!({"state": {"reported": {"periodS": 15, "interval": 99}}}),
        );
        h.set_reported("t1", json!({"periodS": 99}));
        assert_eq!(timeout(&mut h, "t1"), 30_000);
        let mut h = harness(&[("checks", "connectivity"), ("silence_intervals", "2")]);
        h.fail_shadow_reads(Some("timeout"));
        assert!(
            matches!(h.send(reading_with("t1", json!({}))), Err(PluginError::Failed(_))),
            "read for the interval"
        );
        // An empty `interval_field`: never read, the configured interval.
        let mut h = harness(&[
            ("checks", "connectivity"),
            ("silence_intervals", "2"),
            ("interval_field", ""),
            ("interval_s", "45"),
        ]);
        h.fail_shadow_reads(Some("timeout"));
        assert_eq!(timeout(&mut h, "t1"), 90_000);

        // Other templates; the arming comes after the events.
        let mut h = harness(&[
            ("checks", "presence,connectivity"),
            ("silence_intervals", "1"),
            ("silence_watchdog", " wd/{thing}-quiet "),
            ("silence_topic", "cold/{thing}/quiet"),
        ]);
        let actions = h.send(reading_with("t1", json!({"presence": true}))).unwrap();
        assert_eq!(actions.len(), 3);
        assert_eq!(
            events("t1", &actions[..2]),
            [ev("presence", "raised", Severity::Critical)]
        );
        let (topic, doc) = arming(&actions);
        assert_eq!(topic, "$shoal/watchdog/wd/t1-quiet");
        assert_eq!(
            (doc["topic"].clone(), doc["timeoutMs"].clone()),
            (json!("cold/t1/quiet"), json!(60_000))
        );
        // A truck whose name is not one topic level gets no watchdog (logged).
        h.take_logs();
        let msg = Message::json("telemetry", json!({"truck": "a/b", "presence": false}));
        assert_eq!(h.send(msg).unwrap(), []);
        assert!(
            h.logs().iter().any(|l| l.message.contains("no silence watchdog")),
            "{:?}",
            h.logs()
        );
    }

    #[test]
    fn silence_detection_off_means_no_watchdog_traffic() {
        for config in [
            &[][..],
            &[("silence_intervals", "0")],
            &[("silence_intervals", "3"), ("checks", "temperature,presence")],
        ] {
            let mut h = harness(config);
            let mut all = Vec::new();
            all.extend(h.send(connected("t1", 1, TS)).unwrap());
            all.extend(h.send(reading_with("t1", json!({"presence": true}))).unwrap());
            all.extend(
                h.send(disconnected("t1", 1, TS + 1, "CLIENT_INITIATED_DISCONNECT"))
                    .unwrap(),
            );
            all.extend(h.send(disconnected("t1", 1, TS + 2, "CONNECTION_LOST")).unwrap());
            all.extend(h.send(reading_with("t1", json!({}))).unwrap());
            assert_eq!(split_watchdogs(all).1, [], "{config:?}");
            let state: TruckState = h.kv_get_json(Scope::Thing("t1"), STATE_KEY).unwrap();
            assert_eq!(state.link.last_rx_ms, None, "{config:?}");
            // A silence message is ignored (not taken for a reading, which would recover).
            h.send(disconnected("t1", 1, TS + 3, "CONNECTION_LOST")).unwrap();
            assert_eq!(h.send(silence("t1", TS, TS + 200_000)).unwrap(), [], "{config:?}");
        }
    }

    #[test]
    fn a_silent_truck_raises_no_telemetry_once_and_its_next_reading_recovers() {
        let mut h = harness(&[("checks", "connectivity"), ("silence_intervals", "3")]);
        h.send(connected("truck-7", 5, TS)).unwrap();
        h.set_now_ms(TS + 1_000);
        let seen = h.now_ms();
        h.send(reading_with("truck-7", json!({"lat": 54.1, "lon": 10.2})))
            .unwrap();
        // Its watchdog fires 3 min later; the state is in kv.
        h.restart().unwrap();
        let fired = seen + 180_250;
        let actions = h.send(silence("truck-7", seen, fired)).unwrap();
        assert_eq!(
            events("truck-7", &actions),
            [ev("connectivity", "raised", Severity::Warning)]
        );
        assert_eq!(
            publish_body(&actions[1]),
            json!({
                "truck": "truck-7", "kind": "connectivity", "state": "raised",
                "value": "NO_TELEMETRY", "limit": null, "ts": fired, "lat": 54.1, "lon": 10.2,
            })
        );
        let alert = actions[0].as_alert().unwrap();
        assert_eq!(alert.title, "truck-7: no telemetry for 3 min 0 s");
        for part in ["(silence timeout 180000 ms)", "last known position 54.1, 10.2"] {
            assert!(alert.body.contains(part), "{part}: {}", alert.body);
        }
        assert_eq!(
            state_of(&h, "truck-7").link.lost,
            Some(Lost {
                at_ms: seen,
                reason: NO_TELEMETRY.to_string(),
                version: 5,
                silent: true
            })
        );
        // Once: a repeat, or a disconnection now, raises nothing more.
        assert_eq!(h.send(silence("truck-7", seen, fired + 5)).unwrap(), []);
        let actions = h
            .send(disconnected("truck-7", 5, fired + 10, "MQTT_KEEP_ALIVE_TIMEOUT"))
            .unwrap();
        assert!(
            actions.len() == 1 && is_cancel(&actions[0], "truck-7"),
            "{actions:?}"
        );
        assert_eq!(h.counter("alerts_raised"), 1);
        // A reading the broker received before lastSeen does not recover; one after it does,
        // after whole seconds from lastSeen to its receive time, and re-arms.
        let (alerts, armed) = split_watchdogs(
            h.send(reading_with("truck-7", json!({})).with_timestamp_ms(seen - 1))
                .unwrap(),
        );
        assert_eq!((alerts, armed), (vec![], vec![]), "and it stays offline");
        h.set_now_ms(seen + 200_400);
        let (alerts, armed) = split_watchdogs(h.send(reading_with("truck-7", json!({}))).unwrap());
        assert_eq!(
            events("truck-7", &alerts),
            [ev("connectivity", "recovered", Severity::Info)]
        );
        assert_eq!(publish_body(&alerts[1])["value"], json!(200));
        let alert = alerts[0].as_alert().unwrap();
        assert_eq!(alert.title, "truck-7: reporting again after 3 min 20 s");
        assert!(
            alert.body.contains("went silent (NO_TELEMETRY)"),
            "{}",
            alert.body
        );
        assert_eq!(armed.len(), 1);
        assert_eq!(h.counter("alerts_recovered"), 1);
        assert_eq!(
            h.send(reading_with("truck-7", json!({}))).unwrap().len(),
            1,
            "only the arming"
        );

        // Silent again: raised again. A connected event of the highest connection seen does not
        // recover it, a newer one does.
        let seen = h.now_ms();
        h.set_now_ms(seen + 181_000);
        let actions = h.send(silence("truck-7", seen, h.now_ms())).unwrap();
        assert_eq!(
            events("truck-7", &actions),
            [ev("connectivity", "raised", Severity::Warning)]
        );
        let actions = h.send(connected("truck-7", 5, h.now_ms())).unwrap();
        let (topic, doc) = arming(&actions);
        assert_eq!(actions.len(), 1, "no alert, only the arming");
        assert_eq!(
            topic, "$shoal/watchdog/cold-chain/truck-7",
            "a connection arms the watchdog"
        );
        assert_eq!(doc["payload"]["lastSeen"], json!(h.now_ms()));
        h.advance_secs(10);
        let actions = h.send(connected("truck-7", 6, h.now_ms())).unwrap();
        arming(&actions);
        let (actions, _) = split_watchdogs(actions);
        assert_eq!(
            events("truck-7", &actions),
            [ev("connectivity", "recovered", Severity::Info)]
        );
        assert_eq!(publish_body(&actions[1])["value"], json!(191));
        assert_eq!(
            actions[0].as_alert().unwrap().title,
            "truck-7: connected again after 3 min 11 s"
        );
        assert_eq!(h.counter("alerts_raised"), 2);
    }

    #[test]
    fn stale_silence_and_silence_of_an_offline_truck_are_ignored() {
        let mut h = harness(&[("checks", "connectivity"), ("silence_intervals", "3")]);
        h.send(connected("t1", 7, TS)).unwrap();
        let first = h.now_ms();
        h.send(reading_with("t1", json!({}))).unwrap();
        h.advance_secs(60);
        h.send(reading_with("t1", json!({}))).unwrap();
        // The watchdog of the first reading fired as the second one re-armed it: stale.
        let before = h.kv_get(Scope::Thing("t1"), STATE_KEY);
        h.take_logs();
        assert_eq!(h.send(silence("t1", first, h.now_ms() + 1)).unwrap(), []);
        assert!(h.logs().iter().any(|l| l.message.contains("stale")));
        assert_eq!(h.kv_get(Scope::Thing("t1"), STATE_KEY), before, "untouched");

        // Switched off cleanly: no alert, but the watchdog is cancelled.
        h.advance_secs(10);
        let off_at = h.now_ms();
        let actions = h
            .send(disconnected("t1", 7, off_at, "CLIENT_INITIATED_DISCONNECT"))
            .unwrap();
        assert!(actions.len() == 1 && is_cancel(&actions[0], "t1"), "{actions:?}");
        assert_eq!(state_of(&h, "t1").link.offline, Some(off_at));
        // Had the watchdog fired anyway (the cancel lost a race): ignored.
        let last = state_of(&h, "t1").link.last_rx_ms.unwrap();
        h.advance_secs(180);
        h.take_logs();
        assert_eq!(h.send(silence("t1", last, h.now_ms())).unwrap(), []);
        assert!(h.logs().iter().any(|l| l.message.contains("offline")));
        // A reading the broker received before the disconnection, or a late connected event of
        // the connection that ended: still offline, nothing armed.
        let late = reading_with("t1", json!({})).with_timestamp_ms(off_at - 1);
        assert_eq!(h.send(late).unwrap(), []);
        assert_eq!(h.send(connected("t1", 7, off_at - 70_000)).unwrap(), []);
        assert_eq!(state_of(&h, "t1").link.offline, Some(off_at));
        assert_eq!(h.send(silence("t1", last, h.now_ms())).unwrap(), []);

        // Back (a newer connection) and reporting: armed again.
        h.send(connected("t1", 8, h.now_ms())).unwrap();
        assert_eq!(state_of(&h, "t1").link.offline, None);
        assert_eq!(timeout(&mut h, "t1"), 180_000);
        // A stale disconnection neither cancels nor makes it offline.
        let actions = h
            .send(disconnected("t1", 7, h.now_ms(), "DUPLICATE_CLIENTID"))
            .unwrap();
        assert_eq!(actions, []);
        assert_eq!(state_of(&h, "t1").link.offline, None);
        // A lost connection raises as before, and cancels.
        h.advance_secs(1);
        let lost_at = h.now_ms();
        let actions = h
            .send(disconnected("t1", 8, lost_at, "MQTT_KEEP_ALIVE_TIMEOUT"))
            .unwrap();
        assert_eq!(actions.len(), 3, "{actions:?}");
        assert_eq!(
            events("t1", &actions[..2]),
            [ev("connectivity", "raised", Severity::Warning)]
        );
        assert!(is_cancel(&actions[2], "t1"));
        // The next reading recovers it, ends the offline state and re-arms.
        h.advance_secs(30);
        let (alerts, armed) = split_watchdogs(h.send(reading_with("t1", json!({}))).unwrap());
        assert_eq!(
            events("t1", &alerts),
            [ev("connectivity", "recovered", Severity::Info)]
        );
        assert_eq!(armed.len(), 1);
        assert_eq!(state_of(&h, "t1").link.offline, None);

        // With the check off, silence messages are ignored.
        let mut h = harness(&[("checks", "temperature"), ("silence_intervals", "3")]);
        assert_eq!(h.send(silence("t1", TS, TS + 200_000)).unwrap(), []);
        assert_eq!(h.kv_keys(), []);
    }

    #[test]
    fn malformed_silence_messages_are_rejected_without_touching_state() {
        for config in [&[("silence_intervals", "3")][..], &[]] {
            let mut h = harness(config);
            h.send(reading_with("t1", json!({}))).unwrap();
            let before = h.kv_get(Scope::Thing("t1"), STATE_KEY);
            for payload in [
                &b"not json"[..],
                b"",
                b"[1]",
                b"\"fleet\"",
                b"{}",
                br#"{"truck":"t1","timeoutMs":180000}"#,
                br#"{"lastSeen":"yesterday"}"#,
                br#"{"lastSeen":-5}"#,
                br#"{"lastSeen":null}"#,
                br#"{"lastSeen":[1]}"#,
                br#"{"truck":7,"lastSeen":1}"#,
                br#"{"truck":["t1"],"lastSeen":1}"#,
                br#"{"truck":"t2","lastSeen":1}"#,
                br#"{"lastSeen":99999999999999}"#,
            ] {
                let result = h.send(Message::new("fleet/t1/silence", payload));
                assert!(
                    matches!(&result, Err(PluginError::Rejected(why)) if why.starts_with("silence message on fleet/t1/silence: ")),
                    "{config:?}: {}: {result:?}",
                    String::from_utf8_lossy(payload)
                );
            }
            assert_eq!(
                h.kv_get(Scope::Thing("t1"), STATE_KEY),
                before,
                "{config:?}: untouched"
            );
        }

        // The truck is the topic's (the payload may name it too); lastSeen may be any number
        // >= 0 up to the message's time.
        let mut h = harness(&[("silence_intervals", "3")]);
        let raised = [ev("connectivity", "raised", Severity::Warning)];
        let msg = Message::json("fleet/t9/silence", json!({"lastSeen": 1.767e12}));
        assert_eq!(events("t9", &h.send(msg).unwrap()), raised);
        assert_eq!(
            state_of(&h, "t9").link.lost.map(|l| l.at_ms),
            Some(1_767_000_000_000)
        );
        let msg = Message::json("fleet/t8/silence", json!({"truck": "t8", "lastSeen": TS}));
        assert_eq!(events("t8", &h.send(msg).unwrap()), raised);
        let msg = Message::json("fleet/t7/silence", json!({"truck": "", "lastSeen": TS}));
        assert_eq!(events("t7", &h.send(msg).unwrap()), raised);
    }

    #[test]
    fn silence_topics_are_matched_level_by_level() {
        let topic = SilenceTopic::parse("fleet/{thing}/silence").unwrap();
        assert_eq!(topic.truck_of("fleet/t1/silence"), Some("t1"));
        for other in [
            "fleet/t1/silence/x",
            "fleet/t1/silence/",
            "fleet//silence",
            "fleet/t1",
            "fleet/t1/telemetry",
            "x/t1/silence",
            "$aws/events/presence/connected/t1",
        ] {
            assert_eq!(topic.truck_of(other), None, "{other}");
        }
        let topic = SilenceTopic::parse("{thing}").unwrap();
        assert_eq!(topic.truck_of("t1"), Some("t1"));
        assert_eq!(topic.truck_of("a/b"), None);
        let topic = SilenceTopic::parse("q/{{x}}//{thing}").unwrap();
        assert_eq!(topic.template.render("t1"), "q/{x}//t1");
        assert_eq!(topic.truck_of("q/{x}//t1"), Some("t1"));
        assert_eq!(topic.truck_of("q/{x}/t1"), None);

        // A reading on another topic is a reading; one on the silence topic is not.
        let mut h = harness(&[("checks", "presence"), ("silence_topic", "quiet/{thing}")]);
        let msg = Message::json("quiet/t1", json!({"presence": true, "lastSeen": TS}));
        assert_eq!(h.send(msg).unwrap(), [], "a silence message, ignored");
        let msg = Message::json("fleet/t1/silence", json!({"presence": true}));
        assert_eq!(h.send(msg).unwrap().len(), 2, "a reading");
    }

    #[test]
    fn bad_silence_configs_are_refused() {
        for (key, value) in [
            ("silence_intervals", "-1"),
            ("silence_intervals", "1001"),
            ("silence_intervals", "many"),
            ("interval_s", "0"),
            ("interval_s", "-5"),
            ("interval_s", "inf"),
            ("interval_s", "NaN"),
            ("interval_s", "a minute"),
            ("time_scale", "0"),
            ("time_scale", "-60"),
            ("time_scale", "inf"),
            ("silence_min_ms", "0"),
            ("silence_min_ms", "1.5"),
            ("silence_min_ms", "2592000001"),
            ("silence_topic", "fleet/silence"),
            ("silence_topic", ""),
            ("silence_topic", "fleet/truck-{thing}/silence"),
            ("silence_topic", "fleet/{thing}x/silence"),
            ("silence_topic", "fleet/{thing}/{thing}"),
            ("silence_topic", "fleet/{level:1}/silence"),
            ("silence_topic", "{topic}/{thing}"),
            ("silence_topic", "fleet/{truck}/silence"),
            ("silence_topic", "fleet/{thing"),
            ("silence_topic", "fleet/thing}/{thing}"),
            ("silence_topic", "fleet/+/{thing}"),
            ("silence_topic", "fleet/{thing}/#"),
            ("silence_topic", "$shoal/watchdog/{thing}"),
            ("silence_topic", "$aws/events/silence/{thing}"),
            ("silence_watchdog", "cold-chain"),
            ("silence_watchdog", ""),
            ("silence_watchdog", "cold-chain/#/{thing}"),
            ("silence_watchdog", "{client_id}/{thing}"),
        ] {
            // Refused even while off (no connectivity, or K = 0).
            for checks in ["connectivity", "temperature"] {
                let result = Harness::<ColdChainAlerts>::new(&[("checks", checks), (key, value)]);
                assert!(
                    matches!(&result, Err(PluginError::Config(why)) if why.contains(key)),
                    "{key} = {value:?}: {:?}",
                    result.err()
                );
            }
        }
        for config in [
            &[("silence_intervals", "0")][..],
            &[("silence_intervals", "1000")],
            &[
                ("silence_intervals", " 7 "),
                ("interval_s", "0.5"),
                ("time_scale", "3600"),
            ],
            &[("silence_min_ms", "1"), ("interval_field", "")],
            &[("silence_min_ms", "2592000000")],
            &[("silence_topic", "{thing}"), ("silence_watchdog", "{thing}")],
            &[
                ("silence_topic", " a/{thing}/b/c "),
                ("silence_watchdog", "x{{y}}/{thing}-z"),
            ],
            &[("silence_topic", "$aws/things/{thing}/silence")],
        ] {
            assert!(Harness::<ColdChainAlerts>::new(config).is_ok(), "{config:?}");
        }
    }

    #[test]
    fn documents_without_the_silence_fields_load() {
        let mut h = harness(&[("checks", "connectivity"), ("silence_intervals", "3")]);
        // As the version before silence detection wrote it: connection 5 lost.
        let old = br#"{"temperature":{"bits":0,"len":0,"alerting":false},"humidity":{"bits":0,"len":0,"alerting":false},"door_open":false,"presence":false,"corridor":{"bits":0,"len":0,"alerting":false},"link":{"connected_version":5,"lost":{"at_ms":1767225600000,"reason":"CONNECTION_LOST","version":5}},"position":{"lat":54.0,"lon":10.0,"ts":1767225600000}}"#;
        h.kv_set(Scope::Thing("t1"), STATE_KEY, old, Some(86_400));
        let state = state_of(&h, "t1");
        assert_eq!((state.link.last_rx_ms, state.link.offline), (None, None));
        assert!(!state.link.lost.is_some_and(|l| l.silent));
        // The open loss stays open through a silence message; a reading recovers it and arms.
        assert_eq!(h.send(silence("t1", TS, TS + 1)).unwrap(), []);
        h.advance_secs(30);
        let (alerts, armed) = split_watchdogs(h.send(reading_with("t1", json!({}))).unwrap());
        assert_eq!(
            events("t1", &alerts),
            [ev("connectivity", "recovered", Severity::Info)]
        );
        let alert = alerts[0].as_alert().unwrap();
        assert!(
            alert
                .body
                .contains("after the connection was lost (CONNECTION_LOST)"),
            "{}",
            alert.body
        );
        assert_eq!(armed.len(), 1);
        assert_eq!(state_of(&h, "t1").link.last_rx_ms, Some(h.now_ms()));
    }
}
