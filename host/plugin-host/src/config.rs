//! Configuration: the host's (engine, pool, directories) and each plugin version's (limits,
//! settings for `init`, filesystem grant). A [`PluginConfig`] is persisted with its version.

use crate::error::CatalogError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Mebibyte.
const MIB: u64 = 1 << 20;

/// Settings of the whole plugin host.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The data directory; plugin state lives in `DATA/plugins/` (`catalog.json`,
    /// `artifacts/<sha256>.wasm`).
    pub data_dir: PathBuf,
    /// Where precompiled artifacts are cached (default `DATA/plugins/cache`).
    pub cache_dir: Option<PathBuf>,
    /// Most plugin instances alive at once across all plugins (the pooling allocator's slots;
    /// idle instances count). Each slot reserves address space (about 4 GiB of virtual memory,
    /// not resident), so 1000 slots reserve about 4 TiB of the 128 TiB a process has.
    pub max_instances: u32,
    /// Largest linear memory any instance may have (a pool slot's size); a plugin's own
    /// `memory_limit_bytes` must not exceed it.
    pub max_memory_bytes: u64,
    /// How often the epoch advances; deadlines are counted in these ticks.
    pub epoch_tick: Duration,
    /// Idle instances kept per version for reuse.
    pub max_idle_instances: usize,
    /// Log lines kept per plugin for the API.
    pub log_lines_kept: usize,
    /// Bytes at the start of a linear memory that a reused pool slot resets with `memset`
    /// instead of giving the pages back to the kernel (`madvise`). Default 0: measured with
    /// the threshold plugin, a fresh instance cost the same with 64 KiB and ~60% more with
    /// 1 MiB (a Rust guest's stack alone is 1 MiB of mostly untouched memory).
    pub memory_keep_resident_bytes: usize,
}

impl HostConfig {
    /// Defaults for a data directory: 1000 instances of at most 64 MiB, a 1 ms epoch tick,
    /// 8 idle instances per version, the last 1000 log lines per plugin.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        HostConfig {
            data_dir: data_dir.into(),
            cache_dir: None,
            max_instances: 1000,
            max_memory_bytes: 64 * MIB,
            epoch_tick: Duration::from_millis(1),
            max_idle_instances: 8,
            log_lines_kept: 1000,
            memory_keep_resident_bytes: 0,
        }
    }

    /// `DATA/plugins`.
    pub fn plugins_dir(&self) -> PathBuf {
        self.data_dir.join("plugins")
    }

    /// The precompiled-artifact cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.plugins_dir().join("cache"))
    }
}

/// A directory the operator grants a plugin (through cap-std: nothing outside it is reachable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsGrant {
    /// The directory on the host.
    pub host_path: PathBuf,
    /// Where the plugin sees it (default `/data`).
    #[serde(default = "default_guest_path")]
    pub guest_path: String,
    /// Whether the plugin may create, change and delete files in it.
    #[serde(default)]
    pub writable: bool,
}

fn default_guest_path() -> String {
    "/data".to_string()
}

impl FsGrant {
    /// A read-only grant of `host_path`, seen as `/data`.
    pub fn read_only(host_path: impl AsRef<Path>) -> Self {
        FsGrant {
            host_path: host_path.as_ref().to_path_buf(),
            guest_path: default_guest_path(),
            writable: false,
        }
    }
}

/// Per-version settings and limits, fixed at upload. Every field has a default, so `{}` is a
/// valid configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginConfig {
    /// Key-value pairs handed to the plugin's `init` (values are often JSON).
    pub settings: Vec<(String, String)>,
    /// Wall-clock budget of one `on-message` call, in milliseconds (default 10).
    pub deadline_ms: u32,
    /// Budget of instantiation plus `init`, in milliseconds (default 100).
    pub init_deadline_ms: u32,
    /// Linear-memory limit of one instance (default 16 MiB).
    pub memory_limit_bytes: u64,
    /// Most actions one call may return (default 100).
    pub max_actions: u32,
    /// Most bytes of action data (strings and payloads) one call may return (default 1 MiB).
    pub max_output_bytes: u64,
    /// Optional fuel budget per call (deterministic instruction metering). A version with a
    /// budget runs on a separate engine compiled with fuel checks, which costs 20-45% speed.
    pub fuel: Option<u64>,
    /// Consecutive failed calls after which the version is suspended (default 5).
    pub max_consecutive_failures: u32,
    /// A directory granted to the plugin; none by default.
    pub filesystem: Option<FsGrant>,
    /// Total bytes (keys and values) the plugin may keep in the key-value store (default 1 MiB).
    pub kv_quota_bytes: u64,
    /// Largest single key-value value (default 64 KiB).
    pub kv_max_value_bytes: u32,
    /// Log lines per second the plugin may write; the rest are dropped and counted (default 100).
    pub log_lines_per_sec: u32,
    /// Longest log line kept; longer ones are truncated (default 4096 bytes).
    pub log_max_line_bytes: u32,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            settings: Vec::new(),
            deadline_ms: 10,
            init_deadline_ms: 100,
            memory_limit_bytes: 16 * MIB,
            max_actions: 100,
            max_output_bytes: MIB,
            fuel: None,
            max_consecutive_failures: 5,
            filesystem: None,
            kv_quota_bytes: MIB,
            kv_max_value_bytes: 64 * 1024,
            log_lines_per_sec: 100,
            log_max_line_bytes: 4096,
        }
    }
}

impl PluginConfig {
    /// Adds a setting for `init`.
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Checks the values against each other and the host's limits.
    pub(crate) fn validate(&self, host: &HostConfig) -> Result<(), CatalogError> {
        let bad = |msg: String| Err(CatalogError::InvalidConfig(msg));
        if self.deadline_ms == 0 || self.deadline_ms > 60_000 {
            return bad(format!("deadline_ms must be 1..=60000, not {}", self.deadline_ms));
        }
        if self.init_deadline_ms == 0 || self.init_deadline_ms > 60_000 {
            return bad(format!(
                "init_deadline_ms must be 1..=60000, not {}",
                self.init_deadline_ms
            ));
        }
        if self.memory_limit_bytes < MIB || self.memory_limit_bytes > host.max_memory_bytes {
            return bad(format!(
                "memory_limit_bytes must be between 1 MiB and the host's {} bytes, not {}",
                host.max_memory_bytes, self.memory_limit_bytes
            ));
        }
        if self.max_consecutive_failures == 0 {
            return bad("max_consecutive_failures must be at least 1".into());
        }
        if self.fuel == Some(0) {
            return bad("fuel, when set, must be positive".into());
        }
        if self.max_output_bytes > 64 * MIB {
            return bad(format!(
                "max_output_bytes must be at most 64 MiB, not {}",
                self.max_output_bytes
            ));
        }
        if self.max_actions > 100_000 {
            return bad(format!(
                "max_actions must be at most 100000, not {}",
                self.max_actions
            ));
        }
        if self.kv_max_value_bytes > 16 * 1024 * 1024 {
            return bad("kv_max_value_bytes must be at most 16 MiB".into());
        }
        if let Some(fs) = &self.filesystem {
            if !fs.host_path.is_absolute() {
                return bad(format!(
                    "filesystem.host_path must be absolute: {}",
                    fs.host_path.display()
                ));
            }
            if !fs.host_path.is_dir() {
                return bad(format!(
                    "filesystem.host_path is not a directory: {}",
                    fs.host_path.display()
                ));
            }
            if !fs.guest_path.starts_with('/') {
                return bad(format!(
                    "filesystem.guest_path must start with '/': {}",
                    fs.guest_path
                ));
            }
        }
        Ok(())
    }
}
