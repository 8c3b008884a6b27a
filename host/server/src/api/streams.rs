//! Streams under `/api/v1/streams`: what `stream` rule actions (and plugins' `stream-append`)
//! wrote, read back by offset or through consumer groups (Redis Streams' semantics on every
//! store; see `shoal_rules::stream`).
//!
//! A record is answered as `{"id": "MS-SEQ", "partitionKey": "...", "data": <JSON>}` when its
//! bytes are JSON, `{"id", "partitionKey", "dataBase64": "..."}` otherwise.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_rules::stream::{GroupInfo, GroupStart, NewRecord, Record, StreamError, StreamId, StreamInfo};

use super::AppState;
use super::error::ApiError;
use super::openapi::{Api, Op};
use super::registry::AwsQuery;

/// Most records one read returns.
const MAX_LIMIT: usize = 10_000;
/// Longest a group read waits for new records.
const MAX_WAIT_MS: u64 = 30_000;
/// How often a waiting group read looks again.
const POLL: Duration = Duration::from_millis(50);

impl From<StreamError> for ApiError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Invalid(m) => ApiError::bad_request(m),
            StreamError::NotFound(m) => ApiError::not_found(m),
            StreamError::Exists(m) => ApiError {
                status: StatusCode::CONFLICT,
                error_type: "ResourceAlreadyExistsException",
                body: json!({ "message": m }),
            },
            StreamError::Unavailable(m) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error_type: "ServiceUnavailableException",
                body: json!({ "message": format!("stream store unavailable: {m}") }),
            },
        }
    }
}

/// Routes.
pub fn routes() -> Api {
    Api::new("streams")
        .param("stream", "^[A-Za-z0-9_.-]{1,128}$")
        .param("group", "^[A-Za-z0-9_.-]{1,128}$")
        .op(Op::get("/api/v1/streams", "ListStreams", "List streams with their lengths and groups."), list)
        .op(Op::get("/api/v1/streams/{stream}", "DescribeStream", "One stream's length, ids and groups."), info)
        .op(
            Op::delete("/api/v1/streams/{stream}", "DeleteStream", "Delete a stream and its groups.").empty(204),
            delete,
        )
        .op(
            Op::get(
                "/api/v1/streams/{stream}/records",
                "GetStreamRecords",
                "Records after an id (default: from the start), oldest first.",
            )
            .query::<RangeQuery>(),
            range,
        )
        .op(
            Op::post("/api/v1/streams/{stream}/records", "AppendStreamRecord", "Append one record.")
                .body::<AppendBody>()
                .status(201),
            append,
        )
        .op(
            Op::post(
                "/api/v1/streams/{stream}/groups",
                "CreateConsumerGroup",
                "Create a consumer group reading from the beginning, the end, or after an id.",
            )
            .body::<CreateGroup>()
            .status(201),
            create_group,
        )
        .op(
            Op::delete(
                "/api/v1/streams/{stream}/groups/{group}",
                "DeleteConsumerGroup",
                "Delete a consumer group.",
            )
            .empty(204),
            delete_group,
        )
        .op(
            Op::post(
                "/api/v1/streams/{stream}/groups/{group}/read",
                "ReadConsumerGroup",
                "Give a consumer the group's next records (or its unacknowledged ones), waiting up to waitMs.",
            )
            .body::<ReadBody>(),
            read_group,
        )
        .op(
            Op::post(
                "/api/v1/streams/{stream}/groups/{group}/ack",
                "AcknowledgeRecords",
                "Acknowledge records a consumer has handled.",
            )
            .body::<AckBody>(),
            ack,
        )
}

fn record_json(r: &Record) -> Value {
    let mut v = json!({ "id": r.id.to_string(), "partitionKey": r.key });
    match serde_json::from_slice::<Value>(&r.data) {
        Ok(data) => v["data"] = data,
        Err(_) => v["dataBase64"] = json!(base64::engine::general_purpose::STANDARD.encode(&r.data)),
    }
    v
}

fn group_json(g: &GroupInfo) -> Value {
    json!({
        "groupName": g.name,
        "lastDeliveredId": g.last_delivered.to_string(),
        "pending": g.pending,
    })
}

fn info_json(i: &StreamInfo) -> Value {
    json!({
        "streamName": i.name,
        "length": i.length,
        "firstId": i.first_id.map(|id| id.to_string()),
        "lastId": i.last_id.map(|id| id.to_string()),
        "groups": i.groups.iter().map(group_json).collect::<Vec<_>>(),
    })
}

fn records_json(records: &[Record]) -> Value {
    json!({
        "records": records.iter().map(record_json).collect::<Vec<_>>(),
        "lastId": records.last().map(|r| r.id.to_string()),
    })
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    super::registry::json_object(body, &format!("the body is not {what}"))
}

async fn list(State(s): State<AppState>) -> Result<Response, ApiError> {
    let streams = s.rules.streams().list().await?;
    let body = json!({ "streams": streams.iter().map(info_json).collect::<Vec<_>>() });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

async fn info(State(s): State<AppState>, Path(stream): Path<String>) -> Result<Response, ApiError> {
    Ok((
        StatusCode::OK,
        axum::Json(info_json(&s.rules.streams().info(&stream).await?)),
    )
        .into_response())
}

async fn delete(State(s): State<AppState>, Path(stream): Path<String>) -> Result<Response, ApiError> {
    s.rules.streams().delete(&stream).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    /// Records after this id (`MS-SEQ`).
    after: Option<String>,
    /// At most this many (1 to 10,000; default 100).
    limit: Option<usize>,
}

fn limit(l: Option<usize>) -> Result<usize, ApiError> {
    match l.unwrap_or(100) {
        n @ 1..=MAX_LIMIT => Ok(n),
        n => Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_LIMIT}, not {n}"
        ))),
    }
}

async fn range(
    State(s): State<AppState>,
    Path(stream): Path<String>,
    AwsQuery(q): AwsQuery<RangeQuery>,
) -> Result<Response, ApiError> {
    shoal_rules::stream::check_name("stream", &stream)?;
    let after = q.after.as_deref().map(StreamId::parse).transpose()?;
    let records = s.rules.streams().range(&stream, after, limit(q.limit)?).await?;
    Ok((StatusCode::OK, axum::Json(records_json(&records))).into_response())
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AppendBody {
    #[serde(default)]
    partition_key: String,
    data: Option<Value>,
    data_base64: Option<String>,
}

/// `POST .../records`: `{"partitionKey": "...", "data": <JSON>}` or `{"dataBase64": "..."}`.
async fn append(
    State(s): State<AppState>,
    Path(stream): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: AppendBody = json_body(&body, "{\"partitionKey\", \"data\" or \"dataBase64\"}")?;
    let data = match (b.data, b.data_base64) {
        (Some(d), None) => d.to_string().into_bytes(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("dataBase64 is not base64: {e}")))?,
        _ => return Err(ApiError::bad_request("give exactly one of data and dataBase64")),
    };
    let record = NewRecord {
        stream,
        key: b.partition_key,
        data,
    };
    let ids = s
        .rules
        .streams()
        .append(std::slice::from_ref(&record), s.rules.stream_max_len())
        .await?;
    let id = ids.first().map(|id| id.to_string());
    Ok((StatusCode::CREATED, axum::Json(json!({ "id": id }))).into_response())
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateGroup {
    group_name: String,
    /// `beginning` (default), `end`, or an id.
    start: Option<String>,
}

async fn create_group(
    State(s): State<AppState>,
    Path(stream): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: CreateGroup = json_body(&body, "{\"groupName\", \"start\"}")?;
    let start = match b.start.as_deref() {
        None | Some("beginning") => GroupStart::Beginning,
        Some("end") => GroupStart::End,
        Some(id) => GroupStart::After(StreamId::parse(id)?),
    };
    s.rules
        .streams()
        .create_group(&stream, &b.group_name, start)
        .await?;
    let info = s.rules.streams().info(&stream).await?;
    Ok((StatusCode::CREATED, axum::Json(info_json(&info))).into_response())
}

async fn delete_group(
    State(s): State<AppState>,
    Path((stream, group)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.rules.streams().delete_group(&stream, &group).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReadBody {
    consumer: String,
    limit: Option<usize>,
    /// Re-read what this consumer was given and did not acknowledge.
    #[serde(default)]
    pending: bool,
    /// Wait up to this long for new records when there are none (long poll).
    #[serde(default)]
    wait_ms: u64,
}

async fn read_group(
    State(s): State<AppState>,
    Path((stream, group)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: ReadBody = json_body(&body, "{\"consumer\", \"limit\", \"pending\", \"waitMs\"}")?;
    let n = limit(b.limit)?;
    if b.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(format!(
            "waitMs must be at most {MAX_WAIT_MS}, not {}",
            b.wait_ms
        )));
    }
    let records = if b.pending {
        s.rules
            .streams()
            .read_pending(&stream, &group, &b.consumer, n)
            .await?
    } else {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(b.wait_ms);
        loop {
            let r = s
                .rules
                .streams()
                .read_group(&stream, &group, &b.consumer, n)
                .await?;
            if !r.is_empty() || tokio::time::Instant::now() >= deadline {
                break r;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    Ok((StatusCode::OK, axum::Json(records_json(&records))).into_response())
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct AckBody {
    ids: Vec<String>,
}

async fn ack(
    State(s): State<AppState>,
    Path((stream, group)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: AckBody = json_body(&body, "{\"ids\": [\"MS-SEQ\", ...]}")?;
    let ids = b
        .ids
        .iter()
        .map(|id| StreamId::parse(id))
        .collect::<Result<Vec<_>, _>>()?;
    let n = s.rules.streams().ack(&stream, &group, &ids).await?;
    Ok((StatusCode::OK, axum::Json(json!({ "acknowledged": n }))).into_response())
}
