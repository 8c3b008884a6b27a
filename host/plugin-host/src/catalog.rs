//! The catalog's in-memory shape: named plugins, their numbered versions, the active one, and
//! what the management API reports about them.

use crate::artifact::ArtifactSource;
use crate::config::PluginConfig;
use crate::error::CatalogError;
use crate::metrics::CallCounts;
use crate::sandbox::PluginShared;
use crate::store::VersionRecord;
use crate::version::LoadedVersion;
use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Most previously-active versions remembered for rollback.
pub(crate) const MAX_HISTORY: usize = 32;

/// A plugin's name: 1-64 characters from `[A-Za-z0-9_-]` (it appears in metric labels, file
/// names and URLs unescaped).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PluginName(String);

impl PluginName {
    /// Validates a name.
    pub fn parse(name: &str) -> Result<Self, CatalogError> {
        let ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(PluginName(name.to_string()))
        } else {
            Err(CatalogError::InvalidName(name.to_string()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One version as the catalog knows it: its record, and the loaded code once needed (the
/// active version is loaded at start; others when activated or called by number).
pub(crate) struct VersionSlot {
    pub record: VersionRecord,
    pub loaded: Option<Arc<LoadedVersion>>,
}

/// A plugin's management state. Operations on one plugin are serialized by its mutex; calls
/// never take it (they read [`PluginEntry::active`]).
pub(crate) struct EntryState {
    pub versions: BTreeMap<u32, VersionSlot>,
    pub active: Option<u32>,
    pub history: Vec<u32>,
    pub next_version: u32,
    /// Why the active version could not be loaded at start, if it could not.
    pub load_error: Option<String>,
}

/// A named plugin.
pub(crate) struct PluginEntry {
    pub name: PluginName,
    pub shared: Arc<PluginShared>,
    /// The version calls go to. Swapped atomically by activate/rollback: a call loads it once,
    /// so a call in flight finishes on the version it started on and the next call sees the
    /// new one; no call is dropped or repeated by a swap.
    pub active: ArcSwapOption<LoadedVersion>,
    pub state: Mutex<EntryState>,
}

/// What the API reports about a version.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct VersionInfo {
    /// Plugin name.
    pub plugin: String,
    /// Version number.
    pub version: u32,
    /// Hex sha256 of the component.
    pub sha256: String,
    /// Component size.
    pub size_bytes: u64,
    /// Upload time, Unix milliseconds.
    pub uploaded_at_ms: u64,
    /// Whether calls go to it.
    pub active: bool,
    /// Why it is suspended, if it is.
    pub suspended: Option<String>,
    /// How its code was loaded, if it is loaded.
    pub loaded: Option<LoadInfo>,
    /// Its configuration.
    pub config: PluginConfig,
    /// Its call counters, if it is loaded.
    pub calls: Option<CallCounts>,
}

/// How a version's machine code was obtained.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LoadInfo {
    /// Compiled now, or mapped from the precompiled cache.
    pub source: ArtifactSource,
    /// How long that took, in milliseconds.
    pub millis: f64,
    /// The version of the `shoal:plugin` world the component targets (`0.1.0`, `0.2.0`).
    pub world: &'static str,
}

/// A plugin's health, for operators.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PluginHealth {
    /// Plugin name.
    pub plugin: String,
    /// The active version.
    pub active_version: Option<u32>,
    /// Overall state.
    pub status: HealthStatus,
    /// Failed calls in a row on the active version (suspension at its configured limit).
    pub consecutive_failures: u32,
    /// The active version's last fault.
    pub last_fault: Option<String>,
    /// The active version's counters.
    pub calls: CallCounts,
    /// Log lines dropped by the rate limit (all versions).
    pub log_lines_dropped: u64,
    /// Bytes of key-value state the plugin keeps (when the store can tell).
    pub kv_usage_bytes: Option<u64>,
}

/// A plugin's overall state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HealthStatus {
    /// The active version runs; its last call did not fail.
    Healthy,
    /// The active version runs, but its latest calls failed.
    Failing,
    /// The active version is suspended; calls fail at once.
    Suspended {
        /// Why.
        reason: String,
    },
    /// No version is active.
    NoActiveVersion,
    /// The active version could not be loaded (artifact missing or unusable).
    LoadFailed {
        /// Why.
        error: String,
    },
}

impl VersionSlot {
    pub(crate) fn info(&self, plugin: &str, active: Option<u32>) -> VersionInfo {
        let r = &self.record;
        VersionInfo {
            plugin: plugin.to_string(),
            version: r.number,
            sha256: r.sha256.clone(),
            size_bytes: r.size_bytes,
            uploaded_at_ms: r.uploaded_at_ms,
            active: active == Some(r.number),
            suspended: self
                .loaded
                .as_ref()
                .map_or_else(|| r.suspended.clone(), |l| l.suspension()),
            loaded: self.loaded.as_ref().map(|l| LoadInfo {
                source: l.source,
                millis: l.load_time.as_secs_f64() * 1e3,
                world: l.world(),
            }),
            config: r.config.clone(),
            calls: self.loaded.as_ref().map(|l| l.metrics.counts()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names() {
        assert!(PluginName::parse("cold-chain_2").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(PluginName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
