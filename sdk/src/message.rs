use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::PluginError;

/// One MQTT message, as the rule that calls the plugin saw it.
///
/// The host builds these; tests build them with [`Message::new`] / [`Message::json`] and the
/// `with_*` methods.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    timestamp_ms: u64,
    client_id: Option<String>,
    thing_name: Option<String>,
    user_properties: Vec<(String, String)>,
}

impl Message {
    /// A QoS 0 message on `topic`, stamped with [`clock::now_ms`](crate::clock::now_ms) (the fake
    /// clock under the test harness).
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos: 0,
            timestamp_ms: crate::clock::now_ms(),
            client_id: None,
            thing_name: None,
            user_properties: Vec::new(),
        }
    }

    /// A message whose payload is `value` as JSON text: `Message::json("t", json!({"temp": 3}))`.
    pub fn json(topic: impl Into<String>, value: Value) -> Self {
        Message::new(topic, value.to_string())
    }

    /// Sets the QoS it was published with.
    pub fn with_qos(mut self, qos: u8) -> Self {
        self.qos = qos;
        self
    }

    /// Sets when the broker received it (ms since the Unix epoch).
    pub fn with_timestamp_ms(mut self, timestamp_ms: u64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// Sets the publishing client's id.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Sets the registry thing of the publishing connection.
    pub fn with_thing_name(mut self, thing: impl Into<String>) -> Self {
        self.thing_name = Some(thing.into());
        self
    }

    /// Appends an MQTT 5 user property.
    pub fn with_user_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.user_properties.push((key.into(), value.into()));
        self
    }

    /// The topic it was published to, e.g. `fleet/truck-7/telemetry`.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The payload bytes, unchanged.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload as UTF-8 text; not UTF-8 is a [`PluginError::Rejected`].
    pub fn payload_str(&self) -> Result<&str, PluginError> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| PluginError::rejected(format!("payload is not UTF-8: {e}")))
    }

    /// The payload parsed as JSON into `T`; invalid is a [`PluginError::Rejected`], so
    /// `msg.payload_json::<Reading>()?` refuses malformed messages without harming the plugin's
    /// health. (Named apart from the constructor [`Message::json`].)
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_slice(&self.payload).map_err(|e| {
            PluginError::rejected(format!("payload is not the expected JSON ({}): {e}", self.topic))
        })
    }

    /// The payload parsed as any JSON value; invalid is a [`PluginError::Rejected`].
    pub fn json_value(&self) -> Result<Value, PluginError> {
        self.payload_json()
    }

    /// The value at `path` in the JSON payload (dotted path or JSON Pointer, see
    /// [`json::path`](crate::json::path)), parsing only that: the cheap way to read one field of
    /// a larger payload. Invalid JSON is a [`PluginError::Rejected`]; a missing field is `None`.
    pub fn json_field(&self, path: &str) -> Result<Option<Value>, PluginError> {
        Ok(self.json_fields(&[path])?.pop().flatten())
    }

    /// The values at `paths` in the JSON payload, in order, parsing only those (see
    /// [`json::select`](crate::json::select)). Invalid JSON is a [`PluginError::Rejected`].
    pub fn json_fields(&self, paths: &[&str]) -> Result<Vec<Option<Value>>, PluginError> {
        self.json_select(&crate::json::Paths::new(paths))
    }

    /// [`json_fields`](Self::json_fields) with paths split once (keep the
    /// [`Paths`](crate::json::Paths) in your plugin from `init`).
    pub fn json_select(&self, paths: &crate::json::Paths) -> Result<Vec<Option<Value>>, PluginError> {
        paths
            .select(&self.payload)
            .map_err(|e| PluginError::rejected(format!("payload is not valid JSON ({}): {e}", self.topic)))
    }

    /// [`json_select`](Self::json_select) into `values` (see
    /// [`Paths::select_into`](crate::json::Paths::select_into)): keep the vector in your plugin
    /// and reading a few fields of every message allocates nothing for the result.
    pub fn json_select_into(
        &self,
        paths: &crate::json::Paths,
        values: &mut Vec<Option<Value>>,
    ) -> Result<(), PluginError> {
        paths
            .select_into(&self.payload, values)
            .map_err(|e| PluginError::rejected(format!("payload is not valid JSON ({}): {e}", self.topic)))
    }

    /// The QoS it was published with (0, 1 or 2).
    pub fn qos(&self) -> u8 {
        self.qos
    }

    /// When the broker received it, milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The publishing client's id (absent for messages from HTTP or from rules).
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The registry thing the publishing connection is attached to, if any.
    pub fn thing_name(&self) -> Option<&str> {
        self.thing_name.as_deref()
    }

    /// The thing this message is about: [`thing_name`](Self::thing_name) when the connection has
    /// one, else topic level `level` (for topics like `fleet/{thing}/telemetry`, level 1).
    pub fn thing_or_level(&self, level: usize) -> Option<&str> {
        self.thing_name()
            .or_else(|| self.topic_level(level).filter(|l| !l.is_empty()))
    }

    /// MQTT 5 user properties, in order (duplicates allowed).
    pub fn user_properties(&self) -> &[(String, String)] {
        &self.user_properties
    }

    /// The first user property named `key`.
    pub fn user_property(&self, key: &str) -> Option<&str> {
        self.user_properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Topic level `n`, counting from 0: for `fleet/truck-7/telemetry`, level 1 is `truck-7`.
    pub fn topic_level(&self, n: usize) -> Option<&str> {
        self.topic.split('/').nth(n)
    }

    /// All topic levels.
    pub fn topic_levels(&self) -> impl Iterator<Item = &str> {
        self.topic.split('/')
    }

    #[cfg(target_arch = "wasm32")]
    pub(crate) fn from_parts(
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        timestamp_ms: u64,
        client_id: Option<String>,
        thing_name: Option<String>,
        user_properties: Vec<(String, String)>,
    ) -> Self {
        Message {
            topic,
            payload,
            qos,
            timestamp_ms,
            client_id,
            thing_name,
            user_properties,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(serde::Deserialize)]
    struct Reading {
        temp: f64,
    }

    #[test]
    fn accessors_and_json() {
        let m = Message::json("fleet/t1/telemetry", json!({"temp": -3.5}))
            .with_qos(1)
            .with_user_property("unit", "C")
            .with_client_id("c1");
        assert_eq!(m.topic_level(1), Some("t1"));
        assert_eq!(m.topic_level(3), None);
        assert_eq!(m.thing_or_level(1), Some("t1"));
        assert_eq!(m.clone().with_thing_name("reg").thing_or_level(1), Some("reg"));
        assert_eq!(m.payload_json::<Reading>().unwrap().temp, -3.5);
        assert_eq!(m.user_property("unit"), Some("C"));
        assert_eq!((m.qos(), m.client_id()), (1, Some("c1")));
        assert_eq!(m.json_field("temp").unwrap(), Some(json!(-3.5)));
        assert_eq!(m.json_field("rh").unwrap(), None);
        let bad = Message::new("a", "not json");
        assert!(matches!(bad.json_field("a"), Err(PluginError::Rejected(_))));
        assert!(matches!(bad.json_value(), Err(PluginError::Rejected(_))));
        assert!(matches!(
            Message::new("a", vec![0xff]).payload_str(),
            Err(PluginError::Rejected(_))
        ));
    }
}
