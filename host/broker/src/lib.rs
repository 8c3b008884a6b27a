//! Shoal's MQTT broker core.
#![deny(missing_docs)]

pub mod message;
pub mod store;
pub mod topic;
