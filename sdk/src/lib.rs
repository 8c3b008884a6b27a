//! Write [Shoal](https://example.invalid/shoal) rule plugins in Rust.
//!
//! A rule plugin is a WebAssembly component that Shoal calls for each message a rule selects. It
//! answers with [`Action`]s (publish, shadow update, alert, stream append, webhook) that the host
//! executes on its behalf: a plugin never opens a socket. This crate is all a plugin author
//! depends on: the bindings generated from Shoal's WIT package (`shoal:plugin@0.2.0`, whose
//! packed message the SDK unpacks) stay private behind a small API and the [`export_plugin!`]
//! macro.
//!
//! ```
//! use shoal_sdk::prelude::*;
//!
//! /// Alerts when `temp` goes above the configured `max`.
//! struct TooWarm {
//!     max: f64,
//! }
//!
//! impl Plugin for TooWarm {
//!     fn init(config: Config) -> Result<Self, PluginError> {
//!         Ok(TooWarm { max: config.parse("max")? })
//!     }
//!
//!     fn on_message(&mut self, msg: &Message) -> Result<Vec<Action>, PluginError> {
//!         let reading: serde_json::Value = msg.json_value()?;
//!         let Some(temp) = reading["temp"].as_f64() else {
//!             return Err(PluginError::rejected("no numeric `temp`"));
//!         };
//!         if temp <= self.max {
//!             return Ok(vec![]);
//!         }
//!         let thing = msg.thing_or_level(1).unwrap_or("unknown");
//!         Ok(vec![
//!             Action::alert(Severity::Critical, "too warm", format!("{temp} > {}", self.max))
//!                 .thing(thing)
//!                 .into(),
//!         ])
//!     }
//! }
//!
//! export_plugin!(TooWarm);
//!
//! // The same code runs natively against a fake host under `cargo test`:
//! use shoal_sdk::testing::Harness;
//! let mut h = Harness::<TooWarm>::new(&[("max", "-15")]).unwrap();
//! let actions = h.send(Message::json("fleet/t1/telemetry", json!({"temp": -10}))).unwrap();
//! assert_eq!(actions[0].as_alert().unwrap().thing.as_deref(), Some("t1"));
//! ```
//!
//! # How a plugin lives
//!
//! The host creates an *instance* of the component, calls [`Plugin::init`] once with the
//! operator's configuration, then [`Plugin::on_message`] for messages, one at a time. It may
//! reuse an instance for many messages, and it may discard it and create a fresh one at any
//! moment (after a trap, a new version, a restart, or simply to reclaim memory). So fields of your
//! plugin type are a cache: whatever must survive (counters over time, "already alerted" flags)
//! goes in the host's key-value store, [`kv`].
//!
//! A panic, a deadline overrun or running out of memory is a *trap*: the host discards the
//! instance and counts it against the plugin's health. Return a [`PluginError`] instead for
//! messages you refuse.
//!
//! # Host calls
//!
//! [`log`] (and the [`info!`]-style macros), [`clock`], [`shadow`] (read-only), [`kv`] and
//! [`metrics`]. In a native build (any target but `wasm32`) they go to an in-process fake that
//! the `testing` harness (native builds only) controls.
#![deny(missing_docs)]

// Lets the generated bindings and the export macro name this crate the same way from inside it
// and from a plugin crate.
extern crate self as shoal_sdk;

mod action;
mod config;
mod error;
mod export;
mod message;
mod sys;
mod template;

pub mod clock;
/// Great-circle distances: between two positions, and from a position to a route polyline
/// (the `shoal-geo` crate, also behind the rules engine's `geo_distance`).
pub use shoal_geo as geo;
pub mod json;
pub mod kv;
pub mod log;
pub mod metrics;
pub mod shadow;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use action::{Action, Alert, Publish, Severity, ShadowUpdate, StreamAppend, Webhook};
pub use config::Config;
pub use error::PluginError;
pub use message::Message;
pub use serde_json;
pub use template::Template;

/// Support for [`export_plugin!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::*;
}

/// A rule plugin: built from the operator's configuration, then called for each message.
///
/// Implement it on your own type and name that type in [`export_plugin!`]. The value built by
/// `init` lives as long as the host keeps the instance, which may be for one message or for
/// millions; keep durable state in [`kv`].
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its configuration. Return [`PluginError::config`] (for example
    /// through [`Config::parse`]'s `?`) to refuse a configuration: the host then reports the
    /// plugin as misconfigured instead of calling it.
    fn init(config: Config) -> Result<Self, PluginError>;

    /// Handles one message and returns the actions the host should take (possibly none).
    fn on_message(&mut self, msg: &Message) -> Result<Vec<Action>, PluginError>;
}

/// Everything a plugin usually needs: `use shoal_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::kv::Scope;
    pub use crate::serde_json::{self, Value, json};
    pub use crate::{Action, Config, Message, Plugin, PluginError, Severity, Template, export_plugin};
}
