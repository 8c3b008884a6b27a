//! What lives in each instance's `Store`: WASI with nothing granted but an optional directory,
//! the memory limiter, the plugin's stdout/stderr routed into its log, and the `host`
//! interface (log, clock, shadows, key-value, metrics), every call bounded.

use crate::bindings::{wit_host, wit_types};
use crate::config::PluginConfig;
use crate::kv::{KvFailure, KvKey, KvScope, PluginKv};
use crate::log::{LogLevel, LogLine, PluginLog, truncate};
use crate::metrics::CustomMetrics;
use crate::services::{Clock, ShadowReader};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result as WasmResult};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Longest key a plugin may use (the WIT promises 256 bytes).
const MAX_KEY_BYTES: usize = 256;
/// Longest thing or shadow name accepted from a plugin (AWS allows 128 and 64).
const MAX_NAME_BYTES: usize = 128;

/// What a plugin shares across its versions: its name, log and custom metrics.
pub(crate) struct PluginShared {
    pub name: String,
    pub log: PluginLog,
    pub custom: CustomMetrics,
}

/// The host services a version's instances call.
#[derive(Clone)]
pub(crate) struct Services {
    pub kv: Arc<dyn PluginKv>,
    pub shadows: Arc<dyn ShadowReader>,
    pub clock: Arc<dyn Clock>,
}

/// Everything an instance of one version needs from the host (shared by its instances).
pub(crate) struct VersionEnv {
    pub plugin: Arc<PluginShared>,
    pub version: u32,
    pub config: PluginConfig,
    pub services: Services,
}

impl VersionEnv {
    fn log(&self, level: LogLevel, message: &str) {
        let line = LogLine {
            at_ms: self.services.clock.now_ms(),
            version: self.version,
            level,
            message: truncate(message, self.config.log_max_line_bytes as usize).to_string(),
        };
        self.plugin
            .log
            .write(&self.plugin.name, line, self.config.log_lines_per_sec);
    }
}

/// The instance's memory limiter: enforces the version's limit, remembers the high-water mark
/// and whether the limit was hit (so a trap can be told apart from a memory fault).
pub(crate) struct Limiter {
    pub limit: usize,
    pub high_water: usize,
    pub hit: bool,
}

/// The error a refused `memory.grow` traps with.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (wanted {wanted})")]
pub(crate) struct MemoryLimitExceeded {
    limit: usize,
    wanted: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> WasmResult<bool> {
        if desired > self.limit {
            self.hit = true;
            return Err(MemoryLimitExceeded {
                limit: self.limit,
                wanted: desired,
            }
            .into());
        }
        self.high_water = self.high_water.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> WasmResult<bool> {
        // Tables hold function references; 100k entries is far beyond any real plugin.
        Ok(desired <= 100_000)
    }
}

/// A `Store`'s data.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: Limiter,
    pub env: Arc<VersionEnv>,
    /// The last lines the plugin wrote to stderr during the current call (a Rust panic
    /// message), for trap reports.
    pub stderr_tail: StderrTail,
    /// The `on-batch` call in progress (0.3.0), if any.
    pub batch: BatchCall,
}

/// What the host knows of an `on-batch` call while it runs: how many messages it holds, the
/// answers so far, the budget that restarts at each answer, and whether a host call changed
/// something since the last one (see `version::answer`).
#[derive(Default)]
pub(crate) struct BatchCall {
    /// Messages in the call; 0 outside `on-batch`.
    pub expected: usize,
    /// Messages answered so far.
    pub answered: usize,
    /// The answers so far, by `batch.answer` call, in message order.
    pub answers: Vec<Answers>,
    /// The epoch deadline and the fuel (metered engines) each answer restarts.
    pub deadline_ticks: u64,
    pub fuel: Option<u64>,
    /// A host call that changes something (log, key-value writes, metrics) ran since the
    /// last answer (or the call's start). Set by those host calls whatever the call.
    pub effects: bool,
    /// The plugin answered several messages at once after one of them changed something:
    /// it does not follow the batch protocol (see `wit/world.wit`).
    pub broken: bool,
}

/// The answers one `batch.answer` call (or the return of `on-batch`) gave: the results, when
/// they came, and the fuel left then (metered engines).
pub(crate) struct Answers {
    pub results: Vec<Result<Vec<wit_types::Action>, wit_types::PluginError>>,
    pub at: std::time::Instant,
    pub fuel_left: Option<u64>,
}

impl StoreState {
    pub(crate) fn ctx_table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    pub(crate) fn random_ctx(&mut self) -> &mut wasmtime_wasi::random::WasiRandomCtx {
        self.wasi.random()
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StoreState {
    /// A fresh state: WASI grants nothing (no environment, arguments, stdin, network; a
    /// deterministic-free but sandboxed clock and random) except the version's directory.
    pub(crate) fn new(env: Arc<VersionEnv>) -> Result<Self, String> {
        let stderr_tail = StderrTail::default();
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(LogStream::new(env.clone(), LogLevel::Info, None));
        wasi.stderr(LogStream::new(
            env.clone(),
            LogLevel::Warn,
            Some(stderr_tail.clone()),
        ));
        // File operations run on the calling thread instead of hopping through a tokio
        // blocking pool: the call path is synchronous already.
        wasi.allow_blocking_current_thread(true);
        if let Some(fs) = &env.config.filesystem {
            let perms = if fs.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&fs.host_path, &fs.guest_path, perms)
                .map_err(|e| format!("cannot open granted directory {}: {e}", fs.host_path.display()))?;
        }
        let limit = usize::try_from(env.config.memory_limit_bytes).unwrap_or(usize::MAX);
        Ok(StoreState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter {
                limit,
                high_water: 0,
                hit: false,
            },
            env,
            batch: BatchCall::default(),
            stderr_tail,
        })
    }
}

/// The last few stderr lines of the current call.
#[derive(Clone, Default)]
pub(crate) struct StderrTail(Arc<TailInner>);

#[derive(Default)]
struct TailInner {
    lines: Mutex<VecDeque<String>>,
    /// Whether `lines` may be non-empty (lets the call path skip the lock).
    dirty: AtomicBool,
}

impl StderrTail {
    const LINES: usize = 4;

    fn push(&self, line: &str) {
        let mut lines = self.0.lines.lock();
        if lines.len() == Self::LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_string());
        self.0.dirty.store(true, Ordering::Relaxed);
    }

    /// Forgets earlier calls' lines.
    pub(crate) fn clear(&self) {
        // A plain load first: a swap is a locked instruction on every call.
        if self.0.dirty.load(Ordering::Relaxed) && self.0.dirty.swap(false, Ordering::Relaxed) {
            self.0.lines.lock().clear();
        }
    }

    /// The lines joined with " | ", if any.
    pub(crate) fn joined(&self) -> Option<String> {
        let lines = self.0.lines.lock();
        (!lines.is_empty()).then(|| lines.iter().map(String::as_str).collect::<Vec<_>>().join(" | "))
    }
}

/// The plugin's stdout or stderr: complete lines go to its log (rate-limited like `log`).
#[derive(Clone)]
struct LogStream {
    env: Arc<VersionEnv>,
    level: LogLevel,
    partial: Arc<Mutex<Vec<u8>>>,
    tail: Option<StderrTail>,
}

impl LogStream {
    fn new(env: Arc<VersionEnv>, level: LogLevel, tail: Option<StderrTail>) -> Self {
        LogStream {
            env,
            level,
            partial: Arc::new(Mutex::new(Vec::new())),
            tail,
        }
    }

    fn write(&self, mut bytes: &[u8]) {
        let max = self.env.config.log_max_line_bytes as usize;
        let mut partial = self.partial.lock();
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            let room = max.saturating_sub(partial.len());
            partial.extend_from_slice(&bytes[..nl.min(room)]);
            let line = String::from_utf8_lossy(&partial).into_owned();
            partial.clear();
            bytes = &bytes[nl + 1..];
            if let Some(tail) = &self.tail {
                tail.push(truncate(&line, 512));
            }
            self.env.log(self.level, &line);
        }
        let room = max.saturating_sub(partial.len());
        partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LogOutput(self.clone()))
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 asks for this, and p3 is not linked.
        Box::new(tokio::io::sink())
    }
}

struct LogOutput(LogStream);

#[wasmtime_wasi::async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

fn kv_error(failure: KvFailure) -> wit_types::KvError {
    match failure {
        KvFailure::QuotaExceeded(m) => wit_types::KvError::QuotaExceeded(m),
        KvFailure::InvalidKey(m) => wit_types::KvError::InvalidKey(m),
        KvFailure::Unavailable(m) => wit_types::KvError::Unavailable(m),
    }
}

fn scope(scope: &wit_types::KvScope) -> Result<KvScope<'_>, wit_types::KvError> {
    match scope {
        wit_types::KvScope::Global => Ok(KvScope::Global),
        wit_types::KvScope::Thing(thing) if !thing.is_empty() && thing.len() <= MAX_NAME_BYTES => {
            Ok(KvScope::Thing(thing))
        }
        wit_types::KvScope::Thing(_) => Err(wit_types::KvError::InvalidKey(format!(
            "thing names are 1-{MAX_NAME_BYTES} bytes"
        ))),
    }
}

fn check_key(key: &str) -> Result<(), wit_types::KvError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(wit_types::KvError::InvalidKey(format!(
            "keys are 1-{MAX_KEY_BYTES} bytes, not {}",
            key.len()
        )));
    }
    Ok(())
}

impl wit_types::Host for StoreState {}

impl wit_host::Host for StoreState {
    fn log(&mut self, level: wit_types::LogLevel, message: String) {
        let level = match level {
            wit_types::LogLevel::Trace => LogLevel::Trace,
            wit_types::LogLevel::Debug => LogLevel::Debug,
            wit_types::LogLevel::Info => LogLevel::Info,
            wit_types::LogLevel::Warn => LogLevel::Warn,
            wit_types::LogLevel::Error => LogLevel::Error,
        };
        self.batch.effects = true;
        self.env.log(level, &message);
    }

    fn now_ms(&mut self) -> u64 {
        self.env.services.clock.now_ms()
    }

    fn get_shadow(&mut self, thing: String, shadow_name: Option<String>) -> Result<Option<String>, String> {
        if thing.is_empty() || thing.len() > MAX_NAME_BYTES {
            return Err(format!("thing names are 1-{MAX_NAME_BYTES} bytes"));
        }
        if shadow_name
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.len() > MAX_NAME_BYTES)
        {
            return Err(format!("shadow names are 1-{MAX_NAME_BYTES} bytes"));
        }
        let timeout =
            std::time::Duration::from_millis(u64::from(self.env.config.deadline_ms / 4).clamp(5, 50));
        self.env
            .services
            .shadows
            .get_shadow(&thing, shadow_name.as_deref(), timeout)
    }

    fn kv_get(
        &mut self,
        scope_: wit_types::KvScope,
        key: String,
    ) -> Result<Option<Vec<u8>>, wit_types::KvError> {
        check_key(&key)?;
        let key = KvKey {
            plugin: &self.env.plugin.name,
            scope: scope(&scope_)?,
            key: key.as_bytes(),
        };
        self.env.services.kv.get(&key).map_err(kv_error)
    }

    fn kv_set(
        &mut self,
        scope_: wit_types::KvScope,
        key: String,
        value: Vec<u8>,
        ttl_secs: Option<u32>,
    ) -> Result<(), wit_types::KvError> {
        self.batch.effects = true;
        check_key(&key)?;
        let max = self.env.config.kv_max_value_bytes as usize;
        if value.len() > max {
            return Err(wit_types::KvError::QuotaExceeded(format!(
                "a value of {} bytes is over the limit of {max}",
                value.len()
            )));
        }
        let key = KvKey {
            plugin: &self.env.plugin.name,
            scope: scope(&scope_)?,
            key: key.as_bytes(),
        };
        let expires = ttl_secs.map(|s| {
            self.env
                .services
                .clock
                .now_ms()
                .saturating_add(u64::from(s) * 1000)
        });
        self.env
            .services
            .kv
            .set(&key, &value, expires, self.env.config.kv_quota_bytes)
            .map_err(kv_error)
    }

    fn kv_delete(&mut self, scope_: wit_types::KvScope, key: String) -> Result<bool, wit_types::KvError> {
        self.batch.effects = true;
        check_key(&key)?;
        let key = KvKey {
            plugin: &self.env.plugin.name,
            scope: scope(&scope_)?,
            key: key.as_bytes(),
        };
        self.env.services.kv.delete(&key).map_err(kv_error)
    }

    fn counter_add(&mut self, name: String, value: u64) {
        self.batch.effects = true;
        self.env.plugin.custom.counter_add(&name, value);
    }

    fn gauge_set(&mut self, name: String, value: f64) {
        self.batch.effects = true;
        self.env.plugin.custom.gauge_set(&name, value);
    }
}
