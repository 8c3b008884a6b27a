//! Principals attached to things: `AttachThingPrincipal`, `DetachThingPrincipal`,
//! `ListThingPrincipals(V2)`, `ListPrincipalThings(V2)`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};
use shoal_things::registry::parse_thing_name;

use super::super::AppState;
use super::super::error::ApiError;
use super::super::registry::AwsQuery;
use super::{TokenQuery, done, header, token_list};

/// Routes (the thing parameter is named `thing`, as in the registry's `/things/{thing}`).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/things/{thing}/principals",
            get(list_thing_principals)
                .put(attach_thing_principal)
                .delete(detach_thing_principal),
        )
        .route("/things/{thing}/principals-v2", get(list_thing_principals_v2))
        .route("/principals/things", get(list_principal_things))
        .route("/principals/things-v2", get(list_principal_things_v2))
}

/// `AttachThingPrincipal`: `PUT /things/{thingName}/principals?thingPrincipalType=` with the
/// principal in `x-amzn-principal` -> `{}`. The thing must exist (`ResourceNotFoundException`).
async fn attach_thing_principal(
    State(s): State<AppState>,
    Path(thing): Path<String>,
    headers: HeaderMap,
    AwsQuery(q): AwsQuery<TokenQuery>,
) -> Result<Response, ApiError> {
    let principal = header(&headers, "x-amzn-principal", "principal")?;
    if !q.wants_non_exclusive()? {
        return Err(ApiError::bad_request(
            "thingPrincipalType EXCLUSIVE_THING is not supported: Shoal's attachments are \
             NON_EXCLUSIVE_THING",
        ));
    }
    let name = parse_thing_name(&thing, "thingName")?;
    s.identity
        .attach_thing_principal(name.as_str(), &principal)
        .await?;
    Ok(done())
}

/// `DetachThingPrincipal`: `DELETE /things/{thingName}/principals` with `x-amzn-principal` ->
/// `{}`; closes the principal's live connections.
async fn detach_thing_principal(
    State(s): State<AppState>,
    Path(thing): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = header(&headers, "x-amzn-principal", "principal")?;
    s.identity.detach_thing_principal(&thing, &principal).await?;
    Ok(done())
}

/// The principals of an existing thing (`ResourceNotFoundException` for a missing thing).
async fn principals_of(s: &AppState, thing: &str) -> Result<Vec<String>, ApiError> {
    s.registry.describe_thing(thing).await?;
    Ok(s.identity.thing_principals(thing))
}

/// `ListThingPrincipals`: `GET /things/{thingName}/principals?nextToken=&maxResults=` ->
/// `{principals, nextToken?}`.
async fn list_thing_principals(
    State(s): State<AppState>,
    Path(thing): Path<String>,
    AwsQuery(q): AwsQuery<TokenQuery>,
) -> Result<Response, ApiError> {
    let (principals, next) = q.page(principals_of(&s, &thing).await?)?;
    Ok(token_list(
        "principals",
        principals.into_iter().map(Value::String).collect(),
        next,
    ))
}

/// `ListThingPrincipalsV2`: `GET /things/{thingName}/principals-v2?thingPrincipalType=` ->
/// `{thingPrincipalObjects: [{principal, thingPrincipalType}], nextToken?}`.
async fn list_thing_principals_v2(
    State(s): State<AppState>,
    Path(thing): Path<String>,
    AwsQuery(q): AwsQuery<TokenQuery>,
) -> Result<Response, ApiError> {
    let mut principals = principals_of(&s, &thing).await?;
    if !q.wants_non_exclusive()? {
        principals.clear();
    }
    let (principals, next) = q.page(principals)?;
    let items = principals
        .into_iter()
        .map(|p| json!({ "principal": p, "thingPrincipalType": "NON_EXCLUSIVE_THING" }))
        .collect();
    Ok(token_list("thingPrincipalObjects", items, next))
}

/// `ListPrincipalThings`: `GET /principals/things?nextToken=&maxResults=` with
/// `x-amzn-principal` -> `{things, nextToken?}`.
async fn list_principal_things(
    State(s): State<AppState>,
    headers: HeaderMap,
    AwsQuery(q): AwsQuery<TokenQuery>,
) -> Result<Response, ApiError> {
    let principal = header(&headers, "x-amzn-principal", "principal")?;
    let (things, next) = q.page(s.identity.principal_things(&principal)?)?;
    Ok(token_list(
        "things",
        things.into_iter().map(Value::String).collect(),
        next,
    ))
}

/// `ListPrincipalThingsV2`: `GET /principals/things-v2?thingPrincipalType=` with
/// `x-amzn-principal` -> `{principalThingObjects: [{thingName, thingPrincipalType}], nextToken?}`.
async fn list_principal_things_v2(
    State(s): State<AppState>,
    headers: HeaderMap,
    AwsQuery(q): AwsQuery<TokenQuery>,
) -> Result<Response, ApiError> {
    let principal = header(&headers, "x-amzn-principal", "principal")?;
    let mut things = s.identity.principal_things(&principal)?;
    if !q.wants_non_exclusive()? {
        things.clear();
    }
    let (things, next) = q.page(things)?;
    let items = things
        .into_iter()
        .map(|t| json!({ "thingName": t, "thingPrincipalType": "NON_EXCLUSIVE_THING" }))
        .collect();
    Ok(token_list("principalThingObjects", items, next))
}
