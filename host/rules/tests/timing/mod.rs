//! Timing for the micro-benchmarks (no Criterion): on-CPU time of the calling thread, so the
//! figures hold on a busy machine. Shared by this crate's `tests/bench.rs` and
//! `host/server/tests/inline_rules_bench.rs` (through `#[path]`).
#![allow(dead_code)]

use std::time::Instant;

/// This thread's CPU time in nanoseconds (Linux `schedstat`), so the figures hold on a busy
/// machine where wall time would count other processes' turns; `None` elsewhere.
pub fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// Nanoseconds per call of `f`: on-CPU time where the platform reports it, else wall time.
pub fn ns_per_iter(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        f();
    }
    let cpu = thread_cpu_ns();
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    let wall = start.elapsed().as_nanos() as f64;
    let spent = match (cpu, thread_cpu_ns()) {
        (Some(a), Some(b)) => (b - a) as f64,
        _ => wall,
    };
    spent / f64::from(iterations)
}
