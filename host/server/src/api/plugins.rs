//! Shoal's management API for WebAssembly plugins, under `/api/v1/plugins`: upload versions,
//! activate, roll back, delete, read health and logs, call a version by hand, and replay a
//! recording through a candidate version beside the active one before activating it.
//!
//! Compiling an upload and starting a version (instantiation and `init`) take milliseconds of
//! CPU, and a plugin call may block for its deadline: all of it runs on tokio's blocking pool,
//! never on the executor threads that serve HTTP and MQTT.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_plugin_host::{Action, CatalogError, Message, Outcome, PluginConfig, PluginHost};

use super::auth::{MAX_REPLAY_BODY, MAX_UPLOAD_BODY};
use super::error::ApiError;
use super::openapi::{Api, Op};
use super::registry::AwsQuery;
use super::{AppState, blocking};

/// Most messages one replay runs.
const MAX_REPLAY_MESSAGES: usize = 10_000;

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let (status, error_type) = match &e {
            CatalogError::UnknownPlugin(_) | CatalogError::UnknownVersion { .. } => {
                (StatusCode::NOT_FOUND, "ResourceNotFoundException")
            }
            CatalogError::VersionActive { .. } | CatalogError::NoPreviousVersion(_) => {
                (StatusCode::CONFLICT, "ConflictException")
            }
            CatalogError::Artifact { .. } | CatalogError::Store(_) | CatalogError::Host(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailureException")
            }
            _ => (StatusCode::BAD_REQUEST, "InvalidRequestException"),
        };
        ApiError {
            status,
            error_type,
            body: json!({ "message": e.to_string() }),
        }
    }
}

/// Routes.
pub fn routes() -> Api {
    Api::new("plugins")
        .param("name", "^[A-Za-z0-9_-]{1,64}$")
        .param("version", "^[0-9]{1,9}$")
        .op(
            Op::get("/api/v1/plugins", "ListPlugins", "List plugins with their active version and health."),
            list_plugins,
        )
        .op(
            Op::get("/api/v1/plugins/{name}", "DescribePlugin", "A plugin's versions, health and limits."),
            describe_plugin,
        )
        .op(
            Op::get("/api/v1/plugins/{name}/versions", "ListPluginVersions", "A plugin's versions."),
            list_versions,
        )
        .route(
            Op::post(
                "/api/v1/plugins/{name}/versions",
                "UploadPluginVersion",
                "Upload a component (.wasm bytes, or JSON with wasmBase64): validated, compiled, stored as the next version.",
            )
            .query::<UploadQuery>()
            .body::<UploadJson>()
            .raw_body("application/wasm")
            .status(201),
            post(upload_version).layer(DefaultBodyLimit::max(MAX_UPLOAD_BODY)),
        )
        .op(
            Op::get(
                "/api/v1/plugins/{name}/versions/{version}",
                "DescribePluginVersion",
                "One version: hash, imports, limits, state.",
            ),
            describe_version,
        )
        .op(
            Op::delete(
                "/api/v1/plugins/{name}/versions/{version}",
                "DeletePluginVersion",
                "Delete a version that is not active.",
            )
            .empty(204),
            delete_version,
        )
        .op(
            Op::post(
                "/api/v1/plugins/{name}/versions/{version}/activate",
                "ActivatePluginVersion",
                "Make a version the active one, without dropping a message.",
            ),
            activate_version,
        )
        .op(
            Op::post(
                "/api/v1/plugins/{name}/rollback",
                "RollbackPlugin",
                "Reactivate the version active before the current one.",
            ),
            rollback,
        )
        .op(
            Op::get("/api/v1/plugins/{name}/logs", "GetPluginLogs", "A plugin's recent log lines.")
                .query::<LogsQuery>(),
            logs,
        )
        .op(
            Op::post(
                "/api/v1/plugins/{name}/invoke",
                "InvokePlugin",
                "Call the active (or a named) version with one message and see its actions.",
            )
            .query::<VersionQuery>()
            .body::<MessageJson>(),
            invoke,
        )
        .route(
            Op::post(
                "/api/v1/plugins/{name}/replay",
                "ReplayPlugin",
                "Run a JSON-lines recording through a candidate version beside the active one and compare.",
            )
            .query::<VersionQuery>()
            .raw_body("application/x-ndjson"),
            post(replay).layer(DefaultBodyLimit::max(MAX_REPLAY_BODY)),
        )
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_else(|e| json!({ "message": format!("cannot encode: {e}") }))
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

fn parse_version(v: &str) -> Result<u32, ApiError> {
    v.parse::<u32>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid version {v:?}: versions are 1, 2, ...")))
}

async fn list_plugins(State(s): State<AppState>) -> Result<Response, ApiError> {
    let host = s.plugins.clone();
    let plugins = blocking::<_, ApiError>(move || {
        Ok(host
            .plugins()
            .iter()
            .filter_map(|name| host.health(name).ok())
            .map(|h| to_json(&h))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(ok(json!({ "plugins": plugins })))
}

async fn describe_plugin(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let host = s.plugins.clone();
    blocking::<_, ApiError>(move || {
        let health = host.health(&name)?;
        let versions = host.versions(&name)?;
        Ok(ok(
            json!({ "health": to_json(&health), "versions": to_json(&versions) }),
        ))
    })
    .await
}

async fn list_versions(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let host = s.plugins.clone();
    blocking::<_, ApiError>(move || Ok(ok(json!({ "versions": to_json(&host.versions(&name)?) })))).await
}

async fn describe_version(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let version = parse_version(&version)?;
    let host = s.plugins.clone();
    blocking::<_, ApiError>(move || {
        let info = host
            .versions(&name)?
            .into_iter()
            .find(|v| v.version == version)
            .ok_or(CatalogError::UnknownVersion {
                plugin: name,
                version,
            })?;
        Ok(ok(to_json(&info)))
    })
    .await
}

/// The JSON form of an upload.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UploadJson {
    /// The component, base64.
    wasm_base64: String,
    /// The plugin's configuration (limits, grants, its own settings).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    config: Option<PluginConfig>,
    /// Activate the version once it is stored.
    #[serde(default)]
    activate: bool,
}

/// Query of a raw upload.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    /// Activate the version once it is stored.
    #[serde(default)]
    activate: bool,
    /// The configuration as JSON text.
    #[serde(default)]
    config: Option<String>,
}

async fn upload_version(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsQuery(query): AwsQuery<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let (wasm, config, activate) = if is_json {
        let up: UploadJson = super::registry::json_object(&body, "the request body is not a valid upload")?;
        let wasm = B64
            .decode(up.wasm_base64.trim())
            .map_err(|e| ApiError::bad_request(format!("wasmBase64 is not valid base64: {e}")))?;
        (wasm, up.config.unwrap_or_default(), up.activate)
    } else {
        let config = match &query.config {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("the config parameter is not valid: {e}")))?,
            None => PluginConfig::default(),
        };
        (body.to_vec(), config, query.activate)
    };
    if wasm.is_empty() {
        return Err(ApiError::bad_request(
            "the request has no component: send the .wasm bytes as the body, or JSON with wasmBase64",
        ));
    }
    let host = s.plugins.clone();
    blocking::<_, ApiError>(move || {
        let mut info = host.upload(&name, &wasm, config)?;
        if activate {
            info = host.activate(&name, info.version)?;
        }
        let mut body = to_json(&info);
        body["activated"] = json!(activate);
        Ok((StatusCode::CREATED, axum::Json(body)).into_response())
    })
    .await
}

async fn activate_version(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let version = parse_version(&version)?;
    let host = s.plugins.clone();
    blocking::<_, ApiError>(move || Ok(ok(to_json(&host.activate(&name, version)?)))).await
}

async fn rollback(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let host = s.plugins.clone();
    blocking::<_, ApiError>(move || Ok(ok(to_json(&host.rollback(&name)?)))).await
}

async fn delete_version(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let version = parse_version(&version)?;
    let host = s.plugins.clone();
    blocking::<_, ApiError>(move || {
        host.delete(&name, version)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    /// At most this many lines, newest last (default 100).
    #[serde(default)]
    limit: Option<usize>,
}

async fn logs(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsQuery(q): AwsQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let lines = s.plugins.logs(&name, q.limit.unwrap_or(100).min(10_000))?;
    Ok(ok(json!({ "lines": to_json(&lines) })))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    /// The version to run (default: the active one).
    #[serde(default)]
    version: Option<u32>,
}

/// A message as the API accepts it (invoke, replay recordings).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct MessageJson {
    topic: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    timestamp: Option<u64>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    thing_name: Option<String>,
    /// `[name, value]` pairs.
    #[serde(default)]
    #[schemars(with = "Vec<[String; 2]>")]
    user_properties: Vec<(String, String)>,
}

impl MessageJson {
    fn into_message(self) -> Result<Message, String> {
        if self.topic.is_empty() {
            return Err("topic must not be empty".into());
        }
        if self.qos > 2 {
            return Err(format!("qos must be 0, 1 or 2, not {}", self.qos));
        }
        let payload = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => return Err("give payload or payloadBase64, not both".into()),
            (Some(text), None) => text.into_bytes(),
            (None, Some(b)) => B64
                .decode(b.trim())
                .map_err(|e| format!("payloadBase64 is not valid base64: {e}"))?,
            (None, None) => Vec::new(),
        };
        Ok(Message {
            topic: self.topic,
            payload: payload.into(),
            qos: self.qos,
            timestamp_ms: self.timestamp.unwrap_or_else(now_ms),
            client_id: self.client_id,
            thing_name: self.thing_name,
            user_properties: self.user_properties,
        })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bytes as JSON under `key`: text when they are UTF-8, base64 under `{key}Base64` otherwise.
fn bytes_field(obj: &mut serde_json::Map<String, Value>, key: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => obj.insert(key.into(), json!(text)),
        Err(_) => obj.insert(format!("{key}Base64"), json!(B64.encode(bytes))),
    };
}

/// An action as the API reports it.
pub(crate) fn action_json(action: &Action) -> Value {
    let mut obj = serde_json::Map::new();
    match action {
        Action::Publish(p) => {
            obj.insert("type".into(), json!("publish"));
            obj.insert("topic".into(), json!(p.topic));
            bytes_field(&mut obj, "payload", &p.payload);
            obj.insert("qos".into(), json!(p.qos));
            obj.insert("retain".into(), json!(p.retain));
        }
        Action::ShadowUpdate(u) => {
            obj.insert("type".into(), json!("shadow_update"));
            obj.insert("thing".into(), json!(u.thing));
            obj.insert("shadowName".into(), json!(u.shadow_name));
            obj.insert("document".into(), json!(u.document));
        }
        Action::Alert(a) => {
            obj.insert("type".into(), json!("alert"));
            obj.insert(
                "severity".into(),
                json!(format!("{:?}", a.severity).to_lowercase()),
            );
            obj.insert("title".into(), json!(a.title));
            obj.insert("body".into(), json!(a.body));
            obj.insert("thing".into(), json!(a.thing));
        }
        Action::StreamAppend(a) => {
            obj.insert("type".into(), json!("stream_append"));
            obj.insert("stream".into(), json!(a.stream));
            bytes_field(&mut obj, "payload", &a.payload);
        }
        Action::Webhook(w) => {
            obj.insert("type".into(), json!("webhook"));
            obj.insert("target".into(), json!(w.target));
            bytes_field(&mut obj, "body", &w.body);
        }
    }
    Value::Object(obj)
}

/// An outcome as the API reports it.
pub(crate) fn outcome_json(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Ok(actions) => json!({
            "outcome": "ok",
            "actions": actions.iter().map(action_json).collect::<Vec<_>>(),
        }),
        Outcome::Rejected(reason) => json!({ "outcome": "rejected", "reason": reason }),
        Outcome::Failed(fault) => json!({
            "outcome": "failed",
            "fault": { "kind": fault.kind().as_str(), "message": fault.to_string() },
        }),
    }
}

async fn invoke(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsQuery(q): AwsQuery<VersionQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let msg: MessageJson = super::registry::json_object(&body, "the request body is not a valid message")?;
    let msg = msg.into_message().map_err(ApiError::bad_request)?;
    let host = s.plugins.clone();
    blocking::<_, ApiError>(move || {
        let outcome = match q.version {
            Some(v) => host.invoke_version(&name, v, &msg)?,
            None => {
                // A plugin that does not exist is a 404, not a failed call.
                if host.handle(&name).is_none() {
                    return Err(CatalogError::UnknownPlugin(name).into());
                }
                host.invoke(&name, &msg)
            }
        };
        Ok(ok(outcome_json(&outcome)))
    })
    .await
}

/// Parses a JSON-lines recording; blank lines are skipped, a bad line is a 400 naming it.
fn parse_recording(body: &[u8]) -> Result<Vec<(usize, Message)>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("the recording is not UTF-8 text: {e}")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |e: String| ApiError::bad_request(format!("line {}: {e}", i + 1));
        let msg: MessageJson = super::registry::json_object(line.as_bytes(), &format!("line {}", i + 1))?;
        out.push((i + 1, msg.into_message().map_err(bad)?));
        if out.len() > MAX_REPLAY_MESSAGES {
            return Err(ApiError::bad_request(format!(
                "a replay runs at most {MAX_REPLAY_MESSAGES} messages"
            )));
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request(
            "the recording has no messages: send JSON lines like {\"topic\":\"t\",\"payload\":\"...\"}",
        ));
    }
    Ok(out)
}

async fn replay(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsQuery(q): AwsQuery<VersionQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let recording = parse_recording(&body)?;
    let host: PluginHost = s.plugins.clone();
    blocking::<_, ApiError>(move || {
        let active = host.health(&name)?.active_version;
        let candidate = match q.version.or(active) {
            Some(v) => v,
            None => {
                return Err(ApiError::bad_request(format!(
                    "plugin {name:?} has no active version: name the candidate with ?version=N"
                )));
            }
        };
        let messages: Vec<Message> = recording.iter().map(|(_, m)| m.clone()).collect();
        let cand = host.replay(&name, candidate, &messages)?;
        let base = match active {
            Some(a) if a != candidate => Some(host.replay(&name, a, &messages)?),
            _ => None,
        };
        let mut same_count = 0usize;
        let results: Vec<Value> = recording
            .iter()
            .enumerate()
            .map(|(i, (line, msg))| {
                let c = &cand.outcomes[i];
                let a = base.as_ref().map(|b| &b.outcomes[i]);
                let same = a.is_none_or(|a| a == c);
                if same {
                    same_count += 1;
                }
                json!({
                    "line": line,
                    "topic": msg.topic,
                    "candidate": outcome_json(c),
                    "active": a.map(outcome_json),
                    "same": same,
                })
            })
            .collect();
        Ok(ok(json!({
            "candidate": candidate,
            "active": active,
            "results": results,
            "logs": {
                "candidate": to_json(&cand.logs),
                "active": base.as_ref().map(|b| to_json(&b.logs)),
            },
            "summary": {
                "messages": recording.len(),
                "same": same_count,
                "different": recording.len() - same_count,
            },
        })))
    })
    .await
}
