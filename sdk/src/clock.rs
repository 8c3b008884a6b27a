//! The host's wall clock. Use it (not `std::time`) so the test harness can control time.

/// Milliseconds since the Unix epoch (the fake clock under the test harness).
pub fn now_ms() -> u64 {
    crate::sys::now_ms()
}
