//! Persistence of the catalog: which versions each plugin has, their configuration, which one
//! is active, the activation history (for rollback) and suspensions. The component bytes are
//! not in here: they live as files keyed by hash (`DATA/plugins/artifacts/<sha256>.wasm`).

use crate::artifact::write_atomic;
use crate::config::PluginConfig;
use crate::error::StoreError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole persisted catalog.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSnapshot {
    /// Format version (1).
    pub format: u32,
    /// Every plugin, by name.
    pub plugins: Vec<PluginRecord>,
}

/// One plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRecord {
    /// Its name.
    pub name: String,
    /// The active version, if any.
    pub active: Option<u32>,
    /// Previously active versions, oldest first (rollback pops the last).
    pub history: Vec<u32>,
    /// The number the next upload gets.
    pub next_version: u32,
    /// Its versions.
    pub versions: Vec<VersionRecord>,
}

/// One version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    /// Its number (1, 2, ...).
    pub number: u32,
    /// Hex sha256 of the component.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size_bytes: u64,
    /// Upload time, Unix milliseconds.
    pub uploaded_at_ms: u64,
    /// Its configuration.
    pub config: PluginConfig,
    /// Why it is suspended, if it is.
    pub suspended: Option<String>,
}

/// Where the catalog persists. Implementations write the whole snapshot atomically (the
/// catalog is small: names, numbers, configurations).
pub trait CatalogStore: Send + Sync + 'static {
    /// The saved catalog (empty when nothing was ever saved).
    fn load(&self) -> Result<CatalogSnapshot, StoreError>;
    /// Replaces the saved catalog.
    fn save(&self, snapshot: &CatalogSnapshot) -> Result<(), StoreError>;
}

/// A JSON file, replaced atomically (temporary file, fsync, rename, fsync directory).
#[derive(Clone, Debug)]
pub struct FileCatalogStore {
    path: PathBuf,
}

impl FileCatalogStore {
    /// A store at `path` (e.g. `DATA/plugins/catalog.json`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileCatalogStore { path: path.into() }
    }
}

impl CatalogStore for FileCatalogStore {
    fn load(&self) -> Result<CatalogSnapshot, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(CatalogSnapshot {
                    format: 1,
                    plugins: Vec::new(),
                });
            }
            Err(e) => {
                return Err(StoreError::Io {
                    path: self.path.clone(),
                    source: e,
                });
            }
        };
        let snapshot: CatalogSnapshot = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        if snapshot.format != 1 {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                message: format!("unknown format {}", snapshot.format),
            });
        }
        Ok(snapshot)
    }

    fn save(&self, snapshot: &CatalogSnapshot) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(snapshot)
            .map_err(|e| StoreError::Other(format!("cannot encode the catalog: {e}")))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        }
        write_atomic(&self.path, &json).map_err(|e| StoreError::Io {
            path: self.path.clone(),
            source: e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCatalogStore::new(dir.path().join("plugins/catalog.json"));
        assert!(store.load().unwrap().plugins.is_empty());
        let snapshot = CatalogSnapshot {
            format: 1,
            plugins: vec![PluginRecord {
                name: "p".into(),
                active: Some(2),
                history: vec![1],
                next_version: 3,
                versions: vec![VersionRecord {
                    number: 1,
                    sha256: "ab".into(),
                    size_bytes: 10,
                    uploaded_at_ms: 5,
                    config: PluginConfig::default().setting("k", "v"),
                    suspended: Some("too many failures".into()),
                }],
            }],
        };
        store.save(&snapshot).unwrap();
        assert_eq!(store.load().unwrap(), snapshot);
        std::fs::write(dir.path().join("plugins/catalog.json"), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
    }
}
