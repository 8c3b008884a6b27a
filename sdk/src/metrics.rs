//! The plugin's own metrics, exported by the host in `/metrics` as
//! `shoal_plugin_counter{plugin,name}` and `shoal_plugin_gauge{plugin,name}`.

/// Adds `value` to the counter `name`.
pub fn counter_add(name: &str, value: u64) {
    crate::sys::counter_add(name, value);
}

/// Sets the gauge `name` to `value`.
pub fn gauge_set(name: &str, value: f64) {
    crate::sys::gauge_set(name, value);
}
