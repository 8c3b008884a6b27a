//! Where rule definitions persist: the [`RuleStore`] seam and a JSON file in the data
//! directory, replaced atomically on every change (rules are few and small). `shoal-store` has
//! the Redis one (the same document under one key).

use std::io::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::rule::{RuleError, TopicRulePayload};

/// One saved rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredRule {
    /// Name.
    pub name: String,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Definition.
    pub payload: TopicRulePayload,
}

/// Persistence of the rule definitions.
///
/// A store several nodes share (Redis) keeps a revision that rises with every save, so each
/// node's engine notices another node's changes ([`RuleStore::revision`]) and reloads.
pub trait RuleStore: Send + Sync + 'static {
    /// Every saved rule (none when nothing was saved yet).
    fn load(&self) -> Result<Vec<StoredRule>, RuleError>;
    /// Replaces the saved rules; returns the store's new revision when it is shared.
    fn save(&self, rules: &[StoredRule]) -> Result<Option<u64>, RuleError>;
    /// The current revision of a shared store (`None`: the store is this node's own and
    /// nobody else changes it).
    fn revision(&self) -> Result<Option<u64>, RuleError> {
        Ok(None)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    rules: Vec<StoredRule>,
}

/// A JSON file (`DATA/rules/rules.json`), written to a temporary file, synced and renamed.
#[derive(Clone, Debug)]
pub struct FileRuleStore {
    path: PathBuf,
}

impl FileRuleStore {
    /// A store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileRuleStore { path: path.into() }
    }
}

/// The saved form of a rule set (`{"format": 1, "rules": [...]}`), shared by every store.
pub fn encode_rules(rules: &[StoredRule]) -> Result<Vec<u8>, RuleError> {
    serde_json::to_vec_pretty(&File {
        format: 1,
        rules: rules.to_vec(),
    })
    .map_err(|e| RuleError::Store(e.to_string()))
}

/// Reads what [`encode_rules`] wrote; `place` names where it came from in errors.
pub fn decode_rules(bytes: &[u8], place: &str) -> Result<Vec<StoredRule>, RuleError> {
    let file: File = serde_json::from_slice(bytes)
        .map_err(|e| RuleError::Store(format!("{place}: not a valid rules document: {e}")))?;
    if file.format != 1 {
        return Err(RuleError::Store(format!(
            "{place}: unknown format {}",
            file.format
        )));
    }
    Ok(file.rules)
}

impl RuleStore for FileRuleStore {
    fn load(&self) -> Result<Vec<StoredRule>, RuleError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RuleError::Store(format!("{}: {e}", self.path.display()))),
        };
        decode_rules(&bytes, &self.path.display().to_string())
    }

    fn save(&self, rules: &[StoredRule]) -> Result<Option<u64>, RuleError> {
        let err = |e: std::io::Error| RuleError::Store(format!("{}: {e}", self.path.display()));
        let json = encode_rules(rules)?;
        let dir = self.path.parent().map(PathBuf::from).unwrap_or_default();
        std::fs::create_dir_all(&dir).map_err(err)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileRuleStore::new(dir.path().join("rules/rules.json"));
        assert!(store.load().unwrap().is_empty());
        let rule = StoredRule {
            name: "r1".into(),
            created_ms: 7,
            payload: serde_json::from_str(
                r#"{"sql":"SELECT * FROM 'a/#'","actions":[{"republish":{"topic":"b"}}]}"#,
            )
            .unwrap(),
        };
        store.save(std::slice::from_ref(&rule)).unwrap();
        assert_eq!(store.load().unwrap(), vec![rule]);
        std::fs::write(dir.path().join("rules/rules.json"), b"{oops").unwrap();
        assert!(store.load().is_err());
    }
}
