//! Where host calls go: the component's imports on wasm32, an in-process fake elsewhere. Both
//! halves offer the same crate-private functions; the public modules (`kv`, `log`, ...) call them.

#[cfg(target_arch = "wasm32")]
pub(crate) mod wasm;
#[cfg(target_arch = "wasm32")]
pub(crate) use wasm::{counter_add, gauge_set, get_shadow, kv_delete, kv_get, kv_set, log, now_ms};

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod fake;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use fake::{counter_add, gauge_set, get_shadow, kv_delete, kv_get, kv_set, log, now_ms};
