//! `threshold-alert`: raises an alert when a numeric JSON field of a message leaves its limits,
//! and optionally republishes the violation to a topic.
//!
//! Configuration (all values are strings, as the host passes them):
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `field` | dotted path (`sensors.temp`) or JSON Pointer (`/sensors/temp`) of the value | — |
//! | `max`, `min` | limits (at least one); a value above `max` or below `min` alerts | — |
//! | `rules` | instead of `field`/`min`/`max`: JSON list `[{"field":"temp","max":-15},{"field":"door","max":0}]` | — |
//! | `severity` | `info`, `warning` or `critical` | `warning` |
//! | `republish` | topic template for the violation as JSON, e.g. `fleet/{thing}/alerts` | none |
//! | `republish_qos` | QoS of that publish (0 or 1) | `1` |
//! | `thing_level` | topic level naming the thing when the connection has no registry thing | `1` |
//! | `missing` | a message without the field: `ignore` it or `reject` it | `ignore` |
//!
//! A payload that is not JSON, or a field that is not a number, is rejected (the rule's error
//! action gets it). The plugin keeps no state: every reading is judged alone (see
//! `debounce-alert` for "N of the last M").

use serde::Deserialize;
use shoal_sdk::prelude::*;

/// One field and its limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    field: String,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
}

impl Rule {
    fn check(&self) -> Result<(), PluginError> {
        if self.field.is_empty() {
            return Err(PluginError::config("empty `field`"));
        }
        match (self.min, self.max) {
            (None, None) => Err(PluginError::config(format!(
                "`{}` needs `min` or `max`",
                self.field
            ))),
            (Some(min), Some(max)) if min > max => Err(PluginError::config(format!(
                "`{}`: min {min} > max {max}",
                self.field
            ))),
            _ => Ok(()),
        }
    }

    /// Which limit `value` breaks, if any: ("max", limit) or ("min", limit).
    fn violation(&self, value: f64) -> Option<(&'static str, f64)> {
        match (self.min, self.max) {
            (_, Some(max)) if value > max => Some(("max", max)),
            (Some(min), _) if value < min => Some(("min", min)),
            _ => None,
        }
    }
}

/// The configured plugin.
pub struct ThresholdAlert {
    rules: Vec<Rule>,
    /// The rules' fields, split once.
    paths: shoal_sdk::json::Paths,
    /// The fields' values in the message at hand (kept: no allocation per message).
    values: Vec<Option<Value>>,
    severity: Severity,
    republish: Option<Template>,
    republish_qos: u8,
    thing_level: usize,
    reject_missing: bool,
}

impl Plugin for ThresholdAlert {
    fn init(config: Config) -> Result<Self, PluginError> {
        let rules = match config.json_opt::<Vec<Rule>>("rules")? {
            Some(rules) if config.contains("field") => {
                return Err(PluginError::config(format!(
                    "give either `rules` ({} of them) or `field`, not both",
                    rules.len()
                )));
            }
            Some(rules) => rules,
            None => vec![Rule {
                field: config.require("field")?.to_string(),
                min: config.parse_opt("min")?,
                max: config.parse_opt("max")?,
            }],
        };
        if rules.is_empty() {
            return Err(PluginError::config("`rules` is empty"));
        }
        for rule in &rules {
            rule.check()?;
        }
        let republish_qos = config.parse_or("republish_qos", 1u8)?;
        if republish_qos > 1 {
            return Err(PluginError::config("`republish_qos` must be 0 or 1"));
        }
        let reject_missing = match config.get("missing").unwrap_or("ignore") {
            "ignore" => false,
            "reject" => true,
            other => {
                return Err(PluginError::config(format!(
                    "`missing` = {other:?} (ignore, reject)"
                )));
            }
        };
        let fields: Vec<&str> = rules.iter().map(|r| r.field.as_str()).collect();
        Ok(ThresholdAlert {
            paths: shoal_sdk::json::Paths::new(&fields),
            values: Vec::new(),
            rules,
            severity: config.parse_or("severity", Severity::Warning)?,
            republish: config.get("republish").map(Template::parse).transpose()?,
            republish_qos,
            thing_level: config.parse_or("thing_level", 1)?,
            reject_missing,
        })
    }

    fn on_message(&mut self, msg: &Message) -> Result<Vec<Action>, PluginError> {
        // Parses only the configured fields of the payload (the rest is checked and skipped).
        msg.json_select_into(&self.paths, &mut self.values)?;
        let mut actions = Vec::new();
        for (rule, raw) in self.rules.iter().zip(&self.values) {
            let Some(raw) = raw else {
                if self.reject_missing {
                    return Err(PluginError::rejected(format!(
                        "no `{}` in the payload",
                        rule.field
                    )));
                }
                continue;
            };
            let value = raw
                .as_f64()
                .ok_or_else(|| PluginError::rejected(format!("`{}` is not a number: {raw}", rule.field)))?;
            let Some((bound, limit)) = rule.violation(value) else {
                continue;
            };
            // Only a violation needs the thing (splitting the topic costs on every reading).
            let thing = msg.thing_or_level(self.thing_level);
            let subject = thing.unwrap_or(msg.topic());
            let word = if bound == "max" { "above" } else { "below" };
            let mut alert = Action::alert(
                self.severity,
                format!("{subject}: {} {value} {word} {limit}", rule.field),
                format!(
                    "{} = {value} is {word} the {bound} of {limit} (topic {}, at {} ms)",
                    rule.field,
                    msg.topic(),
                    msg.timestamp_ms()
                ),
            );
            if let Some(thing) = thing {
                alert = alert.thing(thing);
            }
            actions.push(alert.into());
            if let Some(template) = &self.republish {
                let topic = template.render(msg, thing)?;
                let body = json!({
                    "thing": thing,
                    "field": rule.field,
                    "value": value,
                    "bound": bound,
                    "limit": limit,
                    "severity": self.severity.as_str(),
                    "topic": msg.topic(),
                    "timestamp_ms": msg.timestamp_ms(),
                });
                actions.push(Action::publish_json(topic, &body).qos(self.republish_qos).into());
            }
            shoal_sdk::metrics::counter_add("violations", 1);
        }
        Ok(actions)
    }
}

export_plugin!(ThresholdAlert);

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_sdk::testing::Harness;

    fn reading(temp: f64) -> Message {
        Message::json("fleet/t1/telemetry", json!({"temp": temp, "door": 0}))
    }

    #[test]
    fn alerts_above_max_only() {
        let mut h = Harness::<ThresholdAlert>::new(&[("field", "temp"), ("max", "-15")]).unwrap();
        assert!(h.send(reading(-18.0)).unwrap().is_empty());
        assert!(
            h.send(reading(-15.0)).unwrap().is_empty(),
            "the limit itself is fine"
        );
        let actions = h.send(reading(-10.0)).unwrap();
        assert_eq!(actions.len(), 1);
        let alert = actions[0].as_alert().unwrap();
        assert_eq!(alert.severity, Severity::Warning);
        assert_eq!(alert.thing.as_deref(), Some("t1"));
        assert_eq!(alert.title, "t1: temp -10 above -15");
        assert_eq!(h.counter("violations"), 1);
    }

    #[test]
    fn min_severity_and_republish() {
        let mut h = Harness::<ThresholdAlert>::new(&[
            ("field", "/sensors/temp"),
            ("min", "-30"),
            ("max", "-15"),
            ("severity", "critical"),
            ("republish", "fleet/{thing}/alerts"),
        ])
        .unwrap();
        let msg =
            Message::json("fleet/t2/telemetry", json!({"sensors": {"temp": -31}})).with_thing_name("truck-2");
        let actions = h.send(msg).unwrap();
        assert_eq!(actions.len(), 2);
        assert_eq!(actions[0].as_alert().unwrap().severity, Severity::Critical);
        let publish = actions[1].as_publish().unwrap();
        assert_eq!(
            publish.topic, "fleet/truck-2/alerts",
            "the registry thing wins over the topic"
        );
        assert_eq!(publish.qos, 1);
        let body: Value = serde_json::from_slice(&publish.payload).unwrap();
        assert_eq!(body["bound"], "min");
        assert_eq!(body["limit"], -30.0);
        assert_eq!(body["value"], -31.0);
    }

    #[test]
    fn several_rules() {
        let rules = r#"[{"field":"temp","max":-15},{"field":"door","max":0}]"#;
        let mut h = Harness::<ThresholdAlert>::new(&[("rules", rules)]).unwrap();
        let actions = h
            .send(Message::json(
                "fleet/t1/telemetry",
                json!({"temp": -5, "door": 1}),
            ))
            .unwrap();
        let titles: Vec<_> = actions
            .iter()
            .map(|a| a.as_alert().unwrap().title.clone())
            .collect();
        assert_eq!(titles, ["t1: temp -5 above -15", "t1: door 1 above 0"]);
    }

    #[test]
    fn bad_payloads_are_rejected_not_faults() {
        let mut h = Harness::<ThresholdAlert>::new(&[("field", "temp"), ("max", "1")]).unwrap();
        assert!(matches!(
            h.send(Message::new("fleet/t1/telemetry", "hot")),
            Err(PluginError::Rejected(_))
        ));
        let text = Message::json("fleet/t1/telemetry", json!({"temp": "hot"}));
        assert!(matches!(h.send(text), Err(PluginError::Rejected(_))));
        assert!(
            h.send(Message::json("fleet/t1/telemetry", json!({"humidity": 3})))
                .unwrap()
                .is_empty()
        );

        let mut strict =
            Harness::<ThresholdAlert>::new(&[("field", "temp"), ("max", "1"), ("missing", "reject")])
                .unwrap();
        let missing = Message::json("fleet/t1/telemetry", json!({"humidity": 3}));
        assert!(matches!(strict.send(missing), Err(PluginError::Rejected(_))));
    }

    #[test]
    fn bad_configs_are_refused() {
        for config in [
            &[("max", "1")][..],
            &[("field", "temp")],
            &[("field", "temp"), ("max", "cold")],
            &[("field", "temp"), ("min", "5"), ("max", "1")],
            &[("field", "temp"), ("max", "1"), ("severity", "meh")],
            &[("field", "temp"), ("max", "1"), ("republish", "fleet/{nope}")],
            &[("field", "temp"), ("max", "1"), ("republish_qos", "2")],
            &[("rules", "[]")],
            &[("rules", r#"[{"field":"t","max":1,"typo":2}]"#)],
            &[("rules", r#"[{"field":"t","max":1}]"#), ("field", "x")],
        ] {
            let result = Harness::<ThresholdAlert>::new(config);
            assert!(matches!(result, Err(PluginError::Config(_))), "{config:?}");
        }
    }
}
