use serde::de::DeserializeOwned;
use serde_json::Value;
use std::ops::Range;

use crate::PluginError;

/// One MQTT message, as the rule that calls the plugin saw it.
///
/// The host builds these; tests build them with [`Message::new`] / [`Message::json`] and the
/// `with_*` methods.
#[derive(Clone)]
pub struct Message {
    /// The topic, the payload, the client id and the thing name back to back: the packed form
    /// the host hands over (WIT `shoal:plugin/packed@0.2.0`), kept as it came, so a message
    /// costs the plugin one allocation. The text parts are checked to be UTF-8 when the
    /// message is built.
    data: Vec<u8>,
    topic: Range<usize>,
    payload: Range<usize>,
    client_id: Option<Range<usize>>,
    thing_name: Option<Range<usize>>,
    qos: u8,
    timestamp_ms: u64,
    user_properties: Vec<(String, String)>,
}

impl Message {
    /// A QoS 0 message on `topic`, stamped with [`clock::now_ms`](crate::clock::now_ms) (the fake
    /// clock under the test harness).
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        let topic = topic.into();
        let payload = payload.into();
        Message::assemble(&topic, &payload, None, None).with_timestamp_ms(crate::clock::now_ms())
    }

    /// A QoS 0 message of these parts, timestamp 0 and no user properties.
    fn assemble(topic: &str, payload: &[u8], client_id: Option<&str>, thing_name: Option<&str>) -> Self {
        let mut data = Vec::with_capacity(
            topic.len() + payload.len() + client_id.map_or(0, str::len) + thing_name.map_or(0, str::len),
        );
        let mut push = |part: &[u8]| {
            let start = data.len();
            data.extend_from_slice(part);
            start..data.len()
        };
        let topic = push(topic.as_bytes());
        let payload = push(payload);
        let client_id = client_id.map(|c| push(c.as_bytes()));
        let thing_name = thing_name.map(|t| push(t.as_bytes()));
        Message {
            data,
            topic,
            payload,
            client_id,
            thing_name,
            qos: 0,
            timestamp_ms: 0,
            user_properties: Vec::new(),
        }
    }

    /// This message with its parts replaced (the builders' way to change one).
    fn rebuilt(mut self, client_id: Option<&str>, thing_name: Option<&str>) -> Self {
        let mut m = Message::assemble(self.topic(), self.payload(), client_id, thing_name);
        m.qos = self.qos;
        m.timestamp_ms = self.timestamp_ms;
        m.user_properties = std::mem::take(&mut self.user_properties);
        m
    }

    /// The text at `span` of `data` (checked to be UTF-8 when the message was built).
    fn text(&self, span: &Range<usize>) -> &str {
        self.data
            .get(span.clone())
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or_default()
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
    pub fn with_client_id(self, client_id: impl Into<String>) -> Self {
        let client_id = client_id.into();
        let thing_name = self.thing_name().map(str::to_string);
        self.rebuilt(Some(&client_id), thing_name.as_deref())
    }

    /// Sets the registry thing of the publishing connection.
    pub fn with_thing_name(self, thing: impl Into<String>) -> Self {
        let thing = thing.into();
        let client_id = self.client_id().map(str::to_string);
        self.rebuilt(client_id.as_deref(), Some(&thing))
    }

    /// Appends an MQTT 5 user property.
    pub fn with_user_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.user_properties.push((key.into(), value.into()));
        self
    }

    /// The topic it was published to, e.g. `fleet/truck-7/telemetry`.
    pub fn topic(&self) -> &str {
        self.text(&self.topic)
    }

    /// The payload bytes, unchanged.
    pub fn payload(&self) -> &[u8] {
        self.data.get(self.payload.clone()).unwrap_or_default()
    }

    /// The payload as UTF-8 text; not UTF-8 is a [`PluginError::Rejected`].
    pub fn payload_str(&self) -> Result<&str, PluginError> {
        std::str::from_utf8(self.payload())
            .map_err(|e| PluginError::rejected(format!("payload is not UTF-8: {e}")))
    }

    /// The payload parsed as JSON into `T`; invalid is a [`PluginError::Rejected`], so
    /// `msg.payload_json::<Reading>()?` refuses malformed messages without harming the plugin's
    /// health. (Named apart from the constructor [`Message::json`].)
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_slice(self.payload()).map_err(|e| {
            PluginError::rejected(format!(
                "payload is not the expected JSON ({}): {e}",
                self.topic()
            ))
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
            .select(self.payload())
            .map_err(|e| PluginError::rejected(format!("payload is not valid JSON ({}): {e}", self.topic())))
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
            .select_into(self.payload(), values)
            .map_err(|e| PluginError::rejected(format!("payload is not valid JSON ({}): {e}", self.topic())))
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
        self.client_id.as_ref().map(|span| self.text(span))
    }

    /// The registry thing the publishing connection is attached to, if any.
    pub fn thing_name(&self) -> Option<&str> {
        self.thing_name.as_ref().map(|span| self.text(span))
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
        self.topic().split('/').nth(n)
    }

    /// All topic levels.
    pub fn topic_levels(&self) -> impl Iterator<Item = &str> {
        self.topic().split('/')
    }

    /// The message the host packed (WIT `shoal:plugin/packed@0.2.0`): `data` holds the topic,
    /// payload, client id, thing name and `user_properties` encoded properties back to back,
    /// with the lengths given. `Err` says how the host broke that layout.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_packed(
        mut data: Vec<u8>,
        topic_len: u32,
        payload_len: u32,
        client_id_len: Option<u32>,
        thing_name_len: Option<u32>,
        user_properties: u32,
        qos: u8,
        timestamp_ms: u64,
    ) -> Result<Self, String> {
        let mut at = 0usize;
        let mut span = |len: u32, what: &str| -> Result<Range<usize>, String> {
            let end = at
                .checked_add(len as usize)
                .filter(|&end| end <= data.len())
                .ok_or_else(|| format!("its {what} runs past the end of the data"))?;
            let span = at..end;
            at = end;
            Ok(span)
        };
        let topic = span(topic_len, "topic")?;
        let payload = span(payload_len, "payload")?;
        let client_id = client_id_len.map(|len| span(len, "client id")).transpose()?;
        let thing_name = thing_name_len.map(|len| span(len, "thing name")).transpose()?;
        for (part, what) in [
            (Some(&topic), "topic"),
            (client_id.as_ref(), "client id"),
            (thing_name.as_ref(), "thing name"),
        ] {
            if let Some(part) = part
                && std::str::from_utf8(&data[part.clone()]).is_err()
            {
                return Err(format!("its {what} is not UTF-8"));
            }
        }
        let mut rest = &data[at..];
        let mut text = |what: &str| -> Result<String, String> {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| format!("a user property's {what} length runs past the end of the data"))?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > tail.len() {
                return Err(format!("a user property's {what} runs past the end of the data"));
            }
            let (bytes, tail) = tail.split_at(len);
            rest = tail;
            String::from_utf8(bytes.to_vec()).map_err(|_| format!("a user property's {what} is not UTF-8"))
        };
        let mut properties = Vec::new();
        for _ in 0..user_properties {
            let key = text("key")?;
            properties.push((key, text("value")?));
        }
        if !rest.is_empty() {
            return Err(format!("{} bytes follow its last part", rest.len()));
        }
        data.truncate(at);
        Ok(Message {
            data,
            topic,
            payload,
            client_id,
            thing_name,
            qos,
            timestamp_ms,
            user_properties: properties,
        })
    }
}

/// Where one message of a batch lies in the batch's bytes (WIT `shoal:plugin/batch@0.3.0`'s
/// `header`), and its scalar fields.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) struct BatchHeader {
    pub(crate) topic_len: u32,
    pub(crate) payload_len: u32,
    pub(crate) client_id_len: Option<u32>,
    pub(crate) thing_name_len: Option<u32>,
    pub(crate) user_properties: u32,
    pub(crate) user_properties_len: u32,
    pub(crate) qos: u8,
    pub(crate) timestamp_ms: u64,
}

/// Unpacks a batch's messages (packed back to back in `data`, as `headers` say) and calls
/// `each` with each in order, or with why it could not be unpacked. Once one message's
/// layout is broken, the ones after it cannot be found: each of them gets an error too. One
/// buffer serves every message of the batch.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn for_each_in_batch(
    data: &[u8],
    headers: impl IntoIterator<Item = BatchHeader>,
    mut each: impl FnMut(Result<&Message, String>),
) {
    let mut at = 0usize;
    let mut broken = false;
    let mut buf = Vec::new();
    for (i, h) in headers.into_iter().enumerate() {
        if broken {
            each(Err(format!(
                "message {i} of the batch cannot be found after a malformed one"
            )));
            continue;
        }
        let len = [
            Some(h.topic_len),
            Some(h.payload_len),
            h.client_id_len,
            h.thing_name_len,
            Some(h.user_properties_len),
        ]
        .into_iter()
        .flatten()
        .try_fold(0usize, |sum, n| sum.checked_add(n as usize));
        let Some(part) = len
            .and_then(|len| at.checked_add(len))
            .and_then(|end| data.get(at..end))
        else {
            broken = true;
            each(Err(format!(
                "message {i} of the batch runs past the end of its data"
            )));
            continue;
        };
        at += part.len();
        buf.clear();
        buf.extend_from_slice(part);
        let unpacked = Message::from_packed(
            std::mem::take(&mut buf),
            h.topic_len,
            h.payload_len,
            h.client_id_len,
            h.thing_name_len,
            h.user_properties,
            h.qos,
            h.timestamp_ms,
        );
        match unpacked {
            Ok(msg) => {
                each(Ok(&msg));
                buf = msg.data;
            }
            Err(e) => each(Err(format!("message {i} of the batch: {e}"))),
        }
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.topic() == other.topic()
            && self.payload() == other.payload()
            && self.client_id() == other.client_id()
            && self.thing_name() == other.thing_name()
            && self.qos == other.qos
            && self.timestamp_ms == other.timestamp_ms
            && self.user_properties == other.user_properties
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic())
            .field("payload", &String::from_utf8_lossy(self.payload()))
            .field("qos", &self.qos)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("client_id", &self.client_id())
            .field("thing_name", &self.thing_name())
            .field("user_properties", &self.user_properties)
            .finish()
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

    /// A message's parts: topic, payload, client id, thing name, user properties.
    type Parts<'a> = (
        &'a str,
        &'a [u8],
        Option<&'a str>,
        Option<&'a str>,
        &'a [(&'a str, &'a str)],
    );

    /// `parts` packed as WIT `shoal:plugin/packed@0.2.0` says, written out independently of
    /// [`Message::assemble`]: topic, payload, client id, thing name, then each property as
    /// key length (u32 LE), key, value length (u32 LE), value.
    fn packed(
        topic: &str,
        payload: &[u8],
        client: Option<&str>,
        thing: Option<&str>,
        props: &[(&str, &str)],
    ) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(topic.as_bytes());
        data.extend_from_slice(payload);
        data.extend_from_slice(client.unwrap_or("").as_bytes());
        data.extend_from_slice(thing.unwrap_or("").as_bytes());
        for (k, v) in props {
            data.extend_from_slice(&(k.len() as u32).to_le_bytes());
            data.extend_from_slice(k.as_bytes());
            data.extend_from_slice(&(v.len() as u32).to_le_bytes());
            data.extend_from_slice(v.as_bytes());
        }
        data
    }

    #[test]
    fn a_packed_message_unpacks_to_its_parts() {
        let props = [("unit", "°C"), ("", ""), ("unit", "K")];
        let cases: [Parts<'_>; 4] = [
            (
                "fleet/truck-7/telemetry",
                br#"{"temp":3.5}"#,
                Some("truck-7"),
                Some("Truck 7"),
                &props,
            ),
            ("a", b"", None, None, &[]),
            (
                "b/\u{e9}/\u{1f41f}",
                &[0xff, 0, 0xfe],
                Some(""),
                None,
                &[("k", "v")],
            ),
            ("c", b"x", None, Some("thing"), &[]),
        ];
        for (topic, payload, client, thing, props) in cases {
            let data = packed(topic, payload, client, thing, props);
            let len = |s: &str| s.len() as u32;
            let m = Message::from_packed(
                data,
                len(topic),
                payload.len() as u32,
                client.map(len),
                thing.map(len),
                props.len() as u32,
                1,
                42,
            )
            .unwrap();
            assert_eq!(m.topic(), topic);
            assert_eq!(m.payload(), payload);
            assert_eq!(m.client_id(), client);
            assert_eq!(m.thing_name(), thing);
            let got: Vec<(&str, &str)> = m
                .user_properties()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(got, props);
            assert_eq!((m.qos(), m.timestamp_ms()), (1, 42));
            // The same message built with the builders is equal to it.
            let mut built = Message::new(topic, payload.to_vec())
                .with_qos(1)
                .with_timestamp_ms(42);
            if let Some(c) = client {
                built = built.with_client_id(c);
            }
            if let Some(t) = thing {
                built = built.with_thing_name(t);
            }
            for (k, v) in props {
                built = built.with_user_property(*k, *v);
            }
            assert_eq!(built, m);
        }
    }

    #[test]
    fn a_broken_packing_is_an_error_not_a_panic() {
        let ok = packed("t", b"p", Some("c"), None, &[("k", "v")]);
        let unpack =
            |data: Vec<u8>, topic: u32, payload: u32, client: Option<u32>, thing: Option<u32>, props: u32| {
                Message::from_packed(data, topic, payload, client, thing, props, 0, 0)
            };
        assert!(unpack(ok.clone(), 1, 1, Some(1), None, 1).is_ok());
        for (data, topic, payload, client, thing, props, why) in [
            (ok.clone(), 1, 1, Some(1), None, 2, "runs past the end"),
            (ok.clone(), 1, 1, Some(1), None, 0, "bytes follow"),
            (ok.clone(), 1, 1, Some(1), Some(100), 1, "thing name runs past"),
            (ok.clone(), u32::MAX, 1, Some(1), None, 1, "topic runs past"),
            (ok.clone(), 1, u32::MAX, None, None, 0, "payload runs past"),
            (vec![0xff, b'p'], 1, 1, None, None, 0, "topic is not UTF-8"),
            (
                vec![b't', b'p', 0xc3],
                1,
                1,
                Some(1),
                None,
                0,
                "client id is not UTF-8",
            ),
            (
                packed("t", b"", None, None, &[("\u{e9}", "v")])[..4].to_vec(),
                1,
                0,
                None,
                None,
                1,
                "key length runs past",
            ),
        ] {
            let err = unpack(data, topic, payload, client, thing, props).unwrap_err();
            assert!(err.contains(why), "{err:?} should say {why:?}");
        }
        let mut bad_value = packed("t", b"", None, None, &[("k", "v")]);
        *bad_value.last_mut().unwrap() = 0xff;
        assert!(
            unpack(bad_value, 1, 0, None, None, 1)
                .unwrap_err()
                .contains("value is not UTF-8")
        );
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

    /// The header `packed` writes for these parts.
    fn header(
        topic: &str,
        payload: &[u8],
        client: Option<&str>,
        thing: Option<&str>,
        props: &[(&str, &str)],
        qos: u8,
    ) -> BatchHeader {
        BatchHeader {
            topic_len: topic.len() as u32,
            payload_len: payload.len() as u32,
            client_id_len: client.map(|c| c.len() as u32),
            thing_name_len: thing.map(|t| t.len() as u32),
            user_properties: props.len() as u32,
            user_properties_len: props.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>() as u32,
            qos,
            timestamp_ms: 1000 + u64::from(qos),
        }
    }

    #[test]
    fn a_batch_unpacks_into_its_messages_in_order() {
        let parts: [Parts<'_>; 3] = [
            (
                "a/1",
                b"{\"t\":1}",
                Some("c1"),
                Some("thing-1"),
                &[("k", "v"), ("k", "w")],
            ),
            ("b", b"", None, None, &[]),
            ("c/\u{1f41f}", b"\xff", Some(""), None, &[("", "")]),
        ];
        let mut data = Vec::new();
        let mut headers = Vec::new();
        for (i, (t, p, c, th, props)) in parts.iter().enumerate() {
            data.extend(packed(t, p, *c, *th, props));
            headers.push(header(t, p, *c, *th, props, i as u8));
        }
        let mut got = Vec::new();
        for_each_in_batch(&data, headers, |m| got.push(m.cloned()));
        assert_eq!(got.len(), 3);
        for (i, ((t, p, c, th, props), m)) in parts.iter().zip(got).enumerate() {
            let m = m.unwrap();
            assert_eq!(
                (m.topic(), m.payload(), m.client_id(), m.thing_name()),
                (*t, *p, *c, *th)
            );
            let got_props: Vec<(&str, &str)> = m
                .user_properties()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(got_props, *props);
            assert_eq!((m.qos(), m.timestamp_ms()), (i as u8, 1000 + i as u64));
        }
    }

    #[test]
    fn a_broken_batch_fails_from_the_broken_message_on() {
        let mut data = packed("a", b"1", None, None, &[]);
        data.extend(packed("b", b"2", None, None, &[]));
        data.extend(packed("c", b"3", None, None, &[]));
        // The second header claims more payload than the data holds.
        let mut second = header("b", b"2", None, None, &[], 0);
        second.payload_len = 100;
        let headers = vec![
            header("a", b"1", None, None, &[], 0),
            second,
            header("c", b"3", None, None, &[], 0),
        ];
        let mut got = Vec::new();
        for_each_in_batch(&data, headers, |m| got.push(m.map(|m| m.topic().to_string())));
        assert_eq!(got[0], Ok("a".to_string()));
        assert!(
            got[1].as_ref().unwrap_err().contains("runs past the end"),
            "{got:?}"
        );
        assert!(
            got[2].as_ref().unwrap_err().contains("after a malformed one"),
            "{got:?}"
        );
        // A message whose own layout is wrong (a property count with no bytes) fails alone.
        let mut bad = header("a", b"1", None, None, &[], 0);
        bad.user_properties = 1;
        let headers = vec![bad, header("b", b"2", None, None, &[], 0)];
        let data = [
            packed("a", b"1", None, None, &[]),
            packed("b", b"2", None, None, &[]),
        ]
        .concat();
        let mut got = Vec::new();
        for_each_in_batch(&data, headers, |m| got.push(m.map(|m| m.topic().to_string())));
        assert!(got[0].is_err(), "{got:?}");
        assert_eq!(got[1], Ok("b".to_string()));
    }
}
