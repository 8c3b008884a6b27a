//! One loaded plugin version: its `InstancePre`, a small pool of idle instances, the bounded
//! call path, fault classification, and suspension after repeated failures.

use crate::artifact::ArtifactSource;
use crate::bindings::{BatchHeader, PackedMessage, v0_1, v0_2, v0_3, wit};
use crate::engine::{Runtime, Runtimes};
use crate::message::{Action, MessageRef};
use crate::metrics::VersionMetrics;
use crate::outcome::{FaultKind, Outcome, PluginFault};
use crate::sandbox::{Answers, BatchCall, MemoryLimitExceeded, StoreState, VersionEnv};
use parking_lot::Mutex;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::{PoolConcurrencyLimitError, Store, Trap};

/// A live instance: its store, the typed exports, and (0.2.0 and later) the buffer its
/// messages are packed into and (0.3.0) a batch's headers, kept between calls.
struct Instance {
    store: Store<StoreState>,
    plugin: Exports,
    packed: Vec<u8>,
    headers: Vec<BatchHeader>,
}

/// A version's pre-instantiated component, by the world it targets.
enum Pre {
    V0_1(v0_1::RulePluginPre<StoreState>),
    V0_2(v0_2::RulePluginPre<StoreState>),
    V0_3(v0_3::RulePluginPre<StoreState>),
}

/// An instance's typed exports, by the world its component targets.
enum Exports {
    V0_1(v0_1::RulePlugin),
    V0_2(v0_2::RulePlugin),
    V0_3(v0_3::RulePlugin),
}

/// What `on-message` returns, once the call itself succeeded.
type CallResult = wasmtime::Result<Result<Vec<wit::Action>, wit::PluginError>>;

impl Exports {
    /// `on-message` with a packed message (0.2.0 and later; a 0.1.0 component fails the call).
    fn call_packed(&self, store: &mut Store<StoreState>, msg: PackedMessage<'_>) -> CallResult {
        match self {
            Exports::V0_2(plugin) => plugin.call_on_message(store, msg),
            Exports::V0_3(plugin) => plugin.call_on_message(store, msg),
            Exports::V0_1(_) => Err(wasmtime::Error::msg("a 0.1.0 component takes no packed message")),
        }
    }
}

/// Fewest messages worth an `on-batch` call: two cost more in one call than in two single
/// calls (`batch_sizes` in `tests/bench.rs`: two lists to allocate in the plugin and one to
/// lift back, against one message each).
const MIN_BATCH: usize = 3;

/// Most bytes of messages one `on-batch` call carries (beyond its first message): the
/// plugin must allocate room for them at once, within its memory limit.
const MAX_BATCH_BYTES: usize = 256 << 10;

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
    /// Set once the version broke the batch protocol ([`LoadedVersion::stop_batches`]).
    no_batches: AtomicBool,
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
        let pre = match v0_3::RulePluginPre::new(instance_pre.clone()) {
            Ok(pre) => Pre::V0_3(pre),
            Err(newest) => match v0_2::RulePluginPre::new(instance_pre.clone()) {
                Ok(pre) => Pre::V0_2(pre),
                Err(second) => match v0_1::RulePluginPre::new(instance_pre) {
                    Ok(pre) => Pre::V0_1(pre),
                    Err(old) => {
                        return Err(crate::error::CatalogError::WorldMismatch(format!(
                            "the component targets none of shoal:plugin/rule-plugin@0.3.0 \
                             ({newest:#}), @0.2.0 ({second:#}) and @0.1.0 ({old:#})"
                        )));
                    }
                },
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
            no_batches: AtomicBool::new(false),
            suspension: Mutex::new(None),
            last_fault: Mutex::new(None),
        })
    }

    pub(crate) fn number(&self) -> u32 {
        self.env.version
    }

    /// The version of the `shoal:plugin` world its component targets (`0.1.0` to `0.3.0`).
    pub(crate) fn world(&self) -> &'static str {
        match self.pre {
            Pre::V0_1(_) => "0.1.0",
            Pre::V0_2(_) => "0.2.0",
            Pre::V0_3(_) => "0.3.0",
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
                Err(fault) => return self.finish(started.elapsed(), Outcome::Failed(fault)),
            },
        };
        // A panic in host code during the call (a bug, or a WASI host call that cannot run on
        // this thread) must not unwind into the caller: it fails this call and the instance.
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run(&mut instance, msg)))
            .unwrap_or_else(|panic| Outcome::Failed(host_panicked(panic)));
        self.metrics
            .memory(instance.store.data().limiter.high_water as u64);
        if matches!(outcome, Outcome::Ok(_) | Outcome::Rejected(_)) && !self.retired.load(Ordering::Acquire) {
            self.idle.push(instance, false);
        }
        self.finish(started.elapsed(), outcome)
    }

    /// Runs each of `msgs`, in order, exactly as [`LoadedVersion::call`] would, reporting
    /// each to `report` as it is known; a 0.3.0 component gets them in as few `on-batch`
    /// calls as its faults and its budget allow. A message's fault is its own: the answers
    /// given before it stand; when the unanswered messages changed nothing, each is run again
    /// by itself (so the fault lands on the one that causes it); otherwise the fault is the
    /// first unanswered message's and the ones after it go to a fresh instance.
    ///
    /// Not the same as single calls in two ways, both documented for plugin authors: the
    /// instance is not dropped between messages of one call after one of them failed without
    /// trapping (`failed`, an output limit), only after the call; and a suspension that a
    /// message's failure causes applies from the next call on.
    pub(crate) fn call_batch(&self, msgs: &[MessageRef<'_>], mut report: impl FnMut(CallReport)) {
        let most = self.batch_limit();
        let mut done = 0;
        while done < msgs.len() {
            let rest = &msgs[done..msgs.len().min(done + most)];
            if rest.len() < MIN_BATCH
                || !matches!(self.pre, Pre::V0_3(_))
                || self.suspended.load(Ordering::Acquire)
                || self.no_batches.load(Ordering::Relaxed)
            {
                report(self.call(&rest[0]));
                done += 1;
                continue;
            }
            let started = Instant::now();
            let mut instance = match self.idle.pop() {
                Some(instance) => instance,
                None => match self.instantiate() {
                    Ok(instance) => instance,
                    Err(fault) => {
                        report(self.finish(started.elapsed(), Outcome::Failed(fault)));
                        done += 1;
                        continue;
                    }
                },
            };
            let entered = catch_unwind(AssertUnwindSafe(|| self.enter_batch(&mut instance, rest)));
            let ended = Instant::now();
            let (sent, ended_with) = match entered {
                Ok(Ok((sent, returned))) => (sent, Ok(returned)),
                Ok(Err(Entered { sent, error })) => (sent, Err(error)),
                Err(panic) => (rest.len(), Err(EndedEarly::Fault(host_panicked(panic)))),
            };
            let fuel_left = self.env.config.fuel.and_then(|_| instance.store.get_fuel().ok());
            let mut call = std::mem::take(&mut instance.store.data_mut().batch);
            let effects = call.effects;
            // Answers returned after a change that no `answer` call followed break the
            // protocol too.
            let returned_after_change = matches!(&ended_with, Ok(r) if effects && !r.is_empty());
            if call.broken || returned_after_change {
                self.stop_batches();
            }
            let fault = match ended_with {
                Ok(returned) => {
                    call.answers.push(Answers {
                        results: returned,
                        at: ended,
                        fuel_left,
                    });
                    None
                }
                Err(EndedEarly::Fault(fault)) => Some(fault),
                Err(EndedEarly::Error(e)) => {
                    Some(self.classify(&e, instance.store.data(), self.env.config.deadline_ms))
                }
            };
            let given: usize = call.answers.iter().map(|g| g.results.len()).sum();
            // Every answer is an outcome of its own; the answers of one `answer` call share
            // the time (and fuel) since the one before.
            let mut answered = 0;
            let mut last = started;
            let mut trusted = true;
            for group in call.answers.drain(..) {
                let n = group.results.len().min(sent - answered);
                if n == 0 {
                    break;
                }
                let took = group.at.saturating_duration_since(last) / n as u32;
                if let (Some(budget), Some(left)) = (self.env.config.fuel, group.fuel_left) {
                    self.metrics.fuel(budget.saturating_sub(left));
                }
                for result in group.results.into_iter().take(n) {
                    let outcome = self.outcome(result);
                    trusted &= matches!(outcome, Outcome::Ok(_) | Outcome::Rejected(_));
                    report(self.finish(took, outcome));
                }
                answered += n;
                last = group.at;
            }
            // Keep the answers' buffer for the instance's next batch.
            call.expected = 0;
            call.answered = 0;
            call.effects = false;
            call.broken = false;
            instance.store.data_mut().batch = call;
            self.metrics
                .memory(instance.store.data().limiter.high_water as u64);
            let fault = match fault {
                None if given != sent => Some(PluginFault::Trap {
                    message: format!("on-batch answered {given} messages of a batch of {sent}"),
                }),
                fault => fault,
            };
            match fault {
                // Every message has its answer; the instance goes, and operators hear of it.
                Some(fault) if answered == sent => {
                    tracing::warn!(
                        plugin = %self.env.plugin.name,
                        version = self.number(),
                        %fault,
                        "plugin failed after answering every message of a batch"
                    );
                    *self.last_fault.lock() = Some(fault.to_string());
                    done += answered;
                }
                None => {
                    if trusted && !self.retired.load(Ordering::Acquire) {
                        self.idle.push(instance, false);
                    }
                    done += answered;
                }
                // Nothing changed since the last answer: each unanswered message again, by
                // itself, so the fault lands on the one that causes it.
                Some(fault) if !effects => {
                    tracing::debug!(plugin = %self.env.plugin.name, %fault, "a batch failed; its unanswered messages run again one by one");
                    *self.last_fault.lock() = Some(fault.to_string());
                    for msg in &rest[answered..] {
                        report(self.call(msg));
                    }
                    done += rest.len();
                }
                // Something changed: the first unanswered message did it (the protocol),
                // and the fault is its own; the rest go again.
                Some(fault) => {
                    report(self.finish(ended.saturating_duration_since(last), Outcome::Failed(fault)));
                    done += answered + 1;
                }
            }
        }
    }

    /// The version broke the batch protocol (a message that changed something was not
    /// answered by itself): from now on it gets one call per message, since after a fault
    /// the host could not tell which of its messages may run again.
    fn stop_batches(&self) {
        if !self.no_batches.swap(true, Ordering::Relaxed) {
            let why = "the plugin answered a message that changed something (log, key-value \
                       write, metric) together with others; it gets one call per message from now on";
            tracing::warn!(plugin = %self.env.plugin.name, version = self.number(), why, "plugin breaks the batch protocol");
            *self.last_fault.lock() = Some(format!("batch protocol: {why}"));
        }
    }

    /// Most messages one `on-batch` call carries: 64, fewer when the version's calls take
    /// long enough that a batch would use more than a quarter of its deadline (or of its
    /// fuel), since the messages between two answers share one.
    fn batch_limit(&self) -> usize {
        const MOST: usize = 64;
        // A version not called yet gets whole batches: one that turns out slow fails its
        // first batch, runs its messages one by one, and is sized by then.
        let Some(mean) = self.metrics.mean_duration() else {
            return MOST;
        };
        let deadline = Duration::from_millis(u64::from(self.env.config.deadline_ms));
        let mut most = (deadline.as_nanos() / (4 * mean.as_nanos().max(1))).min(MOST as u128) as usize;
        if let Some(budget) = self.env.config.fuel
            && let Some(mean_fuel) = self.metrics.mean_fuel()
        {
            most = most.min((budget / (4 * mean_fuel.max(1))) as usize);
        }
        most.max(1)
    }

    /// One `on-batch` call with as many of `msgs` as can be packed (all but those after one
    /// too long for the interface, or past [`MAX_BATCH_BYTES`]); `Ok` with how many it sent
    /// and the answers it returned once the call returned.
    fn enter_batch(
        &self,
        instance: &mut Instance,
        msgs: &[MessageRef<'_>],
    ) -> Result<(usize, Vec<AnswerResult>), Entered> {
        let Instance {
            store,
            plugin,
            packed,
            headers,
        } = instance;
        let Exports::V0_3(plugin) = plugin else {
            return Err(Entered {
                sent: 1,
                error: EndedEarly::Fault(PluginFault::Unavailable(
                    "on-batch called on a component without it".into(),
                )),
            });
        };
        packed.clear();
        headers.clear();
        for msg in msgs {
            // A batch stays small next to the plugin's memory: the messages past the bound
            // go in the next call (the first one always goes, whatever its size).
            if !headers.is_empty() && packed.len() + packed_size(msg) > MAX_BATCH_BYTES {
                break;
            }
            match pack_parts(msg, packed) {
                Ok(lens) => headers.push(BatchHeader {
                    topic_len: lens.topic,
                    payload_len: lens.payload,
                    client_id_len: lens.client_id,
                    thing_name_len: lens.thing_name,
                    user_properties: lens.user_properties,
                    user_properties_len: lens.user_properties_bytes,
                    qos: msg.qos,
                    timestamp_ms: msg.timestamp_ms,
                }),
                // This one is failed alone, once the ones before it are done.
                Err(too_long) if headers.is_empty() => {
                    return Err(Entered {
                        sent: 1,
                        error: EndedEarly::Fault(PluginFault::Unavailable(too_long)),
                    });
                }
                Err(_) => break,
            }
        }
        let sent = headers.len();
        self.metrics.batch(sent);
        let fuel = self.env.config.fuel;
        let call = &mut store.data_mut().batch;
        call.expected = sent;
        call.answered = 0;
        call.effects = false;
        call.deadline_ticks = self.deadline_ticks;
        call.fuel = fuel;
        store.set_epoch_deadline(self.deadline_ticks);
        if let Some(fuel) = fuel
            && let Err(e) = store.set_fuel(fuel)
        {
            return Err(Entered {
                sent,
                error: EndedEarly::Fault(PluginFault::Trap {
                    message: format!("cannot set fuel: {e}"),
                }),
            });
        }
        store.data().stderr_tail.clear();
        let result = {
            let _running = self.runtime.gate.enter();
            plugin.call_on_batch(&mut *store, packed, headers)
        };
        if packed.capacity() > KEEP_PACKED_BYTES {
            *packed = Vec::new();
        }
        match result {
            Ok(returned) => Ok((sent, returned)),
            Err(error) => Err(Entered {
                sent,
                error: EndedEarly::Error(error),
            }),
        }
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
            plugin => {
                let packed = &mut instance.packed;
                let param = match pack(msg, packed) {
                    Ok(param) => param,
                    Err(too_long) => return Outcome::Failed(PluginFault::Unavailable(too_long)),
                };
                let result = {
                    let _running = self.runtime.gate.enter();
                    plugin.call_packed(&mut *store, param)
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
            Ok(result) => self.outcome(result),
            Err(e) => Outcome::Failed(self.classify(&e, store.data(), self.env.config.deadline_ms)),
        }
    }

    /// What the plugin answered for one message, as an outcome.
    fn outcome(&self, result: Result<Vec<wit::Action>, wit::PluginError>) -> Outcome {
        match result {
            Ok(actions) => self.check_output(actions),
            Err(wit::PluginError::Rejected(reason)) => Outcome::Rejected(reason),
            Err(wit::PluginError::Failed(reason)) => Outcome::Failed(PluginFault::Error(reason)),
            Err(wit::PluginError::Config(reason)) => {
                Outcome::Failed(PluginFault::Error(format!("configuration: {reason}")))
            }
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
            Pre::V0_3(pre) => pre.instantiate(&mut store).map(Exports::V0_3),
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
            Exports::V0_3(p) => p.call_init(&mut store, &settings),
        };
        self.metrics.memory(store.data().limiter.high_water as u64);
        match result {
            Ok(Ok(())) => Ok(Instance {
                store,
                plugin,
                packed: Vec::new(),
                headers: Vec::new(),
            }),
            Ok(Err(e)) => Err(PluginFault::Init(match e {
                wit::PluginError::Config(m) => format!("configuration refused: {m}"),
                wit::PluginError::Rejected(m) => format!("rejected: {m}"),
                wit::PluginError::Failed(m) => format!("failed: {m}"),
            })),
            Err(e) => Err(self.classify(&e, store.data(), deadline)),
        }
    }

    /// Counts the outcome (of a call that took `took`) and updates the version's health.
    fn finish(&self, took: Duration, outcome: Outcome) -> CallReport {
        self.metrics.duration(took);
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

/// The lengths of one packed message's parts (see [`pack_parts`]).
struct PackedLens {
    topic: u32,
    payload: u32,
    client_id: Option<u32>,
    thing_name: Option<u32>,
    user_properties: u32,
    user_properties_bytes: u32,
}

/// `msg` as 0.2.0's packed message (see `wit/deps/shoal-plugin-0.2.0/world.wit`), its bytes
/// written into `buf`; `Err` when a part is longer than the interface's 32-bit lengths can say.
fn pack<'a>(msg: &MessageRef<'_>, buf: &'a mut Vec<u8>) -> Result<PackedMessage<'a>, String> {
    buf.clear();
    let lens = pack_parts(msg, buf)?;
    Ok(PackedMessage {
        data: buf,
        topic_len: lens.topic,
        payload_len: lens.payload,
        client_id_len: lens.client_id,
        thing_name_len: lens.thing_name,
        user_properties: lens.user_properties,
        qos: msg.qos,
        timestamp_ms: msg.timestamp_ms,
    })
}

/// The bytes `msg` takes packed.
fn packed_size(msg: &MessageRef<'_>) -> usize {
    msg.topic.len()
        + msg.payload.len()
        + msg.client_id.map_or(0, str::len)
        + msg.thing_name.map_or(0, str::len)
        + properties_size(msg)
}

/// The bytes `msg`'s user properties take packed, length prefixes included.
fn properties_size(msg: &MessageRef<'_>) -> usize {
    msg.user_properties
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum()
}

/// Appends `msg`'s parts to `buf`, packed as 0.2.0's `packed.message` (and each message of a
/// 0.3.0 batch) lays them out; on `Err` (a part too long for 32-bit lengths) `buf` is left
/// as it was.
fn pack_parts(msg: &MessageRef<'_>, buf: &mut Vec<u8>) -> Result<PackedLens, String> {
    let len = |what: &str, bytes: &[u8]| {
        u32::try_from(bytes.len()).map_err(|_| {
            format!(
                "the message's {what} is too long for the plugin interface ({} bytes)",
                bytes.len()
            )
        })
    };
    let properties = properties_size(msg);
    let lens = PackedLens {
        topic: len("topic", msg.topic.as_bytes())?,
        payload: len("payload", msg.payload)?,
        client_id: msg
            .client_id
            .map(|c| len("client id", c.as_bytes()))
            .transpose()?,
        thing_name: msg
            .thing_name
            .map(|t| len("thing name", t.as_bytes()))
            .transpose()?,
        user_properties: u32::try_from(msg.user_properties.len())
            .map_err(|_| "the message has too many user properties for the plugin interface".to_string())?,
        user_properties_bytes: u32::try_from(properties)
            .map_err(|_| "the message's user properties are too long for the plugin interface".to_string())?,
    };
    buf.reserve(packed_size(msg));
    buf.extend_from_slice(msg.topic.as_bytes());
    buf.extend_from_slice(msg.payload);
    for part in [msg.client_id, msg.thing_name].into_iter().flatten() {
        buf.extend_from_slice(part.as_bytes());
    }
    for (key, value) in msg.user_properties {
        for part in [key, value] {
            // Each fits: their sum with the prefixes does.
            buf.extend_from_slice(&(part.len() as u32).to_le_bytes());
            buf.extend_from_slice(part.as_bytes());
        }
    }
    Ok(lens)
}

/// Why an `on-batch` call ended before it returned normally.
enum EndedEarly {
    /// Known before or around the call (no instance slot for fuel, a host panic).
    Fault(PluginFault),
    /// The call failed: a trap, a limit, a host call's error.
    Error(wasmtime::Error),
}

/// An `on-batch` call that did not return normally, with how many messages it was sent.
struct Entered {
    sent: usize,
    error: EndedEarly,
}

/// A host panic during a call, as the call's fault.
fn host_panicked(panic: Box<dyn std::any::Any + Send>) -> PluginFault {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    PluginFault::Trap {
        message: format!("host panicked during the call: {what}"),
    }
}

/// What a plugin answers for one message.
pub(crate) type AnswerResult = Result<Vec<wit::Action>, wit::PluginError>;

/// `batch.answer` (0.3.0): records the answers to the batch's next messages and restarts the
/// deadline (and the fuel budget) for the messages after them. Answering outside `on-batch`,
/// or more messages than it has left, traps the call.
pub(crate) fn answer(
    mut store: wasmtime::StoreContextMut<'_, StoreState>,
    answers: Vec<AnswerResult>,
) -> wasmtime::Result<()> {
    let call: &BatchCall = &store.data().batch;
    if call.answered + answers.len() > call.expected {
        let expected = call.expected;
        return Err(wasmtime::Error::msg(if expected == 0 {
            "batch.answer called outside on-batch".to_string()
        } else {
            format!(
                "batch.answer answered {} messages of a batch of {expected}",
                call.answered + answers.len()
            )
        }));
    }
    let (ticks, fuel) = (call.deadline_ticks, call.fuel);
    let fuel_left = match fuel {
        Some(_) => store.get_fuel().ok(),
        None => None,
    };
    let call = &mut store.data_mut().batch;
    call.broken |= call.effects && answers.len() > 1;
    call.answered += answers.len();
    call.effects = false;
    call.answers.push(Answers {
        results: answers,
        at: Instant::now(),
        fuel_left,
    });
    store.set_epoch_deadline(ticks);
    if let Some(fuel) = fuel {
        store.set_fuel(fuel)?;
    }
    Ok(())
}
