//! Unit-test a plugin natively with plain `cargo test` (only in non-wasm builds).
//!
//! [`Harness`] builds your plugin from a configuration, feeds it messages and lets you set up and
//! inspect the fake host behind every host call: the clock, the key-value store (whose TTLs
//! follow the fake clock), shadows, logs and metrics.
//!
//! ```
//! use shoal_sdk::prelude::*;
//! use shoal_sdk::testing::Harness;
//!
//! /// Counts messages per thing in the key-value store.
//! struct Count;
//!
//! impl Plugin for Count {
//!     fn init(_: Config) -> Result<Self, PluginError> {
//!         Ok(Count)
//!     }
//!     fn on_message(&mut self, msg: &Message) -> Result<Vec<Action>, PluginError> {
//!         let thing = msg.thing_or_level(1).unwrap_or("none");
//!         let n: u64 = shoal_sdk::kv::get_json(Scope::Thing(thing), "n")?.unwrap_or(0) + 1;
//!         shoal_sdk::kv::set_json(Scope::Thing(thing), "n", &n, Some(60))?;
//!         Ok(vec![])
//!     }
//! }
//!
//! let mut h = Harness::<Count>::new(&[]).unwrap();
//! h.send(Message::new("fleet/t1/telemetry", "{}")).unwrap();
//! h.restart().unwrap(); // the host may discard an instance at any time: state is in kv
//! h.send(Message::new("fleet/t1/telemetry", "{}")).unwrap();
//! assert_eq!(h.kv_get_json::<u64>(Scope::Thing("t1"), "n"), Some(2));
//! h.advance_secs(61); // the TTL runs on the fake clock
//! assert_eq!(h.kv_get(Scope::Thing("t1"), "n"), None);
//! ```
//!
//! The fake host is per thread, and [`Harness::new`] resets it: use one harness per test
//! (`cargo test` runs each test on its own thread).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::kv::Scope;
use crate::log::Level;
use crate::sys::fake::{self, KvEntry, with_host};
use crate::{Action, Config, Message, Plugin, PluginError};

/// One line the plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub message: String,
    /// The fake clock when it was written.
    pub at_ms: u64,
}

/// Runs a plugin natively against the fake host, the way Shoal would: `init` with a
/// configuration, then one message at a time.
pub struct Harness<P: Plugin> {
    config: Config,
    plugin: Option<P>,
    max_actions: usize,
    max_output_bytes: usize,
}

impl<P: Plugin> Harness<P> {
    /// Resets this thread's fake host and builds the plugin from `config` pairs; the error is
    /// what the plugin's `init` returned.
    pub fn new(config: &[(&str, &str)]) -> Result<Self, PluginError> {
        Self::with_config(Config::from_pairs(config))
    }

    /// Like [`Harness::new`] with a ready [`Config`].
    pub fn with_config(config: Config) -> Result<Self, PluginError> {
        fake::reset();
        let mut h = Harness {
            config,
            plugin: None,
            max_actions: fake::DEFAULT_MAX_ACTIONS,
            max_output_bytes: fake::DEFAULT_MAX_OUTPUT_BYTES,
        };
        h.restart()?;
        Ok(h)
    }

    /// Discards the instance and builds a fresh one from the same configuration, as the host
    /// may do at any moment. Host state (clock, key-value, shadows) is kept. Also the way to
    /// run `init` again after seeding host state it reads.
    pub fn restart(&mut self) -> Result<(), PluginError> {
        self.plugin = None;
        self.plugin = Some(P::init(self.config.clone())?);
        Ok(())
    }

    /// Calls `on_message` with `msg`.
    ///
    /// Like the host, it checks the output against the per-call limits (by default Shoal's: 100
    /// actions, 1 MiB of action data; see [`Harness::set_output_limits`]): output over a limit
    /// comes back as [`PluginError::Failed`], which is how the rule's error path would see it.
    pub fn send(&mut self, msg: Message) -> Result<Vec<Action>, PluginError> {
        let Some(plugin) = self.plugin.as_mut() else {
            return Err(PluginError::failed("no instance: the last restart failed"));
        };
        let actions = plugin.on_message(&msg)?;
        if actions.len() > self.max_actions {
            return Err(PluginError::failed(format!(
                "output over its limit: {} actions, the limit is {}",
                actions.len(),
                self.max_actions
            )));
        }
        let bytes: usize = actions.iter().map(Action::data_len).sum();
        if bytes > self.max_output_bytes {
            return Err(PluginError::failed(format!(
                "output over its limit: {bytes} bytes of actions, the limit is {}",
                self.max_output_bytes
            )));
        }
        Ok(actions)
    }

    /// Sets the per-call output limits [`Harness::send`] enforces, to match the plugin's
    /// configuration in Shoal (`max_actions`, `max_output_bytes`).
    pub fn set_output_limits(&mut self, max_actions: usize, max_output_bytes: usize) {
        self.max_actions = max_actions;
        self.max_output_bytes = max_output_bytes;
    }

    /// Sends each message in turn and returns every action, stopping at the first error.
    pub fn send_all(&mut self, msgs: impl IntoIterator<Item = Message>) -> Result<Vec<Action>, PluginError> {
        let mut all = Vec::new();
        for msg in msgs {
            all.extend(self.send(msg)?);
        }
        Ok(all)
    }

    /// The plugin instance (to inspect its fields).
    pub fn plugin(&self) -> Option<&P> {
        self.plugin.as_ref()
    }

    /// The plugin instance, mutably.
    pub fn plugin_mut(&mut self) -> Option<&mut P> {
        self.plugin.as_mut()
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // --- clock ---

    /// The fake clock, ms since the Unix epoch (starts at 2026-01-01T00:00:00Z).
    pub fn now_ms(&self) -> u64 {
        with_host(|h| h.now_ms)
    }

    /// Sets the fake clock.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        with_host(|h| h.now_ms = now_ms);
    }

    /// Moves the fake clock forward.
    pub fn advance(&mut self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        with_host(|h| h.now_ms = h.now_ms.saturating_add(ms));
    }

    /// Moves the fake clock forward by `secs` seconds.
    pub fn advance_secs(&mut self, secs: u64) {
        self.advance(Duration::from_secs(secs));
    }

    // --- shadows ---

    /// Makes `thing`'s shadow (`name`: `None` for the classic one) the document `doc`, as
    /// `shadow::get` will return it.
    pub fn set_shadow(&mut self, thing: &str, name: Option<&str>, doc: Value) {
        with_host(|h| {
            h.shadows
                .insert((thing.to_string(), name.map(str::to_string)), doc.to_string())
        });
    }

    /// Makes `thing`'s classic shadow report `reported` (a `{"state":{"reported":..}}` document).
    pub fn set_reported(&mut self, thing: &str, reported: Value) {
        self.set_shadow(
            thing,
            None,
            serde_json::json!({"state": {"reported": reported}, "version": 1}),
        );
    }

    /// Removes a shadow.
    pub fn remove_shadow(&mut self, thing: &str, name: Option<&str>) {
        with_host(|h| h.shadows.remove(&(thing.to_string(), name.map(str::to_string))));
    }

    /// With `Some(why)`, every shadow read fails with `why`; `None` heals it.
    pub fn fail_shadow_reads(&mut self, why: Option<&str>) {
        with_host(|h| h.shadow_error = why.map(str::to_string));
    }

    // --- key-value ---

    /// A stored value (ignoring expired ones), bypassing the plugin.
    pub fn kv_get(&self, scope: Scope<'_>, key: &str) -> Option<Vec<u8>> {
        with_host(|h| {
            h.expire();
            h.kv.get(&fake::kv_key(scope, key)).map(|e| e.value.clone())
        })
    }

    /// A stored JSON value, deserialized; `None` if absent or not a `T`.
    pub fn kv_get_json<T: DeserializeOwned>(&self, scope: Scope<'_>, key: &str) -> Option<T> {
        self.kv_get(scope, key)
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Stores a value, bypassing the plugin (and the quota).
    pub fn kv_set(&mut self, scope: Scope<'_>, key: &str, value: &[u8], ttl_secs: Option<u32>) {
        with_host(|h| {
            let expires_at_ms = ttl_secs.map(|s| h.now_ms + u64::from(s) * 1000);
            h.kv.insert(
                fake::kv_key(scope, key),
                KvEntry {
                    value: value.to_vec(),
                    expires_at_ms,
                },
            );
        });
    }

    /// Stores a JSON value, bypassing the plugin.
    pub fn kv_set_json<T: Serialize + ?Sized>(&mut self, scope: Scope<'_>, key: &str, value: &T) {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.kv_set(scope, key, &bytes, None);
    }

    /// The live keys as `(thing, key)` pairs (`thing` is `None` for the global scope), sorted.
    pub fn kv_keys(&self) -> Vec<(Option<String>, String)> {
        with_host(|h| {
            h.expire();
            h.kv.keys().cloned().collect()
        })
    }

    /// Limits the total bytes (keys plus values) the plugin may store (default 1 MiB, Shoal's
    /// default); `None` removes the limit.
    pub fn set_kv_quota(&mut self, bytes: Option<usize>) {
        with_host(|h| h.kv_quota_bytes = bytes);
    }

    /// Limits the size of one value (default 64 KiB, Shoal's default); `None` removes the limit.
    pub fn set_kv_max_value(&mut self, bytes: Option<usize>) {
        with_host(|h| h.kv_max_value_bytes = bytes);
    }

    /// With `Some(why)`, every key-value call fails as unavailable; `None` heals it.
    pub fn set_kv_unavailable(&mut self, why: Option<&str>) {
        with_host(|h| h.kv_unavailable = why.map(str::to_string));
    }

    // --- logs and metrics ---

    /// Every line logged since the harness was built (or since [`Harness::take_logs`]).
    pub fn logs(&self) -> Vec<LogRecord> {
        with_host(|h| h.logs.clone())
    }

    /// Returns and forgets the captured log lines.
    pub fn take_logs(&mut self) -> Vec<LogRecord> {
        with_host(|h| std::mem::take(&mut h.logs))
    }

    /// The value of counter `name` (0 if never added to).
    pub fn counter(&self, name: &str) -> u64 {
        with_host(|h| h.counters.get(name).copied().unwrap_or(0))
    }

    /// The last value of gauge `name`.
    pub fn gauge(&self, name: &str) -> Option<f64> {
        with_host(|h| h.gauges.get(name).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv;
    use serde_json::json;

    /// Exercises every host call.
    struct Probe {
        seen: u32,
    }

    impl Plugin for Probe {
        fn init(config: Config) -> Result<Self, PluginError> {
            if config.contains("refuse") {
                return Err(PluginError::config("refused"));
            }
            Ok(Probe { seen: 0 })
        }

        fn on_message(&mut self, msg: &Message) -> Result<Vec<Action>, PluginError> {
            self.seen += 1;
            crate::info!("seen {}", self.seen);
            crate::metrics::counter_add("seen", 1);
            crate::metrics::gauge_set("last_ts", msg.timestamp_ms() as f64);
            let thing = msg
                .thing_or_level(1)
                .ok_or_else(|| PluginError::rejected("no thing"))?;
            kv::set(Scope::Thing(thing), "k", b"v", Some(10))?;
            let setpoint = crate::shadow::reported(thing, "setpoint")?;
            Ok(vec![
                Action::publish_json(
                    "out",
                    &json!({"setpoint": setpoint, "now": crate::clock::now_ms()}),
                )
                .into(),
            ])
        }
    }

    #[test]
    fn host_calls_reach_the_fake() {
        let mut h = Harness::<Probe>::new(&[]).unwrap();
        h.set_reported("t1", json!({"setpoint": -18}));
        let out = h.send(Message::new("fleet/t1/x", "")).unwrap();
        let body: Value = serde_json::from_slice(&out[0].as_publish().unwrap().payload).unwrap();
        assert_eq!(body, json!({"setpoint": -18, "now": fake::EPOCH_MS}));
        assert_eq!(h.counter("seen"), 1);
        assert_eq!(h.gauge("last_ts"), Some(fake::EPOCH_MS as f64));
        assert_eq!(h.logs()[0].message, "seen 1");
        assert_eq!(h.kv_get(Scope::Thing("t1"), "k"), Some(b"v".to_vec()));
        h.advance_secs(10);
        assert_eq!(
            h.kv_get(Scope::Thing("t1"), "k"),
            None,
            "TTL follows the fake clock"
        );
        h.restart().unwrap();
        assert_eq!(h.plugin().unwrap().seen, 0);
        h.set_output_limits(0, 1 << 20);
        let over = h.send(Message::new("fleet/t1/x", ""));
        assert!(matches!(over, Err(PluginError::Failed(m)) if m.contains("1 actions, the limit is 0")));
    }

    #[test]
    fn host_faults_surface_as_plugin_errors() {
        let mut h = Harness::<Probe>::new(&[]).unwrap();
        h.set_kv_unavailable(Some("redis down"));
        assert!(
            matches!(h.send(Message::new("fleet/t1/x", "")), Err(PluginError::Failed(m)) if m.contains("redis down"))
        );
        h.set_kv_unavailable(None);
        h.fail_shadow_reads(Some("timeout"));
        assert!(matches!(
            h.send(Message::new("fleet/t1/x", "")),
            Err(PluginError::Failed(_))
        ));
        h.fail_shadow_reads(None);
        h.set_kv_quota(Some(1));
        assert!(
            matches!(h.send(Message::new("fleet/t1/x", "")), Err(PluginError::Failed(m)) if m.contains("quota"))
        );
        assert!(matches!(
            kv::get(Scope::Global, ""),
            Err(kv::Error::InvalidKey(_))
        ));
        assert!(matches!(
            Harness::<Probe>::new(&[("refuse", "")]),
            Err(PluginError::Config(_))
        ));
    }
}
