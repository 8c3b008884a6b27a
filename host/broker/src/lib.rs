//! Shoal's MQTT broker core.
//!
//! # Layout
//!
//! - [`topic`], [`message`]: the vocabulary (`Topic`, `TopicFilter`, `ClientId`, `Message`),
//!   validated once at the edge.
//! - [`broker`]: [`Broker`], shared by every thread: sessions ([`session`]), the subscription
//!   trie ([`router`]), retained messages ([`retained`]), wills, and the store writer
//!   ([`persist`]) that commits state through the [`store`] seam.
//! - [`mqtt`]: the wire, on ntex-mqtt: listeners (TCP, TLS), v3.1.1 and v5 handlers, and one
//!   writer task per connection that drains its session queue.
//! - [`lifecycle`]: AWS IoT's presence events (`$aws/events/presence/...`).
//! - [`watchdog`]: dead man's switches (`$shoal/watchdog/...`): a message published when an
//!   expected one does not come.
//! - [`auth`], [`hook`]: the seams where identity/policy and the services behind the broker
//!   (shadows, rules) plug in.
#![deny(missing_docs)]

pub mod auth;
pub mod broker;
pub mod config;
pub mod hook;
pub mod lifecycle;
pub mod message;
pub mod metrics;
pub mod mqtt;
pub mod persist;
pub mod retained;
pub mod rng;
pub mod router;
pub mod session;
pub mod store;
pub mod topic;
pub mod watchdog;

pub use broker::{Broker, ConnectParams, Routed, Will};
pub use config::{BrokerConfig, Limits};
pub use message::{ClientId, Message, QoS};
pub use topic::{Topic, TopicFilter, TopicLimits};
