//! Per-version call metrics, per-plugin custom metrics (`counter-add`, `gauge-set`) and their
//! Prometheus rendering. Counters are relaxed atomics bumped on the call path; rendering reads
//! them without stopping calls.

use crate::outcome::FaultKind;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Upper bounds of the call-duration histogram, in nanoseconds (1 µs .. 100 ms).
const BUCKETS_NS: [u64; 16] = [
    1_000,
    2_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
];

/// Most distinct custom counter (and gauge) names a plugin may create.
pub(crate) const MAX_CUSTOM_METRICS: usize = 64;

/// Threads bump a version's call counters on stripes of their own (see [`VersionMetrics`]).
pub(crate) const STRIPES: usize = 4;

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe: threads take stripes in turn, the first time they ask for one.
    static MY_STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

/// The stripe the calling thread uses, in `0..STRIPES`.
pub(crate) fn my_stripe() -> usize {
    MY_STRIPE.with(|i| *i)
}

/// Counters of one plugin version.
///
/// The counters every call bumps are striped: each thread adds to its own stripe (a cache
/// line apart from the others), and reading sums the stripes, so threads calling the same
/// version at once (the rules workers) do not bounce one cache line between their cores.
#[derive(Default)]
pub(crate) struct VersionMetrics {
    stripes: [CallStripe; STRIPES],
    memory_high_water: AtomicU64,
    instances_created: AtomicU64,
}

/// One thread stripe of a version's call counters.
#[derive(Default)]
#[repr(align(128))]
struct CallStripe {
    ok: AtomicU64,
    rejected: AtomicU64,
    failures: [AtomicU64; FaultKind::ALL.len()],
    /// One per bound of [`BUCKETS_NS`], and one for longer calls: their sum is the count.
    buckets: [AtomicU64; BUCKETS_NS.len() + 1],
    duration_sum_ns: AtomicU64,
    fuel_consumed: AtomicU64,
    /// `on-batch` calls (0.3.0), and the messages they carried.
    batches: AtomicU64,
    batched: AtomicU64,
}

/// A snapshot of a version's call counters, for the health API.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallCounts {
    /// Calls made to the version (including refused ones).
    pub invocations: u64,
    /// Calls that returned actions.
    pub ok: u64,
    /// Business rejections.
    pub rejected: u64,
    /// Failures by kind (`trap`, `timeout`, ...; only non-zero ones).
    pub failures: BTreeMap<String, u64>,
    /// Fuel consumed in total (metered versions).
    pub fuel_consumed: u64,
    /// Largest linear memory an instance of the version reached, in bytes.
    pub memory_high_water_bytes: u64,
    /// Instances created (fresh instantiations).
    pub instances_created: u64,
    /// `on-batch` calls made (interface 0.3.0), each carrying several messages.
    pub batches: u64,
    /// Messages handed over in those calls (each also counts as an invocation).
    pub batched_messages: u64,
}

impl VersionMetrics {
    fn mine(&self) -> &CallStripe {
        &self.stripes[my_stripe()]
    }

    fn sum(&self, field: impl Fn(&CallStripe) -> &AtomicU64) -> u64 {
        self.stripes
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    pub(crate) fn ok(&self) {
        self.mine().ok.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self) {
        self.mine().rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, kind: FaultKind) {
        self.mine().failures[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn duration(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_NS.partition_point(|&le| le < ns);
        let mine = self.mine();
        if let Some(b) = mine.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        mine.duration_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub(crate) fn fuel(&self, consumed: u64) {
        self.mine().fuel_consumed.fetch_add(consumed, Ordering::Relaxed);
    }

    /// Every call ends as exactly one of ok, rejected or a failure (a refused call included),
    /// so their sum counts the calls without a counter of its own on the call path.
    fn invocations(&self) -> u64 {
        let failed = (0..FaultKind::ALL.len())
            .map(|k| self.sum(|s| &s.failures[k]))
            .fold(0, u64::wrapping_add);
        self.sum(|s| &s.ok)
            .wrapping_add(self.sum(|s| &s.rejected))
            .wrapping_add(failed)
    }

    fn failures(&self, kind: FaultKind) -> u64 {
        self.sum(|s| &s.failures[kind.index()])
    }

    pub(crate) fn memory(&self, bytes: u64) {
        // Read first: the mark rarely moves, and a plain load keeps the cache line shared
        // between threads calling the same version.
        if bytes > self.memory_high_water.load(Ordering::Relaxed) {
            self.memory_high_water.fetch_max(bytes, Ordering::Relaxed);
        }
    }

    /// The mean duration of the version's calls so far (`None` before the first).
    pub(crate) fn mean_duration(&self) -> Option<Duration> {
        let count: u64 = (0..=BUCKETS_NS.len()).map(|i| self.sum(|s| &s.buckets[i])).sum();
        (count > 0).then(|| Duration::from_nanos(self.sum(|s| &s.duration_sum_ns) / count))
    }

    /// The mean fuel of the version's calls so far (metered versions; `None` before any).
    pub(crate) fn mean_fuel(&self) -> Option<u64> {
        let calls = self.invocations();
        let fuel = self.sum(|s| &s.fuel_consumed);
        (calls > 0 && fuel > 0).then(|| fuel / calls)
    }

    /// An `on-batch` call that carried `messages`.
    pub(crate) fn batch(&self, messages: usize) {
        let mine = self.mine();
        mine.batches.fetch_add(1, Ordering::Relaxed);
        mine.batched.fetch_add(messages as u64, Ordering::Relaxed);
    }

    pub(crate) fn instance_created(&self) {
        self.instances_created.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn counts(&self) -> CallCounts {
        let failures = FaultKind::ALL
            .iter()
            .filter_map(|k| {
                let n = self.failures(*k);
                (n > 0).then(|| (k.as_str().to_string(), n))
            })
            .collect();
        CallCounts {
            invocations: self.invocations(),
            ok: self.sum(|s| &s.ok),
            rejected: self.sum(|s| &s.rejected),
            failures,
            fuel_consumed: self.sum(|s| &s.fuel_consumed),
            memory_high_water_bytes: self.memory_high_water.load(Ordering::Relaxed),
            instances_created: self.instances_created.load(Ordering::Relaxed),
            batches: self.sum(|s| &s.batches),
            batched_messages: self.sum(|s| &s.batched),
        }
    }
}

/// A plugin's own metrics, shared by its versions.
#[derive(Default)]
pub(crate) struct CustomMetrics {
    counters: Mutex<BTreeMap<String, u64>>,
    gauges: Mutex<BTreeMap<String, f64>>,
    refused: AtomicU64,
}

/// Metric names a plugin may use: `[A-Za-z0-9_]{1,64}`.
fn valid_metric_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl CustomMetrics {
    pub(crate) fn counter_add(&self, name: &str, value: u64) {
        let mut counters = self.counters.lock();
        if let Some(c) = counters.get_mut(name) {
            *c = c.saturating_add(value);
        } else if valid_metric_name(name) && counters.len() < MAX_CUSTOM_METRICS {
            counters.insert(name.to_string(), value);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn gauge_set(&self, name: &str, value: f64) {
        let mut gauges = self.gauges.lock();
        if let Some(g) = gauges.get_mut(name) {
            *g = value;
        } else if valid_metric_name(name) && gauges.len() < MAX_CUSTOM_METRICS {
            gauges.insert(name.to_string(), value);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn counters(&self) -> BTreeMap<String, u64> {
        self.counters.lock().clone()
    }

    pub(crate) fn gauges(&self) -> BTreeMap<String, f64> {
        self.gauges.lock().clone()
    }

    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// What the renderer needs from one version.
pub(crate) struct VersionSample<'a> {
    pub plugin: &'a str,
    pub version: u32,
    pub metrics: &'a VersionMetrics,
    pub suspended: bool,
    pub metered: bool,
}

/// What the renderer needs from one plugin.
pub(crate) struct PluginSample<'a> {
    pub plugin: &'a str,
    pub active: Option<u32>,
    pub log_dropped: u64,
    pub custom: &'a CustomMetrics,
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn per_version(
    out: &mut String,
    versions: &[VersionSample<'_>],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&VersionSample<'_>) -> Option<u64>,
) {
    header(out, name, kind, help);
    for v in versions {
        if let Some(x) = value(v) {
            let _ = writeln!(
                out,
                "{name}{{plugin=\"{}\",version=\"{}\"}} {x}",
                v.plugin, v.version
            );
        }
    }
}

/// Renders every `shoal_plugin_*` family in the Prometheus text format. Plugin names are
/// validated at upload (`[A-Za-z0-9_-]`) and custom metric names at creation, so no label
/// value needs escaping.
pub(crate) fn render(out: &mut String, plugins: &[PluginSample<'_>], versions: &[VersionSample<'_>]) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    per_version(
        out,
        versions,
        "shoal_plugin_invocations_total",
        "counter",
        "Calls made to a plugin version.",
        |v| Some(v.metrics.invocations()),
    );
    per_version(
        out,
        versions,
        "shoal_plugin_ok_total",
        "counter",
        "Calls that returned actions.",
        |v| Some(v.metrics.sum(|s| &s.ok)),
    );
    per_version(
        out,
        versions,
        "shoal_plugin_rejected_total",
        "counter",
        "Business rejections.",
        |v| Some(v.metrics.sum(|s| &s.rejected)),
    );
    header(
        out,
        "shoal_plugin_failures_total",
        "counter",
        "Failed calls by kind of fault.",
    );
    for v in versions {
        for kind in FaultKind::ALL {
            let _ = writeln!(
                out,
                "shoal_plugin_failures_total{{plugin=\"{}\",version=\"{}\",kind=\"{}\"}} {}",
                v.plugin,
                v.version,
                kind.as_str(),
                v.metrics.failures(kind)
            );
        }
    }
    per_version(
        out,
        versions,
        "shoal_plugin_traps_total",
        "counter",
        "Calls that trapped.",
        |v| Some(v.metrics.failures(FaultKind::Trap)),
    );
    per_version(
        out,
        versions,
        "shoal_plugin_timeouts_total",
        "counter",
        "Calls stopped at their deadline.",
        |v| Some(v.metrics.failures(FaultKind::Timeout)),
    );
    header(
        out,
        "shoal_plugin_call_duration_seconds",
        "histogram",
        "Duration of plugin calls.",
    );
    for v in versions {
        let labels = format!("plugin=\"{}\",version=\"{}\"", v.plugin, v.version);
        let mut cumulative = 0;
        for (i, le) in BUCKETS_NS.iter().enumerate() {
            cumulative += v.metrics.sum(|s| &s.buckets[i]);
            let _ = writeln!(
                out,
                "shoal_plugin_call_duration_seconds_bucket{{{labels},le=\"{}\"}} {cumulative}",
                *le as f64 / 1e9
            );
        }
        // `+Inf`: the bounded buckets and the overflow one.
        let count = cumulative + v.metrics.sum(|s| &s.buckets[BUCKETS_NS.len()]);
        let _ = writeln!(
            out,
            "shoal_plugin_call_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
        );
        let sum = v.metrics.sum(|s| &s.duration_sum_ns) as f64 / 1e9;
        let _ = writeln!(out, "shoal_plugin_call_duration_seconds_sum{{{labels}}} {sum}");
        let _ = writeln!(
            out,
            "shoal_plugin_call_duration_seconds_count{{{labels}}} {count}"
        );
    }
    per_version(
        out,
        versions,
        "shoal_plugin_fuel_consumed_total",
        "counter",
        "Fuel used by metered versions.",
        |v| v.metered.then(|| v.metrics.sum(|s| &s.fuel_consumed)),
    );
    per_version(
        out,
        versions,
        "shoal_plugin_memory_high_water_bytes",
        "gauge",
        "Largest linear memory an instance reached.",
        |v| Some(load(&v.metrics.memory_high_water)),
    );
    per_version(
        out,
        versions,
        "shoal_plugin_instances_created_total",
        "counter",
        "Fresh instances.",
        |v| Some(load(&v.metrics.instances_created)),
    );
    per_version(
        out,
        versions,
        "shoal_plugin_batches_total",
        "counter",
        "on-batch calls (interface 0.3.0), each carrying several messages.",
        |v| Some(v.metrics.sum(|s| &s.batches)),
    );
    per_version(
        out,
        versions,
        "shoal_plugin_batched_messages_total",
        "counter",
        "Messages handed over in on-batch calls (each also counts as a call).",
        |v| Some(v.metrics.sum(|s| &s.batched)),
    );
    per_version(
        out,
        versions,
        "shoal_plugin_suspended",
        "gauge",
        "1 while a version is suspended.",
        |v| Some(u64::from(v.suspended)),
    );
    header(
        out,
        "shoal_plugin_active_version",
        "gauge",
        "The active version of a plugin (0: none).",
    );
    for p in plugins {
        let _ = writeln!(
            out,
            "shoal_plugin_active_version{{plugin=\"{}\"}} {}",
            p.plugin,
            p.active.unwrap_or(0)
        );
    }
    header(
        out,
        "shoal_plugin_log_dropped_total",
        "counter",
        "Log lines dropped by the rate limit.",
    );
    for p in plugins {
        let _ = writeln!(
            out,
            "shoal_plugin_log_dropped_total{{plugin=\"{}\"}} {}",
            p.plugin, p.log_dropped
        );
    }
    header(
        out,
        "shoal_plugin_user_counter_total",
        "counter",
        "Counters plugins keep with counter-add.",
    );
    for p in plugins {
        for (name, value) in p.custom.counters() {
            let _ = writeln!(
                out,
                "shoal_plugin_user_counter_total{{plugin=\"{}\",name=\"{name}\"}} {value}",
                p.plugin
            );
        }
    }
    header(
        out,
        "shoal_plugin_user_gauge",
        "gauge",
        "Gauges plugins set with gauge-set.",
    );
    for p in plugins {
        for (name, value) in p.custom.gauges() {
            let _ = writeln!(
                out,
                "shoal_plugin_user_gauge{{plugin=\"{}\",name=\"{name}\"}} {value}",
                p.plugin
            );
        }
    }
    header(
        out,
        "shoal_plugin_metric_names_refused_total",
        "counter",
        "counter-add/gauge-set calls refused for a bad or surplus name.",
    );
    for p in plugins {
        let _ = writeln!(
            out,
            "shoal_plugin_metric_names_refused_total{{plugin=\"{}\"}} {}",
            p.plugin,
            p.custom.refused()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counters_sum_every_thread() {
        let m = std::sync::Arc::new(VersionMetrics::default());
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.ok();
                        m.duration(Duration::from_micros(3));
                    }
                    m.failed(FaultKind::Trap);
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let counts = m.counts();
        assert_eq!((counts.invocations, counts.ok), (6006, 6000));
        assert_eq!(counts.failures.get("trap"), Some(&6));
        assert_eq!(m.sum(|s| &s.buckets[2]), 6000, "3 µs falls in the 5 µs bucket");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_custom_names_are_checked() {
        let m = VersionMetrics::default();
        m.duration(Duration::from_nanos(500));
        m.duration(Duration::from_micros(3));
        m.duration(Duration::from_secs(1));
        m.failed(FaultKind::Timeout);
        let custom = CustomMetrics::default();
        custom.counter_add("seen", 2);
        custom.counter_add("seen", 3);
        custom.counter_add("bad name!", 1);
        custom.gauge_set("temp", -1.5);
        let mut out = String::new();
        render(
            &mut out,
            &[PluginSample {
                plugin: "p",
                active: Some(1),
                log_dropped: 0,
                custom: &custom,
            }],
            &[VersionSample {
                plugin: "p",
                version: 1,
                metrics: &m,
                suspended: false,
                metered: false,
            }],
        );
        assert!(out.contains(
            "shoal_plugin_call_duration_seconds_bucket{plugin=\"p\",version=\"1\",le=\"0.000001\"} 1"
        ));
        assert!(out.contains(
            "shoal_plugin_call_duration_seconds_bucket{plugin=\"p\",version=\"1\",le=\"0.000005\"} 2"
        ));
        assert!(
            out.contains(
                "shoal_plugin_call_duration_seconds_bucket{plugin=\"p\",version=\"1\",le=\"+Inf\"} 3"
            )
        );
        assert!(out.contains("shoal_plugin_timeouts_total{plugin=\"p\",version=\"1\"} 1"));
        assert!(out.contains("shoal_plugin_user_counter_total{plugin=\"p\",name=\"seen\"} 5"));
        assert!(out.contains("shoal_plugin_user_gauge{plugin=\"p\",name=\"temp\"} -1.5"));
        assert!(out.contains("shoal_plugin_metric_names_refused_total{plugin=\"p\"} 1"));
        assert!(!out.contains("fuel_consumed_total{"));
    }
}
