//! Validated names of thing types and thing groups, and the AWS validation messages.
//!
//! All three registry names (things, thing types, thing groups) share the pattern of the `iot`
//! service model (botocore `iot` 2015-05-28): `[a-zA-Z0-9:_-]+`, 1 to 128 characters. Things
//! reuse [`ThingName`] from the shadow engine; types and groups get their own newtypes so the
//! three can never be mixed up.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::RegistryError;
use crate::shadow::{MAX_THING_NAME_LEN, ThingName};

/// The AWS request-validation message for a value that does not match a name pattern, e.g.
/// `1 validation error detected: Value 'a b' at 'thingName' failed to satisfy constraint: Member
/// must satisfy regular expression pattern: [a-zA-Z0-9:_-]+`.
pub fn invalid_name(field: &str, value: &str) -> RegistryError {
    let constraint = if value.is_empty() {
        "Member must have length greater than or equal to 1".to_owned()
    } else if value.len() > MAX_THING_NAME_LEN {
        format!("Member must have length less than or equal to {MAX_THING_NAME_LEN}")
    } else {
        "Member must satisfy regular expression pattern: [a-zA-Z0-9:_-]+".to_owned()
    };
    RegistryError::InvalidRequest(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {constraint}"
    ))
}

/// Validates a thing name for the request field `field` (`thingName`), with the AWS message on
/// failure.
pub fn parse_thing_name(value: &str, field: &str) -> Result<ThingName, RegistryError> {
    ThingName::parse(value).map_err(|_| invalid_name(field, value))
}

macro_rules! registry_name {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        ///
        /// Serializes as a plain string; deserializing validates it.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `name` against `[a-zA-Z0-9:_-]{1,128}` and wraps it.
            pub fn parse(name: &str) -> Result<Self, RegistryError> {
                Self::parse_field(name, $field)
            }

            /// Like [`Self::parse`], naming `field` in the validation message (e.g.
            /// `parentGroupName`).
            pub fn parse_field(name: &str, field: &str) -> Result<Self, RegistryError> {
                match ThingName::parse(name) {
                    Ok(_) => Ok(Self(name.to_owned())),
                    Err(_) => Err(invalid_name(field, name)),
                }
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = RegistryError;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)?;
                Ok(Self(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

registry_name!(
    /// A thing type name: 1 to 128 characters from `[a-zA-Z0-9:_-]`.
    ThingTypeName,
    "thingTypeName"
);

registry_name!(
    /// A thing group name: 1 to 128 characters from `[a-zA-Z0-9:_-]`.
    ThingGroupName,
    "thingGroupName"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_aws_pattern() {
        for ok in ["a", "Sensor-v2", "fleet:a_b", &"x".repeat(128)] {
            assert_eq!(ThingTypeName::parse(ok).unwrap().as_str(), ok);
            assert_eq!(ThingGroupName::parse(ok).unwrap().as_str(), ok);
            assert_eq!(parse_thing_name(ok, "thingName").unwrap().as_str(), ok);
        }
        for bad in ["", &"x".repeat(129), "a b", "a/b", "a.b", "é"] {
            assert!(matches!(
                ThingTypeName::parse(bad),
                Err(RegistryError::InvalidRequest(_))
            ));
            assert!(matches!(
                ThingGroupName::parse(bad),
                Err(RegistryError::InvalidRequest(_))
            ));
            assert!(matches!(
                parse_thing_name(bad, "thingName"),
                Err(RegistryError::InvalidRequest(_))
            ));
        }
    }

    #[test]
    fn validation_messages_use_the_aws_format() {
        assert_eq!(
            invalid_name("thingName", "a b").to_string(),
            "1 validation error detected: Value 'a b' at 'thingName' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: [a-zA-Z0-9:_-]+"
        );
        assert!(
            invalid_name("thingName", "")
                .to_string()
                .ends_with("greater than or equal to 1")
        );
        assert!(
            invalid_name("thingName", &"x".repeat(129))
                .to_string()
                .ends_with("less than or equal to 128")
        );
        let e = ThingGroupName::parse_field("a b", "parentGroupName").unwrap_err();
        assert!(e.to_string().contains("at 'parentGroupName'"));
    }

    #[test]
    fn names_round_trip_through_serde() {
        let t = ThingTypeName::parse("sensor").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"sensor\"");
        assert_eq!(serde_json::from_str::<ThingTypeName>("\"sensor\"").unwrap(), t);
        assert!(serde_json::from_str::<ThingGroupName>("\"bad name\"").is_err());
        assert_eq!(ThingGroupName::parse("g").unwrap().to_string(), "g");
    }
}
