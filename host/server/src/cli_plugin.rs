//! Operator verbs for WebAssembly plugins: `shoal plugin deploy|list|show|versions|activate|
//! rollback|delete|logs|invoke|replay`.
//!
//! Each verb is one call to the plugin API under `/api/v1/plugins` (see `api/plugins.rs`) and
//! prints its JSON answer, except two that people read more than scripts do: `logs` prints one
//! line per log entry and `replay` prints only the messages on which a candidate version and
//! the active one disagree, as a diff; `--json` gives either the raw answer. `deploy` sends the
//! component base64-encoded in a JSON body (not the raw-bytes form of the upload) because that
//! form also carries the configuration and the activate flag in one request.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::cli::{Api, Endpoint, encode, print_json, print_text, read_arg, runtime, send};

/// `KEY=VALUE` on the command line.
fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// `shoal plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCmd {
    /// Upload a component as the plugin's next version (created on first upload).
    Deploy {
        /// Plugin name (`[A-Za-z0-9_-]{1,64}`).
        name: String,
        /// The WebAssembly component (`.wasm`).
        file: PathBuf,
        /// A setting handed to the plugin's `init`, `KEY=VALUE` (repeatable; appended to the
        /// `settings` of `--config`).
        #[arg(long = "set", value_parser = parse_kv)]
        settings: Vec<(String, String)>,
        /// A JSON object of version settings and limits, e.g.
        /// `{"deadline_ms":20,"settings":[["field","temp"]]}`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Make the new version the active one.
        #[arg(long)]
        activate: bool,
    },
    /// List plugins and their health.
    List,
    /// Print a plugin's health and versions.
    Show {
        /// Plugin name.
        name: String,
    },
    /// List a plugin's versions.
    Versions {
        /// Plugin name.
        name: String,
    },
    /// Make a version the active one (this also lifts its suspension).
    Activate {
        /// Plugin name.
        name: String,
        /// Version number.
        version: u32,
    },
    /// Go back to the previously active version.
    Rollback {
        /// Plugin name.
        name: String,
    },
    /// Delete a version that is not active.
    Delete {
        /// Plugin name.
        name: String,
        /// Version number.
        version: u32,
    },
    /// Print a plugin's recent log lines, oldest first.
    Logs {
        /// Plugin name.
        name: String,
        /// At most this many lines (the server's default is 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Print the API's JSON answer instead of one line per entry.
        #[arg(long)]
        json: bool,
    },
    /// Run one message through a plugin (without publishing what it returns).
    Invoke {
        /// Plugin name.
        name: String,
        /// The message's topic.
        #[arg(long)]
        topic: String,
        /// The payload text; `-` reads standard input.
        #[arg(long, conflicts_with = "payload_file")]
        payload: Option<String>,
        /// Read the payload from this file (any bytes).
        #[arg(long)]
        payload_file: Option<PathBuf>,
        /// Call this version instead of the active one.
        #[arg(long)]
        version: Option<u32>,
        /// The sending client's id as the plugin sees it.
        #[arg(long)]
        client_id: Option<String>,
        /// The registry thing of the sending connection.
        #[arg(long)]
        thing: Option<String>,
    },
    /// Run recorded messages through a candidate version and the active one, and show where
    /// their outcomes differ.
    Replay {
        /// Plugin name.
        name: String,
        /// The candidate version.
        #[arg(long)]
        version: u32,
        /// One message per line as JSON (`{"topic":..,"payload":..}`, as for `invoke`); `-`
        /// reads standard input.
        #[arg(long)]
        input: PathBuf,
        /// Print the API's JSON answer instead of the differences.
        #[arg(long)]
        json: bool,
    },
}

/// What a verb prints on success.
enum Output {
    /// The API's answer, pretty-printed (nothing for an empty answer).
    Json(Value),
    /// Text for people.
    Text(String),
}

/// `/plugins/NAME` plus `rest`.
fn plugin_path(name: &str, rest: &str) -> String {
    format!("/plugins/{}{rest}", encode(name))
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// The file's bytes, or standard input's for `-`.
fn read_input(path: &Path) -> Result<Vec<u8>, String> {
    if path.as_os_str() == "-" {
        read_arg("-").map(String::into_bytes)
    } else {
        read_file(path)
    }
}

/// The upload's `config`: the `--config` object (if any) with the `--set` pairs appended to its
/// `settings`; `None` when neither was given (the server's defaults apply).
fn deploy_config(file: Option<&Value>, sets: &[(String, String)]) -> Result<Option<Value>, String> {
    let mut config = match file {
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("the --config file must hold a JSON object".to_owned()),
        None if sets.is_empty() => return Ok(None),
        None => Map::new(),
    };
    if !sets.is_empty() {
        let settings = config
            .entry("settings")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(list) = settings else {
            return Err("`settings` in the --config file must be a list of [key, value] pairs".to_owned());
        };
        list.extend(sets.iter().map(|(k, v)| json!([k, v])));
    }
    Ok(Some(Value::Object(config)))
}

fn deploy_body(
    wasm: &[u8],
    config_file: Option<&Path>,
    sets: &[(String, String)],
    activate: bool,
) -> Result<Value, String> {
    let file = config_file
        .map(|p| {
            let bytes = read_file(p)?;
            serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("{} is not JSON: {e}", p.display()))
        })
        .transpose()?;
    let mut body = json!({ "wasmBase64": BASE64.encode(wasm), "activate": activate });
    if let Some(config) = deploy_config(file.as_ref(), sets)? {
        body["config"] = config;
    }
    Ok(body)
}

/// The message `invoke` sends: the payload as text when it is UTF-8, else base64.
fn invoke_message(topic: &str, payload: Vec<u8>, client_id: Option<&str>, thing: Option<&str>) -> Value {
    let mut msg = json!({ "topic": topic });
    match String::from_utf8(payload) {
        Ok(text) => msg["payload"] = json!(text),
        Err(e) => msg["payloadBase64"] = json!(BASE64.encode(e.as_bytes())),
    }
    if let Some(c) = client_id {
        msg["clientId"] = json!(c);
    }
    if let Some(t) = thing {
        msg["thingName"] = json!(t);
    }
    msg
}

/// Unix milliseconds as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ` (civil-from-days, H. Hinnant), so the
/// CLI needs no date crate for one format.
fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let rem = secs % 86_400;
    let (year, month, day) = shoal_rules::sql::civil_from_days((secs / 86_400) as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// One line per entry of a `logs` answer: `<time> v<version> <LEVEL> <message>`.
fn render_logs(v: &Value) -> String {
    let mut out = String::new();
    for line in v.get("lines").and_then(Value::as_array).into_iter().flatten() {
        let at = match line.get("at_ms").and_then(Value::as_u64) {
            Some(ms) => format_ms(ms),
            None => "-".to_owned(),
        };
        let version = line
            .get("version")
            .map_or_else(|| "?".to_owned(), Value::to_string);
        let level = line
            .get("level")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_ascii_uppercase();
        let message = line.get("message").and_then(Value::as_str).unwrap_or("");
        let _ = writeln!(out, "{at} v{version} {level:<5} {message}");
    }
    out
}

fn compact(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(none)".to_owned(),
        Some(v) => v.to_string(),
    }
}

/// The differing results of a `replay` answer as a diff, then a summary line.
fn render_replay(v: &Value) -> String {
    let mut out = String::new();
    let results = v.get("results").and_then(Value::as_array);
    for r in results.into_iter().flatten() {
        if r.get("same").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let line = r.get("line").map_or_else(|| "?".to_owned(), Value::to_string);
        let topic = r.get("topic").and_then(Value::as_str).unwrap_or("");
        let _ = writeln!(out, "line {line}: {topic}");
        let _ = writeln!(out, "- active:    {}", compact(r.get("active")));
        let _ = writeln!(out, "+ candidate: {}", compact(r.get("candidate")));
    }
    let count = |k: &str| {
        v.get("summary")
            .and_then(|s| s.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let candidate = compact(v.get("candidate"));
    let against = match v.get("active") {
        None | Some(Value::Null) => format!("candidate v{candidate}, no active version"),
        Some(a) => format!("candidate v{candidate} vs active v{a}"),
    };
    let _ = writeln!(
        out,
        "{} messages, {} same, {} different ({against})",
        count("messages"),
        count("same"),
        count("different")
    );
    out
}

/// Runs `shoal plugin ...`.
pub fn plugin(ep: &Endpoint, cmd: PluginCmd) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(c) => return c,
    };
    let api = Api::new(ep);
    match rt.block_on(call(&api, cmd)) {
        Ok(Output::Json(v)) => {
            print_json(&v);
            ExitCode::SUCCESS
        }
        Ok(Output::Text(t)) => {
            print_text(&t);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn call(api: &Api, cmd: PluginCmd) -> Result<Output, String> {
    let v = match cmd {
        PluginCmd::Deploy {
            name,
            file,
            settings,
            config,
            activate,
        } => {
            let body = deploy_body(&read_file(&file)?, config.as_deref(), &settings, activate)?;
            api.post_query(&plugin_path(&name, "/versions"), &[], &body)
                .await?
        }
        PluginCmd::List => api.get("/plugins", &[]).await?,
        PluginCmd::Show { name } => api.get(&plugin_path(&name, ""), &[]).await?,
        PluginCmd::Versions { name } => api.get(&plugin_path(&name, "/versions"), &[]).await?,
        PluginCmd::Activate { name, version } => {
            let path = plugin_path(&name, &format!("/versions/{version}/activate"));
            api.post_query(&path, &[], &json!({})).await?
        }
        PluginCmd::Rollback { name } => {
            api.post_query(&plugin_path(&name, "/rollback"), &[], &json!({}))
                .await?
        }
        PluginCmd::Delete { name, version } => {
            api.delete(&plugin_path(&name, &format!("/versions/{version}")), &[])
                .await?
        }
        PluginCmd::Logs { name, limit, json } => {
            let query: Vec<String> = limit.map(|n| format!("limit={n}")).into_iter().collect();
            let v = api.get(&plugin_path(&name, "/logs"), &query).await?;
            return Ok(if json {
                Output::Json(v)
            } else {
                Output::Text(render_logs(&v))
            });
        }
        PluginCmd::Invoke {
            name,
            topic,
            payload,
            payload_file,
            version,
            client_id,
            thing,
        } => {
            let bytes = match (payload, payload_file) {
                (Some(p), _) => read_arg(&p)?.into_bytes(),
                (None, Some(f)) => read_file(&f)?,
                (None, None) => Vec::new(),
            };
            let msg = invoke_message(&topic, bytes, client_id.as_deref(), thing.as_deref());
            let query: Vec<String> = version.map(|v| format!("version={v}")).into_iter().collect();
            api.post_query(&plugin_path(&name, "/invoke"), &query, &msg)
                .await?
        }
        PluginCmd::Replay {
            name,
            version,
            input,
            json,
        } => {
            let body = read_input(&input)?;
            let url = api.url(&plugin_path(&name, "/replay"), &[format!("version={version}")]);
            let req = api
                .http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(body);
            let v = send(req).await?;
            return Ok(if json {
                Output::Json(v)
            } else {
                Output::Text(render_replay(&v))
            });
        }
    };
    Ok(Output::Json(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_and_set_pairs_merge() {
        let sets = [("max".to_owned(), "5".to_owned())];
        assert_eq!(deploy_config(None, &[]), Ok(None));
        assert_eq!(
            deploy_config(None, &sets),
            Ok(Some(json!({"settings": [["max", "5"]]})))
        );
        let file = json!({"deadline_ms": 20, "settings": [["field", "temp"]]});
        assert_eq!(
            deploy_config(Some(&file), &sets),
            Ok(Some(
                json!({"deadline_ms": 20, "settings": [["field", "temp"], ["max", "5"]]})
            ))
        );
        assert_eq!(deploy_config(Some(&file), &[]), Ok(Some(file.clone())));
        assert!(deploy_config(Some(&json!([1])), &[]).is_err());
        assert!(deploy_config(Some(&json!({"settings": {}})), &sets).is_err());
    }

    #[test]
    fn invoke_payload_is_text_or_base64() {
        let m = invoke_message("a/b", b"{\"t\":1}".to_vec(), Some("c1"), None);
        assert_eq!(
            m,
            json!({"topic": "a/b", "payload": "{\"t\":1}", "clientId": "c1"})
        );
        let m = invoke_message("a/b", vec![0xff, 0x00], None, Some("truck-1"));
        assert_eq!(
            m,
            json!({"topic": "a/b", "payloadBase64": "/wA=", "thingName": "truck-1"})
        );
    }

    #[test]
    fn milliseconds_format_as_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_ms(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
    }

    #[test]
    fn log_lines_for_people() {
        let v = json!({"lines": [
            {"at_ms": 0, "version": 2, "level": "info", "message": "hello"},
            {"at_ms": 1, "version": 3, "level": "warn", "message": "careful"},
        ]});
        assert_eq!(
            render_logs(&v),
            "1970-01-01T00:00:00.000Z v2 INFO  hello\n1970-01-01T00:00:00.001Z v3 WARN  careful\n"
        );
        assert_eq!(render_logs(&json!({"lines": []})), "");
    }

    #[test]
    fn replay_shows_only_differences() {
        let v = json!({
            "candidate": 2, "active": 1,
            "results": [
                {"line": 1, "topic": "a", "candidate": {"outcome": "ok", "actions": []},
                 "active": {"outcome": "ok", "actions": []}, "same": true},
                {"line": 2, "topic": "b", "candidate": {"outcome": "rejected", "reason": "no"},
                 "active": {"outcome": "ok", "actions": []}, "same": false},
            ],
            "summary": {"messages": 2, "same": 1, "different": 1},
        });
        assert_eq!(
            render_replay(&v),
            "line 2: b\n\
             - active:    {\"actions\":[],\"outcome\":\"ok\"}\n\
             + candidate: {\"outcome\":\"rejected\",\"reason\":\"no\"}\n\
             2 messages, 1 same, 1 different (candidate v2 vs active v1)\n"
        );
        let none = json!({"candidate": 1, "active": null, "results": [],
                          "summary": {"messages": 0, "same": 0, "different": 0}});
        assert_eq!(
            render_replay(&none),
            "0 messages, 0 same, 0 different (candidate v1, no active version)\n"
        );
    }
}
