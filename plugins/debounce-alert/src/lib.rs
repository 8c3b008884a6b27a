//! `debounce-alert`: alerts when **N of the last M** readings of a thing break a limit, once when
//! the condition starts and once more (an `info` recovery alert) when it clears. Single spikes
//! stay quiet.
//!
//! The window of each thing lives in the host's key-value store (scope: the thing), not in the
//! instance, so it survives the host discarding instances, new plugin versions and restarts.
//!
//! Configuration:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `field` | dotted path or JSON Pointer of the numeric value | — |
//! | `max`, `min` | limits (at least one); above `max` or below `min` counts as a breach | — |
//! | `n`, `m` | alert when at least `n` of the last `m` readings breach (1 ≤ n ≤ m ≤ 64) | `3`, `5` |
//! | `severity` | of the alert: `info`, `warning`, `critical` | `warning` |
//! | `republish` | topic template that also gets each alert/recovery as JSON | none |
//! | `thing_level` | topic level naming the thing when the connection has no registry thing | `1` |
//! | `state_ttl_secs` | forget a thing's window after this long without readings | `86400` |
//!
//! A message without the field is ignored; a payload that is not JSON, or a field that is not a
//! number, is rejected. The condition clears when fewer than `n` of the last `m` breach.
//!
//! Two instances handling the same thing at the same moment (two Shoal nodes) may both read the
//! old window: the key-value interface has no compare-and-swap yet, so route one thing's messages
//! to one node if exactly-once alerts matter.

use serde::{Deserialize, Serialize};
use shoal_sdk::kv::{self, Scope};
use shoal_sdk::prelude::*;

/// The key of a thing's window in its key-value scope.
const STATE_KEY: &str = "debounce-window";

/// A thing's recent history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Window {
    /// Bit i: whether the i-th most recent reading breached (bit 0 is the newest).
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

/// The configured plugin.
pub struct DebounceAlert {
    field: String,
    min: Option<f64>,
    max: Option<f64>,
    n: u32,
    m: u32,
    severity: Severity,
    republish: Option<Template>,
    thing_level: usize,
    state_ttl_secs: u32,
}

impl DebounceAlert {
    fn breach(&self, value: f64) -> bool {
        self.max.is_some_and(|max| value > max) || self.min.is_some_and(|min| value < min)
    }

    fn limits(&self) -> String {
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("outside [{min}, {max}]"),
            (None, Some(max)) => format!("above {max}"),
            (Some(min), None) => format!("below {min}"),
            (None, None) => String::new(),
        }
    }

    /// The alert (and the optional republish) for a window that was just `raised` or
    /// `recovered`.
    fn event(
        &self,
        msg: &Message,
        thing: &str,
        state: &str,
        title: String,
        body: String,
        value: f64,
    ) -> Result<Vec<Action>, PluginError> {
        let severity = if state == "raised" {
            self.severity
        } else {
            Severity::Info
        };
        let mut actions = vec![Action::alert(severity, title, body).thing(thing).into()];
        if let Some(template) = &self.republish {
            let event = json!({
                "thing": thing,
                "state": state,
                "field": self.field,
                "value": value,
                "n": self.n,
                "m": self.m,
                "severity": severity.as_str(),
                "timestamp_ms": msg.timestamp_ms(),
            });
            actions.push(
                Action::publish_json(template.render(msg, Some(thing))?, &event)
                    .qos(1)
                    .into(),
            );
        }
        Ok(actions)
    }
}

impl Plugin for DebounceAlert {
    fn init(config: Config) -> Result<Self, PluginError> {
        let field = config.require("field")?.to_string();
        let min = config.parse_opt::<f64>("min")?;
        let max = config.parse_opt::<f64>("max")?;
        if min.is_none() && max.is_none() {
            return Err(PluginError::config("give `min` or `max`"));
        }
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            return Err(PluginError::config(format!("min {min} > max {max}")));
        }
        let n = config.parse_or("n", 3u32)?;
        let m = config.parse_or("m", 5u32)?;
        if !(1..=m).contains(&n) || m > 64 {
            return Err(PluginError::config(format!(
                "need 1 <= n <= m <= 64, got n={n} m={m}"
            )));
        }
        Ok(DebounceAlert {
            field,
            min,
            max,
            n,
            m,
            severity: config.parse_or("severity", Severity::Warning)?,
            republish: config.get("republish").map(Template::parse).transpose()?,
            thing_level: config.parse_or("thing_level", 1)?,
            state_ttl_secs: config.parse_or("state_ttl_secs", 86_400)?,
        })
    }

    fn on_message(&mut self, msg: &Message) -> Result<Vec<Action>, PluginError> {
        let Some(raw) = msg.json_field(&self.field)? else {
            return Ok(vec![]);
        };
        let value = raw
            .as_f64()
            .ok_or_else(|| PluginError::rejected(format!("`{}` is not a number: {raw}", self.field)))?;
        let thing = msg
            .thing_or_level(self.thing_level)
            .ok_or_else(|| PluginError::rejected(format!("no thing in {}", msg.topic())))?;

        let scope = Scope::Thing(thing);
        let mut window: Window = kv::get_json(scope, STATE_KEY)?.unwrap_or_default();
        window.push(self.breach(value), self.m);
        let breaches = window.breaches();
        let actions = if !window.alerting && breaches >= self.n {
            window.alerting = true;
            shoal_sdk::metrics::counter_add("alerts_raised", 1);
            self.event(
                msg,
                thing,
                "raised",
                format!(
                    "{thing}: {} {} in {breaches} of the last {} readings",
                    self.field,
                    self.limits(),
                    window.len
                ),
                format!(
                    "{} = {value} now; {breaches} of the last {} readings {} (alerting at {} of {})",
                    self.field,
                    window.len,
                    self.limits(),
                    self.n,
                    self.m
                ),
                value,
            )?
        } else if window.alerting && breaches < self.n {
            window.alerting = false;
            shoal_sdk::metrics::counter_add("alerts_recovered", 1);
            self.event(
                msg,
                thing,
                "recovered",
                format!("{thing}: {} back to normal", self.field),
                format!(
                    "{} = {value} now; only {breaches} of the last {} readings {}",
                    self.field,
                    window.len,
                    self.limits()
                ),
                value,
            )?
        } else {
            vec![]
        };
        kv::set_json(scope, STATE_KEY, &window, Some(self.state_ttl_secs))?;
        Ok(actions)
    }
}

export_plugin!(DebounceAlert);

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_sdk::testing::Harness;

    fn temp(thing: &str, t: f64) -> Message {
        Message::json(format!("fleet/{thing}/telemetry"), json!({"temp": t}))
    }

    fn harness() -> Harness<DebounceAlert> {
        Harness::new(&[("field", "temp"), ("max", "-15"), ("n", "3"), ("m", "5")]).unwrap()
    }

    /// Feeds `temps` for `thing` and returns the severity of each alert, in order.
    fn feed(h: &mut Harness<DebounceAlert>, thing: &str, temps: &[f64]) -> Vec<Severity> {
        let mut out = Vec::new();
        for &t in temps {
            for a in h.send(temp(thing, t)).unwrap() {
                out.push(a.as_alert().unwrap().severity);
            }
        }
        out
    }

    #[test]
    fn three_of_five_raises_once_then_recovers() {
        let mut h = harness();
        assert_eq!(feed(&mut h, "t1", &[-10.0, -20.0, -10.0]), [], "2 of 3: not yet");
        assert_eq!(feed(&mut h, "t1", &[-10.0]), [Severity::Warning], "3 of 4");
        assert_eq!(
            feed(&mut h, "t1", &[-10.0, -10.0, -12.0]),
            [],
            "still breaching: no repeat"
        );
        // Window now all breaches; three good readings bring it to 2 of 5.
        assert_eq!(feed(&mut h, "t1", &[-20.0, -20.0]), []);
        assert_eq!(feed(&mut h, "t1", &[-20.0]), [Severity::Info]);
        assert_eq!(h.counter("alerts_raised"), 1);
        assert_eq!(h.counter("alerts_recovered"), 1);
    }

    #[test]
    fn single_spikes_stay_quiet() {
        let mut h = harness();
        let temps = [-10.0, -20.0, -20.0, -10.0, -20.0, -20.0, -10.0, -20.0, -20.0];
        assert_eq!(feed(&mut h, "t1", &temps), []);
    }

    #[test]
    fn things_are_counted_apart() {
        let mut h = harness();
        assert_eq!(feed(&mut h, "t1", &[-10.0, -10.0]), []);
        assert_eq!(feed(&mut h, "t2", &[-10.0, -10.0]), []);
        assert_eq!(feed(&mut h, "t1", &[-10.0]), [Severity::Warning]);
        assert!(h.kv_get(Scope::Thing("t2"), STATE_KEY).is_some());
    }

    #[test]
    fn state_survives_a_new_instance_and_expires() {
        let mut h = harness();
        feed(&mut h, "t1", &[-10.0, -10.0]);
        h.restart().unwrap();
        assert_eq!(
            feed(&mut h, "t1", &[-10.0]),
            [Severity::Warning],
            "the window was in kv"
        );
        h.advance_secs(86_401);
        assert_eq!(
            feed(&mut h, "t1", &[-10.0, -10.0]),
            [],
            "a forgotten window starts over"
        );
    }

    #[test]
    fn republishes_events() {
        let mut h = Harness::<DebounceAlert>::new(&[
            ("field", "temp"),
            ("min", "-30"),
            ("n", "1"),
            ("m", "1"),
            ("republish", "fleet/{thing}/alerts"),
        ])
        .unwrap();
        let raised = h.send(temp("t9", -31.0)).unwrap();
        let p = raised[1].as_publish().unwrap();
        assert_eq!(p.topic, "fleet/t9/alerts");
        assert_eq!(
            serde_json::from_slice::<Value>(&p.payload).unwrap()["state"],
            "raised"
        );
        let recovered = h.send(temp("t9", -20.0)).unwrap();
        let p = recovered[1].as_publish().unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&p.payload).unwrap()["state"],
            "recovered"
        );
    }

    #[test]
    fn store_outage_is_a_failure_and_bad_input_a_rejection() {
        let mut h = harness();
        h.set_kv_unavailable(Some("down"));
        assert!(matches!(h.send(temp("t1", -10.0)), Err(PluginError::Failed(_))));
        h.set_kv_unavailable(None);
        let text = Message::json("fleet/t1/telemetry", json!({"temp": "warm"}));
        assert!(matches!(h.send(text), Err(PluginError::Rejected(_))));
        assert!(
            h.send(Message::json("fleet/t1/telemetry", json!({"rh": 1})))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        for config in [
            &[("field", "temp")][..],
            &[("max", "1")],
            &[("field", "temp"), ("max", "1"), ("n", "6"), ("m", "5")],
            &[("field", "temp"), ("max", "1"), ("n", "0")],
            &[("field", "temp"), ("max", "1"), ("n", "3"), ("m", "65")],
            &[("field", "temp"), ("min", "2"), ("max", "1")],
        ] {
            assert!(
                matches!(Harness::<DebounceAlert>::new(config), Err(PluginError::Config(_))),
                "{config:?}"
            );
        }
    }
}
