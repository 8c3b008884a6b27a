//! Claim verification over HTTP: `GET /api/v1/claims/verify?thing=&from=&to=` answers the
//! report of [`crate::claim::verify`] as JSON, or as an HTML page with `format=html`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Deserialize;

use super::error::ApiError;
use super::openapi::{Api, Op};
use super::registry::AwsQuery;
use super::{AppState, blocking};
use crate::claim::{self, ClaimError, ClaimQuery};
use shoal_things::shadow::{ShadowKey, ShadowName, ThingName};

/// Routes.
pub fn routes() -> Api {
    Api::new("claims").op(
        Op::get(
            "/api/v1/claims/verify",
            "VerifyClaim",
            "Did the cold chain hold? Excursions, door openings, presence, gaps and a verdict for one thing over a window, from the archived telemetry.",
        )
        .query::<VerifyParams>(),
        verify,
    )
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VerifyParams {
    /// The thing (truck).
    thing: String,
    /// Window start: `2026-11-26T10:00:00Z`, a date, or epoch milliseconds.
    from: String,
    /// Window end (exclusive), same forms.
    to: String,
    /// Highest acceptable temperature, °C (default -18).
    max_temp: Option<f64>,
    /// Highest acceptable relative humidity, % (default 85).
    max_humidity: Option<f64>,
    /// A silence longer than this many seconds is a data gap (default 600).
    max_gap: Option<u64>,
    /// The rule whose archive holds the telemetry (default `telemetry`).
    archive: Option<String>,
    /// The named shadow whose `state.desired` holds the planned route (`{"name", "points":
    /// [[lat, lon], ...], "corridorM"}`), default `route`; empty: check no route.
    route_shadow: Option<String>,
    /// How far from the planned route a truck may be, metres (default: the plan's
    /// `corridorM`, else 2000).
    corridor: Option<f64>,
    /// `json` (default) or `html`.
    format: Option<String>,
}

impl From<ClaimError> for ApiError {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::Invalid(m) => ApiError::bad_request(m),
            ClaimError::Io { .. } => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                error_type: "InternalFailureException",
                body: serde_json::json!({ "message": e.to_string() }),
            },
        }
    }
}

/// The plan in `thing`'s named shadow `name`, if it has a usable one.
async fn planned_route(
    s: &AppState,
    thing: &str,
    name: &str,
    corridor: Option<f64>,
) -> Result<Option<claim::PlannedRoute>, ApiError> {
    let thing_name = ThingName::parse(thing).map_err(|e| ApiError::bad_request(format!("thing: {e}")))?;
    let shadow = ShadowName::parse(name).map_err(|e| ApiError::bad_request(format!("routeShadow: {e}")))?;
    match s
        .shadows
        .get(&ShadowKey::new(thing_name, Some(shadow)), b"")
        .await
    {
        Ok(doc) => {
            let version = doc
                .get("version")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            let source = format!("shadow {name} of {thing}, version {version}");
            Ok(claim::PlannedRoute::from_shadow(&doc, source, corridor))
        }
        Err(r) if r.error.code == 404 => Ok(None),
        Err(r) => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error_type: "ServiceUnavailableException",
            body: serde_json::json!({ "message": format!("cannot read the planned route: {}", r.error) }),
        }),
    }
}

async fn verify(
    State(s): State<AppState>,
    AwsQuery(p): AwsQuery<VerifyParams>,
) -> Result<Response, ApiError> {
    let html = match p.format.as_deref() {
        None | Some("json") => false,
        Some("html") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format must be json or html, not {other:?}"
            )));
        }
    };
    let max_temp_c = p.max_temp.unwrap_or(-18.0);
    let max_humidity = p.max_humidity.unwrap_or(85.0);
    if !max_temp_c.is_finite() || !max_humidity.is_finite() {
        return Err(ApiError::bad_request("maxTemp and maxHumidity must be numbers"));
    }
    if p.corridor.is_some_and(|c| !c.is_finite() || c <= 0.0) {
        return Err(ApiError::bad_request(
            "corridor must be a positive number of metres",
        ));
    }
    let route = match p.route_shadow.as_deref().unwrap_or("route") {
        "" => None,
        name => planned_route(&s, &p.thing, name, p.corridor).await?,
    };
    let q = ClaimQuery {
        route,
        thing: p.thing,
        from_ms: claim::parse_time(&p.from)?,
        to_ms: claim::parse_time(&p.to)?,
        max_temp_c,
        max_humidity,
        max_gap_secs: p.max_gap.unwrap_or(600),
        archive: p.archive.unwrap_or_else(|| "telemetry".into()),
    };
    let Some(root) = s.archive_dir.clone() else {
        return Err(ApiError::bad_request("this node keeps no archive"));
    };
    let report = blocking(move || claim::verify(&root, q)).await?;
    if html {
        Ok((
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            claim::html(&report),
        )
            .into_response())
    } else {
        Ok((StatusCode::OK, axum::Json(report)).into_response())
    }
}
