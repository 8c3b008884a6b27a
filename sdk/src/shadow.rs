//! Read-only access to device shadows. To change one, return an
//! [`Action::shadow_update`](crate::Action::shadow_update).

use std::fmt;

use serde_json::Value;

/// The store could not answer (or answered something that is not JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// `thing`'s shadow (the classic one when `name` is `None`) as AWS's GetThingShadow returns it
/// (`{"state":{"desired":..,"reported":..},"metadata":..,"version":..}`), or `None` when it
/// does not exist. A failure converts into [`PluginError::Failed`](crate::PluginError) with `?`.
pub fn get(thing: &str, name: Option<&str>) -> Result<Option<Value>, Error> {
    match crate::sys::get_shadow(thing, name).map_err(Error)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error(format!("shadow of {thing} is not JSON: {e}"))),
    }
}

/// A value of `thing`'s reported state (classic shadow) by dotted path, e.g.
/// `reported(t, "setpoint")`; `None` when the shadow or the field does not exist.
pub fn reported(thing: &str, path: &str) -> Result<Option<Value>, Error> {
    Ok(get(thing, None)?.and_then(|doc| crate::json::path(&doc, &format!("state.reported.{path}")).cloned()))
}

/// A value of `thing`'s desired state (classic shadow) by dotted path.
pub fn desired(thing: &str, path: &str) -> Result<Option<Value>, Error> {
    Ok(get(thing, None)?.and_then(|doc| crate::json::path(&doc, &format!("state.desired.{path}")).cloned()))
}
