//! Operator verbs for rules: `shoal rule list|get|create|replace|delete|enable|disable`.
//!
//! Each verb is one call to the rules API under `/api/v1/rules` (see `api/rules.rs`) and prints
//! its JSON answer. `create` and `replace` take the definition either whole, as AWS's
//! `TopicRulePayload` JSON in a file (so an AWS rule carries over, and so does what `shoal rule
//! get` printed, after editing), or built from flags for the common cases: `--sql` plus
//! `--republish`, `--shadow`, `--plugin`, `--archive`, `--webhook`, `--stream` and `--email` actions. The flags are parsed into the
//! `shoal_rules` types here, at the edge, so a mistake such as `--republish alerts:2` is
//! refused before anything is sent; everything the types cannot see (the SQL, templates, names)
//! is checked by the server, whose message is printed as is.
//!
//! Actions run in the order they were given on the command line, across kinds. Clap's derive
//! keeps each repeated flag's values but not how the three flags interleave, so
//! [`Definition`] reads their positions from the argument matches itself.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgMatches, Args, FromArgMatches, Subcommand};
use serde_json::Value;
use shoal_rules::rule::{
    ArchiveSpec, EmailSpec, PluginSpec, RepublishSpec, ShadowSpec, StreamSpec, WebhookSpec,
};
use shoal_rules::{ActionSpec, TopicRulePayload};

use crate::cli::{Endpoint, encode, finish, read_arg, runtime, send};

/// `shoal rule ...`
#[derive(Debug, Subcommand)]
pub enum RuleCmd {
    /// List the rules with their definitions and counters.
    List,
    /// Print one rule: its definition and counters.
    Get {
        /// Rule name.
        name: String,
    },
    /// Create a rule (fails if the name is taken).
    Create {
        /// Rule name (1-128 of `[a-zA-Z0-9_]`).
        name: String,
        #[command(flatten)]
        definition: Definition,
    },
    /// Replace a rule's definition (its counters start over).
    Replace {
        /// Rule name.
        name: String,
        #[command(flatten)]
        definition: Definition,
    },
    /// Delete a rule.
    Delete {
        /// Rule name.
        name: String,
    },
    /// Enable a rule: it sees messages again.
    Enable {
        /// Rule name.
        name: String,
    },
    /// Disable a rule: it keeps its definition but sees no messages.
    Disable {
        /// Rule name.
        name: String,
    },
}

/// The definition flags as clap sees them; [`Definition`] adds the order of the actions.
#[derive(Debug, Args)]
struct DefinitionFlags {
    /// The definition as JSON: an AWS `TopicRulePayload` (`{"sql": .., "actions": [..], ..}`) or
    /// what `shoal rule get` prints; `-` reads standard input.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["sql", "republish", "shadow", "plugin", "archive", "webhook", "stream", "email", "error_republish", "description", "disabled"]
    )]
    file: Option<PathBuf>,
    /// The statement: `SELECT ... FROM '<topic filter>' [WHERE ...]`.
    #[arg(long, required_unless_present = "file")]
    sql: Option<String>,
    /// Republish the selected document to TOPIC (`${...}` templates allowed), QoS 0 unless
    /// `:1` follows (repeatable).
    #[arg(long, value_name = "TOPIC[:QOS]", value_parser = parse_republish)]
    republish: Vec<RepublishSpec>,
    /// Update the classic shadow of this thing (`${topic(2)}` templates allowed) with the
    /// selected document, which must be a shadow request document (repeatable).
    #[arg(long, value_name = "THING_TEMPLATE")]
    shadow: Vec<String>,
    /// Hand the selected document to the active version of this plugin and run the actions it
    /// returns (repeatable).
    #[arg(long, value_name = "NAME")]
    plugin: Vec<String>,
    /// Append the selected document to the rule's archive, as JSON lines (`--archive` or
    /// `--archive=jsonl`: `DATA/archive/{rule}/{day}.jsonl`) or Parquet (`--archive=parquet`:
    /// `DATA/archive/{rule}/{day}/part-{unix ms}.parquet`).
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, require_equals = true,
          default_missing_value = "jsonl", value_parser = ["jsonl", "parquet"])]
    archive: Option<String>,
    /// With `--archive=parquet`: rows per file (default 10000).
    #[arg(long, value_name = "ROWS", requires = "archive")]
    archive_buffer_rows: Option<u64>,
    /// With `--archive=parquet`: write a file once its oldest row is this old (default 60).
    #[arg(long, value_name = "SECONDS", requires = "archive")]
    archive_buffer_seconds: Option<u64>,
    /// POST the selected document to this http:// URL (5 s timeout, 3 retries; repeatable).
    #[arg(long, value_name = "URL")]
    webhook: Vec<String>,
    /// Append the selected document to this stream (`${...}` templates allowed; the partition
    /// key is the publisher's client id; repeatable).
    #[arg(long, value_name = "STREAM")]
    stream: Vec<String>,
    /// Email the selected document to these comma-separated addresses through the configured
    /// SMTP relay, with the subject `--email-subject` (repeatable).
    #[arg(long, value_name = "ADDRESSES")]
    email: Vec<String>,
    /// Subject of the `--email` actions (`${...}` templates allowed).
    #[arg(long, default_value = "Shoal rule ${topic()}")]
    email_subject: String,
    /// When an action fails, republish AWS's error document to TOPIC (`:1` for QoS 1).
    #[arg(long, value_name = "TOPIC[:QOS]", value_parser = parse_republish)]
    error_republish: Option<RepublishSpec>,
    /// Free text.
    #[arg(long)]
    description: Option<String>,
    /// Define the rule disabled: it keeps its definition but sees no messages.
    #[arg(long)]
    disabled: bool,
}

/// The kinds of action flags, for their command-line order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Republish,
    Shadow,
    Plugin,
    Archive,
    Webhook,
    Stream,
    Email,
}

/// A rule definition from the command line: the flags, plus the order in which the action flags
/// were given (`(kind, index among that kind's values)`, sorted by position).
#[derive(Debug)]
pub struct Definition {
    flags: DefinitionFlags,
    order: Vec<(Kind, usize)>,
}

impl FromArgMatches for Definition {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let flags = DefinitionFlags::from_arg_matches(m)?;
        let mut positioned: Vec<(usize, Kind, usize)> = Vec::new();
        for (id, kind) in [
            ("republish", Kind::Republish),
            ("shadow", Kind::Shadow),
            ("plugin", Kind::Plugin),
            ("archive", Kind::Archive),
            ("webhook", Kind::Webhook),
            ("stream", Kind::Stream),
            ("email", Kind::Email),
        ] {
            if let Some(positions) = m.indices_of(id) {
                positioned.extend(positions.enumerate().map(|(i, at)| (at, kind, i)));
            }
        }
        positioned.sort_by_key(|&(at, _, _)| at);
        Ok(Definition {
            flags,
            order: positioned.into_iter().map(|(_, k, i)| (k, i)).collect(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Definition::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for Definition {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        DefinitionFlags::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        DefinitionFlags::augment_args_for_update(cmd)
    }
}

/// `TOPIC[:QOS]`: a last `:` followed by digits is the QoS (0 or 1); any other `:` belongs to
/// the topic.
fn parse_republish(s: &str) -> Result<RepublishSpec, String> {
    let (topic, qos) = match s.rsplit_once(':') {
        Some((topic, q)) if !q.is_empty() && q.bytes().all(|b| b.is_ascii_digit()) => match q {
            "0" => (topic, 0),
            "1" => (topic, 1),
            _ => return Err(format!("the QoS after `:` must be 0 or 1, not {q}")),
        },
        _ => (s, 0),
    };
    if topic.is_empty() {
        return Err("the topic is empty".to_owned());
    }
    Ok(RepublishSpec {
        topic: topic.to_owned(),
        qos,
        role_arn: None,
    })
}

/// What `create`/`replace` send.
fn build_payload(flags: &DefinitionFlags, order: &[(Kind, usize)]) -> Result<Value, String> {
    if let Some(path) = &flags.file {
        return payload_from_file(path);
    }
    let Some(sql) = &flags.sql else {
        return Err("give --sql (with actions as flags) or --file".to_owned());
    };
    let actions = order
        .iter()
        .filter_map(|&(kind, i)| match kind {
            Kind::Republish => flags.republish.get(i).cloned().map(ActionSpec::Republish),
            Kind::Shadow => flags.shadow.get(i).map(|thing| {
                ActionSpec::Shadow(ShadowSpec {
                    thing_name: thing.clone(),
                    shadow_name: None,
                })
            }),
            Kind::Plugin => flags
                .plugin
                .get(i)
                .map(|name| ActionSpec::Plugin(PluginSpec { name: name.clone() })),
            Kind::Archive => flags.archive.as_ref().map(|format| {
                ActionSpec::Archive(ArchiveSpec {
                    format: (format != "jsonl").then(|| format.clone()),
                    buffer_rows: flags.archive_buffer_rows,
                    buffer_seconds: flags.archive_buffer_seconds,
                })
            }),
            Kind::Webhook => flags.webhook.get(i).map(|url| {
                ActionSpec::Webhook(WebhookSpec {
                    url: url.clone(),
                    headers: Default::default(),
                    body: None,
                    timeout_ms: None,
                    retries: None,
                })
            }),
            Kind::Stream => flags.stream.get(i).map(|name| {
                ActionSpec::Stream(StreamSpec {
                    stream_name: name.clone(),
                    partition_key: Some("${clientid()}".into()),
                    role_arn: None,
                })
            }),
            Kind::Email => flags.email.get(i).map(|to| {
                ActionSpec::Email(EmailSpec {
                    to: to.split(',').map(|a| a.trim().to_string()).collect(),
                    subject: flags.email_subject.clone(),
                    body: None,
                    retries: None,
                })
            }),
        })
        .collect();
    let payload = TopicRulePayload {
        sql: sql.clone(),
        description: flags.description.clone(),
        actions,
        rule_disabled: flags.disabled,
        aws_iot_sql_version: None,
        error_action: flags.error_republish.clone().map(ActionSpec::Republish),
    };
    serde_json::to_value(&payload).map_err(|e| format!("encoding the rule: {e}"))
}

/// The definition in a file (`-`: standard input). What `shoal rule get` prints is accepted too:
/// its `topicRulePayload` is the definition. The rest is left to the server to judge, so its
/// message names what is wrong.
fn payload_from_file(path: &Path) -> Result<Value, String> {
    let text = if path.as_os_str() == "-" {
        read_arg("-")?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?
    };
    let shown = if path.as_os_str() == "-" {
        "standard input".to_owned()
    } else {
        path.display().to_string()
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(mut m)) => match m.remove("topicRulePayload") {
            Some(inner @ Value::Object(_)) => Ok(inner),
            Some(_) => Err(format!("{shown}: topicRulePayload is not an object")),
            None => Ok(Value::Object(m)),
        },
        Ok(_) => Err(format!("{shown} must hold a JSON object (a TopicRulePayload)")),
        Err(e) => Err(format!("{shown} is not JSON: {e}")),
    }
}

/// Runs `shoal rule ...`.
pub fn rule(ep: &Endpoint, cmd: RuleCmd) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(c) => return c,
    };
    let base = format!("{}/api/v1/rules", ep.endpoint.trim_end_matches('/'));
    let url = |name: &str, rest: &str| format!("{base}/{}{rest}", encode(name));
    let http = crate::cli::http_client();
    let request = match cmd {
        RuleCmd::List => Ok(http.get(&base)),
        RuleCmd::Get { name } => Ok(http.get(url(&name, ""))),
        RuleCmd::Create { name, definition } => build_payload(&definition.flags, &definition.order)
            .map(|body| http.post(url(&name, "")).json(&body)),
        RuleCmd::Replace { name, definition } => build_payload(&definition.flags, &definition.order)
            .map(|body| http.put(url(&name, "")).json(&body)),
        RuleCmd::Delete { name } => Ok(http.delete(url(&name, ""))),
        RuleCmd::Enable { name } => Ok(http.post(url(&name, "/enable"))),
        RuleCmd::Disable { name } => Ok(http.post(url(&name, "/disable"))),
    };
    match request {
        Ok(req) => finish(&rt, send(req)),
        Err(e) => {
            eprintln!("shoal: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: RuleCmd,
    }

    /// The payload `shoal rule create r ARGS...` would send.
    fn payload(args: &[&str]) -> Result<Value, String> {
        let cli = Cli::try_parse_from(["shoal", "create", "r"].iter().chain(args))
            .map_err(|e| e.kind().to_string())?;
        match cli.cmd {
            RuleCmd::Create { definition, .. } => build_payload(&definition.flags, &definition.order),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn flags_build_an_aws_payload_with_actions_in_command_line_order() {
        let p = payload(&[
            "--sql",
            "SELECT temp FROM 'fleet/+/telemetry' WHERE temp > -15",
            "--plugin",
            "threshold-alert",
            "--republish",
            "alerts/${topic(2)}:1",
            "--shadow",
            "${topic(2)}",
            "--republish",
            "archive/${topic()}",
            "--plugin",
            "debounce",
            "--error-republish",
            "rule/errors",
            "--description",
            "cold chain",
            "--disabled",
        ])
        .unwrap();
        assert_eq!(
            p,
            json!({
                "sql": "SELECT temp FROM 'fleet/+/telemetry' WHERE temp > -15",
                "description": "cold chain",
                "actions": [
                    {"plugin": {"name": "threshold-alert"}},
                    {"republish": {"topic": "alerts/${topic(2)}", "qos": 1}},
                    {"shadow": {"thingName": "${topic(2)}"}},
                    {"republish": {"topic": "archive/${topic()}", "qos": 0}},
                    {"plugin": {"name": "debounce"}},
                ],
                "ruleDisabled": true,
                "errorAction": {"republish": {"topic": "rule/errors", "qos": 0}},
            })
        );
        // What the flags build is what the server's type reads back.
        let typed: TopicRulePayload = serde_json::from_value(p).unwrap();
        assert_eq!(typed.actions.len(), 5);
    }

    #[test]
    fn archive_flag_takes_an_optional_format_after_an_equals_sign() {
        let actions = |args: &[&str]| {
            let all: Vec<&str> = ["--sql", "SELECT * FROM 'a'"]
                .iter()
                .chain(args)
                .copied()
                .collect();
            payload(&all).map(|p| p["actions"].clone())
        };
        assert_eq!(actions(&["--archive"]), Ok(json!([{"archive": {}}])));
        assert_eq!(actions(&["--archive=jsonl"]), Ok(json!([{"archive": {}}])));
        assert_eq!(
            actions(&[
                "--archive=parquet",
                "--archive-buffer-rows",
                "5",
                "--archive-buffer-seconds",
                "2"
            ]),
            Ok(json!([{"archive": {"format": "parquet", "bufferRows": 5, "bufferSeconds": 2}}]))
        );
        assert!(actions(&["--archive=csv"]).is_err());
        assert!(actions(&["--archive-buffer-rows", "5"]).is_err());
        // `--archive` does not swallow the argument after it.
        let cli = Cli::try_parse_from([
            "shoal",
            "create",
            "--archive",
            "cold",
            "--sql",
            "SELECT * FROM 'a'",
        ])
        .unwrap();
        match cli.cmd {
            RuleCmd::Create { name, definition } => {
                assert_eq!(name, "cold");
                assert_eq!(definition.flags.archive.as_deref(), Some("jsonl"));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn sql_alone_is_a_rule_without_actions() {
        assert_eq!(
            payload(&["--sql", "SELECT * FROM 'a'"]).unwrap(),
            json!({"sql": "SELECT * FROM 'a'", "actions": [], "ruleDisabled": false})
        );
    }

    #[test]
    fn republish_qos_suffix() {
        let spec = |s| parse_republish(s).map(|r| (r.topic, r.qos));
        assert_eq!(spec("a/b"), Ok(("a/b".to_owned(), 0)));
        assert_eq!(spec("a/b:0"), Ok(("a/b".to_owned(), 0)));
        assert_eq!(spec("a/b:1"), Ok(("a/b".to_owned(), 1)));
        assert_eq!(
            spec("urn:x:${topic(2)}"),
            Ok(("urn:x:${topic(2)}".to_owned(), 0)),
            "a colon not followed by digits is part of the topic"
        );
        assert_eq!(spec("a:b:1"), Ok(("a:b".to_owned(), 1)));
        assert_eq!(spec("a/b:"), Ok(("a/b:".to_owned(), 0)));
        assert!(spec("a/b:2").is_err());
        assert!(spec(":1").is_err());
        assert!(spec("").is_err());
    }

    #[test]
    fn file_and_flags_exclude_each_other_and_one_is_needed() {
        assert!(payload(&["--file", "r.json", "--sql", "SELECT * FROM 'a'"]).is_err());
        assert!(payload(&["--file", "r.json", "--republish", "x"]).is_err());
        assert!(payload(&["--republish", "x"]).is_err(), "no --sql");
        assert!(payload(&["--sql", "SELECT * FROM 'a'", "--republish", "x:2"]).is_err());
    }

    #[test]
    fn a_file_holds_a_payload_or_what_get_printed() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.json");
        let def = json!({"sql": "SELECT * FROM 'a'", "actions": [{"lambda": {}}]});
        std::fs::write(&plain, def.to_string()).unwrap();
        assert_eq!(
            payload_from_file(&plain),
            Ok(def.clone()),
            "passed on as is: the server judges it"
        );

        let shown = dir.path().join("shown.json");
        let info = json!({"ruleName": "r", "topicRulePayload": def, "createdAtMs": 1, "stats": {}});
        std::fs::write(&shown, info.to_string()).unwrap();
        assert_eq!(payload_from_file(&shown), Ok(def));

        let list = dir.path().join("list.json");
        std::fs::write(&list, "[1]").unwrap();
        assert!(payload_from_file(&list).unwrap_err().contains("JSON object"));
        let junk = dir.path().join("junk.json");
        std::fs::write(&junk, "{oops").unwrap();
        assert!(payload_from_file(&junk).unwrap_err().contains("not JSON"));
        let missing = dir.path().join("missing.json");
        assert!(payload_from_file(&missing).unwrap_err().contains("missing.json"));

        let cli = Cli::try_parse_from(["shoal", "replace", "r", "--file", plain.to_str().unwrap()]).unwrap();
        let RuleCmd::Replace { definition, .. } = cli.cmd else {
            panic!("not a replace");
        };
        assert!(build_payload(&definition.flags, &definition.order).is_ok());
    }
}
