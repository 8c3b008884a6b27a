//! Shoal's management API for rules, under `/api/v1/rules`: definitions in AWS's
//! `TopicRulePayload` shape (so an AWS rule's JSON carries over), plus enable/disable and the
//! rule's counters.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use shoal_rules::{RuleError, TopicRulePayload};

use super::error::ApiError;
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
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/rules", get(list_rules))
        .route(
            "/api/v1/rules/{name}",
            get(get_rule)
                .post(create_rule)
                .put(replace_rule)
                .delete(delete_rule),
        )
        .route("/api/v1/rules/{name}/enable", post(enable_rule))
        .route("/api/v1/rules/{name}/disable", post(disable_rule))
}

fn payload(body: &[u8]) -> Result<TopicRulePayload, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not a valid rule definition (a TopicRulePayload: sql, actions, ...): {e}"
        ))
    })
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
