//! `content-router`: republishes each message, unchanged, to the topics whose rule matches its
//! JSON content.
//!
//! Configuration:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `rules` | JSON list of routes (below) | — |
//! | `mode` | `all`: every matching route; `first`: only the first that matches | `all` |
//! | `thing_level` | topic level naming the thing when the connection has no registry thing | `1` |
//!
//! A route: `{"field": "type", "equals": "door", "topic": "fleet/{thing}/door"}` with
//! - `field`: dotted path or JSON Pointer; without it the route matches every message (a
//!   catch-all, handy last in `first` mode);
//! - one condition on the field: `equals` (any JSON value), `one_of` (a list of values),
//!   `exists` (`true`/`false`); with none, the field must exist;
//! - `topic`: a template (`{thing}`, `{topic}`, `{client_id}`, `{level:N}`);
//! - `qos` (0 or 1, default: the message's, capped at 1) and `retain` (default false).
//!
//! A payload that is not JSON is rejected. A message no route matches produces no action and
//! counts in the `unmatched` metric.

use serde::Deserialize;
use shoal_sdk::prelude::*;

/// A route as written in the configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteConfig {
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    equals: Option<Value>,
    #[serde(default)]
    one_of: Option<Vec<Value>>,
    #[serde(default)]
    exists: Option<bool>,
    topic: String,
    #[serde(default)]
    qos: Option<u8>,
    #[serde(default)]
    retain: bool,
}

/// What a route checks; a field by its index in [`ContentRouter::fields`].
#[derive(Debug)]
enum Condition {
    Always,
    Equals(usize, Value),
    OneOf(usize, Vec<Value>),
    Exists(usize, bool),
}

/// A checked route.
#[derive(Debug)]
struct Route {
    condition: Condition,
    topic: Template,
    qos: Option<u8>,
    retain: bool,
}

impl Route {
    /// Checks route `i`; its field joins `fields` (the distinct fields the routes read).
    fn from_config(i: usize, c: RouteConfig, fields: &mut Vec<String>) -> Result<Self, PluginError> {
        let bad = |why: &str| PluginError::config(format!("route {i}: {why}"));
        let conditions = usize::from(c.equals.is_some())
            + usize::from(c.one_of.is_some())
            + usize::from(c.exists.is_some());
        if conditions > 1 {
            return Err(bad("give at most one of `equals`, `one_of`, `exists`"));
        }
        let condition = match c.field {
            None if conditions > 0 => return Err(bad("a condition needs a `field`")),
            None => Condition::Always,
            Some(f) if f.is_empty() => return Err(bad("empty `field`")),
            Some(f) => {
                let f = fields.iter().position(|x| *x == f).unwrap_or_else(|| {
                    fields.push(f);
                    fields.len() - 1
                });
                match (c.equals, c.one_of, c.exists) {
                    (Some(v), _, _) => Condition::Equals(f, v),
                    (_, Some(vs), _) => Condition::OneOf(f, vs),
                    (_, _, Some(e)) => Condition::Exists(f, e),
                    _ => Condition::Exists(f, true),
                }
            }
        };
        if c.qos.is_some_and(|q| q > 1) {
            return Err(bad("`qos` must be 0 or 1"));
        }
        Ok(Route {
            condition,
            topic: Template::parse(&c.topic)?,
            qos: c.qos,
            retain: c.retain,
        })
    }

    /// Whether the route takes a message whose fields have `values`.
    fn matches(&self, values: &[Option<Value>]) -> bool {
        let at = |f: &usize| values[*f].as_ref();
        match &self.condition {
            Condition::Always => true,
            Condition::Equals(f, v) => at(f).is_some_and(|x| same(x, v)),
            Condition::OneOf(f, vs) => at(f).is_some_and(|x| vs.iter().any(|v| same(x, v))),
            Condition::Exists(f, e) => at(f).is_some() == *e,
        }
    }
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The configured plugin.
pub struct ContentRouter {
    routes: Vec<Route>,
    /// The distinct fields the routes read (split once), parsed once per message.
    fields: shoal_sdk::json::Paths,
    first_only: bool,
    thing_level: usize,
}

impl Plugin for ContentRouter {
    fn init(config: Config) -> Result<Self, PluginError> {
        let mut fields = Vec::new();
        let routes = config
            .json::<Vec<RouteConfig>>("rules")?
            .into_iter()
            .enumerate()
            .map(|(i, c)| Route::from_config(i, c, &mut fields))
            .collect::<Result<Vec<_>, _>>()?;
        if routes.is_empty() {
            return Err(PluginError::config("`rules` is empty"));
        }
        let first_only = match config.get("mode").unwrap_or("all") {
            "all" => false,
            "first" => true,
            other => return Err(PluginError::config(format!("`mode` = {other:?} (all, first)"))),
        };
        let names: Vec<&str> = fields.iter().map(String::as_str).collect();
        Ok(ContentRouter {
            routes,
            fields: shoal_sdk::json::Paths::new(&names),
            first_only,
            thing_level: config.parse_or("thing_level", 1)?,
        })
    }

    fn on_message(&mut self, msg: &Message) -> Result<Vec<Action>, PluginError> {
        // Parses only the fields the routes read (the rest is checked and skipped).
        let values = msg.json_select(&self.fields)?;
        let thing = msg.thing_or_level(self.thing_level);
        let mut actions = Vec::new();
        for route in self.routes.iter().filter(|r| r.matches(&values)) {
            let topic = route.topic.render(msg, thing)?;
            let qos = route.qos.unwrap_or(msg.qos().min(1));
            actions.push(
                Action::publish(topic, msg.payload())
                    .qos(qos)
                    .retain(route.retain)
                    .into(),
            );
            if self.first_only {
                break;
            }
        }
        if actions.is_empty() {
            shoal_sdk::metrics::counter_add("unmatched", 1);
        }
        Ok(actions)
    }
}

export_plugin!(ContentRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_sdk::testing::Harness;

    const RULES: &str = r#"[
        {"field": "type", "equals": "door", "topic": "fleet/{thing}/door", "qos": 1},
        {"field": "type", "one_of": ["temp", "humidity"], "topic": "fleet/{thing}/climate"},
        {"field": "alarm", "topic": "alarms/{thing}", "retain": true},
        {"topic": "archive/{topic}"}
    ]"#;

    fn topics(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .map(|a| a.as_publish().unwrap().topic.as_str())
            .collect()
    }

    #[test]
    fn routes_by_content() {
        let mut h = Harness::<ContentRouter>::new(&[("rules", RULES)]).unwrap();
        let door = Message::json("fleet/t1/events", json!({"type": "door", "open": true}));
        let actions = h.send(door.clone()).unwrap();
        assert_eq!(topics(&actions), ["fleet/t1/door", "archive/fleet/t1/events"]);
        let first = actions[0].as_publish().unwrap();
        assert_eq!((first.qos, first.retain), (1, false));
        assert_eq!(first.payload, door.payload(), "payload is forwarded unchanged");

        let climate = Message::json("fleet/t2/events", json!({"type": "humidity", "alarm": 1})).with_qos(2);
        let actions = h.send(climate).unwrap();
        assert_eq!(
            topics(&actions),
            ["fleet/t2/climate", "alarms/t2", "archive/fleet/t2/events"]
        );
        assert_eq!(actions[0].as_publish().unwrap().qos, 1, "QoS 2 is capped at 1");
        assert!(actions[1].as_publish().unwrap().retain);
    }

    #[test]
    fn first_mode_and_unmatched() {
        let mut h = Harness::<ContentRouter>::new(&[("rules", RULES), ("mode", "first")]).unwrap();
        let actions = h
            .send(Message::json("fleet/t1/events", json!({"type": "door"})))
            .unwrap();
        assert_eq!(topics(&actions), ["fleet/t1/door"]);

        let only_door = r#"[{"field": "type", "equals": "door", "topic": "d"}]"#;
        let mut h = Harness::<ContentRouter>::new(&[("rules", only_door)]).unwrap();
        assert!(
            h.send(Message::json("x/y", json!({"type": "window"})))
                .unwrap()
                .is_empty()
        );
        assert_eq!(h.counter("unmatched"), 1);
        assert!(matches!(
            h.send(Message::new("x/y", "door")),
            Err(PluginError::Rejected(_))
        ));
    }

    #[test]
    fn numbers_compare_by_value_and_exists_false() {
        let rules = r#"[{"field": "code", "equals": 1, "topic": "one"},
                        {"field": "meta.ok", "exists": false, "topic": "unchecked"}]"#;
        let mut h = Harness::<ContentRouter>::new(&[("rules", rules)]).unwrap();
        let actions = h
            .send(Message::json("a", json!({"code": 1.0, "meta": {}})))
            .unwrap();
        assert_eq!(topics(&actions), ["one", "unchecked"]);
    }

    #[test]
    fn bad_configs_are_refused() {
        for rules in [
            "not json",
            "[]",
            r#"[{"field": "a", "equals": 1, "exists": true, "topic": "t"}]"#,
            r#"[{"equals": 1, "topic": "t"}]"#,
            r#"[{"field": "a", "topic": "t/{oops}"}]"#,
            r#"[{"field": "a", "topic": "t", "qos": 2}]"#,
            r#"[{"field": "a", "topc": "t"}]"#,
        ] {
            assert!(
                matches!(
                    Harness::<ContentRouter>::new(&[("rules", rules)]),
                    Err(PluginError::Config(_))
                ),
                "{rules}"
            );
        }
        assert!(Harness::<ContentRouter>::new(&[]).is_err());
        assert!(Harness::<ContentRouter>::new(&[("rules", RULES), ("mode", "some")]).is_err());
    }
}
