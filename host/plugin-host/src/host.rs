//! [`PluginHost`]: the catalog operations, the call entry points, logs, health and metrics.

use crate::artifact::{Artifacts, check_header, check_imports, sha256};
use crate::catalog::{
    EntryState, HealthStatus, MAX_HISTORY, PluginEntry, PluginHealth, PluginName, VersionInfo, VersionSlot,
};
use crate::config::{HostConfig, PluginConfig};
use crate::engine::Runtimes;
use crate::error::{CatalogError, HostError, StoreError};
use crate::kv::{MemoryKv, PluginKv};
use crate::log::{LogLine, PluginLog};
use crate::message::{Message, MessageRef};
use crate::metrics::{self, CustomMetrics, PluginSample, VersionSample};
use crate::outcome::{Outcome, PluginFault};
use crate::replay::{OverlayKv, Replay};
use crate::sandbox::{PluginShared, Services, VersionEnv};
use crate::services::{Clock, NoShadows, ShadowReader, SystemClock};
use crate::store::{CatalogSnapshot, CatalogStore, FileCatalogStore, PluginRecord, VersionRecord};
use crate::version::{CallReport, LoadedVersion};
use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The services plugins reach through host calls, and where the catalog persists.
#[derive(Clone)]
pub struct HostServices {
    /// Key-value state (`kv-get/set/delete`).
    pub kv: Arc<dyn PluginKv>,
    /// Shadows (`get-shadow`).
    pub shadows: Arc<dyn ShadowReader>,
    /// Time (`now-ms`, key-value expiry, log timestamps).
    pub clock: Arc<dyn Clock>,
    /// The catalog's persistence; `None` means `DATA/plugins/catalog.json`.
    pub catalog_store: Option<Arc<dyn CatalogStore>>,
}

impl Default for HostServices {
    /// In-memory key-value state, no shadows, the system clock, the catalog in the data dir.
    fn default() -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        HostServices {
            kv: Arc::new(MemoryKv::new(clock.clone())),
            shadows: Arc::new(NoShadows),
            clock,
            catalog_store: None,
        }
    }
}

struct Inner {
    config: HostConfig,
    services: Services,
    store: Arc<dyn CatalogStore>,
    artifacts: Artifacts,
    runtimes: Runtimes,
    /// The catalog by name. Read for every call, changed by uploads and deletes: copied on
    /// write (under `plugins_write`) so a call's lookup takes no lock and no shared count.
    plugins: ArcSwap<BTreeMap<String, Arc<PluginEntry>>>,
    plugins_write: Mutex<()>,
    /// Serializes catalog saves so the last write holds the latest state.
    save_lock: Mutex<()>,
}

/// The sandboxed plugin runtime and its catalog. Cheap to clone (one shared inner).
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("plugins", &self.plugins())
            .finish_non_exhaustive()
    }
}

/// A resolved plugin: calls through it skip the name lookup. Stays valid across version swaps
/// (it names the plugin, not a version).
#[derive(Clone)]
pub struct PluginHandle {
    inner: Arc<Inner>,
    entry: Arc<PluginEntry>,
}

impl PluginHandle {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        self.entry.name.as_str()
    }

    /// Calls the active version (see [`PluginHost::invoke`]).
    pub fn invoke(&self, msg: &Message) -> Outcome {
        msg.with_ref(|msg| self.inner.invoke_entry(&self.entry, msg))
    }
}

impl PluginHost {
    /// Sets up the engine and restores the persisted catalog (loading each active version from
    /// the precompiled cache, or compiling it when the cache lacks it). A version that cannot
    /// be loaded leaves its plugin without an active version and says why in
    /// [`PluginHost::health`]; it does not stop the host.
    pub fn new(config: HostConfig, services: HostServices) -> Result<Self, HostError> {
        let plugins_dir = config.plugins_dir();
        let artifacts = Artifacts::open(plugins_dir.join("artifacts"), config.cache_dir())?;
        let store = services
            .catalog_store
            .clone()
            .unwrap_or_else(|| Arc::new(FileCatalogStore::new(plugins_dir.join("catalog.json"))));
        let runtimes = Runtimes::new(&config)?;
        let inner = Inner {
            services: Services {
                kv: services.kv,
                shadows: services.shadows,
                clock: services.clock,
            },
            store,
            artifacts,
            runtimes,
            plugins: ArcSwap::from_pointee(BTreeMap::new()),
            plugins_write: Mutex::new(()),
            save_lock: Mutex::new(()),
            config,
        };
        let snapshot = inner.store.load()?;
        inner.restore(snapshot);
        Ok(PluginHost {
            inner: Arc::new(inner),
        })
    }

    /// Whether the epoch ticker sleeps (or is about to): no guest code has run for a while
    /// (100 ticks), so an idle host does not wake every tick. The next call wakes it.
    pub fn epoch_ticker_parked(&self) -> bool {
        self.inner.runtimes.ticker_parked()
    }

    /// Validates, compiles (or loads from the cache) and records a new version of `name`
    /// (created on first upload). The version is not active until [`PluginHost::activate`].
    /// Uploading the same bytes with the same configuration again returns the existing
    /// version. CPU-heavy on a cache miss (compilation): call it off the async executor.
    pub fn upload(&self, name: &str, wasm: &[u8], config: PluginConfig) -> Result<VersionInfo, CatalogError> {
        self.inner.upload(name, wasm, config)
    }

    /// Makes `version` the one calls go to: loads it if needed, starts one instance (so a
    /// configuration that `init` refuses is caught here, not on the first message), clears a
    /// suspension, then swaps it in atomically. The previously active version goes on the
    /// rollback history.
    pub fn activate(&self, name: &str, version: u32) -> Result<VersionInfo, CatalogError> {
        let entry = self.inner.entry(name)?;
        let info = self.inner.switch(&entry, Some(version), true)?;
        self.inner.save()?;
        Ok(info)
    }

    /// Re-activates the previously active version (popping the history: a second rollback
    /// goes one step further back).
    pub fn rollback(&self, name: &str) -> Result<VersionInfo, CatalogError> {
        let entry = self.inner.entry(name)?;
        let info = self.inner.switch(&entry, None, false)?;
        self.inner.save()?;
        Ok(info)
    }

    /// Deletes a version that is not active (its artifact files too, when no other version
    /// uses the same bytes). Deleting a plugin's last version removes the plugin.
    pub fn delete(&self, name: &str, version: u32) -> Result<(), CatalogError> {
        self.inner.delete(name, version)
    }

    /// The plugin's versions, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<VersionInfo>, CatalogError> {
        let entry = self.inner.entry(name)?;
        let st = entry.state.lock();
        Ok(st
            .versions
            .values()
            .map(|slot| slot.info(entry.name.as_str(), st.active))
            .collect())
    }

    /// Names of all plugins.
    pub fn plugins(&self) -> Vec<String> {
        self.inner.plugins.load().keys().cloned().collect()
    }

    /// The plugin's health.
    pub fn health(&self, name: &str) -> Result<PluginHealth, CatalogError> {
        self.inner.health(name)
    }

    /// The plugin's last `limit` log lines (its `log` calls and stdout/stderr), oldest first.
    pub fn logs(&self, name: &str, limit: usize) -> Result<Vec<LogLine>, CatalogError> {
        Ok(self.inner.entry(name)?.shared.log.tail(limit))
    }

    /// A handle for repeated calls to one plugin.
    pub fn handle(&self, name: &str) -> Option<PluginHandle> {
        let entry = self.inner.plugins.load().get(name).cloned()?;
        Some(PluginHandle {
            inner: self.inner.clone(),
            entry,
        })
    }

    /// Calls the active version of `name` with `msg`, synchronously on this thread, bounded by
    /// the version's deadline, memory, output and fuel limits.
    ///
    /// Run it on a thread that may block for the deadline (a rules worker thread or
    /// `tokio::task::spawn_blocking`), not on an async executor thread: besides the CPU time,
    /// WASI calls a plugin makes (stdout, files) block on this thread.
    pub fn invoke(&self, name: &str, msg: &Message) -> Outcome {
        msg.with_ref(|msg| self.invoke_ref(name, msg))
    }

    /// [`PluginHost::invoke`] with a borrowed message: nothing is copied before the guest's
    /// memory (what the rules engine calls on every message).
    pub fn invoke_ref(&self, name: &str, msg: &MessageRef<'_>) -> Outcome {
        match self.inner.plugins.load().get(name) {
            Some(entry) => self.inner.invoke_entry(entry, msg),
            None => Outcome::Failed(PluginFault::Unavailable(format!("no plugin named {name:?}"))),
        }
    }

    /// [`PluginHost::invoke`] for each of `msgs`, in order: one outcome per message, made in
    /// as few calls into the plugin as it allows (see [`PluginHost::invoke_batch_ref`]).
    pub fn invoke_batch(&self, name: &str, msgs: &[Message]) -> Vec<Outcome> {
        let properties: Vec<Vec<(&str, &str)>> = msgs.iter().map(Message::properties).collect();
        let refs: Vec<MessageRef<'_>> = msgs
            .iter()
            .zip(&properties)
            .map(|(m, properties)| m.borrowed(properties))
            .collect();
        let mut out = Vec::with_capacity(msgs.len());
        self.invoke_batch_ref(name, &refs, &mut out);
        out
    }

    /// [`PluginHost::invoke_ref`] for each of `msgs`, in order, appending one outcome per
    /// message to `out`: the same outcomes as one call each, but a plugin built against
    /// interface 0.3.0 gets them in one `on-batch` call (a few if one of them faults), which
    /// saves the fixed cost of entering the component per message. All of them run on the
    /// version active when the batch started.
    pub fn invoke_batch_ref(&self, name: &str, msgs: &[MessageRef<'_>], out: &mut Vec<Outcome>) {
        match self.inner.plugins.load().get(name) {
            Some(entry) => self.inner.invoke_entry_batch(entry, msgs, out),
            None => out.extend(
                msgs.iter()
                    .map(|_| Outcome::Failed(PluginFault::Unavailable(format!("no plugin named {name:?}")))),
            ),
        }
    }

    /// Calls a given version, active or not, for real (the API's `invoke?version=`; a dry run
    /// is [`PluginHost::replay`]). A suspended version is refused; failures count against its
    /// health as usual.
    pub fn invoke_version(&self, name: &str, version: u32, msg: &Message) -> Result<Outcome, CatalogError> {
        let entry = self.inner.entry(name)?;
        let loaded = {
            let mut st = entry.state.lock();
            let slot = st
                .versions
                .get_mut(&version)
                .ok_or_else(|| CatalogError::UnknownVersion {
                    plugin: name.to_string(),
                    version,
                })?;
            self.inner.load_slot(&entry, slot)?
        };
        Ok(msg.with_ref(|msg| self.inner.reported(&entry, &loaded, loaded.call(msg))))
    }

    /// Dry-runs version `version` of `name` over `messages`, in order, on a private instance:
    /// key-value writes go to a scratch overlay (reads see the real state first), log lines
    /// are returned instead of logged, nothing counts against the version's health or
    /// counters, and the actions are only reported. For "replay before activation": run the
    /// candidate and the active version over the same recording and compare. Blocks for up to
    /// one deadline per message; run it off the async executor.
    pub fn replay(&self, name: &str, version: u32, messages: &[Message]) -> Result<Replay, CatalogError> {
        self.inner.replay(name, version, messages)
    }

    /// Appends every `shoal_plugin_*` metric family (Prometheus text format).
    pub fn render_prometheus(&self, out: &mut String) {
        self.inner.render(out);
    }
}

/// Why a plugin without a loaded active version cannot be called.
fn no_active_version(entry: &PluginEntry) -> PluginFault {
    let why = entry.state.lock().load_error.clone();
    PluginFault::Unavailable(match why {
        Some(error) => format!("plugin {} could not load its active version: {error}", entry.name),
        None => format!("plugin {} has no active version", entry.name),
    })
}

fn now_ms(services: &Services) -> u64 {
    services.clock.now_ms()
}

impl Inner {
    fn new_entry(&self, name: PluginName) -> Arc<PluginEntry> {
        let shared = Arc::new(PluginShared {
            name: name.as_str().to_string(),
            log: PluginLog::new(self.config.log_lines_kept),
            custom: CustomMetrics::default(),
        });
        Arc::new(PluginEntry {
            name,
            shared,
            active: ArcSwapOption::empty(),
            state: Mutex::new(EntryState {
                versions: BTreeMap::new(),
                active: None,
                history: Vec::new(),
                next_version: 1,
                load_error: None,
            }),
        })
    }

    fn entry(&self, name: &str) -> Result<Arc<PluginEntry>, CatalogError> {
        self.plugins
            .load()
            .get(name)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownPlugin(name.to_string()))
    }

    /// Rebuilds the catalog from a snapshot at start.
    fn restore(&self, snapshot: CatalogSnapshot) {
        let _write = self.plugins_write.lock();
        let mut plugins = BTreeMap::clone(&self.plugins.load());
        for record in snapshot.plugins {
            let name = match PluginName::parse(&record.name) {
                Ok(name) => name,
                Err(e) => {
                    tracing::error!(error = %e, "skipping a plugin of the saved catalog");
                    continue;
                }
            };
            let entry = self.new_entry(name);
            {
                let mut st = entry.state.lock();
                st.active = record.active;
                st.history = record.history;
                st.next_version = record.next_version;
                for v in record.versions {
                    st.versions.insert(
                        v.number,
                        VersionSlot {
                            record: v,
                            loaded: None,
                        },
                    );
                }
                if let Some(active) = st.active {
                    let loaded = match st.versions.get_mut(&active) {
                        Some(slot) => self.load_slot(&entry, slot),
                        None => Err(CatalogError::UnknownVersion {
                            plugin: record.name.clone(),
                            version: active,
                        }),
                    };
                    match loaded {
                        Ok(loaded) => entry.active.store(Some(loaded)),
                        Err(e) => {
                            tracing::error!(plugin = %record.name, version = active, error = %e,
                                "cannot load the active plugin version; the plugin stays unavailable");
                            st.load_error = Some(format!("version {active}: {e}"));
                        }
                    }
                }
            }
            plugins.insert(record.name, entry);
        }
        self.plugins.store(Arc::new(plugins));
    }

    /// The slot's loaded version, loading it from the artifacts (cache or compile) if needed.
    fn load_slot(
        &self,
        entry: &Arc<PluginEntry>,
        slot: &mut VersionSlot,
    ) -> Result<Arc<LoadedVersion>, CatalogError> {
        if let Some(loaded) = &slot.loaded {
            return Ok(loaded.clone());
        }
        let record = &slot.record;
        let rt = self.runtimes.get(record.config.fuel.is_some())?;
        let (component, source, took) = self.artifacts.load(&rt, &record.sha256, None)?;
        check_imports(&component, &rt)?;
        let env = Arc::new(VersionEnv {
            plugin: entry.shared.clone(),
            version: record.number,
            config: record.config.clone(),
            services: self.services.clone(),
        });
        let loaded = Arc::new(LoadedVersion::new(
            env,
            &self.runtimes,
            rt,
            &component,
            (source, took),
            self.config.max_idle_instances,
        )?);
        if let Some(reason) = &record.suspended {
            loaded.restore_suspension(reason.clone());
        }
        slot.loaded = Some(loaded.clone());
        Ok(loaded)
    }

    fn upload(&self, name: &str, wasm: &[u8], config: PluginConfig) -> Result<VersionInfo, CatalogError> {
        let name = PluginName::parse(name)?;
        config.validate(&self.config)?;
        check_header(wasm)?;
        let sha = sha256(wasm);
        let entry = {
            let _write = self.plugins_write.lock();
            let current = self.plugins.load();
            match current.get(name.as_str()) {
                Some(entry) => entry.clone(),
                None => {
                    let entry = self.new_entry(name.clone());
                    let mut plugins = BTreeMap::clone(&current);
                    plugins.insert(name.as_str().to_string(), entry.clone());
                    self.plugins.store(Arc::new(plugins));
                    entry
                }
            }
        };
        let result = self.upload_version(&entry, &sha, wasm, config);
        if result.is_err() {
            self.remove_if_empty(&entry);
        }
        let (info, created) = result?;
        if created {
            self.save()?;
            tracing::info!(plugin = %name, version = info.version, sha256 = %sha, "plugin version uploaded");
        }
        Ok(info)
    }

    fn upload_version(
        &self,
        entry: &Arc<PluginEntry>,
        sha: &str,
        wasm: &[u8],
        config: PluginConfig,
    ) -> Result<(VersionInfo, bool), CatalogError> {
        {
            let st = entry.state.lock();
            let same = st
                .versions
                .values()
                .find(|s| s.record.sha256 == sha && s.record.config == config);
            if let Some(slot) = same {
                return Ok((slot.info(entry.name.as_str(), st.active), false));
            }
        }
        // Compile outside the plugin's lock: it takes tens of milliseconds.
        let rt = self.runtimes.get(config.fuel.is_some())?;
        let (component, source, took) = self.artifacts.load(&rt, sha, Some(wasm))?;
        check_imports(&component, &rt)?;
        self.artifacts.store_wasm(sha, wasm)?;
        let mut st = entry.state.lock();
        let number = st.next_version;
        let env = Arc::new(VersionEnv {
            plugin: entry.shared.clone(),
            version: number,
            config: config.clone(),
            services: self.services.clone(),
        });
        let loaded = LoadedVersion::new(
            env,
            &self.runtimes,
            rt,
            &component,
            (source, took),
            self.config.max_idle_instances,
        )?;
        st.next_version = number + 1;
        let record = VersionRecord {
            number,
            sha256: sha.to_string(),
            size_bytes: wasm.len() as u64,
            uploaded_at_ms: now_ms(&self.services),
            config,
            suspended: None,
        };
        let slot = VersionSlot {
            record,
            loaded: Some(Arc::new(loaded)),
        };
        let info = slot.info(entry.name.as_str(), st.active);
        st.versions.insert(number, slot);
        Ok((info, true))
    }

    fn replay(&self, name: &str, version: u32, messages: &[Message]) -> Result<Replay, CatalogError> {
        let entry = self.entry(name)?;
        let record = {
            let st = entry.state.lock();
            st.versions
                .get(&version)
                .map(|slot| slot.record.clone())
                .ok_or_else(|| CatalogError::UnknownVersion {
                    plugin: name.to_string(),
                    version,
                })?
        };
        let rt = self.runtimes.get(record.config.fuel.is_some())?;
        let (component, source, took) = self.artifacts.load(&rt, &record.sha256, None)?;
        let shared = Arc::new(PluginShared {
            name: entry.shared.name.clone(),
            log: PluginLog::private(self.config.log_lines_kept),
            custom: CustomMetrics::default(),
        });
        let mut config = record.config.clone();
        // Report every fault as it happens rather than "suspended" after a few.
        config.max_consecutive_failures = u32::MAX;
        let env = Arc::new(VersionEnv {
            plugin: shared.clone(),
            version,
            config,
            services: Services {
                kv: Arc::new(OverlayKv::new(self.services.kv.clone())),
                ..self.services.clone()
            },
        });
        let loaded = LoadedVersion::new(env, &self.runtimes, rt, &component, (source, took), 1)?;
        let outcomes = messages
            .iter()
            .map(|m| m.with_ref(|m| loaded.call(m).outcome))
            .collect();
        loaded.retire();
        Ok(Replay {
            version,
            outcomes,
            logs: shared.log.tail(usize::MAX),
        })
    }

    fn remove_if_empty(&self, entry: &Arc<PluginEntry>) {
        let _write = self.plugins_write.lock();
        if entry.state.lock().versions.is_empty() {
            let mut plugins = BTreeMap::clone(&self.plugins.load());
            plugins.remove(entry.name.as_str());
            self.plugins.store(Arc::new(plugins));
        }
    }

    /// Activates `target` (or, with `None`, pops the history: rollback).
    fn switch(
        &self,
        entry: &Arc<PluginEntry>,
        target: Option<u32>,
        push_history: bool,
    ) -> Result<VersionInfo, CatalogError> {
        let name = entry.name.as_str();
        let mut st = entry.state.lock();
        let (number, popped) = match target {
            Some(v) => (v, false),
            None => loop {
                let Some(previous) = st.history.pop() else {
                    return Err(CatalogError::NoPreviousVersion(name.to_string()));
                };
                if st.versions.contains_key(&previous) && st.active != Some(previous) {
                    break (previous, true);
                }
            },
        };
        let restore_history = |st: &mut EntryState| {
            if popped {
                st.history.push(number);
            }
        };
        let Some(slot) = st.versions.get_mut(&number) else {
            return Err(CatalogError::UnknownVersion {
                plugin: name.to_string(),
                version: number,
            });
        };
        let loaded = match self.load_slot(entry, slot) {
            Ok(loaded) => loaded,
            Err(e) => {
                restore_history(&mut st);
                return Err(e);
            }
        };
        if let Err(fault) = loaded.warm() {
            restore_history(&mut st);
            return Err(CatalogError::ActivationFailed {
                version: number,
                fault,
            });
        }
        loaded.resume();
        if let Some(slot) = st.versions.get_mut(&number) {
            slot.record.suspended = None;
        }
        let previous = st.active.replace(number);
        if push_history && let Some(p) = previous.filter(|&p| p != number) {
            st.history.push(p);
            if st.history.len() > MAX_HISTORY {
                st.history.remove(0);
            }
        }
        st.load_error = None;
        let old = entry.active.swap(Some(loaded));
        if let Some(old) = old.filter(|o| o.number() != number) {
            old.retire();
        }
        tracing::info!(plugin = name, version = number, previous = ?previous, "plugin version activated");
        let slot = st
            .versions
            .get(&number)
            .ok_or_else(|| CatalogError::UnknownVersion {
                plugin: name.to_string(),
                version: number,
            })?;
        Ok(slot.info(name, st.active))
    }

    fn delete(&self, name: &str, version: u32) -> Result<(), CatalogError> {
        let entry = self.entry(name)?;
        let sha = {
            let mut st = entry.state.lock();
            if st.active == Some(version) {
                return Err(CatalogError::VersionActive {
                    plugin: name.to_string(),
                    version,
                });
            }
            let slot = st
                .versions
                .remove(&version)
                .ok_or_else(|| CatalogError::UnknownVersion {
                    plugin: name.to_string(),
                    version,
                })?;
            if let Some(loaded) = &slot.loaded {
                loaded.retire();
            }
            st.history.retain(|&v| v != version);
            slot.record.sha256
        };
        self.remove_if_empty(&entry);
        self.save()?;
        let still_used = self
            .plugins
            .load()
            .values()
            .any(|e| e.state.lock().versions.values().any(|s| s.record.sha256 == sha));
        if !still_used {
            self.artifacts.remove(&sha);
        }
        tracing::info!(plugin = name, version, "plugin version deleted");
        Ok(())
    }

    fn invoke_entry(&self, entry: &PluginEntry, msg: &MessageRef<'_>) -> Outcome {
        let active = entry.active.load();
        match active.as_ref() {
            Some(version) => self.reported(entry, version, version.call(msg)),
            None => Outcome::Failed(no_active_version(entry)),
        }
    }

    fn invoke_entry_batch(&self, entry: &PluginEntry, msgs: &[MessageRef<'_>], out: &mut Vec<Outcome>) {
        let active = entry.active.load();
        match active.as_ref() {
            Some(version) => {
                version.call_batch(msgs, |report| out.push(self.reported(entry, version, report)))
            }
            None => {
                let fault = no_active_version(entry);
                out.extend(msgs.iter().map(|_| Outcome::Failed(fault.clone())));
            }
        }
    }

    /// A call's outcome, once a suspension it caused is persisted.
    fn reported(&self, entry: &PluginEntry, version: &LoadedVersion, report: CallReport) -> Outcome {
        if let Some(reason) = report.suspended_now {
            if let Some(slot) = entry.state.lock().versions.get_mut(&version.number()) {
                slot.record.suspended = Some(reason);
            }
            if let Err(e) = self.save() {
                tracing::error!(plugin = %entry.name, error = %e, "cannot persist a plugin suspension");
            }
        }
        report.outcome
    }

    fn health(&self, name: &str) -> Result<PluginHealth, CatalogError> {
        let entry = self.entry(name)?;
        let st = entry.state.lock();
        let active = entry.active.load_full();
        let status = match (&active, &st.load_error) {
            (_, Some(error)) => HealthStatus::LoadFailed { error: error.clone() },
            (None, None) => HealthStatus::NoActiveVersion,
            (Some(v), None) => match v.suspension() {
                Some(reason) => HealthStatus::Suspended { reason },
                None if v.failures_in_row() > 0 => HealthStatus::Failing,
                None => HealthStatus::Healthy,
            },
        };
        Ok(PluginHealth {
            plugin: name.to_string(),
            active_version: st.active,
            status,
            consecutive_failures: active.as_ref().map_or(0, |v| v.failures_in_row()),
            last_fault: active.as_ref().and_then(|v| v.last_fault()),
            calls: active.as_ref().map(|v| v.metrics.counts()).unwrap_or_default(),
            log_lines_dropped: entry.shared.log.dropped(),
            kv_usage_bytes: self.services.kv.usage_bytes(name).ok(),
        })
    }

    /// Writes the whole catalog through the [`CatalogStore`].
    fn save(&self) -> Result<(), StoreError> {
        let _serial = self.save_lock.lock();
        let entries: Vec<Arc<PluginEntry>> = self.plugins.load().values().cloned().collect();
        let plugins = entries
            .iter()
            .map(|entry| {
                let st = entry.state.lock();
                PluginRecord {
                    name: entry.name.as_str().to_string(),
                    active: st.active,
                    history: st.history.clone(),
                    next_version: st.next_version,
                    versions: st.versions.values().map(|s| s.record.clone()).collect(),
                }
            })
            .collect();
        self.store.save(&CatalogSnapshot { format: 1, plugins })
    }

    fn render(&self, out: &mut String) {
        let entries: Vec<Arc<PluginEntry>> = self.plugins.load().values().cloned().collect();
        /// A plugin, its active version number and its loaded versions.
        type Loaded = (Arc<PluginEntry>, Option<u32>, Vec<Arc<LoadedVersion>>);
        let loaded: Vec<Loaded> = entries
            .into_iter()
            .map(|entry| {
                let (active, versions) = {
                    let st = entry.state.lock();
                    (
                        st.active,
                        st.versions.values().filter_map(|s| s.loaded.clone()).collect(),
                    )
                };
                (entry, active, versions)
            })
            .collect();
        let plugins: Vec<PluginSample<'_>> = loaded
            .iter()
            .map(|(entry, active, _)| PluginSample {
                plugin: entry.name.as_str(),
                active: *active,
                log_dropped: entry.shared.log.dropped(),
                custom: &entry.shared.custom,
            })
            .collect();
        let versions: Vec<VersionSample<'_>> = loaded
            .iter()
            .flat_map(|(entry, _, versions)| {
                versions.iter().map(move |v| VersionSample {
                    plugin: entry.name.as_str(),
                    version: v.number(),
                    metrics: &v.metrics,
                    suspended: v.suspension().is_some(),
                    metered: v.metered(),
                })
            })
            .collect();
        metrics::render(out, &plugins, &versions);
    }
}
