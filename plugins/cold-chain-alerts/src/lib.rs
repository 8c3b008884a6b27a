//! `cold-chain-alerts`: the alert logic of a refrigerated-truck fleet, for telemetry such as
//! `fleet/{truck}/telemetry`:
//!
//! ```json
//! {"truck":"truck-7","ts":1767225600000,"lat":53.55,"lon":9.99,"speedKmh":62.5,"tempC":-19.2,
//!  "humidity":71,"door":"closed","presence":false,"setpoint":-20,"route":"hamburg-copenhagen","seq":42}
//! ```
//!
//! Four checks, each raising an alert once when its condition starts and an `info` recovery alert
//! once when it clears:
//!
//! * `temperature`: at least `temp_n` of the last `temp_m` readings of `tempC` are above the
//!   truck's maximum (debounced like `debounce-alert`, so a single spike stays quiet). The maximum
//!   is the truck's shadow `state.desired.maxTempC` when set, else `max_temp_c`.
//! * `humidity`: the same for `humidity` against `state.desired.maxHumidity`, else `max_humidity`.
//! * `door`: `door` is `"open"` while `speedKmh` is above `moving_kmh`; raised once per opening,
//!   recovered when the door reports `"closed"` (stopping with the door still open does not
//!   recover it, opening it while parked does not raise it).
//! * `presence`: `presence` is `true` (someone in the cargo space); raised once per episode,
//!   recovered when it is `false` again.
//!
//! Every alert and recovery is an [`Action::alert`] naming the truck and, unless `republish` is
//! empty, a QoS 1 publish of this JSON event:
//!
//! ```json
//! {"truck":"truck-7","kind":"temperature","state":"raised","value":-12.5,"limit":-18.0,
//!  "ts":1767225600000,"lat":53.55,"lon":9.99}
//! ```
//!
//! `kind` is `temperature`, `humidity`, `door` or `presence`; `state` is `raised` or `recovered`.
//! `value`/`limit` are °C for `temperature`, % for `humidity`, the speed and `moving_kmh` (km/h)
//! for `door` (the speed is `null` when a closing reading has none), and `presence` and `null` for
//! `presence`. `ts` is the reading's `ts`, else the broker's receive time; `lat`/`lon` are the
//! reading's (`null` when absent).
//!
//! Configuration (all values are strings, as the host passes them):
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `checks` | comma-separated checks to run: `temperature`, `humidity`, `door`, `presence` | all four |
//! | `max_temp_c` | maximum cargo temperature (°C) of a truck whose shadow has no `desired.maxTempC` | `-18` |
//! | `temp_n`, `temp_m` | raise when at least `n` of the last `m` temperatures are above it (1 ≤ n ≤ m ≤ 64) | `3`, `5` |
//! | `temp_severity` | of the temperature alert: `info`, `warning`, `critical` | `critical` |
//! | `max_humidity` | maximum relative humidity (%) of a truck whose shadow has no `desired.maxHumidity` | `85` |
//! | `humidity_n`, `humidity_m` | as `temp_n`, `temp_m`, for humidity | `3`, `5` |
//! | `humidity_severity` | of the humidity alert | `warning` |
//! | `moving_kmh` | above this speed (km/h) the truck is moving, and an open door alerts | `5` |
//! | `door_severity` | of the door alert | `critical` |
//! | `presence_severity` | of the presence alert | `critical` |
//! | `shadow_limits` | read per-truck maxima from the shadow's desired state (`true`/`false`) | `true` |
//! | `shadow_name` | read this named shadow instead of the classic one | classic |
//! | `republish` | topic template of the JSON events (`{thing}` is the truck); empty: none | `fleet/{thing}/alerts` |
//! | `thing_level` | topic level naming the truck when the connection has no registry thing | `1` |
//! | `state_ttl_secs` | forget a truck's state after this long without readings | `86400` |
//!
//! The truck is the connection's registry thing, else topic level `thing_level`, else the
//! payload's `truck`. The shadow is read on every message that has a temperature or humidity to
//! judge (nothing is cached in the instance, so a new desired maximum applies to the next
//! reading); a desired maximum that is not a number is logged and the configured one used.
//!
//! A message without the fields a check needs is ignored by that check (a `null` counts as
//! absent). A payload that is not a JSON object, or a field of the wrong type (`tempC` not a
//! number, `door` neither `"open"` nor `"closed"`, `presence` not a boolean, ...), is rejected
//! before any state changes. A key-value or shadow store failure is a plugin failure.
//!
//! A truck's state (both windows and the door and presence flags) is one JSON document in the
//! host's key-value store, scope the truck, so it survives the host discarding instances, new
//! plugin versions and restarts. As with `debounce-alert`, two instances handling the same truck
//! at the same moment may both read the old state (no compare-and-swap yet): route one truck's
//! messages to one node if exactly-once alerts matter.

use serde::{Deserialize, Serialize};
use shoal_sdk::kv::{self, Scope};
use shoal_sdk::prelude::*;
use shoal_sdk::shadow;

/// The key of a truck's state in its key-value scope.
const STATE_KEY: &str = "cold-chain-state";

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

/// The last readings of one debounced check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Window {
    /// Bit i: whether the i-th most recent reading was above the limit (bit 0 is the newest).
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

/// Everything the plugin remembers about one truck: one key-value document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct TruckState {
    temperature: Window,
    humidity: Window,
    /// A door-open-while-moving alert is open.
    door_open: bool,
    /// A presence alert is open.
    presence: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Temperature,
    Humidity,
    Door,
    Presence,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Temperature, Kind::Humidity, Kind::Door, Kind::Presence];

    fn as_str(self) -> &'static str {
        match self {
            Kind::Temperature => "temperature",
            Kind::Humidity => "humidity",
            Kind::Door => "door",
            Kind::Presence => "presence",
        }
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
    n: u32,
    m: u32,
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
        let n = config.parse_or(&format!("{prefix}_n"), 3u32)?;
        let m = config.parse_or(&format!("{prefix}_m"), 5u32)?;
        if !(1..=m).contains(&n) || m > 64 {
            return Err(PluginError::config(format!(
                "need 1 <= {prefix}_n <= {prefix}_m <= 64, got {n} and {m}"
            )));
        }
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
            n,
            m,
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
        window.push(value > limit, self.m);
        let breaches = window.breaches();
        let (what, unit, len) = (self.what, self.unit, window.len);
        let raised = if !window.alerting && breaches >= self.n {
            true
        } else if window.alerting && breaches < self.n {
            false
        } else {
            return None;
        };
        window.alerting = raised;
        let (title, body) = if raised {
            (
                format!("{truck}: {what} {value} {unit}, above {limit} {unit}"),
                format!(
                    "{breaches} of the last {len} {what} readings above the maximum of {limit} {unit} \
                     (alerting at {} of {}); {value} {unit} now",
                    self.n, self.m
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

/// The configured plugin.
pub struct ColdChainAlerts {
    temperature: Option<Excursion>,
    humidity: Option<Excursion>,
    /// `moving_kmh` and the severity, when the door check runs.
    door: Option<(f64, Severity)>,
    presence: Option<Severity>,
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
                    "`checks`: unknown check {name:?} (temperature, humidity, door, presence)"
                ))
            })?;
        checks.push(kind);
    }
    if checks.is_empty() {
        return Err(PluginError::config("`checks` names no check"));
    }
    Ok(checks)
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
        let moving_kmh: f64 = config.parse_or("moving_kmh", 5.0)?;
        if !moving_kmh.is_finite() || moving_kmh < 0.0 {
            return Err(PluginError::config(format!(
                "`moving_kmh` = {moving_kmh}: need a number >= 0"
            )));
        }
        let door_severity = config.parse_or("door_severity", Severity::Critical)?;
        let presence_severity = config.parse_or("presence_severity", Severity::Critical)?;
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
            door: on(Kind::Door).then_some((moving_kmh, door_severity)),
            presence: on(Kind::Presence).then_some(presence_severity),
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
        let reading: Telemetry = msg.payload_json()?;
        let temperature = self.temperature.as_ref().zip(reading.temp_c);
        let humidity = self.humidity.as_ref().zip(reading.humidity);
        let door = self.door.zip(reading.door);
        let presence = self.presence.zip(reading.presence);
        if temperature.is_none() && humidity.is_none() && door.is_none() && presence.is_none() {
            return Ok(vec![]);
        }
        let truck = msg
            .thing_or_level(self.thing_level)
            .or(reading.truck.as_deref().filter(|t| !t.is_empty()))
            .ok_or_else(|| PluginError::rejected(format!("no truck in {} or its payload", msg.topic())))?;

        // The shadow's desired state, read once per message and only when a maximum is needed.
        let desired = if self.shadow_limits && (temperature.is_some() || humidity.is_some()) {
            shadow::get(truck, self.shadow_name.as_deref())?
                .and_then(|mut doc| doc.pointer_mut("/state/desired").map(Value::take))
        } else {
            None
        };

        let scope = Scope::Thing(truck);
        let mut state: TruckState = kv::get_json(scope, STATE_KEY)?.unwrap_or_default();
        let mut events = Vec::new();
        if let Some((check, value)) = temperature {
            let limit = check.limit(desired.as_ref(), truck);
            events.extend(check.step(&mut state.temperature, truck, value, limit));
        }
        if let Some((check, value)) = humidity {
            let limit = check.limit(desired.as_ref(), truck);
            events.extend(check.step(&mut state.humidity, truck, value, limit));
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

        let mut actions = Vec::with_capacity(events.len() * 2);
        if !events.is_empty() {
            let topic = self
                .republish
                .as_ref()
                .map(|t| t.render(msg, Some(truck)))
                .transpose()?;
            let ts = reading.ts.unwrap_or(msg.timestamp_ms());
            let position = match (reading.lat, reading.lon) {
                (Some(lat), Some(lon)) => format!(" (at {lat}, {lon})"),
                _ => String::new(),
            };
            for event in events {
                let (severity, state_word, counter) = if event.raised {
                    (event.severity, "raised", "alerts_raised")
                } else {
                    (Severity::Info, "recovered", "alerts_recovered")
                };
                shoal_sdk::metrics::counter_add(counter, 1);
                actions.push(
                    Action::alert(severity, event.title, format!("{}{position}", event.body))
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
                        "ts": ts,
                        "lat": reading.lat,
                        "lon": reading.lon,
                    });
                    actions.push(Action::publish_json(topic.clone(), &body).qos(1).into());
                }
            }
        }
        kv::set_json(scope, STATE_KEY, &state, Some(self.state_ttl_secs))?;
        Ok(actions)
    }
}

export_plugin!(ColdChainAlerts);

#[cfg(test)]
mod tests {
    use super::*;
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
        ] {
            assert!(
                matches!(
                    Harness::<ColdChainAlerts>::new(config),
                    Err(PluginError::Config(_))
                ),
                "{config:?}"
            );
        }
    }
}
