//! A rule as operators write it (the AWS `TopicRulePayload` shape, so AWS rule definitions
//! carry over) and as the engine runs it (SQL parsed, templates parsed, everything checked).

use serde::{Deserialize, Serialize};

use crate::sql::{Sql, Template};

/// Most actions a rule may have (AWS's limit).
pub const MAX_ACTIONS: usize = 10;

/// A rule's name: 1-128 characters from `[a-zA-Z0-9_]` (AWS's rule).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RuleName(String);

impl RuleName {
    /// Validates a name.
    pub fn parse(name: &str) -> Result<Self, RuleError> {
        if (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            Ok(RuleName(name.to_string()))
        } else {
            Err(RuleError::Invalid(format!(
                "invalid rule name {name:?}: use 1-128 characters from [a-zA-Z0-9_]"
            )))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What went wrong with a rule definition or a rule operation.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The definition is not acceptable (bad SQL with its position, bad template, too many
    /// actions...).
    #[error("{0}")]
    Invalid(String),
    /// No rule has this name.
    #[error("no rule named {0:?}")]
    NotFound(String),
    /// A rule with this name exists already.
    #[error("a rule named {0:?} already exists")]
    Exists(String),
    /// The rules could not be persisted.
    #[error("cannot save the rules: {0}")]
    Store(String),
}

/// A rule's definition: AWS's `TopicRulePayload` (camelCase JSON), with Shoal's own actions
/// beside AWS's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicRulePayload {
    /// `SELECT ... FROM '<topic filter>' [WHERE ...]`.
    pub sql: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Up to ten actions, run in order for every message the statement selects.
    #[serde(default)]
    pub actions: Vec<ActionSpec>,
    /// A disabled rule keeps its definition but sees no messages.
    #[serde(default)]
    pub rule_disabled: bool,
    /// `2016-03-23` (default; the semantics Shoal implements), `2015-10-08` or `beta` are
    /// accepted and evaluated with the 2016-03-23 semantics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_iot_sql_version: Option<String>,
    /// Runs when any action fails, with AWS's error document as its input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_action: Option<ActionSpec>,
}

/// One action, written as AWS writes actions: an object with one key naming the kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum ActionSpec {
    /// Publish the selected document to a topic (AWS `republish`).
    Republish(RepublishSpec),
    /// Update a thing's shadow with the selected document (a shadow request document:
    /// `{"state": {...}}`).
    Shadow(ShadowSpec),
    /// Hand the selected document to a WebAssembly plugin and run the actions it returns.
    Plugin(PluginSpec),
    /// Append the selected document to the rule's archive, partitioned per rule and UTC day,
    /// readable by DuckDB or pandas: JSON lines (`DATA/archive/{rule}/{YYYY-MM-DD}.jsonl`) or
    /// Parquet files (`DATA/archive/{rule}/{YYYY-MM-DD}/part-{unix ms}.parquet`).
    Archive(ArchiveSpec),
    /// POST the selected document (or a body template) to an HTTP endpoint, off the message
    /// path, with a timeout and retries; a request that still fails runs the error action.
    Webhook(WebhookSpec),
    /// Append the selected document to a named stream (Kinesis's role; `kinesis` is accepted
    /// as another name, so AWS definitions carry over): a Redis Stream on the Redis store, an
    /// append-only log in the embedded file, read back by offset or by consumer groups through
    /// `/api/v1/streams`.
    #[serde(alias = "kinesis")]
    Stream(StreamSpec),
    /// Send an email through the SMTP relay the operator configured (SNS's email role), off
    /// the message path, with retries; an email that still fails runs the error action.
    Email(EmailSpec),
    /// AWS's `http` action: runs as `webhook` (POST of the selected document to `url`, with
    /// AWS's list of headers; no batching, no SigV4 signing of the request).
    Http(HttpSpec),
}

impl ActionSpec {
    /// The kind, as metrics and error documents name it.
    pub fn kind(&self) -> &'static str {
        match self {
            ActionSpec::Republish(_) => "republish",
            ActionSpec::Shadow(_) => "shadow",
            ActionSpec::Plugin(_) => "plugin",
            ActionSpec::Archive(_) => "archive",
            ActionSpec::Webhook(_) => "webhook",
            ActionSpec::Stream(_) => "stream",
            ActionSpec::Email(_) => "email",
            ActionSpec::Http(_) => "http",
        }
    }
}

/// `republish`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepublishSpec {
    /// Topic, with `${...}` substitution templates.
    pub topic: String,
    /// QoS 0 (default) or 1.
    #[serde(default)]
    pub qos: u8,
    /// Accepted for AWS compatibility; Shoal republishes as the rule itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

/// `shadow`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowSpec {
    /// Thing name, with substitution templates (e.g. `${topic(2)}`).
    pub thing_name: String,
    /// Named shadow (templates allowed); the classic shadow when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_name: Option<String>,
}

/// `plugin`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginSpec {
    /// The plugin's name; calls go to its active version, so activating or rolling back a
    /// version changes what the rule runs without touching the rule.
    pub name: String,
}

/// Default rows per Parquet archive file.
pub const ARCHIVE_BUFFER_ROWS: u64 = 10_000;
/// Default age of the oldest waiting row at which a Parquet archive file is written.
pub const ARCHIVE_BUFFER_SECONDS: u64 = 60;

fn archive_format(a: &ArchiveSpec, at: &str) -> Result<crate::archive::Format, RuleError> {
    let bad = |m: String| Err(RuleError::Invalid(format!("{at}.archive.{m}")));
    match a.format.as_deref() {
        None | Some("jsonl") => {
            if a.buffer_rows.is_some() || a.buffer_seconds.is_some() {
                return bad("bufferRows and bufferSeconds apply to format \"parquet\" only".into());
            }
            Ok(crate::archive::Format::Jsonl)
        }
        Some("parquet") => {
            let rows = a.buffer_rows.unwrap_or(ARCHIVE_BUFFER_ROWS);
            if !(1..=1_000_000).contains(&rows) {
                return bad(format!("bufferRows {rows} is out of range (1 to 1000000)"));
            }
            let seconds = a.buffer_seconds.unwrap_or(ARCHIVE_BUFFER_SECONDS);
            if !(1..=3600).contains(&seconds) {
                return bad(format!("bufferSeconds {seconds} is out of range (1 to 3600)"));
            }
            Ok(crate::archive::Format::Parquet {
                rows: rows as usize,
                age: std::time::Duration::from_secs(seconds),
            })
        }
        Some(other) => bad(format!(
            "format {other:?} is not supported: use \"jsonl\" or \"parquet\""
        )),
    }
}

/// `archive`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchiveSpec {
    /// `jsonl` (the default) or `parquet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Parquet only: rows per file (default 10,000; 1 to 1,000,000). A file is written when
    /// this many rows are waiting...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_rows: Option<u64>,
    /// Parquet only: ...or when the oldest waiting row is this many seconds old (default 60;
    /// 1 to 3600), whichever comes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_seconds: Option<u64>,
}

/// `webhook`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http://host[:port]/path` or `https://...` (checked against the webhook CA roots).
    pub url: String,
    /// Extra request headers (`content-type` defaults to `application/json`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Body template (`${...}` substitutions); the selected document when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Per attempt, in milliseconds (default 5000, at most 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// Further attempts after a connection error, a timeout or a 5xx (default 3, at most 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// `stream` (AWS's `kinesis` shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamSpec {
    /// The stream, with substitution templates; 1-128 characters from `[A-Za-z0-9_.-]` once
    /// rendered.
    pub stream_name: String,
    /// Kept with each record for consumers (templates allowed); empty when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// Accepted for AWS compatibility; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

/// `email`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailSpec {
    /// Recipients (1 to 50), each with substitution templates.
    pub to: Vec<String>,
    /// Subject template.
    pub subject: String,
    /// Body template (plain text); the selected document when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Further attempts after a connection error, a timeout or a 4xx reply (default 3, at
    /// most 10); a 5xx reply is final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// AWS's `http` action shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSpec {
    /// `http(s)://host[:port]/path`.
    pub url: String,
    /// Accepted for AWS compatibility (AWS's destination confirmation); not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation_url: Option<String>,
    /// Request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeader>,
    /// AWS's SigV4 signing of the outgoing request: refused (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<serde_json::Value>,
    /// AWS's batching: `false` or absent only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_batching: Option<bool>,
}

/// One header of an [`HttpSpec`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    /// Name.
    pub key: String,
    /// Value (substitution templates are not evaluated in headers).
    pub value: String,
}

/// An action ready to run.
#[derive(Clone, Debug)]
pub(crate) enum Compiled {
    Republish {
        topic: Template,
        qos: u8,
    },
    Shadow {
        thing: Template,
        shadow: Option<Template>,
    },
    Plugin {
        name: String,
    },
    Archive(crate::archive::Format),
    Webhook {
        url: String,
        headers: Vec<(String, String)>,
        body: Option<Template>,
        timeout: std::time::Duration,
        retries: u32,
    },
    Stream {
        stream: Template,
        key: Option<Template>,
    },
    Email {
        to: Vec<Template>,
        subject: Template,
        body: Option<Template>,
        retries: u32,
    },
}

/// A rule ready to run.
#[derive(Debug)]
pub struct Rule {
    /// Its name.
    pub name: RuleName,
    /// Its definition as given.
    pub payload: TopicRulePayload,
    /// When it was created, Unix milliseconds.
    pub created_ms: u64,
    pub(crate) sql: Sql,
    pub(crate) actions: Vec<(ActionSpec, Compiled)>,
    pub(crate) error_action: Option<(ActionSpec, Compiled)>,
    /// Whether the rule may run on the broker's I/O thread, where the message arrives: nothing
    /// in it waits (no plugin or shadow action, no `get_thing_shadow()`); its republishes are
    /// routed at once and its other actions only queue work.
    pub(crate) inline: bool,
}

fn template(field: &str, text: &str) -> Result<Template, RuleError> {
    Template::parse(text).map_err(|e| RuleError::Invalid(format!("{field}: {e}")))
}

pub(crate) fn compile_action(at: &str, spec: &ActionSpec) -> Result<Compiled, RuleError> {
    Ok(match spec {
        ActionSpec::Republish(r) => {
            if r.qos > 1 {
                return Err(RuleError::Invalid(format!(
                    "{at}.republish.qos must be 0 or 1, not {}",
                    r.qos
                )));
            }
            if r.topic.is_empty() {
                return Err(RuleError::Invalid(format!(
                    "{at}.republish.topic must not be empty"
                )));
            }
            let topic = template(&format!("{at}.republish.topic"), &r.topic)?;
            if topic.is_static() && (r.topic.contains('+') || r.topic.contains('#')) {
                return Err(RuleError::Invalid(format!(
                    "{at}.republish.topic {:?} is a filter, not a topic name",
                    r.topic
                )));
            }
            Compiled::Republish { topic, qos: r.qos }
        }
        ActionSpec::Shadow(s) => Compiled::Shadow {
            thing: template(&format!("{at}.shadow.thingName"), &s.thing_name)?,
            shadow: s
                .shadow_name
                .as_deref()
                .map(|n| template(&format!("{at}.shadow.shadowName"), n))
                .transpose()?,
        },
        ActionSpec::Plugin(p) => {
            let ok = (1..=64).contains(&p.name.len())
                && p.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(RuleError::Invalid(format!(
                    "{at}.plugin.name {:?} is not a plugin name (1-64 of [A-Za-z0-9_-])",
                    p.name
                )));
            }
            Compiled::Plugin { name: p.name.clone() }
        }
        ActionSpec::Archive(a) => Compiled::Archive(archive_format(a, at)?),
        ActionSpec::Webhook(w) => {
            let bad = |m: String| Err(RuleError::Invalid(format!("{at}.webhook.{m}")));
            let host_ok = w
                .url
                .strip_prefix("http://")
                .or_else(|| w.url.strip_prefix("https://"))
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if !host_ok {
                return bad(format!(
                    "url {:?} is not an http(s)://host[:port]/path URL",
                    w.url
                ));
            }
            let timeout_ms = w.timeout_ms.unwrap_or(5000);
            if !(1..=60_000).contains(&timeout_ms) {
                return bad(format!("timeoutMs must be 1..=60000, not {timeout_ms}"));
            }
            let retries = w.retries.unwrap_or(3);
            if retries > 10 {
                return bad(format!("retries must be at most 10, not {retries}"));
            }
            let mut headers: Vec<(String, String)> =
                w.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                headers.push(("content-type".into(), "application/json".into()));
            }
            Compiled::Webhook {
                url: w.url.clone(),
                headers,
                body: w
                    .body
                    .as_deref()
                    .map(|b| template(&format!("{at}.webhook.body"), b))
                    .transpose()?,
                timeout: std::time::Duration::from_millis(u64::from(timeout_ms)),
                retries,
            }
        }
        ActionSpec::Stream(st) => {
            let stream = template(&format!("{at}.stream.streamName"), &st.stream_name)?;
            if stream.is_static() {
                crate::stream::check_name("stream", &st.stream_name)
                    .map_err(|e| RuleError::Invalid(format!("{at}.stream.streamName: {e}")))?;
            }
            Compiled::Stream {
                stream,
                key: st
                    .partition_key
                    .as_deref()
                    .map(|k| template(&format!("{at}.stream.partitionKey"), k))
                    .transpose()?,
            }
        }
        ActionSpec::Http(h) => {
            if h.auth.is_some() {
                return Err(RuleError::Invalid(format!(
                    "{at}.http.auth: signing outgoing requests is not supported"
                )));
            }
            if h.enable_batching == Some(true) {
                return Err(RuleError::Invalid(format!(
                    "{at}.http.enableBatching: batching is not supported"
                )));
            }
            let webhook = ActionSpec::Webhook(WebhookSpec {
                url: h.url.clone(),
                headers: h
                    .headers
                    .iter()
                    .map(|x| (x.key.clone(), x.value.clone()))
                    .collect(),
                body: None,
                timeout_ms: None,
                retries: None,
            });
            compile_action(at, &webhook)?
        }
        ActionSpec::Email(e) => {
            if !(1..=50).contains(&e.to.len()) {
                return Err(RuleError::Invalid(format!(
                    "{at}.email.to needs 1 to 50 recipients, not {}",
                    e.to.len()
                )));
            }
            let retries = e.retries.unwrap_or(3);
            if retries > 10 {
                return Err(RuleError::Invalid(format!(
                    "{at}.email.retries must be at most 10, not {retries}"
                )));
            }
            Compiled::Email {
                to: e
                    .to
                    .iter()
                    .enumerate()
                    .map(|(i, t)| template(&format!("{at}.email.to[{i}]"), t))
                    .collect::<Result<_, _>>()?,
                subject: template(&format!("{at}.email.subject"), &e.subject)?,
                body: e
                    .body
                    .as_deref()
                    .map(|b| template(&format!("{at}.email.body"), b))
                    .transpose()?,
                retries,
            }
        }
    })
}

impl Rule {
    /// Checks and compiles a definition.
    pub fn compile(name: &str, payload: TopicRulePayload, created_ms: u64) -> Result<Rule, RuleError> {
        let name = RuleName::parse(name)?;
        if let Some(v) = &payload.aws_iot_sql_version
            && !matches!(v.as_str(), "2016-03-23" | "2015-10-08" | "beta")
        {
            return Err(RuleError::Invalid(format!(
                "awsIotSqlVersion {v:?} is not one of 2016-03-23, 2015-10-08, beta"
            )));
        }
        let sql = Sql::parse(&payload.sql).map_err(|e| RuleError::Invalid(format!("sql: {e}")))?;
        if sql.topic_filter().is_none() {
            return Err(RuleError::Invalid(
                "sql: the statement needs FROM '<topic filter>'".into(),
            ));
        }
        if payload.actions.len() > MAX_ACTIONS {
            return Err(RuleError::Invalid(format!(
                "a rule has at most {MAX_ACTIONS} actions, not {}",
                payload.actions.len()
            )));
        }
        if payload.description.as_ref().is_some_and(|d| d.len() > 2028) {
            return Err(RuleError::Invalid(
                "description is longer than 2028 characters".into(),
            ));
        }
        let actions = payload
            .actions
            .iter()
            .enumerate()
            .map(|(i, a)| Ok((a.clone(), compile_action(&format!("actions[{i}]"), a)?)))
            .collect::<Result<Vec<_>, RuleError>>()?;
        let error_action = payload
            .error_action
            .as_ref()
            .map(|a| Ok::<_, RuleError>((a.clone(), compile_action("errorAction", a)?)))
            .transpose()?;
        let waits = |c: &Compiled| matches!(c, Compiled::Plugin { .. } | Compiled::Shadow { .. });
        let inline = !sql.uses_thing_shadow()
            && !actions.iter().any(|(_, c)| waits(c))
            && !error_action.as_ref().is_some_and(|(_, c)| waits(c));
        Ok(Rule {
            name,
            created_ms,
            sql,
            actions,
            error_action,
            payload,
            inline,
        })
    }

    /// Whether the rule sees messages.
    pub fn enabled(&self) -> bool {
        !self.payload.rule_disabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(json: &str) -> TopicRulePayload {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn aws_shaped_definitions_compile() {
        let p = payload(
            r#"{"sql":"SELECT temp FROM 'fleet/+/telemetry' WHERE temp > -15","ruleDisabled":false,
                "awsIotSqlVersion":"2016-03-23",
                "actions":[{"republish":{"topic":"alerts/${topic(2)}","qos":1,"roleArn":"arn:x"}},
                           {"plugin":{"name":"threshold-alert"}},
                           {"shadow":{"thingName":"${topic(2)}"}},
                           {"kinesis":{"streamName":"telemetry","partitionKey":"${topic(2)}","roleArn":"arn:y"}},
                           {"stream":{"streamName":"t-${topic(2)}"}}],
                "errorAction":{"republish":{"topic":"errors"}}}"#,
        );
        let rule = Rule::compile("cold_chain", p, 0).unwrap();
        assert_eq!(rule.actions.len(), 5);
        assert_eq!(rule.actions[3].0.kind(), "stream");
        assert!(rule.error_action.is_some());
        assert!(rule.enabled());
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        let cases = [
            ("bad-name", r#"{"sql":"SELECT * FROM 'a'"}"#, "invalid rule name"),
            ("r", r#"{"sql":"SELECT * FROM 'a' WHER x"}"#, "sql:"),
            ("r", r#"{"sql":"SELECT 1"}"#, "FROM"),
            (
                "r",
                r#"{"sql":"SELECT * FROM 'a'","awsIotSqlVersion":"2099"}"#,
                "awsIotSqlVersion",
            ),
            (
                "r",
                r#"{"sql":"SELECT * FROM 'a'","actions":[{"republish":{"topic":"a/#"}}]}"#,
                "filter",
            ),
            (
                "r",
                r#"{"sql":"SELECT * FROM 'a'","actions":[{"republish":{"topic":"x","qos":2}}]}"#,
                "qos",
            ),
            (
                "r",
                r#"{"sql":"SELECT * FROM 'a'","actions":[{"republish":{"topic":"${"}}]}"#,
                "actions[0]",
            ),
            (
                "r",
                r#"{"sql":"SELECT * FROM 'a'","actions":[{"plugin":{"name":"a b"}}]}"#,
                "plugin name",
            ),
            (
                "r",
                r#"{"sql":"SELECT * FROM 'a'","actions":[{"stream":{"streamName":"a/b"}}]}"#,
                "invalid stream name",
            ),
        ];
        for (name, json, want) in cases {
            let err = Rule::compile(name, payload(json), 0).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        let eleven = format!(
            r#"{{"sql":"SELECT * FROM 'a'","actions":[{}]}}"#,
            [r#"{"republish":{"topic":"x"}}"#; 11].join(",")
        );
        assert!(Rule::compile("r", payload(&eleven), 0).is_err());
        assert!(
            serde_json::from_str::<TopicRulePayload>(r#"{"sql":"x","actions":[{"lambda":{}}]}"#).is_err()
        );
    }
}
