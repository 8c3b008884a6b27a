//! Plugin log lines: rate-limited per plugin, written to `tracing` (target `plugin`) and kept in
//! a ring buffer of the last lines for the API.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A log line's level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation (also the plugin's stdout).
    Info,
    /// Something unexpected (also the plugin's stderr).
    Warn,
    /// Something failed.
    Error,
}

/// One kept log line.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// When, Unix milliseconds (host clock).
    pub at_ms: u64,
    /// The version that wrote it.
    pub version: u32,
    /// Level.
    pub level: LogLevel,
    /// The text (truncated to the plugin's `log_max_line_bytes`).
    pub message: String,
}

/// A token bucket: `rate` lines per second, bursts up to `rate`.
struct Bucket {
    tokens: f64,
    last: Instant,
}

struct Ring {
    lines: VecDeque<LogLine>,
    bucket: Bucket,
}

/// One plugin's log (shared by its versions).
pub(crate) struct PluginLog {
    keep: usize,
    ring: Mutex<Ring>,
    dropped: AtomicU64,
    /// Whether kept lines also go to `tracing` (not for a replay's private log).
    emit: bool,
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl PluginLog {
    pub(crate) fn new(keep: usize) -> Self {
        PluginLog {
            keep,
            ring: Mutex::new(Ring {
                lines: VecDeque::with_capacity(keep.min(64)),
                bucket: Bucket {
                    tokens: f64::MAX,
                    last: Instant::now(),
                },
            }),
            dropped: AtomicU64::new(0),
            emit: true,
        }
    }

    /// A log that only keeps lines (a replay's: its lines are returned, not logged).
    pub(crate) fn private(keep: usize) -> Self {
        PluginLog {
            emit: false,
            ..PluginLog::new(keep)
        }
    }

    /// Records a line unless the plugin is over its rate; returns whether it was kept.
    pub(crate) fn write(&self, plugin: &str, line: LogLine, lines_per_sec: u32) -> bool {
        let rate = f64::from(lines_per_sec.max(1));
        {
            let mut ring = self.ring.lock();
            let now = Instant::now();
            let bucket = &mut ring.bucket;
            let refill = now.duration_since(bucket.last).as_secs_f64() * rate;
            bucket.tokens = (bucket.tokens.min(rate) + refill).min(rate);
            bucket.last = now;
            if bucket.tokens < 1.0 {
                drop(ring);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            bucket.tokens -= 1.0;
            if ring.lines.len() == self.keep {
                ring.lines.pop_front();
            }
            if self.keep > 0 {
                ring.lines.push_back(line.clone());
            }
        }
        // Outside the lock: the subscriber may write to a terminal or a file.
        if self.emit {
            emit(plugin, &line);
        }
        true
    }

    /// The last `limit` kept lines, oldest first.
    pub(crate) fn tail(&self, limit: usize) -> Vec<LogLine> {
        let ring = self.ring.lock();
        let skip = ring.lines.len().saturating_sub(limit);
        ring.lines.iter().skip(skip).cloned().collect()
    }

    /// Lines dropped by the rate limit so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn emit(plugin: &str, line: &LogLine) {
    let (version, msg) = (line.version, line.message.as_str());
    match line.level {
        LogLevel::Trace => tracing::trace!(target: "plugin", plugin, version, "{msg}"),
        LogLevel::Debug => tracing::debug!(target: "plugin", plugin, version, "{msg}"),
        LogLevel::Info => tracing::info!(target: "plugin", plugin, version, "{msg}"),
        LogLevel::Warn => tracing::warn!(target: "plugin", plugin, version, "{msg}"),
        LogLevel::Error => tracing::error!(target: "plugin", plugin, version, "{msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: usize) -> LogLine {
        LogLine {
            at_ms: 0,
            version: 1,
            level: LogLevel::Info,
            message: format!("line {i}"),
        }
    }

    #[test]
    fn keeps_the_last_lines_and_drops_over_the_rate() {
        let log = PluginLog::new(10);
        let kept: Vec<usize> = (0..150).filter(|&i| log.write("p", line(i), 100)).collect();
        // A burst of 100 passes (plus whatever refilled meanwhile), the rest is dropped.
        assert!((100..110).contains(&kept.len()), "{}", kept.len());
        assert_eq!(log.dropped() as usize, 150 - kept.len());
        let tail = log.tail(1000);
        assert_eq!(tail.len(), 10);
        assert_eq!(tail[9].message, format!("line {}", kept[kept.len() - 1]));
        assert_eq!(log.tail(2).len(), 2);
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
