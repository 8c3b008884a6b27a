//! Shoal's management API for rules, under `/api/v1/rules`: definitions in AWS's
//! `TopicRulePayload` shape (so an AWS rule's JSON carries over), plus enable/disable and the
//! rule's counters. The same rules answer on AWS IoT's control-plane paths (`/rules...`, as
//! botocore's `iot` model defines them), so `boto3.client("iot").create_topic_rule(...)` and
//! `aws iot list-topic-rules` work against Shoal: there a rule that does not exist is
//! `UnauthorizedException` (401), as AWS answers.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use shoal_rules::{RuleError, TopicRulePayload};

use super::error::ApiError;
use super::openapi::{Api, Op};
use super::{AppState, blocking};

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        let (status, error_type) = match &e {
            RuleError::Invalid(m) if m.starts_with("sql:") => (StatusCode::BAD_REQUEST, "SqlParseException"),
            RuleError::Invalid(_) => (StatusCode::BAD_REQUEST, "InvalidRequestException"),
            RuleError::NotFound(_) => (StatusCode::NOT_FOUND, "ResourceNotFoundException"),
            RuleError::Exists(_) => (StatusCode::CONFLICT, "ResourceAlreadyExistsException"),
            RuleError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailureException"),
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
    // A rule's definition: AWS's TopicRulePayload (sql, awsIotSqlVersion, actions,
    // errorAction, ruleDisabled, description), checked by the rules engine.
    type Payload = Map<String, Value>;
    Api::new("rules")
        .param("name", "^[a-zA-Z0-9_]{1,128}$")
        .op(
            Op::get("/api/v1/rules", "ListRules", "List rules with their counters."),
            list_rules,
        )
        .op(
            Op::get(
                "/api/v1/rules/{name}",
                "GetRule",
                "A rule's definition and counters.",
            ),
            get_rule,
        )
        .op(
            Op::post(
                "/api/v1/rules/{name}",
                "CreateRule",
                "Create a rule from a TopicRulePayload (sql, actions, errorAction, ...).",
            )
            .body::<Payload>()
            .status(201),
            create_rule,
        )
        .op(
            Op::put(
                "/api/v1/rules/{name}",
                "ReplaceRule",
                "Replace a rule's definition.",
            )
            .body::<Payload>(),
            replace_rule,
        )
        .op(
            Op::delete("/api/v1/rules/{name}", "DeleteRule", "Delete a rule.").empty(204),
            delete_rule,
        )
        .op(
            Op::post("/api/v1/rules/{name}/enable", "EnableRule", "Enable a rule."),
            enable_rule,
        )
        .op(
            Op::post("/api/v1/rules/{name}/disable", "DisableRule", "Disable a rule."),
            disable_rule,
        )
        .undocumented(
            Router::new()
                .route("/rules", get(aws_list))
                .route(
                    "/rules/{name}",
                    get(aws_get)
                        .post(aws_create)
                        .patch(aws_replace)
                        .delete(aws_delete),
                )
                .route("/rules/{name}/enable", post(aws_enable))
                .route("/rules/{name}/disable", post(aws_disable)),
        )
}

/// AWS's answer for a rule that does not exist on the control-plane paths.
fn aws_error(e: RuleError) -> ApiError {
    match e {
        RuleError::NotFound(name) => ApiError {
            status: StatusCode::UNAUTHORIZED,
            error_type: "UnauthorizedException",
            body: json!({ "message": format!("no rule named {name:?} (AWS IoT answers UnauthorizedException)") }),
        },
        other => other.into(),
    }
}

fn rule_arn(s: &AppState, name: &str) -> String {
    s.registry.config().arn("rule", name)
}

/// Seconds since the epoch, as botocore reads `createdAt`.
fn created_at(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// `GET /rules/{name}`: `GetTopicRuleResponse`.
async fn aws_get(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let info = s.rules.get(&name).map_err(aws_error)?;
    let p = &info.topic_rule_payload;
    // Shoal's `stream` is AWS's `kinesis` shape: AWS clients read it under that name.
    let aws_action = |a: &shoal_rules::ActionSpec| match serde_json::to_value(a) {
        Ok(serde_json::Value::Object(mut m)) => {
            if let Some(v) = m.remove("stream") {
                m.insert("kinesis".into(), v);
            }
            serde_json::Value::Object(m)
        }
        Ok(other) => other,
        Err(_) => serde_json::Value::Null,
    };
    let mut rule = json!({
        "ruleName": info.rule_name,
        "sql": p.sql,
        "createdAt": created_at(info.created_at_ms),
        "actions": p.actions.iter().map(aws_action).collect::<Vec<_>>(),
        "ruleDisabled": p.rule_disabled,
        "awsIotSqlVersion": p.aws_iot_sql_version.as_deref().unwrap_or("2016-03-23"),
    });
    if let Some(d) = &p.description {
        rule["description"] = json!(d);
    }
    if let Some(e) = &p.error_action {
        rule["errorAction"] = aws_action(e);
    }
    let body = json!({ "ruleArn": rule_arn(&s, &info.rule_name), "rule": rule });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    topic: Option<String>,
    max_results: Option<usize>,
    next_token: Option<String>,
    rule_disabled: Option<bool>,
}

/// `GET /rules?topic=&maxResults=&nextToken=&ruleDisabled=`: `ListTopicRulesResponse`, by name;
/// `topic` keeps the rules whose FROM filter matches that topic (or is that filter).
async fn aws_list(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<ListQuery>,
) -> Result<Response, ApiError> {
    let max = q.max_results.unwrap_or(1000);
    if !(1..=10_000).contains(&max) {
        return Err(ApiError::bad_request(format!(
            "maxResults must be 1..=10000, not {max}"
        )));
    }
    let mut rules: Vec<shoal_rules::RuleInfo> = s
        .rules
        .list()
        .into_iter()
        .filter(|r| {
            q.next_token
                .as_ref()
                .is_none_or(|t| r.rule_name.as_str() > t.as_str())
        })
        .filter(|r| {
            q.rule_disabled
                .is_none_or(|d| r.topic_rule_payload.rule_disabled == d)
        })
        .filter(|r| {
            q.topic.as_ref().is_none_or(|t| {
                *t == r.topic_pattern || shoal_broker::topic::matches_filter(&r.topic_pattern, t)
            })
        })
        .collect();
    let more = rules.len() > max;
    rules.truncate(max);
    let mut body = json!({
        "rules": rules.iter().map(|r| json!({
            "ruleArn": rule_arn(&s, &r.rule_name),
            "ruleName": r.rule_name,
            "topicPattern": r.topic_pattern,
            "createdAt": created_at(r.created_at_ms),
            "ruleDisabled": r.topic_rule_payload.rule_disabled,
        })).collect::<Vec<_>>(),
    });
    if more && let Some(last) = rules.last() {
        body["nextToken"] = json!(last.rule_name);
    }
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

/// `POST /rules/{name}` (`CreateTopicRule`): the body is the `TopicRulePayload`.
async fn aws_create(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = payload(&body)?;
    blocking(move || s.rules.create(&name, p).map_err(aws_error)).await?;
    Ok(StatusCode::OK.into_response())
}

/// `PATCH /rules/{name}` (`ReplaceTopicRule`).
async fn aws_replace(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = payload(&body)?;
    blocking(move || s.rules.replace(&name, p).map_err(aws_error)).await?;
    Ok(StatusCode::OK.into_response())
}

async fn aws_delete(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    blocking(move || s.rules.delete(&name).map_err(aws_error)).await?;
    Ok(StatusCode::OK.into_response())
}

async fn aws_enable(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    blocking(move || s.rules.set_enabled(&name, true).map_err(aws_error)).await?;
    Ok(StatusCode::OK.into_response())
}

async fn aws_disable(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    blocking(move || s.rules.set_enabled(&name, false).map_err(aws_error)).await?;
    Ok(StatusCode::OK.into_response())
}

fn payload(body: &[u8]) -> Result<TopicRulePayload, ApiError> {
    super::registry::json_object(
        body,
        "the body is not a valid rule definition (a TopicRulePayload: sql, actions, ...)",
    )
}

async fn list_rules(State(s): State<AppState>) -> Response {
    (StatusCode::OK, axum::Json(json!({ "rules": s.rules.list() }))).into_response()
}

async fn get_rule(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok((StatusCode::OK, axum::Json(s.rules.get(&name)?)).into_response())
}

async fn create_rule(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = payload(&body)?;
    let info = blocking(move || s.rules.create(&name, p)).await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

async fn replace_rule(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = payload(&body)?;
    let info = blocking(move || s.rules.replace(&name, p)).await?;
    Ok((StatusCode::OK, axum::Json(info)).into_response())
}

async fn delete_rule(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    blocking(move || s.rules.delete(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn enable_rule(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let info = blocking(move || s.rules.set_enabled(&name, true)).await?;
    Ok((StatusCode::OK, axum::Json(info)).into_response())
}

async fn disable_rule(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let info = blocking(move || s.rules.set_enabled(&name, false)).await?;
    Ok((StatusCode::OK, axum::Json(info)).into_response())
}
