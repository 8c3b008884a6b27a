//! Shoal's sandboxed runtime for WebAssembly rule plugins.
//!
//! A rule plugin is a WebAssembly component of the world `shoal:plugin/rule-plugin@0.3.0`
//! (the repository's `wit/`) or of one of its predecessors `@0.2.0` and `@0.1.0`
//! (`wit/deps/`, kept linked): it exports `init(settings)` and `on-message(message) ->
//! result<list<action>, plugin-error>` and imports the `host` interface (log, clock, read-only
//! shadows, key-value state, metrics), which every version shares. 0.2.0 passes the message
//! packed into one byte list (one allocation in the guest per call instead of one per string
//! and list); 0.3.0 adds `on-batch`, several messages in one call, each answered through the
//! `batch.answer` import ([`PluginHost::invoke_batch_ref`]). The host tries the newest world
//! first at load and reports the world in `LoadInfo`. [`PluginHost`] keeps a catalog of named
//! plugins with numbered versions, runs calls to the active version, and never lets a plugin
//! take the host down.
//!
//! # Layout
//!
//! - `bindings` (private): the `bindgen!`s of the worlds (0.2.0 and 0.3.0 reuse 0.1.0's
//!   generated `types` and `host`).
//! - `engine`: the wasmtime [`Engine`](wasmtime::Engine)s (pooling allocator, epoch
//!   interruption, Cranelift `speed`, `concurrency_support(false)`), the linker (WASI 0.2 minus
//!   sockets, plus `host`), and the epoch ticker thread.
//! - `artifact`: upload validation, content-addressed storage, the precompiled cache.
//! - `version`: one loaded version: `InstancePre`, idle instances, the bounded call path,
//!   fault classification, suspension.
//! - `sandbox`: what each instance's `Store` holds (WASI context, memory limiter, stdout and
//!   stderr into the plugin log) and the `host` interface.
//! - `catalog` / `host`: names, versions, activation, rollback, health; [`PluginHost`].
//! - [`store`]: persistence of the catalog ([`CatalogStore`], [`FileCatalogStore`]).
//! - `replay`: dry runs of a version over recorded messages ([`PluginHost::replay`]).
//! - [`kv`]: the [`PluginKv`] seam and [`MemoryKv`]; [`durable_kv`]: [`DurableKv`], memory in
//!   front of a [`KvBackend`] (the embedded store or Redis) written behind; [`services`]: [`Clock`], [`ShadowReader`].
//!
//! # What is bounded, and how
//!
//! | what | bound | default | when exceeded |
//! |---|---|---|---|
//! | CPU time of a call | epoch deadline (1 ms ticks) | 10 ms (`deadline_ms`) | [`PluginFault::Timeout`] |
//! | CPU time of instantiation + `init` | epoch deadline | 100 ms | the fault of that kind |
//! | instructions (optional) | fuel, metered engine | off (`fuel`) | [`PluginFault::FuelExhausted`] |
//! | linear memory | `ResourceLimiter` + pool slot size | 16 MiB (`memory_limit_bytes`) | [`PluginFault::MemoryLimit`] |
//! | actions per call | count, then bytes of strings and payloads | 100, 1 MiB | [`PluginFault::OutputLimit`] |
//! | data handed to the host in one crossing | wasmtime hostcall fuel | output limit + 64 KiB + kv value | [`PluginFault::OutputLimit`] |
//! | stack | wasmtime's `max_wasm_stack`; a Rust guest's own stack lives in its linear memory | 512 KiB | [`PluginFault::Trap`] |
//! | kv keys / values / total | 256 B / `kv_max_value_bytes` / `kv_quota_bytes` | 64 KiB / 1 MiB | `kv-error` to the plugin |
//! | log | `log_lines_per_sec` per plugin (token bucket), line length | 100/s, 4 KiB | dropped and counted / truncated |
//! | custom metrics | 64 counter and 64 gauge names `[A-Za-z0-9_]{1,64}` | | refused and counted |
//! | live instances | pooling allocator slots | 1000 | [`PluginFault::Unavailable`] |
//!
//! Host calls never block: the clock, the shadow reader and the key-value store answer from
//! memory (the traits say so), so a call's deadline bounds its host calls too. Filesystem: none
//! unless the operator grants a directory ([`FsGrant`]), opened through cap-std so nothing
//! outside it is reachable. Network: `wasi:sockets` and `wasi:http` are not linked, and a
//! component importing them is refused at upload with the offending names.
//!
//! # Calls and instances
//!
//! [`PluginHost::invoke`] runs synchronously on the caller's thread: it takes an idle instance
//! of the active version (or instantiates one from the version's `InstancePre` and runs `init`),
//! calls `on-message`, and returns an [`Outcome`]: `Ok(actions)`, `Rejected` (business; the
//! instance is kept) or `Failed(fault)`. After any failure the instance is dropped: a trapped
//! instance cannot be entered again, and one that hit a limit or reported `failed` is not
//! trusted. A host panic during a call is caught and becomes a `Trap` fault. After
//! `max_consecutive_failures` failures in a row (default 5) the version is suspended: calls
//! fail at once with [`PluginFault::Suspended`], a `tracing::warn!` tells operators,
//! [`PluginHost::health`] shows it, and the suspension is persisted until an operator activates
//! the version (or another one) again.
//!
//! Synchronous on purpose: a reused instance answers the threshold benchmark in 1.5-2.7 µs
//! while a `tokio::task::spawn_blocking` hop alone costs 18-28 µs (docs/BENCHMARKS.md), and
//! async wasmtime calls add a fiber switch per call. Callers run plugins on threads that may
//! block for a deadline (the rules engine's workers, or one `spawn_blocking` per batch), never
//! on an async executor thread: WASI calls a plugin makes (stdout, files) run through
//! wasmtime-wasi's own blocking bridge, which must not be entered from inside a tokio worker.
//!
//! # Batches
//!
//! [`PluginHost::invoke_batch_ref`] hands a 0.3.0 component several messages (3 to 64) in one
//! `on-batch` call, which saves the fixed cost of entering the component (about 0.3 µs) for
//! all but one of them; components of older worlds get one call per message. The outcomes are
//! those single calls would give. The plugin returns the answers; a message that changes
//! something through a host call (log, key-value writes, metrics) is answered through the
//! `batch.answer` import before the next starts, with the messages before it (the SDK does
//! this). Host calls that change something set a flag the answers clear, so after a trap,
//! time-out or limit the host knows whether the unanswered messages changed anything: if
//! not, it runs each of them again by itself (the fault lands on the one that causes it); if
//! so, the fault is the first unanswered message's and the ones after it go again. Each
//! answer restarts the deadline and the fuel budget, which the messages between two answers
//! share; the host keeps a batch's expected time (and fuel) under a quarter of the budget
//! from the version's mean so far. Two differences from single calls, both after a failure:
//! an instance that answered `failed` (or exceeded the output limit) for one message keeps
//! answering the rest of its batch and is dropped after it, and a suspension takes effect
//! from the next call.
//!
//! **Plugins must not rely on memory between calls**: instances are reused for speed, but the
//! host drops them after any failure, when a version is swapped out, when more are idle than
//! it keeps (`HostConfig::max_idle_instances`), and whenever it likes. State that must
//! survive goes to the key-value store (`kv-set`), which is per plugin (shared by its
//! versions) and per thing.
//!
//! # Versions, swaps and persistence
//!
//! [`PluginHost::upload`] validates a component (a component, not a core module; imports
//! nothing forbidden; fits the world: `instantiate_pre` and the export types check), compiles
//! it once and records version `n` of the plugin; [`PluginHost::activate`] starts one instance
//! (so `init` must accept its settings) and swaps it in; [`PluginHost::rollback`] goes back to
//! the previously active version; [`PluginHost::delete`] removes an inactive one.
//!
//! The swap is atomic: a call reads the plugin's active version once (an `ArcSwap`), so a call
//! already running finishes on the old version, the next call uses the new one, and no call is
//! lost or run twice because of a swap.
//!
//! Under the data directory, `plugins/catalog.json` (through the [`CatalogStore`] seam, written
//! atomically) holds the versions, their configurations, the active one, the rollback history
//! and suspensions; `plugins/artifacts/<sha256>.wasm` holds each uploaded component;
//! `plugins/cache/<sha256>-<engine fingerprint>.cwasm` holds its precompiled machine code,
//! keyed by the wasmtime version and engine settings, so a restart maps code instead of
//! compiling it. A new [`PluginHost`] over the same directories restores everything.

#![deny(missing_docs)]

mod artifact;
mod bindings;
mod catalog;
mod config;
pub mod durable_kv;
mod engine;
mod error;
mod host;
pub mod kv;
mod log;
mod message;
mod metrics;
mod outcome;
mod replay;
mod sandbox;
pub mod services;
pub mod store;
mod version;

pub use artifact::ArtifactSource;
pub use catalog::{HealthStatus, LoadInfo, PluginHealth, PluginName, VersionInfo};
pub use config::{FsGrant, HostConfig, PluginConfig};
pub use durable_kv::{DurableKv, KvBackend, KvChange, KvEntry};
pub use error::{CatalogError, HostError, StoreError};
pub use host::{HostServices, PluginHandle, PluginHost};
pub use kv::{KvFailure, KvKey, KvScope, MemoryKv, PluginKv};
pub use log::{LogLevel, LogLine};
pub use message::{
    Action, Alert, Message, MessageRef, Publish, Severity, ShadowUpdate, StreamAppend, Webhook,
};
pub use metrics::CallCounts;
pub use outcome::{FaultKind, Outcome, PluginFault};
pub use replay::Replay;
pub use services::{Clock, NoShadows, ShadowReader, SystemClock};
pub use store::{CatalogSnapshot, CatalogStore, FileCatalogStore, PluginRecord, VersionRecord};
