//! A JSON threshold alert: raises an alert when the configured numeric field of a JSON payload
//! exceeds the configured maximum. The benchmark's plugin; its native twin (the same code) is
//! in `tests/bench.rs`.
//!
//! It scans the document once for the one field it needs (serde's visitor API, no
//! `serde_json::Value` tree): most of a rule's time is JSON parsing, and building a tree of
//! every field to read one costs about three times as much.

wit_bindgen::generate!({ world: "rule-plugin", path: "../../../../../wit/deps/shoal-plugin-0.1.0" });

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use shoal::plugin::types::{Alert, Severity};
use std::cell::RefCell;
use std::fmt;

struct Threshold;

struct Settings {
    field: String,
    max: f64,
}

thread_local! {
    static SETTINGS: RefCell<Settings> = RefCell::new(Settings { field: "temp".into(), max: 0.0 });
}

/// Reads one top-level field of a JSON object as a number.
struct NumberField<'a>(&'a str);

/// Whether a map key equals the wanted name (without allocating).
struct KeyIs<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

impl<'de> Visitor<'de> for NumberField<'_> {
    type Value = Option<f64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<f64>, A::Error> {
        let mut found = None;
        while let Some(wanted) = map.next_key_seed(KeyIs(self.0))? {
            if wanted {
                found = Some(map.next_value::<f64>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

fn read_number(payload: &[u8], field: &str) -> Result<Option<f64>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value = de.deserialize_map(NumberField(field))?;
    de.end()?;
    Ok(value)
}

impl Guest for Threshold {
    fn init(config: Vec<(String, String)>) -> Result<(), PluginError> {
        SETTINGS.with_borrow_mut(|s| {
            for (key, value) in config {
                match key.as_str() {
                    "field" => s.field = value,
                    "max" => {
                        s.max = value
                            .parse()
                            .map_err(|_| PluginError::Config(format!("max: {value}")))?
                    }
                    _ => {}
                }
            }
            Ok(())
        })
    }

    fn on_message(msg: Message) -> Result<Vec<Action>, PluginError> {
        SETTINGS.with_borrow(|s| {
            let value = read_number(&msg.payload, &s.field)
                .map_err(|e| PluginError::Rejected(format!("payload is not a JSON object: {e}")))?
                .ok_or_else(|| PluginError::Rejected(format!("no numeric field {}", s.field)))?;
            if value > s.max {
                Ok(vec![Action::Alert(Alert {
                    severity: Severity::Warning,
                    title: format!("{} above {}", s.field, s.max),
                    body: format!("{} = {value} on {}", s.field, msg.topic),
                    thing: msg.thing_name,
                })])
            } else {
                Ok(Vec::new())
            }
        })
    }
}

export!(Threshold);
