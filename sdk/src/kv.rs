//! The plugin's key-value state, kept by the host (in Shoal's store, so it survives instance
//! recycling, new plugin versions and restarts, and is shared by every Shoal node on Redis).
//!
//! Keys are private to the plugin (by name, across its versions) and live in a [`Scope`]:
//! [`Scope::Global`] for the whole plugin, [`Scope::Thing`] for one thing. Keys are 1 to 256
//! bytes; the host enforces a size quota per plugin. A value may expire after `ttl_secs`.
//!
//! ```
//! use shoal_sdk::kv::{self, Scope};
//! # fn main() -> Result<(), kv::Error> {
//! kv::set_json(Scope::Thing("truck-7"), "last", &[1.5, 2.5], Some(3600))?;
//! let last: Option<Vec<f64>> = kv::get_json(Scope::Thing("truck-7"), "last")?;
//! assert_eq!(last, Some(vec![1.5, 2.5]));
//! assert_eq!(kv::get(Scope::Global, "last")?, None);
//! assert!(kv::delete(Scope::Thing("truck-7"), "last")?);
//! # Ok(()) }
//! ```

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where a key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope<'a> {
    /// Shared by every message the plugin sees.
    Global,
    /// Private to one thing (by name).
    Thing(&'a str),
}

/// Why a key-value call failed. Converts into [`PluginError::Failed`](crate::PluginError)
/// with `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The value or the plugin's total would exceed its quota.
    QuotaExceeded(String),
    /// The key is not acceptable (empty, or longer than 256 bytes).
    InvalidKey(String),
    /// The store could not be reached; try again later.
    Unavailable(String),
    /// [`get_json`] found a value that is not the expected JSON, or [`set_json`] could not
    /// serialize one.
    Json(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::QuotaExceeded(m) => write!(f, "quota exceeded: {m}"),
            Error::InvalidKey(m) => write!(f, "invalid key: {m}"),
            Error::Unavailable(m) => write!(f, "unavailable: {m}"),
            Error::Json(m) => write!(f, "JSON: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// The value of `key`, or `None` when it is absent or expired.
pub fn get(scope: Scope<'_>, key: &str) -> Result<Option<Vec<u8>>, Error> {
    crate::sys::kv_get(scope, key)
}

/// Stores `value` under `key`; with `ttl_secs` it expires that many seconds from now.
pub fn set(scope: Scope<'_>, key: &str, value: &[u8], ttl_secs: Option<u32>) -> Result<(), Error> {
    crate::sys::kv_set(scope, key, value, ttl_secs)
}

/// Deletes `key`; true if it existed.
pub fn delete(scope: Scope<'_>, key: &str) -> Result<bool, Error> {
    crate::sys::kv_delete(scope, key)
}

/// The value of `key` deserialized from JSON.
pub fn get_json<T: DeserializeOwned>(scope: Scope<'_>, key: &str) -> Result<Option<T>, Error> {
    match get(scope, key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Json(format!("{key}: {e}"))),
    }
}

/// Stores `value` as JSON under `key`.
pub fn set_json<T: Serialize + ?Sized>(
    scope: Scope<'_>,
    key: &str,
    value: &T,
    ttl_secs: Option<u32>,
) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Json(format!("{key}: {e}")))?;
    set(scope, key, &bytes, ttl_secs)
}
