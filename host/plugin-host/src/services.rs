//! What the host imports need from the rest of Shoal: a clock and read-only shadows. Both are
//! called synchronously on the plugin's call path, inside its deadline, so implementations
//! must answer from memory and never block (the server's shadow reader answers from the
//! shadow service's cache and says "unavailable" rather than wait for the store).

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time for `now-ms` and key-value expiry (a trait so tests can fake it).
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Read-only access to device shadows for `get-shadow`.
pub trait ShadowReader: Send + Sync + 'static {
    /// The shadow document as AWS's GetThingShadow returns it, `Ok(None)` when it does not
    /// exist, `Err` with a short reason when it cannot be answered within `timeout` (a quarter
    /// of the calling plugin's deadline, at least 5 ms, at most 50 ms).
    fn get_shadow(
        &self,
        thing: &str,
        shadow_name: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<Option<String>, String>;
}

/// A shadow reader that knows no shadows (the default until the server wires its own).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoShadows;

impl ShadowReader for NoShadows {
    fn get_shadow(
        &self,
        _thing: &str,
        _shadow_name: Option<&str>,
        _timeout: std::time::Duration,
    ) -> Result<Option<String>, String> {
        Ok(None)
    }
}
