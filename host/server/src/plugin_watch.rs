//! The watched plugin directory (`DATA/plugins/watch/` by default): dropping `NAME.wasm` there
//! uploads it as a new version of plugin `NAME` and activates it; an optional `NAME.json`
//! beside it is the version's configuration (the `PluginConfig` fields, as for the API).
//! Replacing either file deploys again; removing them changes nothing (roll back or delete
//! through the API). Content that already is a version of the plugin (after a restart, or a
//! file put back) is not activated again, so a rollback made through the API sticks.
//!
//! The directory is polled (once a second) rather than watched through inotify: polling sees
//! files written by any means (editors' rename-into-place, `cp`, network filesystems) and
//! costs one `readdir` a second. A file is deployed only once its size and modification time
//! held still across two polls, so a half-copied component is never uploaded. A file that
//! fails (not a component, forbidden imports, bad configuration, `init` refusing it) is logged
//! once per content and retried only when it changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use shoal_plugin_host::{PluginConfig, PluginHost};

/// How often the directory is read.
const POLL: Duration = Duration::from_secs(1);

/// What the watcher last saw of one plugin's files.
#[derive(Debug, Default)]
struct Seen {
    /// Size and modification time of the `.wasm` and `.json` at the previous poll.
    stamp: Option<Stamp>,
    /// Hash of the content last deployed or refused.
    handled: Option<[u8; 32]>,
}

type Stamp = ((u64, Option<SystemTime>), Option<(u64, Option<SystemTime>)>);

fn stat(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.len(), md.modified().ok()))
}

/// Runs the watcher on a blocking thread until `stop` turns true.
pub fn spawn(host: PluginHost, dir: PathBuf, mut stop: tokio::sync::watch::Receiver<bool>) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot create the watched plugin directory");
        return;
    }
    tracing::info!(dir = %dir.display(), "watching for plugin components (NAME.wasm, optional NAME.json)");
    tokio::spawn(async move {
        let mut seen: HashMap<String, Seen> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let (host2, dir2) = (host.clone(), dir.clone());
            let mut state = std::mem::take(&mut seen);
            let done = tokio::task::spawn_blocking(move || {
                poll(&host2, &dir2, &mut state);
                state
            })
            .await;
            match done {
                Ok(state) => seen = state,
                Err(e) => tracing::error!(error = %e, "the plugin directory watcher failed"),
            }
        }
    });
}

/// One pass over the directory.
fn poll(host: &PluginHost, dir: &Path, seen: &mut HashMap<String, Seen>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the watched plugin directory");
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        let config_path = path.with_extension("json");
        let Some(wasm_stat) = stat(&path) else { continue };
        let stamp: Stamp = (wasm_stat, stat(&config_path));
        let slot = seen.entry(name.clone()).or_default();
        let settled = slot.stamp == Some(stamp);
        slot.stamp = Some(stamp);
        if !settled {
            continue;
        }
        let (wasm, config_text) = match (std::fs::read(&path), read_optional(&config_path)) {
            (Ok(w), Ok(c)) => (w, c),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(plugin = %name, error = %e, "cannot read a watched plugin file");
                continue;
            }
        };
        let mut hasher = Sha256::new();
        hasher.update(&wasm);
        hasher.update(config_text.as_deref().unwrap_or_default());
        let hash: [u8; 32] = hasher.finalize().into();
        if slot.handled == Some(hash) {
            continue;
        }
        slot.handled = Some(hash);
        deploy(host, &name, &wasm, config_text.as_deref(), &path);
    }
}

fn read_optional(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn deploy(host: &PluginHost, name: &str, wasm: &[u8], config: Option<&[u8]>, path: &Path) {
    let config: PluginConfig = match config.map(serde_json::from_slice).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            tracing::error!(plugin = name, error = %e, "the watched plugin's {name}.json is not a valid configuration");
            return;
        }
    };
    // Already uploaded (a restart, or a file put back): leave whatever the operator activated
    // since then alone.
    let sha = hex::encode(Sha256::digest(wasm));
    if host
        .versions(name)
        .is_ok_and(|vs| vs.iter().any(|v| v.sha256 == sha && v.config == config))
    {
        tracing::debug!(
            plugin = name,
            "the watched plugin file is already a version; not redeploying"
        );
        return;
    }
    let result = host
        .upload(name, wasm, config)
        .and_then(|info| host.activate(name, info.version));
    match result {
        Ok(info) => tracing::info!(
            plugin = name,
            version = info.version,
            file = %path.display(),
            "deployed a plugin from the watched directory"
        ),
        Err(e) => tracing::error!(
            plugin = name,
            file = %path.display(),
            error = %e,
            "cannot deploy a plugin from the watched directory"
        ),
    }
}
