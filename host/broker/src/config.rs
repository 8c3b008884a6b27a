//! Broker limits and behaviour, with AWS IoT-like defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::topic::TopicLimits;

/// Limits a deployment may tune. Defaults follow AWS IoT Core where it publishes a figure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest PUBLISH payload in bytes (AWS IoT: 128 KiB).
    pub max_payload_size: u32,
    /// Longest topic name or filter in bytes (AWS IoT: 256).
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter (AWS IoT: 8; `$aws/` topics exempt).
    pub max_topic_levels: usize,
    /// Longest client id in bytes (AWS IoT: 128).
    pub max_client_id_length: usize,
    /// QoS 1/2 messages in flight to one client at a time (its receive maximum caps it lower).
    pub max_inflight: u16,
    /// QoS 1/2 messages a client may have in flight to us (our Receive Maximum).
    pub max_receive: u16,
    /// Messages queued per session (offline, or waiting for in-flight room); beyond it new
    /// messages are dropped, counted and logged.
    pub max_queued_messages: usize,
    /// Open connections on this node; further CONNECTs are refused (v5 0x97 Quota exceeded).
    pub max_connections: usize,
    /// Topic aliases a client may use towards us (v5 Topic Alias Maximum).
    pub max_topic_aliases: u16,
    /// Highest keep-alive a client may ask for; 0 or more is answered with this (v5 Server
    /// Keep Alive). AWS IoT: 1200 s.
    pub max_keep_alive_secs: u16,
    /// Subscriptions per session (AWS IoT: 50 per SUBSCRIBE; we bound the session).
    pub max_subscriptions_per_session: usize,
    /// Longest Session Expiry Interval a client may ask for, in seconds (AWS IoT: 1 hour by
    /// default, up to 7 days).
    pub max_session_expiry_secs: u32,
    /// A client whose socket stays full (it does not read) this long is disconnected.
    pub write_timeout_secs: u16,
    /// Watchdogs (`$shoal/watchdog/...`) armed at once on this node; further armings of new
    /// names are refused.
    pub max_watchdogs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_size: 128 * 1024,
            max_topic_length: 256,
            max_topic_levels: 8,
            max_client_id_length: 128,
            max_inflight: 100,
            max_receive: 100,
            max_queued_messages: 1000,
            max_connections: 100_000,
            max_topic_aliases: 64,
            max_keep_alive_secs: 1200,
            max_subscriptions_per_session: 1000,
            max_session_expiry_secs: 7 * 24 * 3600,
            write_timeout_secs: 30,
            max_watchdogs: 100_000,
        }
    }
}

impl Limits {
    /// The topic limits in the form the parsers take.
    pub fn topic_limits(&self) -> TopicLimits {
        TopicLimits {
            max_length: self.max_topic_length,
            max_levels: self.max_topic_levels,
        }
    }

    /// Largest MQTT packet we accept: payload plus topic plus room for properties.
    pub fn max_packet_size(&self) -> u32 {
        self.max_payload_size
            .saturating_add(self.max_topic_length as u32)
            .saturating_add(16 * 1024)
    }
}

/// Everything the broker core needs to know besides its collaborators.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Limits.
    pub limits: Limits,
    /// How long a publisher's PUBACK may wait for the store to make a message durable before
    /// the broker acknowledges anyway (and reports the store as unhealthy).
    pub durable_ack_timeout: Duration,
    /// How often expired sessions and delayed wills are swept.
    pub sweep_interval: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            limits: Limits::default(),
            durable_ack_timeout: Duration::from_secs(3),
            sweep_interval: Duration::from_millis(250),
        }
    }
}
