//! Shoal's management API for identities, under `/api/v1`: certificates, CA certificates,
//! policies (with versions) and attachments. JSON in, JSON out; errors in the AWS shape
//! (`x-amzn-ErrorType`, `{"message"}`) through [`ApiError`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_auth::service::{CaRecord, CertStatus, CertificateRecord, IdentityError, PolicyRecord};

use super::AppState;
use super::error::ApiError;
use super::openapi::{Api, CERT_ID, Op, POLICY_NAME, THING_NAME};
use super::registry::AwsJson;

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        ApiError {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            error_type: e.aws_type(),
            body: json!({ "message": e.to_string() }),
        }
    }
}

/// Routes.
pub fn routes() -> Api {
    Api::new("identities")
        .param("id", CERT_ID)
        .param("name", POLICY_NAME)
        .param("version", "^[0-9]{1,9}$")
        .param("thing", THING_NAME)
        .op(Op::get("/api/v1/certificates", "ListCertificates", "List device certificates."), list_certs)
        .op(
            Op::post(
                "/api/v1/certificates",
                "CreateKeysAndCertificate",
                "Create a key pair and a certificate signed by Shoal's CA; the private key is in this answer only.",
            )
            .optional_body::<CreateCert>(),
            create_cert,
        )
        .op(
            Op::post(
                "/api/v1/certificates/from-csr",
                "CreateCertificateFromCsr",
                "Sign a certificate signing request with Shoal's CA.",
            )
            .body::<FromCsr>(),
            cert_from_csr,
        )
        .op(
            Op::post(
                "/api/v1/certificates/register",
                "RegisterCertificate",
                "Register a certificate issued by a registered CA.",
            )
            .body::<RegisterCert>(),
            register_cert,
        )
        .op(
            Op::get("/api/v1/certificates/{id}", "DescribeCertificate", "Describe a certificate."),
            describe_cert,
        )
        .op(
            Op::delete(
                "/api/v1/certificates/{id}",
                "DeleteCertificate",
                "Delete an inactive certificate with no attachments.",
            ),
            delete_cert,
        )
        .op(
            Op::put(
                "/api/v1/certificates/{id}/status",
                "UpdateCertificate",
                "Set a certificate's status (ACTIVE, INACTIVE, REVOKED); connections using it are closed.",
            )
            .body::<StatusBody>(),
            set_cert_status,
        )
        .op(
            Op::get(
                "/api/v1/certificates/{id}/policies",
                "ListCertificatePolicies",
                "The policies attached to a certificate.",
            ),
            cert_policies,
        )
        .op(
            Op::get(
                "/api/v1/certificates/{id}/things",
                "ListCertificateThings",
                "The things a certificate is attached to.",
            ),
            cert_things,
        )
        .op(Op::get("/api/v1/ca-certificates", "ListCACertificates", "List registered CAs."), list_cas)
        .op(
            Op::post("/api/v1/ca-certificates", "RegisterCACertificate", "Register a CA certificate.")
                .body::<RegisterCa>(),
            register_ca,
        )
        .op(
            Op::patch(
                "/api/v1/ca-certificates/{id}",
                "UpdateCACertificate",
                "Change a CA's status or auto-registration.",
            )
            .optional_body::<UpdateCa>(),
            update_ca,
        )
        .op(Op::get("/api/v1/ca", "GetShoalCA", "Shoal's own root CA certificate."), shoal_ca)
        .op(Op::get("/api/v1/policies", "ListPolicies", "List policies."), list_policies)
        .op(
            Op::post("/api/v1/policies", "CreatePolicy", "Create a policy from its JSON document.")
                .body::<CreatePolicy>(),
            create_policy,
        )
        .op(
            Op::get("/api/v1/policies/{name}", "GetPolicy", "A policy with its versions."),
            get_policy,
        )
        .op(
            Op::delete("/api/v1/policies/{name}", "DeletePolicy", "Delete a policy attached to nothing."),
            delete_policy,
        )
        .op(
            Op::post(
                "/api/v1/policies/{name}/versions",
                "CreatePolicyVersion",
                "Add a version to a policy (at most five).",
            )
            .body::<NewVersion>(),
            create_policy_version,
        )
        .op(
            Op::delete(
                "/api/v1/policies/{name}/versions/{version}",
                "DeletePolicyVersion",
                "Delete a version that is not the default.",
            ),
            delete_policy_version,
        )
        .op(
            Op::put(
                "/api/v1/policies/{name}/default-version",
                "SetDefaultPolicyVersion",
                "Make a version the one in force.",
            )
            .body::<DefaultVersion>(),
            set_default_version,
        )
        .op(
            Op::get(
                "/api/v1/policies/{name}/targets",
                "ListTargetsForPolicy",
                "The certificates and access keys a policy is attached to.",
            ),
            policy_targets,
        )
        .op(
            Op::post(
                "/api/v1/policies/{name}/targets",
                "AttachPolicy",
                "Attach a policy to a certificate (id or ARN) or an access key.",
            )
            .body::<Target>(),
            attach_policy,
        )
        .op(
            Op::delete(
                "/api/v1/policies/{name}/targets/{target}",
                "DetachPolicy",
                "Detach a policy from a target.",
            ),
            detach_policy,
        )
        .op(
            Op::get(
                "/api/v1/things/{thing}/principals",
                "ListThingPrincipals",
                "The certificates attached to a thing.",
            ),
            thing_principals,
        )
        .op(
            Op::post(
                "/api/v1/things/{thing}/principals",
                "AttachThingPrincipal",
                "Attach a certificate to a thing.",
            )
            .body::<Principal>(),
            attach_thing_principal,
        )
        .op(
            Op::delete(
                "/api/v1/things/{thing}/principals/{principal}",
                "DetachThingPrincipal",
                "Detach a certificate from a thing.",
            ),
            detach_thing_principal,
        )
}

fn cert_json(r: &CertificateRecord) -> Value {
    json!({
        "certificateId": r.id,
        "certificateArn": r.arn,
        "certificatePem": r.pem,
        "status": r.status.as_str(),
        "caCertificateId": r.ca_id,
        "creationDate": r.created_ms,
        "lastModifiedDate": r.updated_ms,
    })
}

fn ca_json(r: &CaRecord) -> Value {
    json!({
        "certificateId": r.id,
        "certificateArn": r.arn,
        "certificatePem": r.pem,
        "status": if r.active { "ACTIVE" } else { "INACTIVE" },
        "autoRegistrationStatus": if r.auto_registration { "ENABLE" } else { "DISABLE" },
        "creationDate": r.created_ms,
    })
}

fn policy_json(r: &PolicyRecord) -> Value {
    json!({
        "policyName": r.name,
        "policyArn": r.arn,
        "policyDocument": r.default_document(),
        "defaultVersionId": r.default_version,
        "versions": r.versions.iter().map(|v| json!({
            "versionId": v.version_id,
            "isDefaultVersion": v.version_id == r.default_version,
            "createDate": v.created_ms,
        })).collect::<Vec<_>>(),
        "creationDate": r.created_ms,
    })
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct CreateCert {
    /// Subject common name (default: the thing name, else "shoal-device").
    common_name: Option<String>,
    /// Attach the new certificate to this thing (registered first if it does not exist).
    thing_name: Option<String>,
    #[serde(default = "yes")]
    set_as_active: bool,
}

fn yes() -> bool {
    true
}

async fn create_cert(
    State(s): State<AppState>,
    AwsJson(b): AwsJson<CreateCert>,
) -> Result<Response, ApiError> {
    let cn = b
        .common_name
        .clone()
        .or_else(|| b.thing_name.clone())
        .unwrap_or_else(|| "shoal-device".into());
    let (rec, issued) = s
        .identity
        .create_keys_and_certificate(&cn, b.set_as_active)
        .await?;
    attach_to_thing(&s, b.thing_name.as_deref(), &rec).await?;
    let mut v = cert_json(&rec);
    v["keyPair"] = json!({
        "PrivateKey": issued.private_key_pem,
        "PublicKey": issued.public_key_pem,
    });
    Ok(ok(v))
}

/// Shoal's convenience on the certificate-creating calls (AWS needs a separate
/// AttachThingPrincipal): attach the new certificate to `thing`, registering the thing first if
/// it is new (AWS requires an existing thing for the attachment).
async fn attach_to_thing(s: &AppState, thing: Option<&str>, rec: &CertificateRecord) -> Result<(), ApiError> {
    if let Some(t) = thing {
        super::registry::ensure_thing(&s.registry, t).await?;
        s.identity.attach_thing_principal(t, &rec.arn).await?;
    }
    Ok(())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct FromCsr {
    certificate_signing_request: String,
    #[serde(default = "yes")]
    set_as_active: bool,
    /// Attach the new certificate to this thing (see [`attach_to_thing`]).
    thing_name: Option<String>,
}

async fn cert_from_csr(
    State(s): State<AppState>,
    AwsJson(b): AwsJson<FromCsr>,
) -> Result<Response, ApiError> {
    let rec = s
        .identity
        .sign_csr(&b.certificate_signing_request, b.set_as_active)
        .await?;
    attach_to_thing(&s, b.thing_name.as_deref(), &rec).await?;
    Ok(ok(cert_json(&rec)))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct RegisterCert {
    certificate_pem: String,
    #[serde(default)]
    set_as_active: bool,
    /// Attach the certificate to this thing (see [`attach_to_thing`]).
    thing_name: Option<String>,
}

async fn register_cert(
    State(s): State<AppState>,
    AwsJson(b): AwsJson<RegisterCert>,
) -> Result<Response, ApiError> {
    let rec = s
        .identity
        .register_certificate(&b.certificate_pem, b.set_as_active)
        .await?;
    attach_to_thing(&s, b.thing_name.as_deref(), &rec).await?;
    Ok(ok(cert_json(&rec)))
}

async fn list_certs(State(s): State<AppState>) -> Response {
    let certs: Vec<Value> = s
        .identity
        .certificates()
        .iter()
        .map(|c| {
            json!({"certificateId": c.id, "certificateArn": c.arn, "status": c.status.as_str(), "creationDate": c.created_ms})
        })
        .collect();
    ok(json!({ "certificates": certs }))
}

async fn describe_cert(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(ok(
        json!({ "certificateDescription": cert_json(&s.identity.certificate(&id)?) }),
    ))
}

async fn delete_cert(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    s.identity.delete_certificate(&id).await?;
    Ok(ok(json!({})))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct StatusBody {
    new_status: String,
}

async fn set_cert_status(
    State(s): State<AppState>,
    Path(id): Path<String>,
    AwsJson(b): AwsJson<StatusBody>,
) -> Result<Response, ApiError> {
    let st = CertStatus::parse(&b.new_status).ok_or_else(|| {
        ApiError::bad_request("newStatus must be ACTIVE, INACTIVE, REVOKED or PENDING_ACTIVATION")
    })?;
    let rec = s.identity.set_certificate_status(&id, st).await?;
    Ok(ok(cert_json(&rec)))
}

async fn cert_policies(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(ok(json!({ "policies": s.identity.attached_policies(&id)? })))
}

async fn cert_things(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(ok(json!({ "things": s.identity.principal_things(&id)? })))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct RegisterCa {
    ca_certificate: String,
    #[serde(default)]
    set_as_active: bool,
    #[serde(default)]
    allow_auto_registration: bool,
}

async fn register_ca(
    State(s): State<AppState>,
    AwsJson(b): AwsJson<RegisterCa>,
) -> Result<Response, ApiError> {
    let rec = s
        .identity
        .register_ca(&b.ca_certificate, b.set_as_active, b.allow_auto_registration)
        .await?;
    Ok(ok(ca_json(&rec)))
}

async fn list_cas(State(s): State<AppState>) -> Response {
    ok(json!({ "certificates": s.identity.cas().iter().map(ca_json).collect::<Vec<_>>() }))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct UpdateCa {
    new_status: Option<String>,
    new_auto_registration_status: Option<String>,
}

async fn update_ca(
    State(s): State<AppState>,
    Path(id): Path<String>,
    AwsJson(b): AwsJson<UpdateCa>,
) -> Result<Response, ApiError> {
    let active = match b.new_status.as_deref() {
        None => None,
        Some("ACTIVE") => Some(true),
        Some("INACTIVE") => Some(false),
        Some(_) => return Err(ApiError::bad_request("newStatus must be ACTIVE or INACTIVE")),
    };
    let auto = match b.new_auto_registration_status.as_deref() {
        None => None,
        Some("ENABLE") => Some(true),
        Some("DISABLE") => Some(false),
        Some(_) => {
            return Err(ApiError::bad_request(
                "newAutoRegistrationStatus must be ENABLE or DISABLE",
            ));
        }
    };
    Ok(ok(ca_json(&s.identity.update_ca(&id, active, auto).await?)))
}

async fn shoal_ca(State(s): State<AppState>) -> Response {
    ok(json!({ "certificateId": s.identity.ca().id(), "certificatePem": s.identity.ca().cert_pem() }))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct CreatePolicy {
    policy_name: String,
    /// The document, as a JSON string (AWS) or inline JSON.
    policy_document: Value,
}

fn document_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn create_policy(
    State(s): State<AppState>,
    AwsJson(b): AwsJson<CreatePolicy>,
) -> Result<Response, ApiError> {
    let rec = s
        .identity
        .create_policy(&b.policy_name, &document_text(&b.policy_document))
        .await?;
    Ok(ok(policy_json(&rec)))
}

async fn list_policies(State(s): State<AppState>) -> Response {
    let v: Vec<Value> = s
        .identity
        .policies()
        .iter()
        .map(|p| json!({"policyName": p.name, "policyArn": p.arn}))
        .collect();
    ok(json!({ "policies": v }))
}

async fn get_policy(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(ok(policy_json(&s.identity.policy(&name)?)))
}

async fn delete_policy(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    s.identity.delete_policy(&name).await?;
    Ok(ok(json!({})))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct NewVersion {
    policy_document: Value,
    #[serde(default)]
    set_as_default: bool,
}

async fn create_policy_version(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsJson(b): AwsJson<NewVersion>,
) -> Result<Response, ApiError> {
    let rec = s
        .identity
        .create_policy_version(&name, &document_text(&b.policy_document), b.set_as_default)
        .await?;
    // AWS's CreatePolicyVersion answer (policyArn, policyDocument, policyVersionId,
    // isDefaultVersion) plus the policy's other fields.
    let mut v = policy_json(&rec);
    if let Some(newest) = rec
        .versions
        .iter()
        .max_by_key(|v| v.version_id.parse::<u64>().unwrap_or(0))
    {
        v["policyVersionId"] = json!(newest.version_id);
        v["isDefaultVersion"] = json!(newest.version_id == rec.default_version);
        v["policyDocument"] = json!(newest.document);
    }
    Ok(ok(v))
}

async fn delete_policy_version(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(ok(policy_json(
        &s.identity.delete_policy_version(&name, &version).await?,
    )))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct DefaultVersion {
    version_id: String,
}

async fn set_default_version(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsJson(b): AwsJson<DefaultVersion>,
) -> Result<Response, ApiError> {
    Ok(ok(policy_json(
        &s.identity
            .set_default_policy_version(&name, &b.version_id)
            .await?,
    )))
}

#[derive(Debug, Deserialize, JsonSchema)]
struct Target {
    target: String,
}

async fn attach_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsJson(b): AwsJson<Target>,
) -> Result<Response, ApiError> {
    s.identity.attach_policy(&name, &b.target).await?;
    Ok(ok(json!({})))
}

async fn detach_policy(
    State(s): State<AppState>,
    Path((name, target)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.identity.detach_policy(&name, &target).await?;
    Ok(ok(json!({})))
}

async fn policy_targets(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    s.identity.policy(&name)?;
    Ok(ok(json!({ "targets": s.identity.policy_targets(&name) })))
}

#[derive(Debug, Deserialize, JsonSchema)]
struct Principal {
    principal: String,
}

async fn attach_thing_principal(
    State(s): State<AppState>,
    Path(thing): Path<String>,
    AwsJson(b): AwsJson<Principal>,
) -> Result<Response, ApiError> {
    shoal_things::shadow::ThingName::parse(&thing)
        .map_err(|e| ApiError::bad_request(format!("thingName: {e}")))?;
    s.identity.attach_thing_principal(&thing, &b.principal).await?;
    Ok(ok(json!({})))
}

async fn detach_thing_principal(
    State(s): State<AppState>,
    Path((thing, principal)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.identity.detach_thing_principal(&thing, &principal).await?;
    Ok(ok(json!({})))
}

async fn thing_principals(
    State(s): State<AppState>,
    Path(thing): Path<String>,
) -> Result<Response, ApiError> {
    shoal_things::shadow::ThingName::parse(&thing)
        .map_err(|e| ApiError::bad_request(format!("thingName: {e}")))?;
    Ok(ok(json!({ "principals": s.identity.thing_principals(&thing) })))
}
