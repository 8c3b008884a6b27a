//! One loaded plugin version: its `InstancePre`, a small pool of idle instances, the bounded
//! call path, fault classification, and suspension after repeated failures.

use crate::artifact::ArtifactSource;
use crate::bindings::{PackedMessage, v0_1, v0_2, wit};
use crate::engine::{Runtime, Runtimes};
use crate::message::{Action, MessageRef};
use crate::metrics::VersionMetrics;
use crate::outcome::{FaultKind, Outcome, PluginFault};
use crate::sandbox::{MemoryLimitExceeded, StoreState, VersionEnv};
use parking_lot::Mutex;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::{PoolConcurrencyLimitError, Store, Trap};

/// A live instance: its store, the typed exports, and (0.2.0) the buffer its messages are
/// packed into, kept between calls.
struct Instance {
    store: Store<StoreState>,
    plugin: Exports,
    packed: Vec<u8>,
}

/// A version's pre-instantiated component, by the world it targets.
enum Pre {
    V0_1(v0_1::RulePluginPre<StoreState>),
    V0_2(v0_2::RulePluginPre<StoreState>),
}

/// An instance's typed exports, by the world its component targets.
enum Exports {
    V0_1(v0_1::RulePlugin),
    V0_2(v0_2::RulePlugin),
}

/// A packed buffer larger than this after a call is not kept for the next one.
const KEEP_PACKED_BYTES: usize = 64 << 10;

/// A version's idle instances: at most `max_idle` are kept. One lock, held only to push or
/// pop (striping it per thread measured no gain here, and the exact bound then needed a
/// counter every thread shares anyway).
struct IdlePool {
    list: Mutex<Vec<Instance>>,
    max_idle: usize,
}

impl IdlePool {
    fn new(max_idle: usize) -> Self {
        IdlePool {
            list: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    fn pop(&self) -> Option<Instance> {
        self.list.lock().pop()
    }

    /// Keeps `instance` for the next call, unless `max_idle` are kept already (`force`: keep
    /// it anyway, for the one instance `warm` starts). An instance not kept is dropped
    /// outside the lock (dropping a store returns its pool slot).
    fn push(&self, instance: Instance, force: bool) {
        let mut list = self.list.lock();
        if list.len() < self.max_idle || force {
            list.push(instance);
        } else {
            drop(list);
            drop(instance);
        }
    }

    fn is_empty(&self) -> bool {
        self.list.lock().is_empty()
    }

    fn clear(&self) {
        // Dropped outside the lock.
        let dropped = std::mem::take(&mut *self.list.lock());
        drop(dropped);
    }
}

/// What [`LoadedVersion::call`] reports besides the outcome.
pub(crate) struct CallReport {
    pub outcome: Outcome,
    /// Set when this call's failure suspended the version (exactly one call reports it).
    pub suspended_now: Option<String>,
}

/// A compiled, validated, instantiable plugin version.
pub(crate) struct LoadedVersion {
    pub env: Arc<VersionEnv>,
    pub source: ArtifactSource,
    pub load_time: Duration,
    pub metrics: VersionMetrics,
    runtime: Arc<Runtime>,
    pre: Pre,
    idle: IdlePool,
    retired: AtomicBool,
    failures_in_row: AtomicU32,
    suspended: AtomicBool,
    suspension: Mutex<Option<String>>,
    last_fault: Mutex<Option<String>>,
    deadline_ticks: u64,
    init_ticks: u64,
    hostcall_fuel: usize,
}

impl LoadedVersion {
    /// Type-checks `component` against the linker (imports) and the world (exports).
    pub(crate) fn new(
        env: Arc<VersionEnv>,
        runtimes: &Runtimes,
        runtime: Arc<Runtime>,
        component: &Component,
        (source, load_time): (ArtifactSource, Duration),
        max_idle: usize,
    ) -> Result<Self, crate::error::CatalogError> {
        let mismatch = |e: wasmtime::Error| crate::error::CatalogError::WorldMismatch(format!("{e:#}"));
        let instance_pre = runtime.linker.instantiate_pre(component).map_err(mismatch)?;
        // The newest world first; a component that does not target it may target 0.1.0.
        let pre = match v0_2::RulePluginPre::new(instance_pre.clone()) {
            Ok(pre) => Pre::V0_2(pre),
            Err(newest) => match v0_1::RulePluginPre::new(instance_pre) {
                Ok(pre) => Pre::V0_1(pre),
                Err(old) => {
                    return Err(crate::error::CatalogError::WorldMismatch(format!(
                        "the component targets neither shoal:plugin/rule-plugin@0.2.0 ({newest:#}) \
                         nor shoal:plugin/rule-plugin@0.1.0 ({old:#})"
                    )));
                }
            },
        };
        let config = &env.config;
        // What the host may allocate for data the guest hands over in one crossing: the
        // result list (counted in host-side `Action`s plus its bytes) or a host call's
        // arguments. Past it wasmtime fails the crossing instead of allocating.
        let hostcall_fuel = (config.max_output_bytes as usize)
            .saturating_add(config.max_actions as usize * std::mem::size_of::<wit::Action>())
            .saturating_add(config.kv_max_value_bytes as usize)
            .saturating_add(config.log_max_line_bytes as usize)
            .saturating_add(64 << 10);
        Ok(LoadedVersion {
            deadline_ticks: runtimes.ticks(config.deadline_ms),
            init_ticks: runtimes.ticks(config.init_deadline_ms),
            hostcall_fuel,
            env,
            source,
            load_time,
            metrics: VersionMetrics::default(),
            runtime,
            pre,
            idle: IdlePool::new(max_idle),
            retired: AtomicBool::new(false),
            failures_in_row: AtomicU32::new(0),
            suspended: AtomicBool::new(false),
            suspension: Mutex::new(None),
            last_fault: Mutex::new(None),
        })
    }

    pub(crate) fn number(&self) -> u32 {
        self.env.version
    }

    /// The version of the `shoal:plugin` world its component targets (`0.1.0`, `0.2.0`).
    pub(crate) fn world(&self) -> &'static str {
        match self.pre {
            Pre::V0_1(_) => "0.1.0",
            Pre::V0_2(_) => "0.2.0",
        }
    }

    pub(crate) fn metered(&self) -> bool {
        self.runtime.metered
    }

    /// Runs `on-message` on an idle instance (or a fresh one), within every limit.
    pub(crate) fn call(&self, msg: &MessageRef<'_>) -> CallReport {
        if self.suspended.load(Ordering::Acquire) {
            let reason = self.suspension.lock().clone().unwrap_or_default();
            self.metrics.failed(FaultKind::Suspended);
            return CallReport {
                outcome: Outcome::Failed(PluginFault::Suspended { reason }),
                suspended_now: None,
            };
        }
        let started = Instant::now();
        let pooled = self.idle.pop();
        let mut instance = match pooled {
            Some(instance) => instance,
            None => match self.instantiate() {
                Ok(instance) => instance,
                Err(fault) => return self.finish(started, Outcome::Failed(fault)),
            },
        };
        // A panic in host code during the call (a bug, or a WASI host call that cannot run on
        // this thread) must not unwind into the caller: it fails this call and the instance.
        let outcome =
            catch_unwind(AssertUnwindSafe(|| self.run(&mut instance, msg))).unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Outcome::Failed(PluginFault::Trap {
                    message: format!("host panicked during the call: {what}"),
                })
            });
        self.metrics
            .memory(instance.store.data().limiter.high_water as u64);
        if matches!(outcome, Outcome::Ok(_) | Outcome::Rejected(_)) && !self.retired.load(Ordering::Acquire) {
            self.idle.push(instance, false);
        }
        self.finish(started, outcome)
    }

    fn run(&self, instance: &mut Instance, msg: &MessageRef<'_>) -> Outcome {
        let store = &mut instance.store;
        store.set_epoch_deadline(self.deadline_ticks);
        let budget = self.env.config.fuel;
        if let Some(fuel) = budget
            && let Err(e) = store.set_fuel(fuel)
        {
            return Outcome::Failed(PluginFault::Trap {
                message: format!("cannot set fuel: {e}"),
            });
        }
        store.data().stderr_tail.clear();
        let result = match &instance.plugin {
            Exports::V0_1(plugin) => {
                let param = wit::Message {
                    topic: msg.topic,
                    payload: msg.payload,
                    qos: msg.qos,
                    timestamp_ms: msg.timestamp_ms,
                    client_id: msg.client_id,
                    thing_name: msg.thing_name,
                    user_properties: msg.user_properties,
                };
                let _running = self.runtime.gate.enter();
                plugin.call_on_message(&mut *store, param)
            }
            Exports::V0_2(plugin) => {
                let packed = &mut instance.packed;
                let param = match pack(msg, packed) {
                    Ok(param) => param,
                    Err(too_long) => return Outcome::Failed(PluginFault::Unavailable(too_long)),
                };
                let result = {
                    let _running = self.runtime.gate.enter();
                    plugin.call_on_message(&mut *store, param)
                };
                if packed.capacity() > KEEP_PACKED_BYTES {
                    *packed = Vec::new();
                }
                result
            }
        };
        if let Some(fuel) = budget
            && let Ok(left) = store.get_fuel()
        {
            self.metrics.fuel(fuel.saturating_sub(left));
        }
        match result {
            Ok(Ok(actions)) => self.check_output(actions),
            Ok(Err(wit::PluginError::Rejected(reason))) => Outcome::Rejected(reason),
            Ok(Err(wit::PluginError::Failed(reason))) => Outcome::Failed(PluginFault::Error(reason)),
            Ok(Err(wit::PluginError::Config(reason))) => {
                Outcome::Failed(PluginFault::Error(format!("configuration: {reason}")))
            }
            Err(e) => Outcome::Failed(self.classify(&e, store.data(), self.env.config.deadline_ms)),
        }
    }

    fn check_output(&self, actions: Vec<wit::Action>) -> Outcome {
        let config = &self.env.config;
        if actions.len() > config.max_actions as usize {
            return Outcome::Failed(PluginFault::OutputLimit {
                detail: format!("{} actions, the limit is {}", actions.len(), config.max_actions),
            });
        }
        let actions: Vec<Action> = actions.into_iter().map(Action::from).collect();
        let bytes: usize = actions.iter().map(Action::data_len).sum();
        if bytes as u64 > config.max_output_bytes {
            return Outcome::Failed(PluginFault::OutputLimit {
                detail: format!(
                    "{bytes} bytes of actions, the limit is {}",
                    config.max_output_bytes
                ),
            });
        }
        Outcome::Ok(actions)
    }

    /// Names what went wrong in a failed call or instantiation.
    fn classify(&self, err: &wasmtime::Error, state: &StoreState, deadline_ms: u32) -> PluginFault {
        if state.limiter.hit || err.downcast_ref::<MemoryLimitExceeded>().is_some() {
            return PluginFault::MemoryLimit {
                limit_bytes: self.env.config.memory_limit_bytes,
            };
        }
        if let Some(trap) = err.downcast_ref::<Trap>() {
            return match trap {
                Trap::Interrupt => PluginFault::Timeout { deadline_ms },
                Trap::OutOfFuel => PluginFault::FuelExhausted {
                    budget: self.env.config.fuel.unwrap_or(0),
                },
                other => {
                    let mut message = other.to_string();
                    if let Some(stderr) = state.stderr_tail.joined() {
                        message.push_str("; stderr: ");
                        message.push_str(&stderr);
                    }
                    PluginFault::Trap { message }
                }
            };
        }
        if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
            return PluginFault::Unavailable(format!("the host is out of instance slots: {err}"));
        }
        // wasmtime's `HostcallFuelExhausted` is private; its message is the only handle.
        if err.chain().any(|e| {
            e.to_string()
                .contains("fuel allocated for hostcalls has been exhausted")
        }) {
            return PluginFault::OutputLimit {
                detail: format!(
                    "more than {} bytes handed to the host in one crossing",
                    self.hostcall_fuel
                ),
            };
        }
        PluginFault::Trap {
            message: format!("{err:#}"),
        }
    }

    /// A fresh instance: store with limits, instantiate, `init(settings)`.
    fn instantiate(&self) -> Result<Instance, PluginFault> {
        let state = StoreState::new(self.env.clone()).map_err(PluginFault::Init)?;
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.hostcall_fuel);
        store.set_epoch_deadline(self.init_ticks);
        if let Some(fuel) = self.env.config.fuel {
            store
                .set_fuel(fuel)
                .map_err(|e| PluginFault::Init(format!("cannot set fuel: {e}")))?;
        }
        let deadline = self.env.config.init_deadline_ms;
        // Instantiation runs the component's start code, then `init`: guest code throughout.
        let _running = self.runtime.gate.enter();
        let plugin = match &self.pre {
            Pre::V0_1(pre) => pre.instantiate(&mut store).map(Exports::V0_1),
            Pre::V0_2(pre) => pre.instantiate(&mut store).map(Exports::V0_2),
        };
        let plugin = match plugin {
            Ok(plugin) => plugin,
            Err(e) => return Err(self.classify(&e, store.data(), deadline)),
        };
        self.metrics.instance_created();
        let settings: Vec<(&str, &str)> = self
            .env
            .config
            .settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let result = match &plugin {
            Exports::V0_1(p) => p.call_init(&mut store, &settings),
            Exports::V0_2(p) => p.call_init(&mut store, &settings),
        };
        self.metrics.memory(store.data().limiter.high_water as u64);
        match result {
            Ok(Ok(())) => Ok(Instance {
                store,
                plugin,
                packed: Vec::new(),
            }),
            Ok(Err(e)) => Err(PluginFault::Init(match e {
                wit::PluginError::Config(m) => format!("configuration refused: {m}"),
                wit::PluginError::Rejected(m) => format!("rejected: {m}"),
                wit::PluginError::Failed(m) => format!("failed: {m}"),
            })),
            Err(e) => Err(self.classify(&e, store.data(), deadline)),
        }
    }

    /// Counts the outcome and updates the version's health.
    fn finish(&self, started: Instant, outcome: Outcome) -> CallReport {
        self.metrics.duration(started.elapsed());
        let mut suspended_now = None;
        match &outcome {
            Outcome::Ok(_) => self.metrics.ok(),
            Outcome::Rejected(_) => self.metrics.rejected(),
            Outcome::Failed(fault) => {
                self.metrics.failed(fault.kind());
                if fault.counts_against_health() {
                    suspended_now = self.failed(fault);
                }
            }
        }
        if !matches!(outcome, Outcome::Failed(_)) && self.failures_in_row.load(Ordering::Relaxed) != 0 {
            self.failures_in_row.store(0, Ordering::Relaxed);
        }
        CallReport {
            outcome,
            suspended_now,
        }
    }

    fn failed(&self, fault: &PluginFault) -> Option<String> {
        *self.last_fault.lock() = Some(fault.to_string());
        let in_row = self.failures_in_row.fetch_add(1, Ordering::AcqRel) + 1;
        let limit = self.env.config.max_consecutive_failures;
        if in_row < limit {
            return None;
        }
        let reason = format!("{in_row} consecutive failures, the last: {fault}");
        if self.suspended.swap(true, Ordering::AcqRel) {
            return None;
        }
        *self.suspension.lock() = Some(reason.clone());
        self.idle.clear();
        tracing::warn!(
            plugin = %self.env.plugin.name,
            version = self.number(),
            %reason,
            "plugin version suspended; activate it again (or another version) to resume"
        );
        Some(reason)
    }

    /// Marks the version suspended (restored from the catalog).
    pub(crate) fn restore_suspension(&self, reason: String) {
        *self.suspension.lock() = Some(reason);
        self.suspended.store(true, Ordering::Release);
    }

    /// Clears a suspension (the operator activated the version again).
    pub(crate) fn resume(&self) {
        self.failures_in_row.store(0, Ordering::Relaxed);
        *self.suspension.lock() = None;
        self.suspended.store(false, Ordering::Release);
    }

    pub(crate) fn suspension(&self) -> Option<String> {
        if self.suspended.load(Ordering::Acquire) {
            self.suspension.lock().clone()
        } else {
            None
        }
    }

    pub(crate) fn failures_in_row(&self) -> u32 {
        self.failures_in_row.load(Ordering::Relaxed)
    }

    pub(crate) fn last_fault(&self) -> Option<String> {
        self.last_fault.lock().clone()
    }

    /// Starts one instance ahead of traffic (activation), proving `init` accepts the config.
    pub(crate) fn warm(&self) -> Result<(), PluginFault> {
        self.retired.store(false, Ordering::Release);
        if !self.idle.is_empty() {
            return Ok(());
        }
        let instance = self.instantiate()?;
        self.metrics
            .memory(instance.store.data().limiter.high_water as u64);
        self.idle.push(instance, true);
        Ok(())
    }

    /// No longer active: drop idle instances and do not keep the ones still in calls.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.idle.clear();
    }
}

/// `msg` as 0.2.0's packed message (see `wit/world.wit`), its bytes written into `buf`; `Err`
/// when a part is longer than the interface's 32-bit lengths can say.
fn pack<'a>(msg: &MessageRef<'_>, buf: &'a mut Vec<u8>) -> Result<PackedMessage<'a>, String> {
    let len = |what: &str, bytes: &[u8]| {
        u32::try_from(bytes.len()).map_err(|_| {
            format!(
                "the message's {what} is too long for the plugin interface ({} bytes)",
                bytes.len()
            )
        })
    };
    buf.clear();
    let properties: usize = msg
        .user_properties
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum();
    buf.reserve(
        msg.topic.len()
            + msg.payload.len()
            + msg.client_id.map_or(0, str::len)
            + msg.thing_name.map_or(0, str::len)
            + properties,
    );
    let topic_len = len("topic", msg.topic.as_bytes())?;
    let payload_len = len("payload", msg.payload)?;
    buf.extend_from_slice(msg.topic.as_bytes());
    buf.extend_from_slice(msg.payload);
    let mut optional = |part: Option<&str>, what: &str| -> Result<Option<u32>, String> {
        let Some(part) = part else { return Ok(None) };
        let n = len(what, part.as_bytes())?;
        buf.extend_from_slice(part.as_bytes());
        Ok(Some(n))
    };
    let client_id_len = optional(msg.client_id, "client id")?;
    let thing_name_len = optional(msg.thing_name, "thing name")?;
    for (key, value) in msg.user_properties {
        for part in [key, value] {
            buf.extend_from_slice(&len("user property", part.as_bytes())?.to_le_bytes());
            buf.extend_from_slice(part.as_bytes());
        }
    }
    Ok(PackedMessage {
        data: buf,
        topic_len,
        payload_len,
        client_id_len,
        thing_name_len,
        user_properties: u32::try_from(msg.user_properties.len())
            .map_err(|_| "the message has too many user properties for the plugin interface".to_string())?,
        qos: msg.qos,
        timestamp_ms: msg.timestamp_ms,
    })
}
