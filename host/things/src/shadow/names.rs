//! Validated thing and shadow names.
//!
//! AWS constrains both names with the patterns of the `iot-data` service model (botocore
//! `iot-data` 2015-05-28): a thing name is `[a-zA-Z0-9:_-]{1,128}`, a shadow name
//! `[$a-zA-Z0-9:_-]{1,64}`. Both are ASCII-only, so the byte length equals the character
//! count. The classic (unnamed) shadow has no shadow name: it is `Option<ShadowName>::None`
//! everywhere in this crate.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Maximum length of a thing name, in characters (all ASCII).
pub const MAX_THING_NAME_LEN: usize = 128;

/// Maximum length of a shadow name, in characters (all ASCII).
pub const MAX_SHADOW_NAME_LEN: usize = 64;

/// Why a thing or shadow name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The thing name is empty, longer than 128 characters, or has a character outside
    /// `[a-zA-Z0-9:_-]`.
    #[error("Invalid thing name: it must be 1 to 128 characters from [a-zA-Z0-9:_-]")]
    InvalidThingName,
    /// The shadow name is empty, longer than 64 characters, or has a character outside
    /// `[$a-zA-Z0-9:_-]`.
    #[error("Invalid shadow name: it must be 1 to 64 characters from [$a-zA-Z0-9:_-]")]
    InvalidShadowName,
}

fn is_thing_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-')
}

fn is_shadow_char(b: u8) -> bool {
    is_thing_char(b) || b == b'$'
}

/// A thing name: 1 to 128 characters from `[a-zA-Z0-9:_-]`.
///
/// Serializes as a plain string; deserializing validates it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ThingName(String);

impl ThingName {
    /// Validates `name` and wraps it.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.is_empty() || name.len() > MAX_THING_NAME_LEN || !name.bytes().all(is_thing_char) {
            return Err(NameError::InvalidThingName);
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ThingName {
    type Error = NameError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)?;
        Ok(Self(value))
    }
}

impl From<ThingName> for String {
    fn from(value: ThingName) -> Self {
        value.0
    }
}

impl AsRef<str> for ThingName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ThingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A named shadow's name: 1 to 64 characters from `[$a-zA-Z0-9:_-]`.
///
/// The classic shadow has no name; use `Option<ShadowName>::None` for it. Serializes as a plain
/// string; deserializing validates it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ShadowName(String);

impl ShadowName {
    /// Validates `name` and wraps it.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.is_empty() || name.len() > MAX_SHADOW_NAME_LEN || !name.bytes().all(is_shadow_char) {
            return Err(NameError::InvalidShadowName);
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ShadowName {
    type Error = NameError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)?;
        Ok(Self(value))
    }
}

impl From<ShadowName> for String {
    fn from(value: ShadowName) -> Self {
        value.0
    }
}

impl AsRef<str> for ShadowName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShadowName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thing_names_follow_the_aws_pattern() {
        for ok in ["a", "Truck-1", "fleet:truck_01", "0", &"x".repeat(128)] {
            assert_eq!(ThingName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            &"x".repeat(129),
            "a b",
            "a/b",
            "a+b",
            "a#b",
            "$aws",
            "caf\u{e9}",
            "a.b",
        ] {
            assert_eq!(ThingName::parse(bad), Err(NameError::InvalidThingName), "{bad:?}");
        }
    }

    #[test]
    fn shadow_names_follow_the_aws_pattern() {
        for ok in ["s", "$config", "ota:v2_state-1", &"y".repeat(64)] {
            assert_eq!(ShadowName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", &"y".repeat(65), "a/b", "a b", "+", "#", "a.b", "\u{e9}"] {
            assert_eq!(
                ShadowName::parse(bad),
                Err(NameError::InvalidShadowName),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_round_trip_through_serde_and_validate_on_the_way_in() {
        let thing = ThingName::parse("truck-1").unwrap();
        assert_eq!(serde_json::to_string(&thing).unwrap(), "\"truck-1\"");
        assert_eq!(serde_json::from_str::<ThingName>("\"truck-1\"").unwrap(), thing);
        assert!(serde_json::from_str::<ThingName>("\"bad name\"").is_err());

        let shadow = ShadowName::parse("$cfg").unwrap();
        assert_eq!(serde_json::to_string(&shadow).unwrap(), "\"$cfg\"");
        assert_eq!(serde_json::from_str::<ShadowName>("\"$cfg\"").unwrap(), shadow);
        assert!(serde_json::from_str::<ShadowName>("\"\"").is_err());
    }

    #[test]
    fn display_and_as_ref_give_the_raw_name() {
        let thing = ThingName::parse("t1").unwrap();
        assert_eq!(thing.to_string(), "t1");
        assert_eq!(AsRef::<str>::as_ref(&thing), "t1");
        assert_eq!(String::from(thing), "t1");
        let shadow = ShadowName::parse("s1").unwrap();
        assert_eq!(shadow.to_string(), "s1");
        assert_eq!(String::from(shadow), "s1");
    }

    #[test]
    fn name_errors_explain_the_pattern() {
        assert_eq!(
            NameError::InvalidThingName.to_string(),
            "Invalid thing name: it must be 1 to 128 characters from [a-zA-Z0-9:_-]"
        );
        assert_eq!(
            NameError::InvalidShadowName.to_string(),
            "Invalid shadow name: it must be 1 to 64 characters from [$a-zA-Z0-9:_-]"
        );
    }
}
