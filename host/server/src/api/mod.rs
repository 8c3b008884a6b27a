//! The HTTP surface (axum): health, Prometheus metrics, the AWS IoT data plane, and the
//! management API under `/api/v1` (identities, the thing registry, plugins, rules, streams).
//! Identities, the registry and rules also answer on AWS's control-plane paths.

mod auth;
mod aws_identity;
mod claims;
mod dashboard;

pub use auth::TlsPeer;
mod dataplane;
mod error;
mod identity;
mod keys;
mod openapi;
mod plugins;
mod registry;
mod rules;
mod streams;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use shoal_auth::service::IdentityService;
use shoal_broker::Broker;
use shoal_broker::message::ClientId;
use shoal_plugin_host::PluginHost;
use shoal_rules::RulesEngine;
use shoal_things::registry::Registry;
use shoal_things::shadow::ShadowService;

/// Shared state of the HTTP handlers: one reference to the [`AppServices`]. axum clones the
/// state for every extractor and middleware of every request; one shared count to bump
/// instead of one per service (a dozen atomic increments and decrements, their cache lines
/// bouncing between the cores, several times per request).
#[derive(Clone, Debug)]
pub struct AppState(Arc<AppServices>);

impl std::ops::Deref for AppState {
    type Target = AppServices;

    fn deref(&self) -> &AppServices {
        &self.0
    }
}

impl From<AppServices> for AppState {
    fn from(services: AppServices) -> AppState {
        AppState(Arc::new(services))
    }
}

/// What the HTTP handlers serve from, set up before the router is built ([`router`]).
#[derive(Debug)]
pub struct AppServices {
    /// The broker.
    pub broker: Arc<Broker>,
    /// Device shadows.
    pub shadows: Arc<ShadowService>,
    /// Certificates, CAs, policies.
    pub identity: Arc<IdentityService>,
    /// Things, thing types, thing groups.
    pub registry: Arc<Registry>,
    /// WebAssembly plugins.
    pub plugins: PluginHost,
    /// The rules engine.
    pub rules: RulesEngine,
    /// The client id of HTTP publishes.
    pub http_client_id: ClientId,
    /// Whether requests must be signed (SigV4).
    pub sigv4: bool,
    /// Authentication outcomes.
    pub auth_metrics: Arc<auth::AuthMetrics>,
    /// Derived SigV4 signing keys.
    pub sigv4_keys: Arc<shoal_auth::sigv4::KeyCache>,
    /// The MQTT server's WebSocket bridge socket (`None`: `/mqtt` is off).
    pub ws_socket: Option<std::path::PathBuf>,
    /// How long a client may take to send a request body.
    pub body_read_timeout: std::time::Duration,
    /// Answers by route.
    pub http_metrics: Arc<HttpMetrics>,
    /// Where archive rule actions write (`DATA/archive`), for claim verification.
    pub archive_dir: Option<std::path::PathBuf>,
    /// Serve the dashboard's files from this directory instead of the embedded copies.
    pub dashboard_dir: Option<std::path::PathBuf>,
}

/// HTTP answers by method, route (the matched pattern, not the raw path) and status, for
/// `/metrics` as `shoal_http_requests_total{method,route,status}`. Requests refused before
/// routing (authentication) are in `shoal_http_auth_total`.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// By route pattern: `(method, status, count)` (a handful each). Looked up by `&str`, so
    /// a request allocates only the first time its route, method and status are seen.
    counts: std::sync::Mutex<std::collections::HashMap<String, Vec<Answered>>>,
}

/// `(method, status, count)` of one route.
type Answered = (String, u16, u64);

impl HttpMetrics {
    fn record(&self, method: &str, route: &str, status: u16) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let per_route = match counts.get_mut(route) {
            Some(v) => v,
            None => counts.entry(route.to_owned()).or_default(),
        };
        match per_route.iter_mut().find(|(m, s, _)| m == method && *s == status) {
            Some((_, _, n)) => *n += 1,
            None => per_route.push((method.to_owned(), status, 1)),
        }
    }

    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str(
            "# HELP shoal_http_requests_total HTTP requests answered, by method, route and status.\n",
        );
        out.push_str("# TYPE shoal_http_requests_total counter\n");
        let mut rows: Vec<(&str, &str, u16, u64)> = Vec::new();
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (route, per_route) in counts.iter() {
            rows.extend(
                per_route
                    .iter()
                    .map(|(m, s, n)| (m.as_str(), route.as_str(), *s, *n)),
            );
        }
        rows.sort_unstable();
        for (method, route, status, n) in rows {
            let _ = writeln!(
                out,
                "shoal_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
}

/// Counts each routed request's answer.
async fn count_answers(
    State(s): State<AppState>,
    route: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    let resp = next.run(req).await;
    let route = route.as_ref().map_or("other", |r| r.as_str());
    s.http_metrics
        .record(method.as_str(), route, resp.status().as_u16());
    resp
}

impl AppServices {
    /// Services for the handlers, with the default settings.
    pub fn new(
        broker: Arc<Broker>,
        shadows: Arc<ShadowService>,
        identity: Arc<IdentityService>,
        registry: Arc<Registry>,
        plugins: PluginHost,
        rules: RulesEngine,
    ) -> Self {
        AppServices {
            broker,
            shadows,
            identity,
            registry,
            plugins,
            rules,
            http_client_id: dataplane::http_client_id(),
            sigv4: true,
            auth_metrics: Arc::default(),
            sigv4_keys: Arc::default(),
            ws_socket: None,
            body_read_timeout: std::time::Duration::from_secs(30),
            http_metrics: Arc::default(),
            archive_dir: None,
            dashboard_dir: None,
        }
    }
}

/// Runs management work that blocks (compiling a plugin, writing and syncing a file) on the
/// blocking pool, off the executor threads that serve HTTP and MQTT; its error becomes the
/// answer.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, error::ApiError>
where
    T: Send + 'static,
    E: Into<error::ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(error::ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error_type: "InternalFailureException",
            body: json!({ "message": format!("the operation did not complete: {e}") }),
        }),
    }
}

/// Every route, with the descriptions of Shoal's own (`/api/v1`) operations.
fn api() -> openapi::Api {
    openapi::Api::new("")
        .merge(identity::routes())
        .merge(keys::routes())
        .merge(registry::routes())
        .merge(plugins::routes())
        .merge(rules::routes())
        .merge(streams::routes())
        .merge(claims::routes())
        .undocumented(dataplane::routes())
        .undocumented(aws_identity::routes())
}

/// The path of the OpenAPI document (open, like `/health`).
const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The HTTP application.
pub fn router(state: AppState) -> Router {
    let (routes, doc) = api().finish();
    let doc = axum::body::Bytes::from(serde_json::to_vec(doc.as_ref()).unwrap_or_default());
    let openapi = move || {
        let doc = doc.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
    };
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/mqtt", get(ws::upgrade))
        .route(OPENAPI_PATH, get(openapi))
        .route("/dashboard", get(dashboard::redirect))
        .route("/dashboard/", get(dashboard::index))
        .route("/dashboard/{file}", get(dashboard::file))
        .merge(routes)
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), count_answers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state)
}

/// `GET /health`: 200 when everything answers, 503 (with the same body) when the store does
/// not; MQTT keeps serving live traffic either way.
async fn health(State(s): State<AppState>) -> Response {
    let (store_up, store_error) = s.broker.store_health();
    let m = &s.broker.metrics;
    let body = json!({
        "status": if store_up { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "store": {
            "kind": s.broker.store_kind(),
            "up": store_up,
            "error": store_error,
            "pending_writes": m.store_pending.load(std::sync::atomic::Ordering::Relaxed),
        },
        "mqtt": {
            "connections": m.connections.load(std::sync::atomic::Ordering::Relaxed),
            "sessions": s.broker.session_count(),
        },
    });
    let code = if store_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text exposition.
async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        {
            let mut text = s.broker.metrics.render();
            s.plugins.render_prometheus(&mut text);
            s.rules.render_prometheus(&mut text);
            s.auth_metrics.render(&mut text);
            s.http_metrics.render(&mut text);
            s.shadows.metrics.render(&mut text);
            text.push_str(&format!(
                "# HELP shoal_ws_bridged_connections MQTT over WebSocket connections bridged now.\n\
                 # TYPE shoal_ws_bridged_connections gauge\nshoal_ws_bridged_connections {}\n",
                ws::BRIDGED.load(std::sync::atomic::Ordering::Relaxed)
            ));
            text
        },
    )
        .into_response()
}
