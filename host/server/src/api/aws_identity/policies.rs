//! Policies and their attachments: `CreatePolicy`, `GetPolicy`, `ListPolicies`, `DeletePolicy`,
//! `CreatePolicyVersion`, `GetPolicyVersion`, `ListPolicyVersions`, `SetDefaultPolicyVersion`,
//! `DeletePolicyVersion`, `AttachPolicy`, `DetachPolicy`, `ListAttachedPolicies`,
//! `ListTargetsForPolicy` and the deprecated `AttachPrincipalPolicy`, `DetachPrincipalPolicy`,
//! `ListPrincipalPolicies`, `ListPolicyPrincipals`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_auth::service::{IdentityError, PolicyRecord, PolicyVersionRecord};

use super::super::AppState;
use super::super::error::ApiError;
use super::super::registry::{AwsJson, AwsQuery};
use super::{MarkerQuery, created_key, done, header, marker_list, name_existing, ok, secs};

/// Routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/policies", get(list_policies))
        .route(
            "/policies/{policyName}",
            post(create_policy).get(get_policy).delete(delete_policy),
        )
        .route(
            "/policies/{policyName}/version",
            post(create_policy_version).get(list_policy_versions),
        )
        .route(
            "/policies/{policyName}/version/{policyVersionId}",
            get(get_policy_version)
                .patch(set_default_policy_version)
                .delete(delete_policy_version),
        )
        .route(
            "/target-policies/{policyName}",
            put(attach_policy).post(detach_policy),
        )
        .route("/attached-policies/{target}", post(list_attached_policies))
        .route("/policy-targets/{policyName}", post(list_targets_for_policy))
        .route("/principal-policies", get(list_principal_policies))
        .route(
            "/principal-policies/{policyName}",
            put(attach_principal_policy).delete(detach_principal_policy),
        )
        .route("/policy-principals", get(list_policy_principals))
}

fn policy_arn(s: &AppState, name: &str) -> String {
    format!("{}policy/{name}", s.identity.arn().prefix())
}

fn policy_summary(s: &AppState, name: &str) -> Value {
    json!({ "policyName": name, "policyArn": policy_arn(s, name) })
}

/// The version a policy record names, or `ResourceNotFoundException`.
fn version<'a>(rec: &'a PolicyRecord, id: &str) -> Result<&'a PolicyVersionRecord, ApiError> {
    rec.versions
        .iter()
        .find(|v| v.version_id == id)
        .ok_or_else(|| IdentityError::NotFound(format!("policy {} has no version {id}", rec.name)).into())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyBody {
    /// The document, a JSON string (botocore sends one).
    policy_document: String,
}

/// `CreatePolicy`: `POST /policies/{policyName}` with `{policyDocument, tags?}` ->
/// `{policyName, policyArn, policyDocument, policyVersionId: "1"}`.
async fn create_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsJson(b): AwsJson<PolicyBody>,
) -> Result<Response, ApiError> {
    let rec = s
        .identity
        .create_policy(&name, &b.policy_document)
        .await
        .map_err(|e| name_existing(e, &name, &policy_arn(&s, &name)))?;
    Ok(ok(json!({
        "policyName": rec.name,
        "policyArn": rec.arn,
        "policyDocument": rec.default_document(),
        "policyVersionId": rec.default_version,
    })))
}

/// `GetPolicy`: `GET /policies/{policyName}` -> the default version's document and dates
/// (`lastModifiedDate`: when the newest version was created).
async fn get_policy(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let rec = s.identity.policy(&name)?;
    let modified = rec
        .versions
        .iter()
        .map(|v| v.created_ms)
        .max()
        .unwrap_or(rec.created_ms);
    Ok(ok(json!({
        "policyName": rec.name,
        "policyArn": rec.arn,
        "policyDocument": rec.default_document(),
        "defaultVersionId": rec.default_version,
        "creationDate": secs(rec.created_ms),
        "lastModifiedDate": secs(modified),
    })))
}

/// `ListPolicies`: `GET /policies?marker=&pageSize=&isAscendingOrder=` -> `{policies, nextMarker?}`.
async fn list_policies(
    State(s): State<AppState>,
    AwsQuery(q): AwsQuery<MarkerQuery>,
) -> Result<Response, ApiError> {
    let (policies, next) = q.page(s.identity.policies(), |p| created_key(p.created_ms, &p.name))?;
    let items = policies
        .iter()
        .map(|p| json!({ "policyName": p.name, "policyArn": p.arn }))
        .collect();
    Ok(marker_list("policies", items, next))
}

/// `DeletePolicy`: `DELETE /policies/{policyName}` -> `{}` (`DeleteConflictException` while
/// attached).
async fn delete_policy(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    s.identity.delete_policy(&name).await?;
    Ok(done())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultQuery {
    #[serde(default)]
    set_as_default: bool,
}

/// `CreatePolicyVersion`: `POST /policies/{policyName}/version?setAsDefault=` with
/// `{policyDocument}` -> `{policyArn, policyDocument, policyVersionId, isDefaultVersion}`. At most
/// five versions (`VersionsLimitExceededException`); a new default closes the connections
/// that used the old one.
async fn create_policy_version(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsQuery(q): AwsQuery<DefaultQuery>,
    AwsJson(b): AwsJson<PolicyBody>,
) -> Result<Response, ApiError> {
    let rec = s
        .identity
        .create_policy_version(&name, &b.policy_document, q.set_as_default)
        .await?;
    // The service appends the new version.
    let new = rec
        .versions
        .last()
        .ok_or_else(|| IdentityError::NotFound(format!("policy {name} has no versions")))?;
    Ok(ok(json!({
        "policyArn": rec.arn,
        "policyDocument": new.document,
        "policyVersionId": new.version_id,
        "isDefaultVersion": new.version_id == rec.default_version,
    })))
}

/// `GetPolicyVersion`: `GET /policies/{policyName}/version/{policyVersionId}`.
async fn get_policy_version(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let rec = s.identity.policy(&name)?;
    let v = version(&rec, &id)?;
    Ok(ok(json!({
        "policyArn": rec.arn,
        "policyName": rec.name,
        "policyDocument": v.document,
        "policyVersionId": v.version_id,
        "isDefaultVersion": v.version_id == rec.default_version,
        "creationDate": secs(v.created_ms),
        "lastModifiedDate": secs(v.created_ms),
    })))
}

/// `ListPolicyVersions`: `GET /policies/{policyName}/version` -> `{policyVersions}`, newest
/// first.
async fn list_policy_versions(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let rec = s.identity.policy(&name)?;
    let versions: Vec<Value> = rec
        .versions
        .iter()
        .rev()
        .map(|v| {
            json!({
                "versionId": v.version_id,
                "isDefaultVersion": v.version_id == rec.default_version,
                "createDate": secs(v.created_ms),
            })
        })
        .collect();
    Ok(ok(json!({ "policyVersions": versions })))
}

/// `SetDefaultPolicyVersion`: `PATCH /policies/{policyName}/version/{policyVersionId}` -> `{}`.
async fn set_default_policy_version(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.identity.set_default_policy_version(&name, &id).await?;
    Ok(done())
}

/// `DeletePolicyVersion`: `DELETE /policies/{policyName}/version/{policyVersionId}` -> `{}`
/// (the default version: `DeleteConflictException`).
async fn delete_policy_version(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.identity.delete_policy_version(&name, &id).await?;
    Ok(done())
}

// ---------------------------------------------------------------------------------------------
// Attachments
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct TargetBody {
    target: String,
}

/// `AttachPolicy`: `PUT /target-policies/{policyName}` with `{target}` (a certificate ARN or
/// id, or an access key id or ARN) -> `{}`.
async fn attach_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsJson(b): AwsJson<TargetBody>,
) -> Result<Response, ApiError> {
    s.identity.attach_policy(&name, &b.target).await?;
    Ok(done())
}

/// `DetachPolicy`: `POST /target-policies/{policyName}` with `{target}` -> `{}`; closes the
/// target's live connections.
async fn detach_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsJson(b): AwsJson<TargetBody>,
) -> Result<Response, ApiError> {
    s.identity.detach_policy(&name, &b.target).await?;
    Ok(done())
}

/// `ListAttachedPolicies`: `POST /attached-policies/{target}?marker=&pageSize=&recursive=` ->
/// `{policies, nextMarker?}` (`recursive` concerns thing groups, which hold no policies here).
async fn list_attached_policies(
    State(s): State<AppState>,
    Path(target): Path<String>,
    AwsQuery(q): AwsQuery<MarkerQuery>,
) -> Result<Response, ApiError> {
    let (names, next) = q.page_by_name(s.identity.attached_policies(&target)?)?;
    let items = names.iter().map(|n| policy_summary(&s, n)).collect();
    Ok(marker_list("policies", items, next))
}

/// `ListTargetsForPolicy`: `POST /policy-targets/{policyName}?marker=&pageSize=` ->
/// `{targets, nextMarker?}` (ARNs).
async fn list_targets_for_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsQuery(q): AwsQuery<MarkerQuery>,
) -> Result<Response, ApiError> {
    s.identity.policy(&name)?;
    let (targets, next) = q.page_by_name(s.identity.policy_targets(&name))?;
    Ok(marker_list(
        "targets",
        targets.into_iter().map(Value::String).collect(),
        next,
    ))
}

/// `AttachPrincipalPolicy` (deprecated by AWS for `AttachPolicy`): `PUT
/// /principal-policies/{policyName}` with the principal in `x-amzn-iot-principal` -> `{}`.
async fn attach_principal_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = header(&headers, "x-amzn-iot-principal", "principal")?;
    s.identity.attach_policy(&name, &principal).await?;
    Ok(done())
}

/// `DetachPrincipalPolicy`: `DELETE /principal-policies/{policyName}` with `x-amzn-iot-principal`.
async fn detach_principal_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = header(&headers, "x-amzn-iot-principal", "principal")?;
    s.identity.policy(&name)?;
    s.identity.detach_policy(&name, &principal).await?;
    Ok(done())
}

/// `ListPrincipalPolicies`: `GET /principal-policies?marker=&pageSize=` with
/// `x-amzn-iot-principal` -> `{policies, nextMarker?}`.
async fn list_principal_policies(
    State(s): State<AppState>,
    headers: HeaderMap,
    AwsQuery(q): AwsQuery<MarkerQuery>,
) -> Result<Response, ApiError> {
    let principal = header(&headers, "x-amzn-iot-principal", "principal")?;
    let (names, next) = q.page_by_name(s.identity.attached_policies(&principal)?)?;
    let items = names.iter().map(|n| policy_summary(&s, n)).collect();
    Ok(marker_list("policies", items, next))
}

/// `ListPolicyPrincipals`: `GET /policy-principals?marker=&pageSize=` with `x-amzn-iot-policy` ->
/// `{principals, nextMarker?}`.
async fn list_policy_principals(
    State(s): State<AppState>,
    headers: HeaderMap,
    AwsQuery(q): AwsQuery<MarkerQuery>,
) -> Result<Response, ApiError> {
    let name = header(&headers, "x-amzn-iot-policy", "policyName")?;
    s.identity.policy(&name)?;
    let (targets, next) = q.page_by_name(s.identity.policy_targets(&name))?;
    Ok(marker_list(
        "principals",
        targets.into_iter().map(Value::String).collect(),
        next,
    ))
}
