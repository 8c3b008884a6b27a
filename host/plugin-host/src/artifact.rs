//! Uploaded components: validation, content-addressed storage, and the precompiled cache.
//!
//! `DATA/plugins/artifacts/<sha256>.wasm` keeps every uploaded component as sent (the source of
//! truth). The cache directory keeps what wasmtime compiled from it,
//! `<sha256>-<engine fingerprint>.cwasm`, so a restart or re-activation maps machine code in
//! about a millisecond instead of compiling for tens of milliseconds. An artifact compiled by
//! another wasmtime version or engine configuration has another fingerprint and is simply not
//! found (and wasmtime would refuse it anyway).

use crate::engine::Runtime;
use crate::error::CatalogError;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmtime::component::Component;

/// Import prefixes a plugin is never granted: it must act through actions and host calls.
const FORBIDDEN_IMPORTS: [&str; 2] = ["wasi:sockets/", "wasi:http/"];

/// Where a loaded component's machine code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactSource {
    /// Compiled from the `.wasm` now (and written to the cache).
    Compiled,
    /// Mapped from the precompiled cache.
    Cache,
}

/// Hex sha256 of the bytes.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Refuses anything that is not a component binary, with a message that says what it is.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), CatalogError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(CatalogError::NotWasm);
    }
    // Bytes 4..8: version and layer. Core modules: version 1, layer 0. Components: layer 1.
    match (
        u16::from_le_bytes([bytes[4], bytes[5]]),
        u16::from_le_bytes([bytes[6], bytes[7]]),
    ) {
        (_, 1) => Ok(()),
        (1, 0) => Err(CatalogError::CoreModule),
        (version, layer) => Err(CatalogError::Compile(format!(
            "unknown WebAssembly binary version {version} (layer {layer})"
        ))),
    }
}

/// Refuses components importing `wasi:sockets/*` or `wasi:http/*`, naming every such import.
pub(crate) fn check_imports(component: &Component, rt: &Runtime) -> Result<(), CatalogError> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .imports(&rt.engine)
        .filter(|(name, _)| FORBIDDEN_IMPORTS.iter().any(|p| name.starts_with(p)))
        .map(|(name, _)| name.to_string())
        .collect();
    if names.is_empty() {
        Ok(())
    } else {
        Err(CatalogError::ForbiddenImports { names })
    }
}

/// The artifact directories.
pub(crate) struct Artifacts {
    wasm_dir: PathBuf,
    cache_dir: PathBuf,
}

fn io_err(path: &Path, e: std::io::Error) -> CatalogError {
    CatalogError::Store(crate::error::StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over the target, fsync the directory. Readers see the old file or the new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    let result = (|| {
        tmp.1.write_all(bytes)?;
        tmp.1.sync_all()?;
        fs::rename(&tmp.0, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp.0);
    }
    result
}

/// A new file `.tmp-<pid>-<n>` in `dir`, created exclusively.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".tmp-{}-{n}", std::process::id()));
        match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Artifacts {
    pub(crate) fn open(wasm_dir: PathBuf, cache_dir: PathBuf) -> Result<Self, crate::error::HostError> {
        for dir in [&wasm_dir, &cache_dir] {
            fs::create_dir_all(dir).map_err(|e| crate::error::HostError::Io {
                path: dir.clone(),
                source: e,
            })?;
        }
        Ok(Artifacts { wasm_dir, cache_dir })
    }

    fn wasm_path(&self, sha: &str) -> PathBuf {
        self.wasm_dir.join(format!("{sha}.wasm"))
    }

    fn cache_path(&self, sha: &str, rt: &Runtime) -> PathBuf {
        self.cache_dir.join(format!("{sha}-{}.cwasm", rt.fingerprint))
    }

    /// Keeps the uploaded bytes (once per content hash).
    pub(crate) fn store_wasm(&self, sha: &str, bytes: &[u8]) -> Result<(), CatalogError> {
        let path = self.wasm_path(sha);
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, bytes).map_err(|e| io_err(&path, e))
    }

    /// The stored bytes, checked against their hash.
    pub(crate) fn read_wasm(&self, sha: &str) -> Result<Vec<u8>, CatalogError> {
        let path = self.wasm_path(sha);
        let bytes = fs::read(&path).map_err(|e| CatalogError::Artifact {
            sha256: sha.to_string(),
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        if sha256(&bytes) != sha {
            return Err(CatalogError::Artifact {
                sha256: sha.to_string(),
                message: format!("{} does not match its hash", path.display()),
            });
        }
        Ok(bytes)
    }

    /// Removes the stored bytes and every cached compilation of them.
    pub(crate) fn remove(&self, sha: &str) {
        let _ = fs::remove_file(self.wasm_path(sha));
        if let Ok(entries) = fs::read_dir(&self.cache_dir) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{sha}-"))
                {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }

    /// The compiled component for `sha`: from the cache when present, else compiled from
    /// `bytes` (or the stored `.wasm`) and written to the cache. Returns where it came from
    /// and how long it took.
    pub(crate) fn load(
        &self,
        rt: &Runtime,
        sha: &str,
        bytes: Option<&[u8]>,
    ) -> Result<(Component, ArtifactSource, Duration), CatalogError> {
        let started = Instant::now();
        let cached = self.cache_path(sha, rt);
        if cached.exists() {
            match deserialize(rt, &cached) {
                Ok(component) => {
                    let took = started.elapsed();
                    tracing::info!(sha256 = sha, path = %cached.display(), ms = took.as_secs_f64() * 1e3,
                        "plugin artifact loaded from the precompiled cache");
                    return Ok((component, ArtifactSource::Cache, took));
                }
                Err(e) => {
                    tracing::warn!(path = %cached.display(), error = %e, "discarding unusable precompiled artifact");
                    let _ = fs::remove_file(&cached);
                }
            }
        }
        let owned;
        let bytes = match bytes {
            Some(b) => b,
            None => {
                owned = self.read_wasm(sha)?;
                &owned
            }
        };
        check_header(bytes)?;
        let component =
            Component::new(&rt.engine, bytes).map_err(|e| CatalogError::Compile(format!("{e:#}")))?;
        match component.serialize() {
            Ok(code) => {
                if let Err(e) = write_atomic(&cached, &code) {
                    tracing::warn!(path = %cached.display(), error = %e, "cannot cache a precompiled artifact");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialize a compiled plugin"),
        }
        let took = started.elapsed();
        tracing::info!(
            sha256 = sha,
            ms = took.as_secs_f64() * 1e3,
            metered = rt.metered,
            "plugin component compiled"
        );
        Ok((component, ArtifactSource::Compiled, took))
    }
}

/// Maps a precompiled artifact.
#[allow(unsafe_code)]
fn deserialize(rt: &Runtime, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the file was produced by `Component::serialize` or
    // `Engine::precompile_component` (it is machine code, trusted as such) and is not changed
    // while mapped. This file is ours: `Artifacts::load` wrote it from `Component::serialize`
    // into the host's own cache directory (atomically, so never half-written), under a name
    // that carries the engine fingerprint; wasmtime additionally checks the engine settings
    // recorded in it. Anyone able to replace files in the data directory could replace the
    // Shoal binary too, so this trusts nothing the binary does not already trust.
    unsafe { Component::deserialize_file(&rt.engine, path) }
}
