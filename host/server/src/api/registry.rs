//! The thing registry over HTTP: things, thing types, thing groups and group membership, with
//! the request and response bodies of AWS IoT's control plane (botocore `iot` 2015-05-28).
//!
//! The same handlers answer on two sets of paths:
//!
//! * Shoal's management API under `/api/v1` (`/api/v1/things/{thing}`, ...), plus two
//!   resource-style membership routes, `PUT|DELETE /api/v1/thing-groups/{group}/things/{thing}`;
//! * AWS's own request URIs (`/things/{thing}`, `/thing-groups/addThingToThingGroup`, ...), so
//!   `boto3.client("iot", endpoint_url=...)` works unchanged. None of them clashes with the data
//!   plane (`/things/{thing}/shadow`, `/topics/...`, `/retainedMessage/...`).
//!
//! Handlers only translate: path, query and body in, one [`Registry`] call, the [`aws`] body
//! out. Every rule (names, limits, versions, idempotency) lives in `shoal_things::registry`.
//! The one rule that spans two services is here because this is where they meet: `DeleteThing`
//! of a thing that still has principals attached is refused, as AWS does.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use shoal_things::registry::{
    CreateThingGroupRequest, CreateThingRequest, CreateThingTypeRequest, DeprecateThingTypeRequest,
    ListThingGroupsFilter, ListThingsFilter, PageRequest, Registry, RegistryError,
    ThingGroupMembershipRequest, UpdateThingGroupRequest, UpdateThingRequest, aws, parse_thing_name,
};

use super::AppState;
use super::error::ApiError;
use super::openapi::{Api, Op, THING_NAME};

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %e, code = e.code(), "registry operation failed");
        }
        ApiError {
            status,
            error_type: e.code(),
            body: e.body(),
        }
    }
}

/// Routes: the `/api/v1` management paths and AWS's control-plane paths, on the same handlers
/// (only the first are in Shoal's OpenAPI document; AWS's model describes the others).
pub fn routes() -> Api {
    resource_routes("/api/v1")
        .op(
            Op::put(
                "/api/v1/thing-groups/{group}/things/{thing}",
                "AddThingToThingGroup",
                "Add a thing to a static group.",
            ),
            add_thing_to_group_by_path,
        )
        .op(
            Op::delete(
                "/api/v1/thing-groups/{group}/things/{thing}",
                "RemoveThingFromThingGroup",
                "Remove a thing from a group.",
            ),
            remove_thing_from_group_by_path,
        )
        .undocumented(
            resource_routes("")
                .into_router()
                // AWS names the membership operations in the path and the group and thing in
                // the body. A group called `addThingToThingGroup` stays reachable for the
                // other verbs only through `/api/v1`.
                .route("/thing-groups/addThingToThingGroup", put(add_thing_to_group))
                .route(
                    "/thing-groups/removeThingFromThingGroup",
                    put(remove_thing_from_group),
                ),
        )
}

/// The paths Shoal and AWS share, below `prefix` (`/api/v1` or nothing).
///
/// Path parameter names must match those of other routes at the same position
/// (`/things/{thing}/shadow`, `/api/v1/things/{thing}/principals`): the router refuses two
/// names for one segment.
fn resource_routes(prefix: &str) -> Api {
    let p = |path: &str| format!("{prefix}{path}");
    Api::new("registry")
        .param("thing", THING_NAME)
        .param("name", THING_NAME)
        .param("group", THING_NAME)
        .op(
            Op::get(
                p("/things"),
                "ListThings",
                "List things, filtered by attribute, type or name prefix.",
            )
            .query::<ListThingsQuery>(),
            list_things,
        )
        .op(
            Op::post(p("/things/{thing}"), "CreateThing", "Register a thing.")
                .optional_body::<CreateThingRequest>(),
            create_thing,
        )
        .op(
            Op::get(p("/things/{thing}"), "DescribeThing", "Describe a thing."),
            describe_thing,
        )
        .op(
            Op::patch(
                p("/things/{thing}"),
                "UpdateThing",
                "Change a thing's type or attributes.",
            )
            .optional_body::<UpdateThingRequest>(),
            update_thing,
        )
        .op(
            Op::delete(
                p("/things/{thing}"),
                "DeleteThing",
                "Delete a thing with no principals attached.",
            )
            .query::<VersionQuery>(),
            delete_thing,
        )
        .op(
            Op::get(
                p("/things/{thing}/thing-groups"),
                "ListThingGroupsForThing",
                "The groups a thing belongs to.",
            )
            .query::<PageQuery>(),
            list_thing_groups_for_thing,
        )
        .op(
            Op::get(p("/thing-types"), "ListThingTypes", "List thing types.").query::<ListThingTypesQuery>(),
            list_thing_types,
        )
        .op(
            Op::post(
                p("/thing-types/{name}"),
                "CreateThingType",
                "Create a thing type.",
            )
            .optional_body::<CreateThingTypeRequest>(),
            create_thing_type,
        )
        .op(
            Op::get(
                p("/thing-types/{name}"),
                "DescribeThingType",
                "Describe a thing type.",
            ),
            describe_thing_type,
        )
        .op(
            Op::delete(
                p("/thing-types/{name}"),
                "DeleteThingType",
                "Delete a thing type deprecated for at least five minutes.",
            ),
            delete_thing_type,
        )
        .op(
            Op::post(
                p("/thing-types/{name}/deprecate"),
                "DeprecateThingType",
                "Deprecate a thing type, or undo that.",
            )
            .optional_body::<DeprecateThingTypeRequest>(),
            deprecate_thing_type,
        )
        .op(
            Op::get(p("/thing-groups"), "ListThingGroups", "List thing groups.")
                .query::<ListThingGroupsQuery>(),
            list_thing_groups,
        )
        .op(
            Op::post(
                p("/thing-groups/{group}"),
                "CreateThingGroup",
                "Create a static thing group.",
            )
            .optional_body::<CreateThingGroupRequest>(),
            create_thing_group,
        )
        .op(
            Op::get(
                p("/thing-groups/{group}"),
                "DescribeThingGroup",
                "Describe a thing group.",
            ),
            describe_thing_group,
        )
        .op(
            Op::patch(
                p("/thing-groups/{group}"),
                "UpdateThingGroup",
                "Change a group's properties.",
            )
            .optional_body::<UpdateThingGroupRequest>(),
            update_thing_group,
        )
        .op(
            Op::delete(
                p("/thing-groups/{group}"),
                "DeleteThingGroup",
                "Delete a group without child groups.",
            )
            .query::<VersionQuery>(),
            delete_thing_group,
        )
        .op(
            Op::get(
                p("/thing-groups/{group}/things"),
                "ListThingsInThingGroup",
                "The things in a group (and its children, with recursive=true).",
            )
            .query::<ListThingsInGroupQuery>(),
            list_things_in_thing_group,
        )
}

// ---------------------------------------------------------------------------------------------
// Extractors: AWS's lenient bodies, and errors in AWS's shape
// ---------------------------------------------------------------------------------------------

/// A JSON request body, deserialized into one of the registry's request types.
///
/// Unlike `axum::Json` it ignores the content type (botocore sends `application/json`, `curl -d`
/// sends a form type, some clients none), reads an empty body as `{}` (botocore sends no body
/// when a request has no body members), and answers a body that is not the expected JSON with
/// 400 `InvalidRequestException` naming what is wrong, in the same shape as every other error.
#[derive(Debug)]
pub(super) struct AwsJson<T>(pub T);

impl<S, T> FromRequest<S> for AwsJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| ApiError {
            status: e.status(),
            error_type: "InvalidRequestException",
            body: json!({ "message": format!("cannot read the request body: {}", e.body_text()) }),
        })?;
        json_object(&bytes, "the request body is not valid for this operation").map(AwsJson)
    }
}

/// A request body that must be a JSON object of type `T` (serde would also read a struct from
/// an array of its fields: refused here); an empty body reads as `{}`. `what` starts the 400's
/// message.
pub(super) fn json_object<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(format!("{what}: it must be a JSON object")));
    }
    serde_json::from_slice(text).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

/// Query parameters; a value that does not parse (`maxResults=ten`) is 400
/// `InvalidRequestException` in AWS's error shape.
#[derive(Debug)]
pub(super) struct AwsQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for AwsQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // A presigned URL's own parameters (`X-Amz-Algorithm`, `X-Amz-Signature`, ...) were
        // checked by the authentication layer; the operation never sees them.
        let query = parts.uri.query().unwrap_or("");
        let own: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.get(..6).is_some_and(|k| k.eq_ignore_ascii_case("X-Amz-")))
            .collect();
        let uri: axum::http::Uri = format!("/?{}", own.join("&"))
            .parse()
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
        Query::<T>::try_from_uri(&uri)
            .map(|Query(q)| AwsQuery(q))
            .map_err(|e| ApiError::bad_request(format!("invalid query parameters: {}", e.body_text())))
    }
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// The empty object AWS answers operations without output members with.
fn done() -> Response {
    ok(json!({}))
}

/// `nextToken` and `maxResults`, the paging parameters of every `List*` operation.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct PageQuery {
    next_token: Option<String>,
    max_results: Option<u32>,
}

impl PageQuery {
    fn page(self) -> PageRequest {
        PageRequest {
            next_token: self.next_token,
            max_results: self.max_results,
        }
    }
}

/// `?expectedVersion=` of `DeleteThing` and `DeleteThingGroup`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct VersionQuery {
    expected_version: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Things
// ---------------------------------------------------------------------------------------------

/// `CreateThing`: `{thingTypeName?, attributePayload?, billingGroupName?}` ->
/// `{thingName, thingArn, thingId}`.
async fn create_thing(
    State(s): State<AppState>,
    Path(thing): Path<String>,
    AwsJson(req): AwsJson<CreateThingRequest>,
) -> Result<Response, ApiError> {
    let t = s.registry.create_thing(&thing, &req).await?;
    Ok(ok(aws::create_thing_response(&t)))
}

/// `DescribeThing`.
async fn describe_thing(State(s): State<AppState>, Path(thing): Path<String>) -> Result<Response, ApiError> {
    let t = s.registry.describe_thing(&thing).await?;
    Ok(ok(aws::describe_thing_response(&t)))
}

/// `UpdateThing`: `{thingTypeName?, removeThingType?, attributePayload?, expectedVersion?}` ->
/// `{}`.
async fn update_thing(
    State(s): State<AppState>,
    Path(thing): Path<String>,
    AwsJson(req): AwsJson<UpdateThingRequest>,
) -> Result<Response, ApiError> {
    s.registry.update_thing(&thing, &req).await?;
    Ok(done())
}

/// `DeleteThing` (`?expectedVersion=`): `{}`, also when the thing does not exist. A thing with
/// principals attached is refused with AWS's `InvalidRequestException` ("Cannot delete. Thing
/// {name} is still attached to one or more principals"); detach them first.
async fn delete_thing(
    State(s): State<AppState>,
    Path(thing): Path<String>,
    AwsQuery(q): AwsQuery<VersionQuery>,
) -> Result<Response, ApiError> {
    let name = parse_thing_name(&thing, "thingName")?;
    if !s.identity.thing_principals(name.as_str()).is_empty() {
        return Err(RegistryError::InvalidRequest(format!(
            "Cannot delete. Thing {name} is still attached to one or more principals"
        ))
        .into());
    }
    s.registry.delete_thing(&thing, q.expected_version).await?;
    Ok(done())
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ListThingsQuery {
    next_token: Option<String>,
    max_results: Option<u32>,
    attribute_name: Option<String>,
    attribute_value: Option<String>,
    thing_type_name: Option<String>,
    #[serde(default)]
    use_prefix_attribute_value: bool,
    /// Shoal extension.
    name_prefix: Option<String>,
}

/// `ListThings`
/// (`?nextToken=&maxResults=&attributeName=&attributeValue=&usePrefixAttributeValue=&thingTypeName=`).
async fn list_things(
    State(s): State<AppState>,
    AwsQuery(q): AwsQuery<ListThingsQuery>,
) -> Result<Response, ApiError> {
    let filter = ListThingsFilter {
        attribute_name: q.attribute_name,
        attribute_value: q.attribute_value,
        use_prefix_attribute_value: q.use_prefix_attribute_value,
        thing_type_name: q.thing_type_name,
        name_prefix: q.name_prefix,
    };
    let page = PageRequest {
        next_token: q.next_token,
        max_results: q.max_results,
    };
    let things = s.registry.list_things(&filter, &page).await?;
    Ok(ok(aws::list_things_response(&things)))
}

/// `ListThingGroupsForThing` (`?nextToken=&maxResults=`).
async fn list_thing_groups_for_thing(
    State(s): State<AppState>,
    Path(thing): Path<String>,
    AwsQuery(q): AwsQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let groups = s.registry.list_thing_groups_for_thing(&thing, &q.page()).await?;
    Ok(ok(aws::list_thing_groups_for_thing_response(&groups)))
}

// ---------------------------------------------------------------------------------------------
// Thing types
// ---------------------------------------------------------------------------------------------

/// `CreateThingType`: `{thingTypeProperties?}` -> `{thingTypeName, thingTypeArn, thingTypeId}`.
async fn create_thing_type(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsJson(req): AwsJson<CreateThingTypeRequest>,
) -> Result<Response, ApiError> {
    let t = s.registry.create_thing_type(&name, &req).await?;
    Ok(ok(aws::create_thing_type_response(&t)))
}

/// `DescribeThingType`.
async fn describe_thing_type(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let t = s.registry.describe_thing_type(&name).await?;
    Ok(ok(aws::describe_thing_type_response(&t)))
}

/// `DeprecateThingType`: `{undoDeprecate?}` -> `{}`.
async fn deprecate_thing_type(
    State(s): State<AppState>,
    Path(name): Path<String>,
    AwsJson(req): AwsJson<DeprecateThingTypeRequest>,
) -> Result<Response, ApiError> {
    s.registry.deprecate_thing_type(&name, &req).await?;
    Ok(done())
}

/// `DeleteThingType` -> `{}`.
async fn delete_thing_type(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    s.registry.delete_thing_type(&name).await?;
    Ok(done())
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ListThingTypesQuery {
    next_token: Option<String>,
    max_results: Option<u32>,
    thing_type_name: Option<String>,
}

/// `ListThingTypes` (`?nextToken=&maxResults=&thingTypeName=`).
async fn list_thing_types(
    State(s): State<AppState>,
    AwsQuery(q): AwsQuery<ListThingTypesQuery>,
) -> Result<Response, ApiError> {
    let page = PageRequest {
        next_token: q.next_token,
        max_results: q.max_results,
    };
    let types = s
        .registry
        .list_thing_types(q.thing_type_name.as_deref(), &page)
        .await?;
    Ok(ok(aws::list_thing_types_response(&types)))
}

// ---------------------------------------------------------------------------------------------
// Thing groups
// ---------------------------------------------------------------------------------------------

/// `CreateThingGroup`: `{parentGroupName?, thingGroupProperties?}` ->
/// `{thingGroupName, thingGroupArn, thingGroupId}`.
async fn create_thing_group(
    State(s): State<AppState>,
    Path(group): Path<String>,
    AwsJson(req): AwsJson<CreateThingGroupRequest>,
) -> Result<Response, ApiError> {
    let g = s.registry.create_thing_group(&group, &req).await?;
    Ok(ok(aws::create_thing_group_response(&g)))
}

/// `DescribeThingGroup`.
async fn describe_thing_group(
    State(s): State<AppState>,
    Path(group): Path<String>,
) -> Result<Response, ApiError> {
    let g = s.registry.describe_thing_group(&group).await?;
    Ok(ok(aws::describe_thing_group_response(&g)))
}

/// `UpdateThingGroup`: `{thingGroupProperties, expectedVersion?}` -> `{version}`.
async fn update_thing_group(
    State(s): State<AppState>,
    Path(group): Path<String>,
    AwsJson(req): AwsJson<UpdateThingGroupRequest>,
) -> Result<Response, ApiError> {
    let g = s.registry.update_thing_group(&group, &req).await?;
    Ok(ok(aws::update_thing_group_response(&g)))
}

/// `DeleteThingGroup` (`?expectedVersion=`) -> `{}`.
async fn delete_thing_group(
    State(s): State<AppState>,
    Path(group): Path<String>,
    AwsQuery(q): AwsQuery<VersionQuery>,
) -> Result<Response, ApiError> {
    s.registry.delete_thing_group(&group, q.expected_version).await?;
    Ok(done())
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ListThingGroupsQuery {
    next_token: Option<String>,
    max_results: Option<u32>,
    parent_group: Option<String>,
    name_prefix_filter: Option<String>,
    recursive: Option<bool>,
}

/// `ListThingGroups` (`?nextToken=&maxResults=&parentGroup=&namePrefixFilter=&recursive=`).
async fn list_thing_groups(
    State(s): State<AppState>,
    AwsQuery(q): AwsQuery<ListThingGroupsQuery>,
) -> Result<Response, ApiError> {
    let filter = ListThingGroupsFilter {
        parent_group: q.parent_group,
        name_prefix_filter: q.name_prefix_filter,
        recursive: q.recursive,
    };
    let page = PageRequest {
        next_token: q.next_token,
        max_results: q.max_results,
    };
    let groups = s.registry.list_thing_groups(&filter, &page).await?;
    Ok(ok(aws::list_thing_groups_response(&groups)))
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ListThingsInGroupQuery {
    next_token: Option<String>,
    max_results: Option<u32>,
    #[serde(default)]
    recursive: bool,
}

/// `ListThingsInThingGroup` (`?recursive=&nextToken=&maxResults=`).
async fn list_things_in_thing_group(
    State(s): State<AppState>,
    Path(group): Path<String>,
    AwsQuery(q): AwsQuery<ListThingsInGroupQuery>,
) -> Result<Response, ApiError> {
    let page = PageRequest {
        next_token: q.next_token,
        max_results: q.max_results,
    };
    let things = s
        .registry
        .list_things_in_thing_group(&group, q.recursive, &page)
        .await?;
    Ok(ok(aws::list_things_in_thing_group_response(&things)))
}

/// `AddThingToThingGroup` as AWS sends it: `PUT /thing-groups/addThingToThingGroup` with
/// `{thingGroupName|thingGroupArn, thingName|thingArn}` -> `{}`.
async fn add_thing_to_group(
    State(s): State<AppState>,
    AwsJson(req): AwsJson<ThingGroupMembershipRequest>,
) -> Result<Response, ApiError> {
    s.registry.add_thing_to_thing_group(&req).await?;
    Ok(done())
}

/// `RemoveThingFromThingGroup` as AWS sends it -> `{}`.
async fn remove_thing_from_group(
    State(s): State<AppState>,
    AwsJson(req): AwsJson<ThingGroupMembershipRequest>,
) -> Result<Response, ApiError> {
    s.registry.remove_thing_from_thing_group(&req).await?;
    Ok(done())
}

/// `AddThingToThingGroup` as a resource: `PUT /api/v1/thing-groups/{group}/things/{thing}`.
async fn add_thing_to_group_by_path(
    State(s): State<AppState>,
    Path((group, thing)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let req = ThingGroupMembershipRequest::new(&group, &thing);
    s.registry.add_thing_to_thing_group(&req).await?;
    Ok(done())
}

/// `RemoveThingFromThingGroup` as a resource: `DELETE /api/v1/thing-groups/{group}/things/{thing}`.
async fn remove_thing_from_group_by_path(
    State(s): State<AppState>,
    Path((group, thing)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let req = ThingGroupMembershipRequest::new(&group, &thing);
    s.registry.remove_thing_from_thing_group(&req).await?;
    Ok(done())
}

// ---------------------------------------------------------------------------------------------
// For the identity API
// ---------------------------------------------------------------------------------------------

/// Registers `thing` (no type, no attributes) unless it exists. `POST /api/v1/certificates`
/// with `thingName` uses it before attaching the new certificate, because AWS only attaches
/// principals to existing things.
pub(super) async fn ensure_thing(registry: &Registry, thing: &str) -> Result<(), ApiError> {
    match registry.describe_thing(thing).await {
        Ok(_) => Ok(()),
        Err(RegistryError::ResourceNotFound(_)) => {
            match registry.create_thing(thing, &CreateThingRequest::default()).await {
                // Lost a race with another create: the thing exists, which is all we need.
                Ok(_) | Err(RegistryError::ResourceAlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use reqwest::Method;
    use shoal_auth::pki::CertificateAuthority;
    use shoal_auth::policy::ArnConfig;
    use shoal_auth::service::{AnonymousAccess, IdentityConfig, IdentityService, NoThings};
    use shoal_auth::tls::ClientAuth;
    use shoal_broker::{Broker, BrokerConfig};
    use shoal_things::registry::RegistryConfig;
    use shoal_things::shadow::{ShadowConfig, ShadowService};

    use super::*;

    #[test]
    fn the_aws_paths_do_not_clash_with_the_other_routes() {
        // The router panics on a path registered twice or two parameter names for one segment.
        let _ = super::super::api().finish();
    }

    /// A live HTTP API on memory stores: its base URL.
    async fn serve(dir: &std::path::Path) -> String {
        let rt = tokio::runtime::Handle::current();
        let stores = shoal_store::open("memory", dir).await.unwrap();
        let registry = Arc::new(Registry::new(stores.registry, RegistryConfig::default()));
        let ca = Arc::new(CertificateAuthority::load_or_create(&dir.join("tls")).unwrap());
        let cfg = IdentityConfig {
            arn: ArnConfig::new("us-east-1", "000000000000").unwrap(),
            anonymous: AnonymousAccess::AllowAll,
            client_auth: ClientAuth::Optional,
            cert_validity_days: 1,
            keys: Arc::new(shoal_auth::service::KeyCipher::new(&[0; 32])),
        };
        // No registry behind the identity service: attachments are not checked here.
        let identity = IdentityService::start(stores.auth, ca, cfg, Arc::new(NoThings))
            .await
            .unwrap();
        let broker = Broker::start(BrokerConfig::default(), stores.broker, identity.clone(), &rt)
            .await
            .unwrap();
        let shadows = ShadowService::start(stores.shadows, broker.clone(), ShadowConfig::default(), &rt);
        let plugins = shoal_plugin_host::PluginHost::new(
            shoal_plugin_host::HostConfig::new(dir),
            shoal_plugin_host::HostServices::default(),
        )
        .unwrap();
        let rules = shoal_rules::RulesEngine::start(
            shoal_rules::EngineConfig::default(),
            Arc::new(shoal_rules::FileRuleStore::new(dir.join("rules.json"))),
            shoal_rules::EngineDeps {
                broker: broker.clone(),
                shadows: shadows.clone(),
                plugins: plugins.clone(),
                streams: stores.streams.clone(),
                rt: rt.clone(),
            },
        )
        .unwrap();
        let mut state = super::super::AppServices::new(broker, shadows, identity, registry, plugins, rules);
        state.sigv4 = false;
        let app = super::super::router(state.into());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    async fn send(
        base: &str,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Option<String>, Value) {
        let mut req = reqwest::Client::new().request(method, format!("{base}{path}"));
        if let Some(b) = body {
            req = req.body(b.to_owned());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("x-amzn-ErrorType")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, kind, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handlers_speak_aws_on_both_path_sets() {
        let dir = tempfile::tempdir().unwrap();
        let base = serve(dir.path()).await;

        // No body at all (botocore sends none without body members), no content type.
        let (st, _, created) = send(&base, Method::POST, "/api/v1/things/t1", None).await;
        assert_eq!(st, 200, "{created}");
        assert_eq!(created["thingName"], "t1");
        // The AWS path reaches the same record.
        let (st, _, d) = send(&base, Method::GET, "/things/t1", None).await;
        assert_eq!(
            (st, &d["thingId"], &d["version"]),
            (200, &created["thingId"], &json!(1))
        );

        let (st, kind, e) = send(
            &base,
            Method::PATCH,
            "/things/t1",
            Some(r#"{"expectedVersion": 7}"#),
        )
        .await;
        assert_eq!(
            (st, kind.as_deref()),
            (409, Some("VersionConflictException")),
            "{e}"
        );

        let (st, kind, e) = send(&base, Method::POST, "/api/v1/things/t2", Some("{nope")).await;
        assert_eq!((st, kind.as_deref()), (400, Some("InvalidRequestException")));
        assert!(e["message"].as_str().unwrap().contains("request body"), "{e}");

        let (st, kind, _) = send(&base, Method::GET, "/api/v1/things?maxResults=x", None).await;
        assert_eq!((st, kind.as_deref()), (400, Some("InvalidRequestException")));

        let (st, kind, e) = send(
            &base,
            Method::POST,
            "/things/t1",
            Some(r#"{"attributePayload":{"attributes":{"a":"1"}}}"#),
        )
        .await;
        assert_eq!(
            (st, kind.as_deref()),
            (409, Some("ResourceAlreadyExistsException"))
        );
        assert_eq!(e["resourceId"], created["thingId"]);

        // Membership: AWS's body form and Shoal's resource form.
        for (m, p) in [
            (Method::POST, "/thing-groups/g1"),
            (Method::POST, "/api/v1/things/t2"),
        ] {
            assert_eq!(send(&base, m, p, Some("{}")).await.0, 200, "{p}");
        }
        let body = r#"{"thingGroupName":"g1","thingName":"t1"}"#;
        let (st, _, _) = send(
            &base,
            Method::PUT,
            "/thing-groups/addThingToThingGroup",
            Some(body),
        )
        .await;
        assert_eq!(st, 200);
        let (st, _, _) = send(&base, Method::PUT, "/api/v1/thing-groups/g1/things/t2", None).await;
        assert_eq!(st, 200);
        let (_, _, l) = send(&base, Method::GET, "/thing-groups/g1/things", None).await;
        assert_eq!(l, json!({"things": ["t1", "t2"]}));
        let (st, _, _) = send(
            &base,
            Method::PUT,
            "/thing-groups/removeThingFromThingGroup",
            Some(body),
        )
        .await;
        assert_eq!(st, 200);
        let (_, _, l) = send(&base, Method::GET, "/api/v1/thing-groups/g1/things", None).await;
        assert_eq!(l, json!({"things": ["t2"]}));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thing_with_principals_is_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let base = serve(dir.path()).await;
        // Creating a certificate for a new thing registers the thing.
        let (st, _, cert) = send_json(&base, "/api/v1/certificates", json!({"thingName": "dev"})).await;
        assert_eq!(st, 200, "{cert}");
        let (st, _, d) = send(&base, Method::GET, "/api/v1/things/dev", None).await;
        assert_eq!((st, &d["version"]), (200, &json!(1)));

        let (st, kind, e) = send(&base, Method::DELETE, "/things/dev", None).await;
        assert_eq!((st, kind.as_deref()), (400, Some("InvalidRequestException")));
        assert_eq!(
            e["message"],
            "Cannot delete. Thing dev is still attached to one or more principals"
        );
        let id = cert["certificateId"].as_str().unwrap();
        let path = format!("/api/v1/things/dev/principals/{id}");
        assert_eq!(send(&base, Method::DELETE, &path, None).await.0, 200);
        assert_eq!(send(&base, Method::DELETE, "/things/dev", None).await.0, 200);
        assert_eq!(send(&base, Method::GET, "/things/dev", None).await.0, 404);
    }

    /// POST with `Content-Type: application/json` (the identity API requires it).
    async fn send_json(base: &str, path: &str, body: Value) -> (u16, Option<String>, Value) {
        let resp = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, None, resp.json().await.unwrap())
    }
}
