//! Broker telemetry: one place defines every metric, as plain atomics on the message path
//! (a registry lookup per message would cost more than the routing itself). The HTTP layer
//! renders them in the Prometheus text format with [`BrokerMetrics::render`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Counters and gauges of one broker.
#[derive(Debug, Default)]
pub struct BrokerMetrics {
    /// Open client connections (gauge).
    pub connections: AtomicI64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// CONNECTs refused (any reason).
    pub connects_refused: AtomicU64,
    /// Sessions held, online and offline (gauge).
    pub sessions: AtomicI64,
    /// PUBLISH packets received from clients.
    pub messages_in: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_out: AtomicU64,
    /// Payload bytes received.
    pub bytes_in: AtomicU64,
    /// Payload bytes sent.
    pub bytes_out: AtomicU64,
    /// Messages dropped because a session queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Messages dropped because they expired before delivery.
    pub dropped_expired: AtomicU64,
    /// Messages dropped because they exceeded the client's maximum packet size.
    pub dropped_too_large: AtomicU64,
    /// Messages not delivered because `iot:Receive` was denied.
    pub dropped_unauthorized: AtomicU64,
    /// Retained messages held (gauge).
    pub retained: AtomicI64,
    /// Subscriptions held (gauge).
    pub subscriptions: AtomicI64,
    /// Store write batches committed.
    pub store_batches: AtomicU64,
    /// Store write failures (each retried).
    pub store_errors: AtomicU64,
    /// Store writes waiting to be committed (gauge).
    pub store_pending: AtomicI64,
    /// 1 while the store answers, 0 while it does not (gauge).
    pub store_up: AtomicI64,
    /// Protocol errors and refused packets (malformed, oversized, bad topic...).
    pub protocol_errors: AtomicU64,
    /// PUBLISHes (wills included) the policies refused.
    pub publish_denied: AtomicU64,
    /// SUBSCRIBE filters the policies refused.
    pub subscribe_denied: AtomicU64,
    /// Wills published.
    pub wills_published: AtomicU64,
    /// Watchdogs armed (gauge; shared with the watchdogs).
    pub watchdogs: Arc<AtomicI64>,
    /// Watchdogs that fired.
    pub watchdogs_fired: AtomicU64,
    /// Watchdog requests refused (malformed, forbidden topic, limit).
    pub watchdogs_rejected: AtomicU64,
}

impl BrokerMetrics {
    /// Adds one to a counter.
    #[inline]
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let c = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let g = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        g(
            &mut out,
            "shoal_connections",
            "Open MQTT connections.",
            self.connections.load(Relaxed),
        );
        c(
            &mut out,
            "shoal_connections_total",
            "MQTT connections accepted.",
            self.connections_total.load(Relaxed),
        );
        c(
            &mut out,
            "shoal_connects_refused_total",
            "CONNECT packets refused.",
            self.connects_refused.load(Relaxed),
        );
        g(
            &mut out,
            "shoal_sessions",
            "Sessions held (online and offline).",
            self.sessions.load(Relaxed),
        );
        g(
            &mut out,
            "shoal_subscriptions",
            "Subscriptions held.",
            self.subscriptions.load(Relaxed),
        );
        c(
            &mut out,
            "shoal_messages_in_total",
            "PUBLISH packets received from clients.",
            self.messages_in.load(Relaxed),
        );
        c(
            &mut out,
            "shoal_messages_out_total",
            "PUBLISH packets sent to clients.",
            self.messages_out.load(Relaxed),
        );
        c(
            &mut out,
            "shoal_bytes_in_total",
            "Payload bytes received.",
            self.bytes_in.load(Relaxed),
        );
        c(
            &mut out,
            "shoal_bytes_out_total",
            "Payload bytes sent.",
            self.bytes_out.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP shoal_messages_dropped_total Messages not delivered, by reason.\n# TYPE shoal_messages_dropped_total counter"
        );
        for (reason, v) in [
            ("queue_full", &self.dropped_queue_full),
            ("expired", &self.dropped_expired),
            ("too_large", &self.dropped_too_large),
            ("unauthorized", &self.dropped_unauthorized),
        ] {
            let _ = writeln!(
                out,
                "shoal_messages_dropped_total{{reason=\"{reason}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP shoal_mqtt_denied_total MQTT operations the policies refused, by action (connects: shoal_connects_refused_total; deliveries: shoal_messages_dropped_total).\n# TYPE shoal_mqtt_denied_total counter"
        );
        for (action, v) in [
            ("publish", &self.publish_denied),
            ("subscribe", &self.subscribe_denied),
        ] {
            let _ = writeln!(
                out,
                "shoal_mqtt_denied_total{{action=\"{action}\"}} {}",
                v.load(Relaxed)
            );
        }
        g(
            &mut out,
            "shoal_retained_messages",
            "Retained messages held.",
            self.retained.load(Relaxed),
        );
        c(
            &mut out,
            "shoal_protocol_errors_total",
            "Malformed or refused packets.",
            self.protocol_errors.load(Relaxed),
        );
        c(
            &mut out,
            "shoal_wills_published_total",
            "Will messages published.",
            self.wills_published.load(Relaxed),
        );
        g(
            &mut out,
            "shoal_watchdogs",
            "Watchdogs armed ($shoal/watchdog/...).",
            self.watchdogs.load(Relaxed),
        );
        c(
            &mut out,
            "shoal_watchdogs_fired_total",
            "Watchdogs that fired (were not re-armed in time).",
            self.watchdogs_fired.load(Relaxed),
        );
        c(
            &mut out,
            "shoal_watchdogs_rejected_total",
            "Watchdog requests refused (malformed, forbidden topic, limit).",
            self.watchdogs_rejected.load(Relaxed),
        );
        c(
            &mut out,
            "shoal_store_batches_total",
            "Store write batches committed.",
            self.store_batches.load(Relaxed),
        );
        c(
            &mut out,
            "shoal_store_errors_total",
            "Store operations that failed.",
            self.store_errors.load(Relaxed),
        );
        g(
            &mut out,
            "shoal_store_pending_writes",
            "Store writes not yet committed.",
            self.store_pending.load(Relaxed),
        );
        g(
            &mut out,
            "shoal_store_up",
            "1 when the store answers.",
            self.store_up.load(Relaxed),
        );
        out
    }
}

/// A counter that many threads bump at once (per-rule counters bumped by every rules worker
/// for every message): one cache line per stripe, each thread always on the same stripe, so
/// increments from different threads do not fight over one line. Reading sums the stripes.
#[derive(Debug, Default)]
pub struct StripedCounter {
    stripes: [Stripe; STRIPES],
}

const STRIPES: usize = 4;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MY_STRIPE: usize = NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES;
}

impl StripedCounter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        let i = MY_STRIPE.with(|i| *i);
        self.stripes[i].0.fetch_add(n, Relaxed);
    }

    /// The total so far.
    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

#[cfg(test)]
mod striped_tests {
    use super::StripedCounter;

    #[test]
    fn sums_every_thread() {
        let c = std::sync::Arc::new(StripedCounter::default());
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.add(1)))
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        c.add(5);
        assert_eq!(c.get(), 6005);
    }
}
