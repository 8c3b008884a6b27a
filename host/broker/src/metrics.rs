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

/// `N` counters that many threads bump at once (a rule's matched / selected / actions-ok,
/// bumped for every message by the I/O threads running inline rules and by every rules
/// worker). Each thread writes its own stripe, one cache line holding all `N`, so threads do
/// not fight over lines; reading sums the stripes.
///
/// The first `STRIPES - 1` threads that ever bump a striped counter each own a stripe that no
/// other thread writes, so their increments are a plain load and store (no locked
/// instruction: on the rules' hot path a `lock xadd` per counter was ~2-6 % of the CPU); every
/// later thread shares the last stripe through `fetch_add`. Threads are never given a stripe
/// back, so the long-lived threads that start first (I/O threads, rules workers) keep theirs.
#[derive(Debug)]
pub struct StripedCounters<const N: usize> {
    stripes: [Stripe<N>; STRIPES],
}

/// Stripes per counter set: seven owned ones and one shared.
const STRIPES: usize = 8;
/// The stripe the threads without one of their own share.
const SHARED: usize = STRIPES - 1;

#[derive(Debug)]
#[repr(align(64))]
struct Stripe<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for StripedCounters<N> {
    fn default() -> Self {
        StripedCounters {
            stripes: std::array::from_fn(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0)))),
        }
    }
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe (`usize::MAX` until it first bumps a counter).
    static MY_STRIPE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

fn my_stripe() -> usize {
    MY_STRIPE.with(|mine| {
        let i = mine.get();
        if i != usize::MAX {
            return i;
        }
        let i = NEXT_STRIPE.fetch_add(1, Relaxed).min(SHARED);
        mine.set(i);
        i
    })
}

impl<const N: usize> StripedCounters<N> {
    /// Adds `n` to counter `k` (`k < N`).
    pub fn add(&self, k: usize, n: u64) {
        let i = my_stripe();
        let counter = &self.stripes[i].0[k];
        if i == SHARED {
            counter.fetch_add(n, Relaxed);
        } else {
            // Only this thread writes this stripe: no read-modify-write race to guard against.
            counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
        }
    }

    /// Counter `k`'s total so far.
    pub fn get(&self, k: usize) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0[k].load(Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

#[cfg(test)]
mod striped_tests {
    use super::StripedCounters;

    #[test]
    fn sums_every_thread_owned_and_shared_stripes_alike() {
        // More threads than stripes, all at once: the later ones share the last stripe.
        let c = std::sync::Arc::new(StripedCounters::<2>::default());
        let start = std::sync::Arc::new(std::sync::Barrier::new(12));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let (c, start) = (c.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    (0..10_000).for_each(|_| {
                        c.add(0, 1);
                        c.add(1, 2);
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        c.add(0, 5);
        assert_eq!((c.get(0), c.get(1)), (120_005, 240_000));
    }
}
