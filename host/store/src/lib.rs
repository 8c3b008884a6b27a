//! Shoal's storage backends for the broker's [`BrokerStore`] seam.
//!
//! Two durable implementations live here, and both must behave exactly like the reference
//! [`shoal_broker::store::MemoryStore`]:
//!
//! * [`EmbeddedStore`]: one redb file next to the broker, for single-node deployments with no
//!   external service to run.
//! * [`RedisStore`]: Redis hashes, for deployments that already run Redis or want the state
//!   outside the broker's disk.
//!
//! [`open`] picks one from the `--store` URL. [`conformance::run_all`] is the executable form of
//! the contract; the crate's tests run it against every backend.
#![deny(missing_docs)]

use std::path::Path;
use std::sync::Arc;

pub use shoal_broker::store::{BrokerStore, StoreError};

pub mod conformance;
pub mod embedded;
pub mod redis_store;

pub use embedded::EmbeddedStore;
pub use redis_store::RedisStore;

/// File name of the embedded database inside the data directory, so operators know what to back
/// up.
pub const EMBEDDED_FILE: &str = "shoal.redb";

/// Key prefix [`open`] uses for Redis, so several Shoal deployments (or other applications) can
/// share one Redis by using different prefixes via [`RedisStore::connect`].
pub const DEFAULT_REDIS_PREFIX: &str = "shoal";

/// Opens the store named by `url`, the value of the broker's `--store` option.
///
/// Accepted forms:
/// * `embedded`: an [`EmbeddedStore`] at `data_dir/shoal.redb` (the directory is created).
/// * `memory`: a [`shoal_broker::store::MemoryStore`]; nothing survives a restart.
/// * `redis://...` or `rediss://...`: a [`RedisStore`] with the prefix `shoal`.
///
/// Anything else is rejected up front with the list of accepted forms, so a typo fails at start-up
/// rather than silently selecting some default.
pub async fn open(url: &str, data_dir: &Path) -> Result<Arc<dyn BrokerStore>, StoreError> {
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
            Ok(Arc::new(store))
        }
        "memory" => {
            tracing::warn!("using the in-memory store: sessions and retained messages are lost on restart");
            Ok(Arc::new(shoal_broker::store::MemoryStore::default()))
        }
        u if u.starts_with("redis://") || u.starts_with("rediss://") => {
            Ok(Arc::new(RedisStore::connect(u, DEFAULT_REDIS_PREFIX).await?))
        }
        other => Err(StoreError::Unavailable(format!(
            "unknown store {:?}: expected \"embedded\", \"memory\", \"redis://host[:port][/db]\" \
             or \"rediss://host[:port][/db]\"",
            redact_url(other)
        ))),
    }
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
