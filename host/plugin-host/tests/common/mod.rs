//! Test helpers: building the guest components of `tests/guests/` (once per test process),
//! and hosts over temporary directories.

#![allow(dead_code, clippy::unwrap_used)]

use shoal_plugin_host::{
    Clock, HostConfig, HostServices, MemoryKv, Message, Outcome, PluginConfig, PluginHost, ShadowReader,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// The guest components: `echo`, `hostile`, `sockets`, `threshold`.
pub fn guest(name: &str) -> Vec<u8> {
    let dir = GUESTS.get_or_init(|| {
        let dir = build_guests();
        precompile(&dir);
        dir
    });
    read_guest(dir, name)
}

/// A component of the plugins workspace, `plugins/dist/<name>.wasm` (built by
/// `plugins/build.sh`, which `tests/run-all.sh` runs first).
pub fn dist(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../plugins/dist/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} — build the plugins first with plugins/build.sh",
            path.display()
        )
    })
}

fn read_guest(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(format!("guest_{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

static GUESTS: OnceLock<PathBuf> = OnceLock::new();

/// Fills the shared compile cache once per process, before any test measures anything, so
/// tests running in parallel do not compile (CPU-heavy with a debug build of Cranelift) while
/// a timing test runs.
fn precompile(dir: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let (host, _) = host_with(host_config(tmp.path()));
    for name in ["echo", "hostile", "threshold"] {
        host.upload(name, &read_guest(dir, name), PluginConfig::default())
            .unwrap();
    }
}

/// Serializes the tests whose assertions involve wall-clock time or that keep both cores busy.
pub fn cpu_heavy() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn build_guests() -> PathBuf {
    // Where cargo runs the test, not where it was compiled: a test binary built from another
    // checkout (a shared CARGO_TARGET_DIR) must build this checkout's guests.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let guests = manifest_dir.join("tests/guests");
    let target_dir = std::env::var_os("SHOAL_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            home.join(".cache/shoal-guest-target")
        });
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(&guests)
        .output();
    let sysroot = match sysroot {
        Ok(out) if out.status.success() => PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        other => panic!("cannot run rustc to find the sysroot: {other:?}"),
    };
    assert!(
        sysroot.join("lib/rustlib/wasm32-wasip2").is_dir(),
        "the wasm32-wasip2 target is missing from {}: install it with \
         `rustup target add wasm32-wasip2 --toolchain 1.97.0` (tests/run-all.sh does)",
        sysroot.display()
    );
    let status = Command::new("cargo")
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2"])
        .current_dir(&guests)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cannot run cargo to build the guest components");
    assert!(
        status.success(),
        "building the guest components in {} failed",
        guests.display()
    );
    target_dir.join("wasm32-wasip2/release")
}

/// A clock tests move by hand.
pub struct FakeClock(pub AtomicU64);

impl FakeClock {
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Shadows from a fixed list.
pub struct FixedShadows(pub Vec<(String, String)>);

impl ShadowReader for FixedShadows {
    fn get_shadow(
        &self,
        thing: &str,
        shadow_name: Option<&str>,
        _timeout: std::time::Duration,
    ) -> Result<Option<String>, String> {
        if thing == "broken" {
            return Err("store unavailable".into());
        }
        assert!(shadow_name.is_none());
        Ok(self
            .0
            .iter()
            .find(|(t, _)| t == thing)
            .map(|(_, doc)| doc.clone()))
    }
}

/// A compile cache shared by the tests of this process and across runs: artifacts are keyed
/// by content hash and engine fingerprint, so sharing is safe and saves recompiling the same
/// guests in every test (slow with a debug build of Cranelift).
pub fn shared_cache() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/shoal-guest-target/plugin-host-test-cache")
}

/// A host over `dir` with a small pool and the shared compile cache.
pub fn host_config(dir: &Path) -> HostConfig {
    let mut config = HostConfig::new(dir);
    config.max_instances = 64;
    config.cache_dir = Some(shared_cache());
    config
}

pub struct TestHost {
    pub host: PluginHost,
    pub clock: Arc<FakeClock>,
    pub dir: tempfile::TempDir,
}

pub fn test_host() -> TestHost {
    let dir = tempfile::tempdir().unwrap();
    let host_cfg = host_config(dir.path());
    let (host, clock) = host_with(host_cfg);
    TestHost { host, clock, dir }
}

pub fn host_with(config: HostConfig) -> (PluginHost, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock(AtomicU64::new(1_700_000_000_000)));
    let services = HostServices {
        kv: Arc::new(MemoryKv::new(clock.clone())),
        shadows: Arc::new(FixedShadows(vec![(
            "truck-7".into(),
            r#"{"state":{"reported":{"t":4}}}"#.into(),
        )])),
        clock: clock.clone(),
        catalog_store: None,
    };
    (PluginHost::new(config, services).unwrap(), clock)
}

/// Uploads and activates; returns the version number.
pub fn deploy(host: &PluginHost, name: &str, guest_name: &str, config: PluginConfig) -> u32 {
    let info = host.upload(name, &guest(guest_name), config).unwrap();
    host.activate(name, info.version).unwrap();
    info.version
}

pub fn msg(topic: &str, payload: impl Into<bytes::Bytes>) -> Message {
    Message::new(topic, payload)
}

/// The single publish action's topic and payload (as text).
pub fn published(outcome: &Outcome) -> (String, String) {
    match outcome.actions() {
        Some([shoal_plugin_host::Action::Publish(p)]) => {
            (p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned())
        }
        _ => panic!("expected one publish action, got {outcome:?}"),
    }
}

/// Asserts the echo plugin `name` still answers.
pub fn assert_healthy_echo(host: &PluginHost, name: &str) {
    let out = host.invoke(name, &msg("still/here", "ok"));
    assert_eq!(published(&out).1, "ok", "{out:?}");
}
