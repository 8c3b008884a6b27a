//! Errors of the plugin host's management operations (the call path answers with
//! [`crate::Outcome`] instead).

use crate::outcome::PluginFault;
use std::path::PathBuf;

/// Setting up the host failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// wasmtime refused the engine configuration (e.g. the pool does not fit in memory).
    #[error("cannot create the plugin engine: {0}")]
    Engine(String),
    /// A directory or file of the host could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The catalog could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reading or writing persisted catalog state failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The persisted catalog is not valid.
    #[error("{path}: not a valid plugin catalog: {message}")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Another backend's error.
    #[error("plugin catalog store: {0}")]
    Other(String),
}

/// A catalog operation (upload, activate, rollback, delete, query) failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The plugin name is not acceptable.
    #[error("invalid plugin name {0:?}: use 1-64 characters from [A-Za-z0-9_-]")]
    InvalidName(String),
    /// No plugin has this name.
    #[error("no plugin named {0:?}")]
    UnknownPlugin(String),
    /// The plugin has no such version.
    #[error("plugin {plugin:?} has no version {version}")]
    UnknownVersion {
        /// Plugin.
        plugin: String,
        /// Version.
        version: u32,
    },
    /// The configuration is not acceptable.
    #[error("invalid plugin configuration: {0}")]
    InvalidConfig(String),
    /// The upload is not WebAssembly at all.
    #[error("not a WebAssembly binary (no `\\0asm` header)")]
    NotWasm,
    /// The upload is a core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build the plugin with \
         `--target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component imports capabilities plugins are never granted.
    #[error("the component imports capabilities plugins are not granted: {}", names.join(", "))]
    ForbiddenImports {
        /// The offending import names (`wasi:sockets/tcp@0.2.9`, ...).
        names: Vec<String>,
    },
    /// The component does not fit the `shoal:plugin/rule-plugin` world (missing or mistyped
    /// exports, imports this host does not provide).
    #[error("the component does not fit world shoal:plugin/rule-plugin@0.1.0: {0}")]
    WorldMismatch(String),
    /// wasmtime could not compile or load it.
    #[error("cannot compile the component: {0}")]
    Compile(String),
    /// The active version cannot be deleted.
    #[error("version {version} of {plugin:?} is active; activate another version before deleting it")]
    VersionActive {
        /// Plugin.
        plugin: String,
        /// Version.
        version: u32,
    },
    /// Rollback has nowhere to go.
    #[error("plugin {0:?} has no previously active version to roll back to")]
    NoPreviousVersion(String),
    /// The version could not start (instantiation or `init` failed), so it was not activated.
    #[error("version {version} did not start, so it was not activated: {fault}")]
    ActivationFailed {
        /// The version.
        version: u32,
        /// What went wrong.
        fault: PluginFault,
    },
    /// The stored artifact of a version is missing or damaged.
    #[error("artifact {sha256}: {message}")]
    Artifact {
        /// Its content hash.
        sha256: String,
        /// What is wrong.
        message: String,
    },
    /// The catalog could not be persisted.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host could not set up the engine this version needs.
    #[error(transparent)]
    Host(#[from] HostError),
}
