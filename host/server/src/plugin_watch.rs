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
//! held still across two polls, so a half-copied component is never uploaded; it is then read
//! once, and again only after its size, inode, or modification or status-change time changes
//! (or at every poll while it was modified within the last few seconds). A file that
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
    /// The stamp of the files when their content was last read: while they keep it, they are
    /// not read (nor hashed) again.
    read_at: Option<Stamp>,
}

/// One version of a file, told without reading it: its size, inode, and the later of its
/// modification and status-change times. The status-change time is what catches content
/// replaced with the same size and a restored modification time (`cp -p`, `rsync -t`,
/// reproducible builds' fixed timestamps): no tool can set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    ino: u64,
    changed: Option<SystemTime>,
}

/// The component's stamp and the configuration's (when there is one).
type Stamp = (FileStamp, Option<FileStamp>);

/// Files modified this recently are read again at every poll even if their stamp holds: on a
/// filesystem with a coarse clock (one or two seconds), a second write of the same size
/// within the same tick would leave the stamp unchanged.
const RECENT: Duration = Duration::from_secs(3);

impl Seen {
    /// Records the files' `stamp` at this poll; whether their content is to be read now:
    /// they held still since the previous poll and were not read at this stamp already.
    fn due(&mut self, stamp: Stamp) -> bool {
        let settled = self.stamp == Some(stamp);
        self.stamp = Some(stamp);
        settled && self.read_at != Some(stamp)
    }

    /// Records that the content was read at `stamp` (not when a file's modification time is
    /// unknown or within [`RECENT`] of `now`: then it is read again at the next poll).
    fn read(&mut self, stamp: Stamp, now: SystemTime) {
        let (wasm, config) = stamp;
        let old_enough = |t: Option<SystemTime>| {
            t.and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= RECENT)
        };
        let settled_long_ago = old_enough(wasm.changed) && config.is_none_or(|c| old_enough(c.changed));
        self.read_at = settled_long_ago.then_some(stamp);
    }
}

fn stat(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let md = std::fs::metadata(path).ok()?;
    let status_changed = u64::try_from(md.ctime())
        .ok()
        .zip(u32::try_from(md.ctime_nsec()).ok())
        .map(|(s, ns)| SystemTime::UNIX_EPOCH + Duration::new(s, ns));
    Some(FileStamp {
        len: md.len(),
        ino: md.ino(),
        changed: md.modified().ok().max(status_changed),
    })
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
        if !slot.due(stamp) {
            continue;
        }
        let (wasm, config_text) = match (std::fs::read(&path), read_optional(&config_path)) {
            (Ok(w), Ok(c)) => (w, c),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(plugin = %name, error = %e, "cannot read a watched plugin file");
                continue;
            }
        };
        slot.read(stamp, SystemTime::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: u64, changed: Option<SystemTime>) -> FileStamp {
        FileStamp { len, ino: 7, changed }
    }

    fn stamp(size: u64, modified: SystemTime) -> Stamp {
        (file(size, Some(modified)), None)
    }

    #[test]
    fn files_are_read_once_settled_and_not_again_until_they_change() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = t0 + Duration::from_secs(60);
        let mut seen = Seen::default();
        let s = stamp(100, t0);
        assert!(!seen.due(s), "first sight: not settled yet");
        assert!(seen.due(s), "held still across two polls");
        seen.read(s, later);
        assert!(!seen.due(s), "read at this stamp already");
        assert!(!seen.due(s));
        let changed = stamp(120, later);
        assert!(!seen.due(changed), "changed: wait for it to settle");
        let much_later = later + Duration::from_secs(60);
        assert!(seen.due(changed));
        seen.read(changed, much_later);
        assert!(!seen.due(changed));
    }

    #[test]
    fn recently_modified_or_undated_files_are_read_at_every_poll() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut seen = Seen::default();
        let s = stamp(100, t0);
        let soon = t0 + Duration::from_secs(1);
        assert!(!seen.due(s));
        assert!(seen.due(s));
        seen.read(s, soon);
        assert!(seen.due(s), "modified within RECENT: read again");
        let undated: Stamp = (file(100, None), None);
        let mut seen = Seen::default();
        assert!(!seen.due(undated));
        assert!(seen.due(undated));
        seen.read(undated, soon);
        assert!(seen.due(undated), "no modification time: read again");
        // A recent configuration file keeps the pair due even when the component is old.
        let with_config: Stamp = (file(100, Some(t0)), Some(file(10, Some(soon))));
        let mut seen = Seen::default();
        let now = soon + Duration::from_secs(1);
        assert!(!seen.due(with_config));
        assert!(seen.due(with_config));
        seen.read(with_config, now);
        assert!(seen.due(with_config));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a test may sleep
    fn same_size_content_with_a_restored_modification_time_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wasm");
        let old = SystemTime::now() - Duration::from_secs(3600);
        let write = |content: &[u8]| {
            std::fs::write(&path, content).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(old).unwrap();
            stat(&path).unwrap()
        };
        let first = write(b"version one");
        // Different content, same size, the modification time put back (as `cp -p` does).
        std::thread::sleep(Duration::from_millis(20));
        let second = write(b"version two");
        assert_eq!(first.len, second.len);
        assert_ne!(first, second, "the status-change time tells them apart");
    }
}
