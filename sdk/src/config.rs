use std::fmt::Display;
use std::str::FromStr;

use serde::de::DeserializeOwned;

use crate::PluginError;

/// The operator's configuration of a plugin: key-value pairs (values are often JSON).
///
/// Every accessor that can fail returns [`PluginError::Config`], so `init` reads naturally with
/// `?`:
///
/// ```
/// # use shoal_sdk::{Config, PluginError};
/// # fn main() -> Result<(), PluginError> {
/// let config = Config::from_pairs(&[("field", "temp"), ("max", "-15"), ("tags", r#"["a","b"]"#)]);
/// let field = config.require("field")?;
/// let max: f64 = config.parse("max")?;
/// let min: Option<f64> = config.parse_opt("min")?;
/// let tags: Vec<String> = config.json("tags")?;
/// let severity = config.get("severity").unwrap_or("warning");
/// # assert_eq!((field, max, min, tags.len(), severity), ("temp", -15.0, None, 2, "warning"));
/// # Ok(()) }
/// ```
///
/// When a key appears more than once, the last value wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    /// A configuration from the pairs the host passed.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Config { pairs }
    }

    /// A configuration from string pairs (handy in tests).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Config {
            pairs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The raw value of `key`, or a config error naming it.
    pub fn require(&self, key: &str) -> Result<&str, PluginError> {
        self.get(key)
            .ok_or_else(|| PluginError::config(format!("missing `{key}`")))
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// `key` parsed with [`FromStr`] (surrounding whitespace ignored); missing or unparsable
    /// is a config error.
    pub fn parse<T>(&self, key: &str) -> Result<T, PluginError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.parse_opt(key)?
            .ok_or_else(|| PluginError::config(format!("missing `{key}`")))
    }

    /// `key` parsed with [`FromStr`] if present; unparsable is a config error.
    pub fn parse_opt<T>(&self, key: &str) -> Result<Option<T>, PluginError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => raw
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| PluginError::config(format!("`{key}` = {raw:?}: {e}"))),
        }
    }

    /// `key` parsed with [`FromStr`], or `default` when absent; unparsable is a config error.
    pub fn parse_or<T>(&self, key: &str, default: T) -> Result<T, PluginError>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.parse_opt(key)?.unwrap_or(default))
    }

    /// `key` deserialized from JSON; missing or invalid is a config error.
    pub fn json<T: DeserializeOwned>(&self, key: &str) -> Result<T, PluginError> {
        self.json_opt(key)?
            .ok_or_else(|| PluginError::config(format!("missing `{key}`")))
    }

    /// `key` deserialized from JSON if present; invalid is a config error.
    pub fn json_opt<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, PluginError> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw)
                .map(Some)
                .map_err(|e| PluginError::config(format!("`{key}` is not the expected JSON: {e}"))),
        }
    }

    /// All pairs, in the order the host gave them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when the operator gave no configuration.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Config {
            pairs: iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_value_wins_and_errors_name_the_key() {
        let c = Config::from_pairs(&[("max", "1"), ("max", " 2 "), ("bad", "x"), ("j", "{")]);
        assert_eq!(c.parse::<f64>("max"), Ok(2.0));
        assert_eq!(c.parse_or::<u32>("n", 3), Ok(3));
        let PluginError::Config(msg) = c.parse::<f64>("bad").unwrap_err() else {
            panic!()
        };
        assert!(msg.contains("`bad`"), "{msg}");
        assert!(matches!(c.require("nope"), Err(PluginError::Config(m)) if m.contains("nope")));
        assert!(matches!(
            c.json::<serde_json::Value>("j"),
            Err(PluginError::Config(_))
        ));
        assert_eq!(c.json_opt::<u8>("absent"), Ok(None));
        assert_eq!(c.len(), 4);
    }
}
