//! Access keys under `/api/v1/keys`: create (the secret is in that answer only), list,
//! describe, activate/deactivate, delete. Policies attach to a key like to a certificate:
//! `POST /api/v1/policies/{name}/targets {"target": "AKIA..."}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use shoal_auth::service::KeyStatus;

use super::AppState;
use super::error::ApiError;
use super::openapi::{Api, Op};
use super::registry::AwsJson;

/// Routes.
pub fn routes() -> Api {
    Api::new("keys")
        .param("id", "^AKIA[A-Z2-7]{16}$")
        .op(
            Op::get(
                "/api/v1/keys",
                "ListAccessKeys",
                "List access keys (never their secrets).",
            ),
            list,
        )
        .op(
            Op::post(
                "/api/v1/keys",
                "CreateAccessKey",
                "Create an access key; the answer holds its secret, shown this once.",
            )
            .optional_body::<CreateKey>(),
            create,
        )
        .op(
            Op::get(
                "/api/v1/keys/{id}",
                "DescribeAccessKey",
                "Describe an access key.",
            ),
            describe,
        )
        .op(
            Op::delete("/api/v1/keys/{id}", "DeleteAccessKey", "Delete an access key."),
            delete,
        )
        .op(
            Op::put(
                "/api/v1/keys/{id}/status",
                "UpdateAccessKeyStatus",
                "Activate or deactivate an access key.",
            )
            .body::<Status>(),
            set_status,
        )
}

fn ok(v: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateKey {
    /// Free text for people.
    #[serde(default)]
    description: String,
    /// May call the management API (default false: data plane only, as its policies allow).
    #[serde(default)]
    admin: bool,
}

async fn create(State(s): State<AppState>, AwsJson(req): AwsJson<CreateKey>) -> Result<Response, ApiError> {
    let (record, secret) = s.identity.create_access_key(&req.description, req.admin).await?;
    let mut v = record.to_json();
    v["secretAccessKey"] = json!(secret);
    Ok(ok(v))
}

async fn list(State(s): State<AppState>) -> Result<Response, ApiError> {
    let keys: Vec<_> = s
        .identity
        .access_keys()
        .iter()
        .map(|k| {
            let mut v = k.to_json();
            v["policies"] = json!(s.identity.attached_policies(&k.access_key_id).unwrap_or_default());
            v
        })
        .collect();
    Ok(ok(json!({ "keys": keys })))
}

async fn describe(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let mut v = s.identity.access_key(&id)?.to_json();
    v["policies"] = json!(s.identity.attached_policies(&id)?);
    Ok(ok(v))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Status {
    /// `Active` or `Inactive`.
    status: String,
}

async fn set_status(
    State(s): State<AppState>,
    Path(id): Path<String>,
    AwsJson(req): AwsJson<Status>,
) -> Result<Response, ApiError> {
    let status = match req.status.as_str() {
        "Active" | "ACTIVE" | "active" => KeyStatus::Active,
        "Inactive" | "INACTIVE" | "inactive" => KeyStatus::Inactive,
        other => {
            return Err(ApiError::bad_request(format!(
                "status must be Active or Inactive, not {other:?}"
            )));
        }
    };
    Ok(ok(s.identity.set_access_key_status(&id, status).await?.to_json()))
}

async fn delete(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    s.identity.delete_access_key(&id).await?;
    Ok(ok(json!({})))
}
