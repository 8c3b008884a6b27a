//! wasmtime engines, their linker, and the epoch ticker.
//!
//! One [`Runtime`] (engine + linker) serves every plugin version without a fuel budget. Fuel is
//! a compile-time property (every loop and call gets a fuel check), so versions that ask for a
//! budget run on a second, metered runtime created the first time one is loaded. Both share
//! one ticker thread that advances their epochs.

use crate::bindings::v0_1::RulePlugin;
use crate::config::HostConfig;
use crate::error::HostError;
use crate::sandbox::StoreState;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, EngineWeak, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    ProfilingStrategy,
};
use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
use wasmtime_wasi::random::WasiRandom;

/// Part of every cache key, beside wasmtime's own compatibility hash (which covers the
/// version too): a readable marker for whoever looks into the cache directory.
const ENGINE_TAG: &str = "wasmtime-50";

/// An engine, the linker every version of it instantiates through, and the fingerprint of its
/// compilation settings (the precompiled-artifact cache key).
pub(crate) struct Runtime {
    pub engine: Engine,
    pub linker: Linker<StoreState>,
    pub fingerprint: String,
    pub metered: bool,
    /// Tells the epoch ticker when guest code runs (shared by every runtime of the host).
    pub gate: Arc<EpochGate>,
}

fn engine_error(e: impl std::fmt::Display) -> HostError {
    HostError::Engine(e.to_string())
}

impl Runtime {
    fn new(host: &HostConfig, metered: bool, gate: Arc<EpochGate>) -> Result<Self, HostError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.cranelift_opt_level(OptLevel::Speed);
        config.epoch_interruption(true);
        config.consume_fuel(metered);
        // Plain synchronous component calls skip the bookkeeping for concurrent (async
        // component model) execution: ~300 ns per call measured with wasmtime 48.
        config.concurrency_support(false);
        // `SHOAL_PLUGIN_PROFILER=perfmap` writes /tmp/perf-{pid}.map, so `perf` names the
        // plugins' compiled functions (for plugin authors and for profiling the host).
        if std::env::var_os("SHOAL_PLUGIN_PROFILER").is_some_and(|v| v == "perfmap") {
            config.profiler(ProfilingStrategy::PerfMap);
        }

        let n = host.max_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n);
        // A Rust component is a main module plus small adapter/shim modules; leave room.
        pool.total_core_instances(n.saturating_mul(8));
        pool.max_core_instances_per_component(32);
        pool.total_memories(n.saturating_mul(2));
        pool.max_memories_per_component(4);
        pool.total_tables(n.saturating_mul(4));
        pool.max_tables_per_component(16);
        pool.max_memory_size(usize::try_from(host.max_memory_bytes).map_err(engine_error)?);
        pool.linear_memory_keep_resident(host.memory_keep_resident_bytes);
        pool.table_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

        let engine = Engine::new(&config).map_err(engine_error)?;
        let linker = build_linker(&engine).map_err(engine_error)?;
        let fingerprint = fingerprint(&engine);
        Ok(Runtime {
            engine,
            linker,
            fingerprint,
            metered,
            gate,
        })
    }
}

/// sha256 over [`ENGINE_TAG`] and wasmtime's precompile compatibility hash: two engines with
/// the same fingerprint accept each other's artifacts.
fn fingerprint(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    ENGINE_TAG.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..8])
}

struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

/// The linker: WASI 0.2 *without* `wasi:sockets` (and no `wasi:http`, which is a separate
/// crate we do not use), so a component importing either cannot be instantiated, plus the
/// `shoal:plugin` host interface.
fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sync};
    type T = StoreState;

    let mut linker = Linker::<T>::new(engine);
    let l = &mut linker;
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<T, HasIo>(l, |t| t.ctx_table())?;
    sync::io::poll::add_to_linker::<T, HasIo>(l, |t| t.ctx_table())?;
    sync::io::streams::add_to_linker::<T, HasIo>(l, |t| t.ctx_table())?;
    clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    filesystem::preopens::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    sync::filesystem::types::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    random::random::add_to_linker::<T, WasiRandom>(l, |t| t.random_ctx())?;
    random::insecure::add_to_linker::<T, WasiRandom>(l, |t| t.random_ctx())?;
    random::insecure_seed::add_to_linker::<T, WasiRandom>(l, |t| t.random_ctx())?;
    cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    RulePlugin::add_to_linker::<T, HasSelf<T>>(l, |t| t)?;
    // 0.3.0's `batch.answer`, by hand: it resets the next message's deadline and fuel, which
    // needs the store itself (a generated host trait only sees the store's data).
    l.instance("shoal:plugin/batch@0.3.0")?.func_wrap(
        "answer",
        |store: wasmtime::StoreContextMut<'_, T>, (answers,): (Vec<crate::version::AnswerResult>,)| {
            crate::version::answer(store, answers)
        },
    )?;
    Ok(linker)
}

/// The host's runtimes: the plain one, and the metered one once a version needs it.
pub(crate) struct Runtimes {
    host: HostConfig,
    plain: Arc<Runtime>,
    metered: Mutex<Option<Arc<Runtime>>>,
    ticked: Arc<Mutex<Vec<EngineWeak>>>,
    gate: Arc<EpochGate>,
    _ticker: Ticker,
}

impl Runtimes {
    pub(crate) fn new(host: &HostConfig) -> Result<Self, HostError> {
        let gate = Arc::new(EpochGate::default());
        let plain = Arc::new(Runtime::new(host, false, gate.clone())?);
        let ticked = Arc::new(Mutex::new(vec![plain.engine.weak()]));
        let ticker = Ticker::start(host, ticked.clone(), gate.clone())?;
        Ok(Runtimes {
            host: host.clone(),
            plain,
            metered: Mutex::new(None),
            ticked,
            gate,
            _ticker: ticker,
        })
    }

    /// Whether the epoch ticker is parked or about to park (no guest code ran for a while).
    pub(crate) fn ticker_parked(&self) -> bool {
        self.gate.parked.load(Ordering::SeqCst)
    }

    /// The runtime for a version with (`metered`) or without a fuel budget.
    pub(crate) fn get(&self, metered: bool) -> Result<Arc<Runtime>, HostError> {
        if !metered {
            return Ok(self.plain.clone());
        }
        let mut slot = self.metered.lock();
        if let Some(rt) = &*slot {
            return Ok(rt.clone());
        }
        let rt = Arc::new(Runtime::new(&self.host, true, self.gate.clone())?);
        self.ticked.lock().push(rt.engine.weak());
        *slot = Some(rt.clone());
        Ok(rt)
    }

    /// Epoch ticks for a deadline: rounded up, plus one because the current tick may be about
    /// to end (so a call gets at least its deadline, at most one tick more).
    pub(crate) fn ticks(&self, deadline_ms: u32) -> u64 {
        let tick_us = self.host.epoch_tick.as_micros().max(1) as u64;
        (u64::from(deadline_ms) * 1000).div_ceil(tick_us) + 1
    }
}

/// How the epoch ticker learns whether guest code is running, so that it can sleep while none
/// is (an idle server otherwise wakes a thousand times a second for nothing: ~2 % of a core on
/// this machine's VM).
///
/// Every entry into guest code holds an [`EpochGate::enter`] guard, which counts the entry
/// and the exit on the calling thread's stripe (threads take the 4 stripes in turn, each a
/// cache line of its own, so the two rules workers do not share one). The ticker sums the
/// stripes each tick; once no call has run during [`PARK_AFTER_TICKS`] ticks (none started,
/// none in progress) it parks until the next entry unparks it. The handshake cannot lose a
/// wake-up: the ticker sets `parked` and then reads the counts again; an entry counts itself
/// and then reads `parked` (both sequentially consistent), so at least one of them sees the
/// other. While parked the epoch does not advance, which no deadline notices: a deadline is a
/// number of ticks from the entry.
#[derive(Default)]
pub(crate) struct EpochGate {
    stripes: [GateStripe; crate::metrics::STRIPES],
    parked: AtomicBool,
    ticker: std::sync::OnceLock<std::thread::Thread>,
}

/// One stripe's counts of guest entries and exits.
#[derive(Default)]
#[repr(align(128))]
struct GateStripe {
    entered: AtomicU64,
    left: AtomicU64,
}

/// The ticker parks after this many ticks without guest code (100 ms at the default 1 ms tick).
const PARK_AFTER_TICKS: u32 = 100;

/// Held while guest code may run (see [`EpochGate`]).
pub(crate) struct GateGuard<'g>(&'g GateStripe);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.left.fetch_add(1, Ordering::SeqCst);
    }
}

impl EpochGate {
    /// Call before entering guest code (instantiation, `init`, `on-message`); hold the guard
    /// until the guest has returned.
    pub(crate) fn enter(&self) -> GateGuard<'_> {
        let stripe = &self.stripes[crate::metrics::my_stripe()];
        stripe.entered.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst)
            && let Some(ticker) = self.ticker.get()
        {
            ticker.unpark();
        }
        GateGuard(stripe)
    }

    /// (entries, exits) summed over the stripes, exits read first: when the two are equal no
    /// guest code was running when the exits were read, and none entered before the entries
    /// were read.
    fn counts(&self) -> (u64, u64) {
        let left: u64 = self.stripes.iter().map(|s| s.left.load(Ordering::SeqCst)).sum();
        let entered: u64 = self
            .stripes
            .iter()
            .map(|s| s.entered.load(Ordering::SeqCst))
            .sum();
        (entered, left)
    }
}

/// The thread that advances the engines' epochs every tick while guest code runs (see
/// [`EpochGate`]). It waits on a channel with a timeout (that is its sleep) and stops when the
/// host drops the sending half.
struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(
        host: &HostConfig,
        engines: Arc<Mutex<Vec<EngineWeak>>>,
        gate: Arc<EpochGate>,
    ) -> Result<Self, HostError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let tick = host.epoch_tick;
        let ticker_gate = gate.clone();
        let thread = std::thread::Builder::new()
            .name("shoal-plugin-epoch".into())
            .spawn(move || {
                let gate = ticker_gate;
                let mut seen = gate.counts();
                let mut quiet = 0u32;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    for engine in engines.lock().iter().filter_map(EngineWeak::upgrade) {
                        engine.increment_epoch();
                    }
                    let now = gate.counts();
                    if now != seen || now.0 != now.1 {
                        seen = now;
                        quiet = 0;
                        continue;
                    }
                    quiet += 1;
                    if quiet < PARK_AFTER_TICKS {
                        continue;
                    }
                    gate.parked.store(true, Ordering::SeqCst);
                    // An entry after the counts above either shows in these, or sees `parked`.
                    if gate.counts() == seen {
                        // Until an entry (or the host's drop) unparks this thread; a spurious
                        // wake-up just ticks once more and parks again.
                        std::thread::park();
                    }
                    gate.parked.store(false, Ordering::SeqCst);
                    seen = gate.counts();
                    quiet = 0;
                }
            })
            .map_err(|e| HostError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        let _ = gate.ticker.set(thread.thread().clone());
        Ok(Ticker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A parked ticker sees the closed channel once it wakes.
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
