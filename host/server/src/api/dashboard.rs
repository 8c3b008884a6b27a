//! The fleet dashboard: a static page (`GET /dashboard/`) and its scripts, embedded in the
//! binary so it works with no internet and no files beside the binary. The page holds no data
//! until it has credentials: every call it makes is signed with SigV4 like any other client
//! (REST) or presigned (`/mqtt`, the claim report frame), so serving the files needs none.
//!
//! `--dashboard-dir DIR` serves the files from `DIR` instead, read on each request, for
//! working on the page without rebuilding Shoal.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::AppState;

/// The embedded files: name, content type, content.
const FILES: [(&str, &str, &str); 5] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../dashboard/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../dashboard/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../dashboard/app.js"),
    ),
    (
        "sigv4.js",
        "text/javascript; charset=utf-8",
        include_str!("../../dashboard/sigv4.js"),
    ),
    (
        "mqtt.js",
        "text/javascript; charset=utf-8",
        include_str!("../../dashboard/mqtt.js"),
    ),
];

/// Scripts and styles come from this origin only; the page talks to this origin only (REST and
/// the MQTT WebSocket); the claim report is framed from this origin.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; frame-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// Whether a request path is the dashboard's (served without authentication).
pub fn is_dashboard(path: &str) -> bool {
    path == "/dashboard" || path.starts_with("/dashboard/")
}

/// `GET /dashboard`: to the page, so its relative links resolve.
pub async fn redirect() -> Redirect {
    Redirect::permanent("/dashboard/")
}

/// `GET /dashboard/`.
pub async fn index(State(s): State<AppState>) -> Response {
    serve(&s, "index.html").await
}

/// `GET /dashboard/{file}`.
pub async fn file(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    serve(&s, &name).await
}

async fn serve(s: &AppState, name: &str) -> Response {
    let Some(&(name, content_type, embedded)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such dashboard file\n").into_response();
    };
    // The embedded copy is served as it is, without copying it per request.
    let body = match &s.dashboard_dir {
        None => axum::body::Body::from(embedded),
        Some(dir) => match tokio::fs::read_to_string(dir.join(name)).await {
            Ok(text) => axum::body::Body::from(text),
            Err(e) => {
                tracing::warn!(file = %dir.join(name).display(), error = %e, "cannot read a dashboard file");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot read {name} from the dashboard directory: {e}\n"),
                )
                    .into_response();
            }
        },
    };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The embedded files change only with the binary; files from a directory are being edited.
    let cache = if s.dashboard_dir.is_some() {
        "no-store"
    } else {
        "no-cache"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_paths() {
        assert!(is_dashboard("/dashboard"));
        assert!(is_dashboard("/dashboard/app.js"));
        assert!(!is_dashboard("/dashboards"));
        assert!(!is_dashboard("/api/v1/dashboard"));
    }

    #[test]
    fn every_embedded_file_is_there() {
        for (name, _, body) in FILES {
            assert!(!body.trim().is_empty(), "{name} is empty");
        }
    }
}
