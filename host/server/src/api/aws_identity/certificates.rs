//! Certificates and CA certificates: `CreateKeysAndCertificate`, `CreateCertificateFromCsr`,
//! `RegisterCertificate`, `UpdateCertificate`, `DescribeCertificate`, `ListCertificates`,
//! `ListCertificatesByCA`, `DeleteCertificate`, `RegisterCACertificate`, `DescribeCACertificate`,
//! `ListCACertificates`, `UpdateCACertificate`, `GetRegistrationCode` (and the refused
//! `RegisterCertificateWithoutCA`, `DeleteCACertificate`).

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_auth::pki::{self, CertInfo};
use shoal_auth::service::{CaRecord, CertStatus, CertificateRecord, IdentityError};

use super::super::AppState;
use super::super::error::ApiError;
use super::super::registry::{AwsJson, AwsQuery};
use super::{MarkerQuery, created_key, done, invalid, marker_list, name_existing, ok, secs};

/// The subject common name of `CreateKeysAndCertificate`'s certificates, AWS's.
const AWS_CERT_COMMON_NAME: &str = "AWS IoT Certificate";

/// Routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/keys-and-certificate", post(create_keys_and_certificate))
        .route(
            "/certificates",
            get(list_certificates).post(create_certificate_from_csr),
        )
        .route(
            "/certificates/{certificateId}",
            get(describe_certificate)
                .put(update_certificate)
                .delete(delete_certificate),
        )
        .route("/certificate/register", post(register_certificate))
        .route(
            "/certificate/register-no-ca",
            post(register_certificate_without_ca),
        )
        .route(
            "/certificates-by-ca/{caCertificateId}",
            get(list_certificates_by_ca),
        )
        .route("/cacertificate", post(register_ca_certificate))
        .route(
            "/cacertificate/{caCertificateId}",
            get(describe_ca_certificate)
                .put(update_ca_certificate)
                .delete(delete_ca_certificate),
        )
        .route("/cacertificates", get(list_ca_certificates))
        .route("/registrationcode", get(get_registration_code))
}

/// `?setAsActive=` (false unless given, as AWS).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActiveQuery {
    #[serde(default)]
    set_as_active: bool,
}

/// The certificate's facts (validity), when its PEM parses.
fn cert_facts(pem: &str) -> Option<CertInfo> {
    pki::pem_to_der(pem)
        .ok()
        .and_then(|der| pki::cert_info(&der).ok())
}

fn validity(info: &CertInfo) -> Value {
    json!({ "notBefore": info.not_before, "notAfter": info.not_after })
}

/// `CertificateDescription`. A certificate issued by Shoal's own CA has no
/// `caCertificateId`, as AWS describes the certificates Amazon's CA issued.
fn cert_description(s: &AppState, r: &CertificateRecord) -> Value {
    let mut d = json!({
        "certificateArn": r.arn,
        "certificateId": r.id,
        "status": r.status.as_str(),
        "certificatePem": r.pem,
        "ownedBy": s.identity.arn().account(),
        "creationDate": secs(r.created_ms),
        "lastModifiedDate": secs(r.updated_ms),
        "certificateMode": "DEFAULT",
    });
    if let Some(ca) = &r.ca_id {
        d["caCertificateId"] = json!(ca);
    }
    if let Some(info) = cert_facts(&r.pem) {
        d["validity"] = validity(&info);
    }
    d
}

/// `Certificate`, an item of `ListCertificates`.
fn cert_summary(r: &CertificateRecord) -> Value {
    json!({
        "certificateArn": r.arn,
        "certificateId": r.id,
        "status": r.status.as_str(),
        "certificateMode": "DEFAULT",
        "creationDate": secs(r.created_ms),
    })
}

/// `CreateKeysAndCertificate`: `POST /keys-and-certificate?setAsActive=` ->
/// `{certificateArn, certificateId, certificatePem, keyPair: {PublicKey, PrivateKey}}`. The
/// subject is `CN=AWS IoT Certificate`, as AWS's; the private key is returned once only.
async fn create_keys_and_certificate(
    State(s): State<AppState>,
    AwsQuery(q): AwsQuery<ActiveQuery>,
) -> Result<Response, ApiError> {
    let (rec, issued) = s
        .identity
        .create_keys_and_certificate(AWS_CERT_COMMON_NAME, q.set_as_active)
        .await?;
    Ok(ok(json!({
        "certificateArn": rec.arn,
        "certificateId": rec.id,
        "certificatePem": rec.pem,
        "keyPair": { "PublicKey": issued.public_key_pem, "PrivateKey": issued.private_key_pem },
    })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CsrBody {
    certificate_signing_request: String,
}

/// `CreateCertificateFromCsr`: `POST /certificates?setAsActive=` with
/// `{certificateSigningRequest}` -> `{certificateArn, certificateId, certificatePem}`.
async fn create_certificate_from_csr(
    State(s): State<AppState>,
    AwsQuery(q): AwsQuery<ActiveQuery>,
    AwsJson(b): AwsJson<CsrBody>,
) -> Result<Response, ApiError> {
    let rec = s
        .identity
        .sign_csr(&b.certificate_signing_request, q.set_as_active)
        .await?;
    Ok(ok(json!({
        "certificateArn": rec.arn,
        "certificateId": rec.id,
        "certificatePem": rec.pem,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterCertBody {
    certificate_pem: String,
    /// The status to register with; wins over the deprecated `setAsActive`.
    status: Option<String>,
}

/// `RegisterCertificate`: `POST /certificate/register?setAsActive=` with
/// `{certificatePem, status?, caCertificatePem?}` -> `{certificateArn, certificateId}`. Without
/// `status` and `setAsActive` the certificate is INACTIVE, as on AWS.
async fn register_certificate(
    State(s): State<AppState>,
    AwsQuery(q): AwsQuery<ActiveQuery>,
    AwsJson(b): AwsJson<RegisterCertBody>,
) -> Result<Response, ApiError> {
    let status = match b.status.as_deref() {
        None if q.set_as_active => CertStatus::Active,
        None => CertStatus::Inactive,
        Some(st) => match CertStatus::parse(st) {
            Some(st) => st,
            None => {
                return Err(ApiError::bad_request(format!(
                    "status must be ACTIVE, INACTIVE, REVOKED or PENDING_ACTIVATION, not {st:?}"
                )));
            }
        },
    };
    let mut rec = s
        .identity
        .register_certificate(&b.certificate_pem, status == CertStatus::Active)
        .await
        .map_err(|e| match cert_facts(&b.certificate_pem) {
            Some(info) => name_existing(
                e,
                &info.id,
                &format!("{}cert/{}", s.identity.arn().prefix(), info.id),
            ),
            None => e.into(),
        })?;
    if !matches!(status, CertStatus::Active | CertStatus::Inactive) {
        rec = s.identity.set_certificate_status(&rec.id, status).await?;
    }
    Ok(ok(json!({ "certificateArn": rec.arn, "certificateId": rec.id })))
}

/// `RegisterCertificateWithoutCA`: refused (see the module documentation).
async fn register_certificate_without_ca() -> ApiError {
    ApiError::bad_request(
        "RegisterCertificateWithoutCA is not supported: Shoal's TLS listener only accepts certificates that \
         chain to its own CA or a registered CA; register the issuing CA (RegisterCACertificate), then use \
         RegisterCertificate",
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewStatusQuery {
    new_status: Option<String>,
}

/// `UpdateCertificate`: `PUT /certificates/{certificateId}?newStatus=` -> `{}`. Leaving ACTIVE
/// closes the certificate's live connections. A REVOKED certificate stays REVOKED
/// (`CertificateStateException`); `PENDING_ACTIVATION` and `PENDING_TRANSFER` are AWS's own
/// states and refused, as AWS does.
async fn update_certificate(
    State(s): State<AppState>,
    Path(id): Path<String>,
    AwsQuery(q): AwsQuery<NewStatusQuery>,
) -> Result<Response, ApiError> {
    let wanted = q
        .new_status
        .ok_or_else(|| ApiError::bad_request("newStatus is required"))?;
    let status = match CertStatus::parse(&wanted) {
        Some(st @ (CertStatus::Active | CertStatus::Inactive | CertStatus::Revoked)) => st,
        _ => {
            return Err(ApiError::bad_request(format!(
                "newStatus must be ACTIVE, INACTIVE or REVOKED, not {wanted:?}"
            )));
        }
    };
    let current = s.identity.certificate(&id)?;
    if current.status == CertStatus::Revoked && status != CertStatus::Revoked {
        return Err(IdentityError::CertificateState(format!(
            "certificate {id} is REVOKED and cannot become {wanted}"
        ))
        .into());
    }
    s.identity.set_certificate_status(&id, status).await?;
    Ok(done())
}

/// `DescribeCertificate`: `GET /certificates/{certificateId}` -> `{certificateDescription}`.
async fn describe_certificate(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = s.identity.certificate(&id)?;
    Ok(ok(
        json!({ "certificateDescription": cert_description(&s, &rec) }),
    ))
}

/// `ListCertificates`: `GET /certificates?pageSize=&marker=&isAscendingOrder=` ->
/// `{certificates, nextMarker?}`.
async fn list_certificates(
    State(s): State<AppState>,
    AwsQuery(q): AwsQuery<MarkerQuery>,
) -> Result<Response, ApiError> {
    let (certs, next) = q.page(s.identity.certificates(), |c| created_key(c.created_ms, &c.id))?;
    Ok(marker_list(
        "certificates",
        certs.iter().map(cert_summary).collect(),
        next,
    ))
}

/// `ListCertificatesByCA`: `GET /certificates-by-ca/{caCertificateId}?pageSize=&marker=&isAscendingOrder=`.
/// The id of Shoal's own root CA (`GET /api/v1/ca`) lists the certificates it issued.
async fn list_certificates_by_ca(
    State(s): State<AppState>,
    Path(ca): Path<String>,
    AwsQuery(q): AwsQuery<MarkerQuery>,
) -> Result<Response, ApiError> {
    let shoal_ca = s.identity.ca().id() == ca;
    let certs: Vec<CertificateRecord> = s
        .identity
        .certificates()
        .into_iter()
        .filter(|c| match &c.ca_id {
            Some(id) => *id == ca,
            None => shoal_ca,
        })
        .collect();
    let (certs, next) = q.page(certs, |c| created_key(c.created_ms, &c.id))?;
    Ok(marker_list(
        "certificates",
        certs.iter().map(cert_summary).collect(),
        next,
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ForceQuery {
    #[serde(default)]
    force_delete: bool,
}

/// `DeleteCertificate`: `DELETE /certificates/{certificateId}?forceDelete=` -> `{}`. Only an
/// inactive certificate without attachments (`CertificateStateException`,
/// `DeleteConflictException`); `forceDelete` detaches its policies first, but a thing still
/// attached keeps it, as on AWS.
async fn delete_certificate(
    State(s): State<AppState>,
    Path(id): Path<String>,
    AwsQuery(q): AwsQuery<ForceQuery>,
) -> Result<Response, ApiError> {
    if q.force_delete {
        let rec = s.identity.certificate(&id)?;
        if rec.status == CertStatus::Active {
            return Err(IdentityError::CertificateState(format!(
                "certificate {id} is ACTIVE: deactivate it before deleting it"
            ))
            .into());
        }
        if !s.identity.principal_things(&rec.arn)?.is_empty() {
            return Err(IdentityError::DeleteConflict(format!(
                "certificate {id} is still attached to a thing"
            ))
            .into());
        }
        for policy in s.identity.attached_policies(&rec.arn)? {
            s.identity.detach_policy(&policy, &rec.arn).await?;
        }
    }
    s.identity.delete_certificate(&id).await?;
    Ok(done())
}

// ---------------------------------------------------------------------------------------------
// CA certificates
// ---------------------------------------------------------------------------------------------

fn ca_status(r: &CaRecord) -> &'static str {
    if r.active { "ACTIVE" } else { "INACTIVE" }
}

fn find_ca(s: &AppState, id: &str) -> Result<CaRecord, ApiError> {
    s.identity
        .cas()
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| IdentityError::NotFound(format!("CA certificate {id} does not exist")).into())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterCaQuery {
    #[serde(default)]
    set_as_active: bool,
    #[serde(default)]
    allow_auto_registration: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterCaBody {
    ca_certificate: String,
    verification_certificate: Option<String>,
    registration_config: Option<Value>,
    certificate_mode: Option<String>,
}

/// A `registrationConfig` that asks for something (just-in-time provisioning), refused.
fn refuse_registration_config(c: Option<&Value>) -> Result<(), ApiError> {
    match c {
        Some(Value::Object(m)) if m.values().any(|v| !v.is_null()) => Err(ApiError::bad_request(
            "registrationConfig (just-in-time provisioning templates) is not supported",
        )),
        _ => Ok(()),
    }
}

/// AWS's proof of possession: a certificate signed by the CA's key whose common name is the
/// registration code.
fn check_verification(s: &AppState, ca_pem: &str, verification_pem: &str) -> Result<(), ApiError> {
    let bad = |m: String| invalid("CertificateValidationException", m);
    let ca = pki::pem_to_der(ca_pem).map_err(|e| bad(format!("caCertificate: {e}")))?;
    let v = pki::pem_to_der(verification_pem).map_err(|e| bad(format!("verificationCertificate: {e}")))?;
    if !pki::is_signed_by(&v, &ca) {
        return Err(bad(
            "the verification certificate is not signed by the CA certificate".into(),
        ));
    }
    let info = pki::cert_info(&v).map_err(|e| bad(format!("verificationCertificate: {e}")))?;
    let code = s.identity.ca().id();
    if info.subject.get("CommonName") != Some(&code) {
        return Err(invalid(
            "RegistrationCodeValidationException",
            "the verification certificate's common name is not the registration code (GetRegistrationCode)",
        ));
    }
    Ok(())
}

/// `RegisterCACertificate`: `POST /cacertificate?setAsActive=&allowAutoRegistration=` with
/// `{caCertificate, verificationCertificate?, ...}` -> `{certificateArn, certificateId}`.
async fn register_ca_certificate(
    State(s): State<AppState>,
    AwsQuery(q): AwsQuery<RegisterCaQuery>,
    AwsJson(b): AwsJson<RegisterCaBody>,
) -> Result<Response, ApiError> {
    refuse_registration_config(b.registration_config.as_ref())?;
    if let Some(mode) = b.certificate_mode.as_deref().filter(|m| *m != "DEFAULT") {
        return Err(ApiError::bad_request(format!(
            "certificateMode {mode:?} is not supported (only DEFAULT)"
        )));
    }
    if let Some(v) = &b.verification_certificate {
        check_verification(&s, &b.ca_certificate, v)?;
    }
    let rec = s
        .identity
        .register_ca(&b.ca_certificate, q.set_as_active, q.allow_auto_registration)
        .await
        .map_err(|e| match cert_facts(&b.ca_certificate) {
            Some(info) => name_existing(
                e,
                &info.id,
                &format!("{}cacert/{}", s.identity.arn().prefix(), info.id),
            ),
            None => e.into(),
        })?;
    Ok(ok(json!({ "certificateArn": rec.arn, "certificateId": rec.id })))
}

/// `DescribeCACertificate`: `GET /cacertificate/{caCertificateId}` -> `{certificateDescription}`.
async fn describe_ca_certificate(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = find_ca(&s, &id)?;
    let mut d = json!({
        "certificateArn": r.arn,
        "certificateId": r.id,
        "status": ca_status(&r),
        "certificatePem": r.pem,
        "ownedBy": s.identity.arn().account(),
        "creationDate": secs(r.created_ms),
        "autoRegistrationStatus": if r.auto_registration { "ENABLE" } else { "DISABLE" },
        "certificateMode": "DEFAULT",
    });
    if let Some(info) = cert_facts(&r.pem) {
        d["validity"] = validity(&info);
    }
    Ok(ok(json!({ "certificateDescription": d })))
}

/// `ListCACertificates`: `GET /cacertificates?pageSize=&marker=&isAscendingOrder=` (the
/// registered CAs; Shoal's own root is `GET /api/v1/ca`).
async fn list_ca_certificates(
    State(s): State<AppState>,
    AwsQuery(q): AwsQuery<MarkerQuery>,
) -> Result<Response, ApiError> {
    let (cas, next) = q.page(s.identity.cas(), |c| created_key(c.created_ms, &c.id))?;
    let items = cas
        .iter()
        .map(|r| {
            json!({
                "certificateArn": r.arn,
                "certificateId": r.id,
                "status": ca_status(r),
                "creationDate": secs(r.created_ms),
            })
        })
        .collect();
    Ok(marker_list("certificates", items, next))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateCaQuery {
    new_status: Option<String>,
    new_auto_registration_status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateCaBody {
    registration_config: Option<Value>,
    #[serde(default)]
    remove_auto_registration: bool,
}

/// `UpdateCACertificate`: `PUT /cacertificate/{caCertificateId}?newStatus=&newAutoRegistrationStatus=`
/// with `{removeAutoRegistration?}` -> `{}`. Deactivating a CA closes the connections of the
/// certificates it issued.
async fn update_ca_certificate(
    State(s): State<AppState>,
    Path(id): Path<String>,
    AwsQuery(q): AwsQuery<UpdateCaQuery>,
    AwsJson(b): AwsJson<UpdateCaBody>,
) -> Result<Response, ApiError> {
    refuse_registration_config(b.registration_config.as_ref())?;
    let active = match q.new_status.as_deref() {
        None => None,
        Some("ACTIVE") => Some(true),
        Some("INACTIVE") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "newStatus must be ACTIVE or INACTIVE, not {other:?}"
            )));
        }
    };
    let auto = match q.new_auto_registration_status.as_deref() {
        None if b.remove_auto_registration => Some(false),
        None => None,
        Some("ENABLE") => Some(true),
        Some("DISABLE") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "newAutoRegistrationStatus must be ENABLE or DISABLE, not {other:?}"
            )));
        }
    };
    s.identity.update_ca(&id, active, auto).await?;
    Ok(done())
}

/// `DeleteCACertificate`: refused (see the module documentation); a CA that does not exist is
/// still `ResourceNotFoundException`.
async fn delete_ca_certificate(State(s): State<AppState>, Path(id): Path<String>) -> ApiError {
    match find_ca(&s, &id) {
        Err(e) => e,
        Ok(_) => ApiError::bad_request(
            "DeleteCACertificate is not supported: deactivate the CA instead (UpdateCACertificate \
             newStatus=INACTIVE), which refuses every certificate it issued",
        ),
    }
}

/// `GetRegistrationCode`: `GET /registrationcode` -> `{registrationCode}`: the id of Shoal's
/// root CA (64 hex digits like AWS's codes), stable for a data directory.
async fn get_registration_code(State(s): State<AppState>) -> Response {
    ok(json!({ "registrationCode": s.identity.ca().id() }))
}
