//! Identities on AWS IoT's control-plane paths: certificates, CA certificates, policies and
//! their attachments, with the verbs, request URIs, parameter locations (path, query string,
//! header, body), answers and exception names of botocore's `iot` 2015-05-28 model, so
//! `boto3.client("iot", endpoint_url=...)` and `aws iot ...` work against Shoal.
//!
//! Handlers only translate: every rule (certificate states, the five policy versions, what may
//! be deleted, attachments, closing the connections a change revokes) lives in
//! [`IdentityService`](shoal_auth::service::IdentityService), which also serves Shoal's own
//! `/api/v1` identity API (`identity.rs`). Timestamps are seconds since the epoch (botocore
//! parses numbers). Lists page with AWS's parameters (`marker`/`pageSize` or
//! `nextToken`/`maxResults`, at most 250 a page); the marker is the sort key of the last item
//! returned, so a page survives items deleted meanwhile. Certificates, CAs and policies are
//! listed newest first, or oldest first with `isAscendingOrder=true` (AWS documents the order
//! as creation order); principals, things and targets by name.
//!
//! `certificates` holds the certificate and CA operations, `policies` the policies and their
//! attachments, `things` the thing principals; this file what they share (AWS's paging,
//! header members, the details of `ResourceAlreadyExistsException`).
//!
//! Where Shoal differs:
//!
//! * `RegisterCACertificate`: `verificationCertificate` is checked when given (signed by the
//!   CA, common name = `GetRegistrationCode`'s code) but not required; `registrationConfig`
//!   (just-in-time provisioning) and `certificateMode` `SNI_ONLY` are refused; tags are
//!   accepted and not stored (also on `CreatePolicy`).
//! * `RegisterCertificate` finds the issuer itself among Shoal's CA and the registered CAs
//!   (`caCertificatePem` is not needed and not read).
//! * `GetRegistrationCode` is the id of Shoal's root CA: stable for a data directory.
//! * `DeleteCACertificate` and `RegisterCertificateWithoutCA` answer
//!   `InvalidRequestException` naming what to do instead: the identity service cannot delete a
//!   CA, and the TLS listener only accepts chains to Shoal's CA or a registered CA.
//! * `AttachThingPrincipal` with `thingPrincipalType=EXCLUSIVE_THING` is refused: attachments
//!   are never exclusive.

mod certificates;
mod policies;
mod things;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_auth::service::IdentityError;

use super::AppState;
use super::error::ApiError;

/// The largest page AWS allows on these lists.
const MAX_PAGE: u32 = 250;

/// Routes. None clashes with the registry's `/things/{thing}` or the data plane's
/// `/things/{thing}/shadow`: the thing parameter is named `thing` as there.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(certificates::routes())
        .merge(policies::routes())
        .merge(things::routes())
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// The empty object AWS answers operations without output members with.
fn done() -> Response {
    ok(json!({}))
}

/// Seconds since the epoch, as botocore reads timestamps.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// An AWS exception without a Shoal counterpart (`CertificateValidationException`, ...): 400.
fn invalid(error_type: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        error_type,
        body: json!({ "message": message.into() }),
    }
}

/// A required header member (`x-amzn-principal`, ...), or 400 naming it.
fn header(headers: &HeaderMap, name: &str, member: &str) -> Result<String, ApiError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request(format!("{member} (header {name}) is required")))
}

/// `ResourceAlreadyExistsException` carries the resource's id and ARN, as AWS's does.
fn name_existing(e: IdentityError, id: &str, arn: &str) -> ApiError {
    let exists = matches!(e, IdentityError::Conflict(_));
    let mut err = ApiError::from(e);
    if exists {
        err.body["resourceId"] = json!(id);
        err.body["resourceArn"] = json!(arn);
    }
    err
}

/// A page of a listing: the items after `marker` in the order of their key (reversed when not
/// `ascending`), at most `size` of them, and the marker of the next page when there is one.
fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    marker: Option<&str>,
    size: Option<u32>,
    size_name: &str,
    ascending: bool,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let size = match size {
        None => MAX_PAGE,
        Some(n) if (1..=MAX_PAGE).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "{size_name} must be between 1 and {MAX_PAGE}, not {n}"
            )));
        }
    } as usize;
    let mut keyed: Vec<(String, T)> = items.into_iter().map(|t| (key(&t), t)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    if !ascending {
        keyed.reverse();
    }
    let mut rest: Vec<(String, T)> = keyed
        .into_iter()
        .filter(|(k, _)| marker.is_none_or(|m| if ascending { k.as_str() > m } else { k.as_str() < m }))
        .collect();
    let more = rest.len() > size;
    rest.truncate(size);
    let next = if more {
        rest.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    Ok((rest.into_iter().map(|(_, t)| t).collect(), next))
}

/// The listing order of certificates, CAs and policies: creation time, then id or name.
fn created_key(created_ms: u64, id: &str) -> String {
    format!("{created_ms:020}:{id}")
}

/// `marker`, `pageSize` and `isAscendingOrder`, the paging parameters of the older lists.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MarkerQuery {
    marker: Option<String>,
    page_size: Option<u32>,
    #[serde(default)]
    is_ascending_order: bool,
}

impl MarkerQuery {
    fn page<T>(
        self,
        items: Vec<T>,
        key: impl Fn(&T) -> String,
    ) -> Result<(Vec<T>, Option<String>), ApiError> {
        page(
            items,
            key,
            self.marker.as_deref(),
            self.page_size,
            "pageSize",
            self.is_ascending_order,
        )
    }

    /// By name, ascending (`isAscendingOrder` is about creation order, which these lists
    /// do not have).
    fn page_by_name(self, items: Vec<String>) -> Result<(Vec<String>, Option<String>), ApiError> {
        page(
            items,
            Clone::clone,
            self.marker.as_deref(),
            self.page_size,
            "pageSize",
            true,
        )
    }
}

/// The answer of a `marker` list: `{key: items, nextMarker?}`.
fn marker_list(key: &str, items: Vec<Value>, next: Option<String>) -> Response {
    let mut body = json!({ key: items });
    if let Some(m) = next {
        body["nextMarker"] = json!(m);
    }
    ok(body)
}

/// `nextToken`, `maxResults` (and `thingPrincipalType`) of the thing-principal lists.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenQuery {
    next_token: Option<String>,
    max_results: Option<u32>,
    thing_principal_type: Option<String>,
}

impl TokenQuery {
    fn page(&self, items: Vec<String>) -> Result<(Vec<String>, Option<String>), ApiError> {
        page(
            items,
            Clone::clone,
            self.next_token.as_deref(),
            self.max_results,
            "maxResults",
            true,
        )
    }

    /// Whether the asked-for type matches Shoal's attachments (all `NON_EXCLUSIVE_THING`).
    fn wants_non_exclusive(&self) -> Result<bool, ApiError> {
        match self.thing_principal_type.as_deref() {
            None | Some("NON_EXCLUSIVE_THING") => Ok(true),
            Some("EXCLUSIVE_THING") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!(
                "thingPrincipalType must be EXCLUSIVE_THING or NON_EXCLUSIVE_THING, not {other:?}"
            ))),
        }
    }
}

/// The answer of a `nextToken` list: `{key: items, nextToken?}`.
fn token_list(key: &str, items: Vec<Value>, next: Option<String>) -> Response {
    let mut body = json!({ key: items });
    if let Some(t) = next {
        body["nextToken"] = json!(t);
    }
    ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_api_fits_in_one_router() {
        // The router panics on a path registered twice or two parameter names for one segment.
        let _ = super::super::api().finish();
    }

    #[test]
    fn pages_follow_the_marker_both_ways() {
        let items: Vec<String> = ["c", "a", "e", "b", "d"].iter().map(|s| s.to_string()).collect();
        let (p1, m1) = page(items.clone(), Clone::clone, None, Some(2), "pageSize", true).unwrap();
        assert_eq!(
            (p1, m1.as_deref()),
            (vec!["a".to_string(), "b".into()], Some("b"))
        );
        let (p2, m2) = page(items.clone(), Clone::clone, Some("b"), Some(2), "pageSize", true).unwrap();
        assert_eq!(
            (p2, m2.as_deref()),
            (vec!["c".to_string(), "d".into()], Some("d"))
        );
        let (p3, m3) = page(items.clone(), Clone::clone, Some("d"), Some(2), "pageSize", true).unwrap();
        assert_eq!((p3, m3), (vec!["e".to_string()], None));
        // Newest (greatest) first; a marker whose item is gone still continues after it.
        let (d, m) = page(
            items.clone(),
            Clone::clone,
            Some("cc"),
            Some(2),
            "pageSize",
            false,
        )
        .unwrap();
        assert_eq!((d, m.as_deref()), (vec!["c".to_string(), "b".into()], Some("b")));
        // An exact page has no next marker.
        let (all, m) = page(items.clone(), Clone::clone, None, Some(5), "pageSize", true).unwrap();
        assert_eq!((all.len(), m), (5, None));
        for bad in [0, 251] {
            let e = page(items.clone(), Clone::clone, None, Some(bad), "pageSize", true).unwrap_err();
            assert_eq!(e.error_type, "InvalidRequestException");
        }
    }

    #[test]
    fn creation_keys_sort_by_time_then_id() {
        assert!(created_key(999, "b") < created_key(1000, "a"));
        assert!(created_key(1000, "a") < created_key(1000, "b"));
    }
}
