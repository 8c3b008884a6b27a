//! SigV4 on every HTTP request (but `/health` and `/metrics`): a middleware verifies the
//! signature with the access key's secret, then hands the handlers an [`HttpCaller`] in the
//! request's extensions. Admin keys may call everything; other keys only the data plane, where
//! each handler checks the key's policies (`iot:Publish`, `iot:GetThingShadow`, ...).
//!
//! Cheap checks run before the body is read (the signature's form, the date window, the key),
//! so an unsigned or stale request never makes the server buffer its body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shoal_auth::policy::Action;
use shoal_auth::service::HttpCaller;
use shoal_auth::sigv4::{self, Authorization, SigV4Error};

use super::AppState;
use super::error::ApiError;

/// The TLS client certificate chain of an HTTPS connection (leaf first), put into each
/// request's extensions by the HTTPS listener.
#[derive(Debug, Clone, Default)]
pub struct TlsPeer(pub Arc<Vec<rustls::pki_types::CertificateDer<'static>>>);

/// The largest body of a plugin upload (`POST /api/v1/plugins/{name}/versions`, admin keys;
/// the route's own body limit too).
pub const MAX_UPLOAD_BODY: usize = 64 << 20;
/// The largest body of a replay (`POST /api/v1/plugins/{name}/replay`, admin keys).
pub const MAX_REPLAY_BODY: usize = 16 << 20;
/// The largest body of any other request (an HTTP publish may be up to the MQTT payload
/// limit when that is larger).
const MAX_BODY: usize = 1 << 20;

/// How many bytes of body `path` may carry; larger bodies get 413 before they are buffered
/// in full. Only admin callers get the large upload limits.
fn body_limit(s: &AppState, method: &axum::http::Method, path: &str, admin: bool) -> usize {
    let plugin_op = path
        .strip_prefix("/api/v1/plugins/")
        .and_then(|r| r.split_once('/'))
        .filter(|(name, _)| !name.is_empty())
        .map(|(_, op)| op);
    match plugin_op {
        Some("versions") if admin && method == axum::http::Method::POST => MAX_UPLOAD_BODY,
        Some("replay") if admin && method == axum::http::Method::POST => MAX_REPLAY_BODY,
        _ if path.starts_with("/topics/") => MAX_BODY.max(s.broker.cfg.limits.max_payload_size as usize),
        _ => MAX_BODY,
    }
}

/// Reads a whole body, at most `limit` bytes within `timeout`; otherwise the answer to send.
async fn read_body(s: &AppState, body: Body, limit: usize) -> Result<axum::body::Bytes, Response> {
    // A Content-Length over the limit is refused before anything is read.
    let announced = axum::body::HttpBody::size_hint(&body).lower();
    let read = async {
        if announced > limit as u64 {
            return Ok(Err(format!("{announced} bytes announced")));
        }
        tokio::time::timeout(s.body_read_timeout, axum::body::to_bytes(body, limit))
            .await
            .map(|r| r.map_err(|e| e.to_string()))
    };
    match read.await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            s.auth_metrics.count("too_large");
            Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                error_type: "RequestEntityTooLargeException",
                body: json!({ "message": format!("cannot read the body (at most {limit} bytes here): {e}") }),
            }
            .into_response())
        }
        Err(_) => {
            s.auth_metrics.count("timeout");
            Err(ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                error_type: "RequestTimeoutException",
                body: json!({ "message": format!(
                    "the body did not arrive within {} s", s.body_read_timeout.as_secs()
                ) }),
            }
            .into_response())
        }
    }
}

/// Whether a raw path has a `.` or `..` segment (clients and proxies normalize those in
/// different ways, so the path signed and the path routed could differ: refused).
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| seg == "." || seg == "..")
}

/// Outcomes of HTTP authentication, for `/metrics`.
#[derive(Debug, Default)]
pub struct AuthMetrics {
    outcomes: [AtomicU64; 11],
}

const OUTCOMES: [&str; 11] = [
    "ok",
    "missing",
    "malformed",
    "unknown_key",
    "expired",
    "mismatch",
    "invalid",
    "forbidden",
    "too_large",
    "timeout",
    "bad_path",
];

impl AuthMetrics {
    pub(super) fn count(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP shoal_http_auth_total HTTP requests by authentication outcome.\n");
        out.push_str("# TYPE shoal_http_auth_total counter\n");
        for (o, n) in OUTCOMES.iter().zip(&self.outcomes) {
            let _ = writeln!(
                out,
                "shoal_http_auth_total{{outcome=\"{o}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// Whether a path is the AWS IoT data plane (any active key may call it; policies decide).
fn is_data_plane(path: &str) -> bool {
    path.starts_with("/topics/")
        || path.starts_with("/retainedMessage/")
        || path.starts_with("/api/things/shadow/ListNamedShadowsForThing/")
        || path
            .strip_prefix("/things/")
            .and_then(|r| r.strip_suffix("/shadow"))
            .is_some_and(|t| !t.is_empty() && !t.contains('/'))
}

fn refusal(e: &SigV4Error) -> Response {
    ApiError {
        status: StatusCode::FORBIDDEN,
        error_type: e.aws_type(),
        body: json!({ "message": e.to_string() }),
    }
    .into_response()
}

/// A 403 for a verified caller that may not do this.
pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::FORBIDDEN,
        error_type: "ForbiddenException",
        body: json!({ "message": message.into() }),
    }
}

/// Checks `action` on `resource` for the caller, or answers 403.
pub fn require(caller: &HttpCaller, action: Action, resource: &str) -> Result<(), ApiError> {
    if caller.allows(action, resource) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{caller} is not authorized to perform {action} on {resource}"
        )))
    }
}

/// What a SigV4 signature covers in an HTTP request: the raw path and query, every header.
pub(super) fn signed_parts<'a>(
    method: &'a axum::http::Method,
    uri: &'a axum::http::Uri,
    headers: &'a axum::http::HeaderMap,
) -> sigv4::Request<'a> {
    sigv4::Request {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect(),
    }
}

/// The middleware.
pub async fn authenticate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // /mqtt authenticates its upgrade itself (a presigned URL, or a TLS client certificate
    // judged at CONNECT); the dashboard's static files hold no data.
    if path == "/health"
        || path == "/metrics"
        || path == "/mqtt"
        || path == super::OPENAPI_PATH
        || super::dashboard::is_dashboard(path)
    {
        return next.run(req).await;
    }
    if has_dot_segment(path) {
        s.auth_metrics.count("bad_path");
        return ApiError {
            status: StatusCode::BAD_REQUEST,
            error_type: "InvalidRequestException",
            body: json!({ "message": "the path has a '.' or '..' segment: send the path it names" }),
        }
        .into_response();
    }
    if !s.sigv4 {
        let (mut parts, body) = req.into_parts();
        let body = match read_body(&s, body, body_limit(&s, &parts.method, parts.uri.path(), true)).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        parts.extensions.insert(Arc::new(HttpCaller::unauthenticated()));
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let (parts, body) = req.into_parts();
    let refuse = |e: SigV4Error| {
        s.auth_metrics.count(e.label());
        tracing::info!(
            peer = ?peer,
            method = %parts.method,
            path = %parts.uri.path(),
            reason = e.label(),
            "HTTP request refused: {}",
            e.to_string().lines().next().unwrap_or_default()
        );
        refusal(&e)
    };
    let sreq = signed_parts(&parts.method, &parts.uri, &parts.headers);
    let auth = match Authorization::parse(&sreq) {
        Ok(a) => a,
        Err(SigV4Error::Missing) if parts.extensions.get::<TlsPeer>().is_some_and(|t| !t.0.is_empty()) => {
            // No signature on an HTTPS connection with a client certificate: the certificate
            // is the identity.
            let leaf = parts
                .extensions
                .get::<TlsPeer>()
                .map(|t| t.0.clone())
                .unwrap_or_default();
            let caller = match s
                .identity
                .http_caller_for_certificate(
                    leaf.first().map(|c| c.as_ref()).unwrap_or_default(),
                    peer.map(|p| p.ip()),
                )
                .await
            {
                Ok(c) => c,
                Err(why) => {
                    s.auth_metrics.count("unknown_key");
                    tracing::info!(peer = ?peer, path = %parts.uri.path(), "HTTPS client certificate refused: {why}");
                    return ApiError {
                        status: StatusCode::FORBIDDEN,
                        error_type: "ForbiddenException",
                        body: json!({ "message": why }),
                    }
                    .into_response();
                }
            };
            let path = parts.uri.path().to_owned();
            return admit(&s, caller, &path, parts, body, next).await;
        }
        Err(e) => return refuse(e),
    };
    if let Err(e) = auth.check_time(sigv4::unix_now()) {
        return refuse(e);
    }
    let secret = match s.identity.signing_secret(&auth.credential.key_id) {
        Ok(k) => k,
        Err(e) => return refuse(e),
    };
    // The caller (and whether it is an admin) is known before the signature is checked, but
    // only the body limit depends on it before then.
    let caller = match s
        .identity
        .http_caller(&auth.credential.key_id, peer.map(|p| p.ip()))
    {
        Ok(c) => c,
        Err(e) => return refuse(e),
    };
    let limit = body_limit(&s, &parts.method, parts.uri.path(), caller.admin);
    let bytes = match read_body(&s, body, limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(e) = auth.verify_cached(&sreq, &sigv4::sha256_hex(&bytes), &secret, &s.sigv4_keys) {
        return refuse(e);
    }
    let path = sreq.path.to_owned();
    drop(sreq);
    admit(&s, caller, &path, parts, Body::from(bytes), next).await
}

/// Lets an authenticated caller through (management paths: admin keys only).
async fn admit(
    s: &AppState,
    caller: HttpCaller,
    path: &str,
    mut parts: axum::http::request::Parts,
    body: Body,
    next: Next,
) -> Response {
    if !caller.admin && !is_data_plane(path) {
        s.auth_metrics.count("forbidden");
        tracing::info!(%path, "management call by {caller} refused");
        let why = if caller.kind == "certificate" {
            "the management API needs an admin access key"
        } else {
            "it is not an admin key"
        };
        return forbidden(format!(
            "{caller} may call the data plane (shadows, topics, retained messages) only: {why}"
        ))
        .into_response();
    }
    s.auth_metrics.count("ok");
    parts.extensions.insert(Arc::new(caller));
    next.run(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use super::{has_dot_segment, is_data_plane};

    #[test]
    fn dot_segments() {
        for p in ["/things/../keys", "/./health", "/topics/a/..", "/api/v1/rules/."] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in [
            "/topics/a%2F..%2Fb",
            "/things/t..1/shadow",
            "/api/v1/rules/r.1",
            "/",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    #[test]
    fn data_plane_paths() {
        for p in [
            "/topics/a%2Fb",
            "/retainedMessage/x",
            "/things/t1/shadow",
            "/api/things/shadow/ListNamedShadowsForThing/t1",
        ] {
            assert!(is_data_plane(p), "{p}");
        }
        for p in [
            "/things/t1",
            "/things/t1/principals",
            "/things/t1/x/shadow",
            "/things/shadow",
            "/api/v1/certificates",
            "/rules/r",
            "/policies/p",
        ] {
            assert!(!is_data_plane(p), "{p}");
        }
    }
}
