//! Shoal's storage backends for the broker's [`BrokerStore`] seam, the device shadows'
//! [`ShadowStore`] seam and the thing registry's [`RegistryStore`] seam.
//!
//! Two durable implementations of each live here, and they must behave exactly like the
//! reference [`shoal_broker::store::MemoryStore`] and [`MemoryShadowStore`]:
//!
//! * [`EmbeddedStore`] and [`EmbeddedShadowStore`]: one redb file next to the broker, for
//!   single-node deployments with no external service to run. Shadow writes are group-committed
//!   (see [`embedded_shadows`]).
//! * [`RedisStore`] and [`RedisShadowStore`]: Redis hashes, for deployments that already run
//!   Redis, want the state outside the broker's disk, or run several nodes (shadow writes are
//!   compare-and-set on a revision, see [`redis_shadows`]).
//!
//! The registry has the same two backends, [`EmbeddedRegistryStore`] and [`RedisRegistryStore`]
//! (see [`embedded_registry`] and [`redis_registry`]), and so do the rules' streams
//! ([`StreamStore`]): [`EmbeddedStreamStore`] and [`RedisStreamStore`] (a Redis Stream per
//! stream), with [`shoal_rules::stream::MemoryStreamStore`] as the reference.
//!
//! [`open`] picks a backend from the `--store` URL and returns all the stores on it.
//! [`conformance::run_all`], [`conformance::run_shadow_suite`] and
//! [`conformance::run_stream_suite`] are the executable form of the contracts; the crate's tests
//! run them against every backend.
#![deny(missing_docs)]

use std::path::Path;
use std::sync::Arc;

pub use shoal_auth::store::AuthStore;
pub use shoal_broker::store::{BrokerStore, StoreError};
pub use shoal_rules::stream::StreamStore;
use shoal_things::registry::MemoryRegistryStore;
pub use shoal_things::registry::RegistryStore;
use shoal_things::shadow::MemoryShadowStore;
pub use shoal_things::shadow::{ShadowStore, ShadowStoreError};

pub mod conformance;
pub mod embedded;
pub mod embedded_auth;
pub mod embedded_registry;
pub mod embedded_shadows;
pub mod embedded_streams;
pub mod plugin_kv;
pub mod redis_auth;
pub mod redis_registry;
pub mod redis_rules;
pub mod redis_shadows;
pub mod redis_store;
pub mod redis_streams;
pub mod shadow_log;

pub use embedded::EmbeddedStore;
pub use embedded_registry::EmbeddedRegistryStore;
pub use embedded_shadows::EmbeddedShadowStore;
pub use embedded_streams::EmbeddedStreamStore;
pub use redis_registry::RedisRegistryStore;
pub use redis_shadows::RedisShadowStore;
pub use redis_store::RedisStore;
pub use redis_streams::RedisStreamStore;

/// File name of the embedded database inside the data directory, so operators know what to back
/// up.
pub const EMBEDDED_FILE: &str = "shoal.redb";

/// Key prefix [`open`] uses for Redis, so several Shoal deployments (or other applications) can
/// share one Redis by using different prefixes via [`RedisStore::connect`].
pub const DEFAULT_REDIS_PREFIX: &str = "shoal";

/// The stores [`open`] returns: the broker's, the shadows', the registry's, identities, plugin
/// state and streams, on the same backend.
#[derive(Clone)]
pub struct Stores {
    /// Sessions, queued messages and retained messages.
    pub broker: Arc<dyn BrokerStore>,
    /// Device shadows.
    pub shadows: Arc<dyn ShadowStore>,
    /// The thing registry (things, thing types, thing groups).
    pub registry: Arc<dyn RegistryStore>,
    /// Identities: certificates, CA certificates, policies, attachments.
    pub auth: Arc<dyn AuthStore>,
    /// Plugins' key-value state (`None` on the memory store: kept in memory only).
    pub plugin_kv: Option<Arc<dyn shoal_plugin_host::KvBackend>>,
    /// Streams (the `stream` rule action's logs and their consumer groups).
    pub streams: Arc<dyn StreamStore>,
    /// Rule definitions: in Redis on the Redis store, else a JSON file in the data directory
    /// (`DATA/rules/rules.json`, kept on the memory store too).
    pub rules: Arc<dyn shoal_rules::RuleStore>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("broker", &self.broker.kind())
            .field("shadows", &self.shadows.kind())
            .field("registry", &self.registry.kind())
            .field("auth", &self.auth.kind())
            .field("plugin_kv", &self.plugin_kv.as_ref().map(|k| k.kind()))
            .field("streams", &self.streams.kind())
            .finish()
    }
}

/// Opens the stores named by `url`, the value of the broker's `--store` option.
///
/// Accepted forms:
/// * `embedded`: an [`EmbeddedStore`] at `data_dir/shoal.redb` (the directory is created) and
///   its [`EmbeddedShadowStore`], [`EmbeddedStreamStore`], ... in the same file.
/// * `memory`: a [`shoal_broker::store::MemoryStore`], a [`MemoryShadowStore`], a
///   [`shoal_rules::stream::MemoryStreamStore`], ...; nothing survives a restart.
/// * `redis://...` or `rediss://...`: a [`RedisStore`] with the prefix `shoal` and its
///   [`RedisShadowStore`], [`RedisStreamStore`], ..., on one connection.
///
/// Anything else is rejected up front with the list of accepted forms, so a typo fails at start-up
/// rather than silently selecting some default.
pub async fn open(url: &str, data_dir: &Path) -> Result<Stores, StoreError> {
    match url {
        "embedded" => {
            let dir = data_dir.to_path_buf();
            // Opening may replay or repair the file after a crash: keep that off the runtime.
            let store = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create data directory {}: {e}", dir.display()))
                })?;
                EmbeddedStore::open(&dir.join(EMBEDDED_FILE))
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("opening the embedded store: {e}")))??;
            Ok(Stores {
                shadows: Arc::new(store.shadow_store()),
                registry: Arc::new(store.registry_store()),
                auth: Arc::new(
                    store
                        .auth_store()
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                ),
                plugin_kv: Some(Arc::new(store.plugin_kv())),
                streams: Arc::new(store.stream_store()),
                rules: file_rules(data_dir),
                broker: Arc::new(store),
            })
        }
        "memory" => {
            tracing::warn!(
                "using the in-memory store: sessions, retained messages and shadows are lost on restart"
            );
            Ok(Stores {
                broker: Arc::new(shoal_broker::store::MemoryStore::default()),
                shadows: Arc::new(MemoryShadowStore::default()),
                registry: Arc::new(MemoryRegistryStore::default()),
                auth: Arc::new(shoal_auth::store::MemoryAuthStore::default()),
                plugin_kv: None,
                streams: Arc::new(shoal_rules::stream::MemoryStreamStore::new()),
                rules: file_rules(data_dir),
            })
        }
        u if u.starts_with("redis://") || u.starts_with("rediss://") => {
            let store = RedisStore::connect(u, DEFAULT_REDIS_PREFIX).await?;
            Ok(Stores {
                shadows: Arc::new(store.shadow_store()),
                registry: Arc::new(store.registry_store()),
                auth: Arc::new(store.auth_store()),
                plugin_kv: Some(Arc::new(store.plugin_kv(tokio::runtime::Handle::current()))),
                streams: Arc::new(store.stream_store()),
                rules: Arc::new(store.rule_store(tokio::runtime::Handle::current())),
                broker: Arc::new(store),
            })
        }
        other => Err(StoreError::Unavailable(format!(
            "unknown store {:?}: expected \"embedded\", \"memory\", \"redis://host[:port][/db]\" \
             or \"rediss://host[:port][/db]\"",
            redact_url(other)
        ))),
    }
}

fn file_rules(data_dir: &Path) -> Arc<dyn shoal_rules::RuleStore> {
    Arc::new(shoal_rules::FileRuleStore::new(
        data_dir.join("rules").join("rules.json"),
    ))
}

/// Hides the user-info part (`user:password@`) of a URL, so connection strings can go into logs
/// and error messages without leaking credentials.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_credentials_only() {
        assert_eq!(redact_url("redis://localhost:6379/0"), "redis://localhost:6379/0");
        assert_eq!(
            redact_url("redis://user:secret@localhost:6379/0"),
            "redis://***@localhost:6379/0"
        );
        assert_eq!(redact_url("rediss://:p%40ss@h"), "rediss://***@h");
        assert_eq!(redact_url("embeded"), "embeded");
    }
}
