//! The AWS IoT data-plane HTTP API (botocore service `iot-data`): shadows, publish, and
//! retained messages. Paths, verbs and JSON shapes follow botocore's model so
//! `boto3.client("iot-data", endpoint_url=...)` works unchanged.

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::json;
use shoal_auth::policy::Action;
use shoal_auth::service::HttpCaller;
use shoal_broker::auth::Principal;
use shoal_broker::hook::Origin;
use shoal_broker::message::{ClientId, Message, MessageProps, qos_from_u8};
use shoal_broker::topic::Topic;
use shoal_things::shadow::{ShadowKey, ShadowName, ThingName};

use super::AppState;
use super::auth::require;
use super::error::ApiError;

type Caller = Extension<std::sync::Arc<HttpCaller>>;

/// The policy resource of a shadow: `thing` or `thing/shadowName`.
fn shadow_resource(thing: &str, name: Option<&str>) -> String {
    match name {
        Some(n) if !n.is_empty() => format!("{thing}/{n}"),
        _ => thing.to_owned(),
    }
}

/// Routes of the data plane.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/things/{thing}/shadow",
            get(get_shadow).post(update_shadow).delete(delete_shadow),
        )
        .route(
            "/api/things/shadow/ListNamedShadowsForThing/{thing}",
            get(list_named),
        )
        .route("/topics/{*topic}", post(publish))
        .route("/retainedMessage/{*topic}", get(retained))
}

#[derive(Debug, Deserialize)]
struct NameQuery {
    name: Option<String>,
}

fn key(thing: &str, name: Option<&str>) -> Result<ShadowKey, ApiError> {
    let thing = ThingName::parse(thing).map_err(|e| ApiError::bad_request(format!("thingName: {e}")))?;
    let shadow = match name {
        None | Some("") => None,
        Some(n) => Some(ShadowName::parse(n).map_err(|e| ApiError::bad_request(format!("shadowName: {e}")))?),
    };
    Ok(ShadowKey::new(thing, shadow))
}

fn json_ok(v: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

async fn get_shadow(
    State(s): State<AppState>,
    Extension(caller): Caller,
    Path(thing): Path<String>,
    Query(q): Query<NameQuery>,
) -> Result<Response, ApiError> {
    let key = key(&thing, q.name.as_deref())?;
    require(
        &caller,
        Action::GetThingShadow,
        &shadow_resource(&thing, q.name.as_deref()),
    )?;
    Ok(json_ok(s.shadows.get(&key, b"").await?))
}

async fn update_shadow(
    State(s): State<AppState>,
    Extension(caller): Caller,
    Path(thing): Path<String>,
    Query(q): Query<NameQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = key(&thing, q.name.as_deref())?;
    require(
        &caller,
        Action::UpdateThingShadow,
        &shadow_resource(&thing, q.name.as_deref()),
    )?;
    let accepted = s.shadows.update(&key, &body).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], accepted).into_response())
}

async fn delete_shadow(
    State(s): State<AppState>,
    Extension(caller): Caller,
    Path(thing): Path<String>,
    Query(q): Query<NameQuery>,
) -> Result<Response, ApiError> {
    let key = key(&thing, q.name.as_deref())?;
    require(
        &caller,
        Action::DeleteThingShadow,
        &shadow_resource(&thing, q.name.as_deref()),
    )?;
    Ok(json_ok(s.shadows.delete(&key, b"").await?))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    next_token: Option<String>,
    page_size: Option<usize>,
}

async fn list_named(
    State(s): State<AppState>,
    Extension(caller): Caller,
    Path(thing): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let thing = ThingName::parse(&thing).map_err(|e| ApiError::bad_request(format!("thingName: {e}")))?;
    require(&caller, Action::ListNamedShadowsForThing, "*")?;
    if let Some(n) = q.page_size
        && !(1..=100).contains(&n)
    {
        return Err(ApiError::bad_request("pageSize must be between 1 and 100"));
    }
    Ok(json_ok(
        s.shadows
            .list_named(&thing, q.next_token.as_deref(), q.page_size)
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublishQuery {
    qos: Option<u8>,
    retain: Option<bool>,
    content_type: Option<String>,
    response_topic: Option<String>,
    message_expiry: Option<u32>,
}

/// `POST /topics/{topic}?qos=&retain=&contentType=&responseTopic=&messageExpiry=` with the
/// MQTT 5 headers `x-amz-mqtt5-user-properties` (base64 of a JSON array of
/// `{"key","value"}`), `x-amz-mqtt5-payload-format-indicator` (`UTF8_DATA`) and
/// `x-amz-mqtt5-correlation-data` (base64).
async fn publish(
    State(s): State<AppState>,
    Extension(caller): Caller,
    Path(topic): Path<String>,
    Query(q): Query<PublishQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b = &s.broker;
    let topic =
        Topic::parse(topic, b.topic_limits()).map_err(|e| ApiError::bad_request(format!("topic: {e}")))?;
    let retain = q.retain.unwrap_or(false);
    if shoal_broker::lifecycle::is_reserved(&topic) {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            error_type: "ForbiddenException",
            body: serde_json::json!({ "message": format!("{topic} is published by the broker only") }),
        });
    }
    require(&caller, Action::Publish, topic.as_str())?;
    if retain {
        require(&caller, Action::RetainPublish, topic.as_str())?;
    }
    if let Some(name) = shoal_broker::watchdog::name_of(&topic) {
        // A watchdog's topic is published later in the caller's name: they must be allowed it.
        match shoal_broker::watchdog::parse(name, &body, b.topic_limits()) {
            Ok(shoal_broker::watchdog::Request::Arm(arm)) => {
                require(&caller, Action::Publish, arm.topic.as_str())?;
                if arm.retain {
                    require(&caller, Action::RetainPublish, arm.topic.as_str())?;
                }
            }
            Ok(shoal_broker::watchdog::Request::Cancel) => {}
            Err(e) => return Err(watchdog_refused(&e)),
        }
    }
    let qos = q.qos.unwrap_or(0);
    if qos > 1 {
        return Err(ApiError::bad_request("qos must be 0 or 1"));
    }
    if body.len() > b.cfg.limits.max_payload_size as usize {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error_type: "RequestEntityTooLargeException",
            body: json!({"message": format!("payload of {} bytes exceeds the limit of {}", body.len(), b.cfg.limits.max_payload_size)}),
        });
    }
    let mut props = MessageProps {
        content_type: q.content_type.map(Into::into),
        response_topic: q.response_topic.map(Into::into),
        ..MessageProps::default()
    };
    if let Some(v) = headers.get("x-amz-mqtt5-user-properties") {
        let raw = B64
            .decode(v.as_bytes())
            .map_err(|_| ApiError::bad_request("x-amz-mqtt5-user-properties is not base64"))?;
        let pairs: Vec<serde_json::Value> = serde_json::from_slice(&raw)
            .map_err(|_| ApiError::bad_request("x-amz-mqtt5-user-properties is not a JSON array"))?;
        for p in pairs {
            props.user_properties.extend(user_property_pairs(&p)?);
        }
    }
    if let Some(v) = headers.get("x-amz-mqtt5-payload-format-indicator") {
        props.utf8_payload = v.as_bytes().eq_ignore_ascii_case(b"UTF8_DATA");
    }
    if let Some(v) = headers.get("x-amz-mqtt5-correlation-data") {
        let raw = B64
            .decode(v.as_bytes())
            .map_err(|_| ApiError::bad_request("x-amz-mqtt5-correlation-data is not base64"))?;
        props.correlation_data = Some(raw.into());
    }
    let mut msg = Message::new(topic, body.to_vec().into(), qos_from_u8(qos), retain)
        .with_expiry_interval(q.message_expiry);
    msg.props = props;
    let client_id = s.http_client_id.clone();
    let principal = if s.sigv4 {
        Principal {
            id: std::sync::Arc::from(caller.id.as_str()),
            attributes: Default::default(),
            grants: None,
        }
    } else {
        Principal::anonymous()
    };
    // The rules workers' back-pressure holds this request as it holds an MQTT publisher.
    b.admit(&msg.topic, &client_id).await;
    let routed = b.publish(
        msg,
        Some(Origin {
            client_id: &client_id,
            principal: &principal,
        }),
    );
    if qos == 1
        && let Some(t) = routed.durable_ticket
    {
        b.wait_durable(t).await;
    }
    if let Some(e) = routed.refused {
        return Err(watchdog_refused(&e));
    }
    Ok((StatusCode::OK, axum::Json(json!({}))).into_response())
}

/// A refused watchdog request (`$shoal/watchdog/...`) as AWS-style HTTP errors.
fn watchdog_refused(e: &shoal_broker::watchdog::ArmError) -> ApiError {
    use shoal_broker::watchdog::Refusal;
    let (status, error_type) = match e.refusal() {
        Refusal::Malformed => return ApiError::bad_request(e.to_string()),
        Refusal::Forbidden => (StatusCode::FORBIDDEN, "ForbiddenException"),
        Refusal::Limit => (StatusCode::TOO_MANY_REQUESTS, "ThrottlingException"),
    };
    ApiError {
        status,
        error_type,
        body: json!({ "message": e.to_string() }),
    }
}

/// One element of the `x-amz-mqtt5-user-properties` array. AWS documents one-pair objects
/// (`{"deviceName":"alpha"}`, what botocore sends); `{"key":..,"value":..}` is accepted too.
fn user_property_pairs(
    p: &serde_json::Value,
) -> Result<Vec<(ntex::util::ByteString, ntex::util::ByteString)>, ApiError> {
    let bad =
        || ApiError::bad_request("user properties must be a JSON array of {\"name\": \"value\"} objects");
    let obj = p.as_object().ok_or_else(bad)?;
    if let (Some(k), Some(v), 2) = (obj.get("key"), obj.get("value"), obj.len()) {
        let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
            return Err(bad());
        };
        return Ok(vec![(k.to_owned().into(), v.to_owned().into())]);
    }
    obj.iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|v| (k.clone().into(), v.to_owned().into()))
                .ok_or_else(bad)
        })
        .collect()
}

/// `GET /retainedMessage/{topic}`: `{"topic","payload"(base64),"qos","lastModifiedTime",
/// "userProperties"?}` (user properties as base64 of `[{"name":"value"},...]`, as AWS returns).
async fn retained(
    State(s): State<AppState>,
    Extension(caller): Caller,
    Path(topic): Path<String>,
) -> Result<Response, ApiError> {
    require(&caller, Action::GetRetainedMessage, &topic)?;
    match s.broker.retained(&topic) {
        Some(m) => {
            let mut body = json!({
                "topic": m.topic.as_str(),
                "payload": B64.encode(&m.payload),
                "qos": m.qos as u8,
                "lastModifiedTime": m.received_ms,
            });
            if !m.props.user_properties.is_empty() {
                let arr: Vec<serde_json::Value> = m
                    .props
                    .user_properties
                    .iter()
                    .map(|(k, v)| json!({ k.to_string(): v.to_string() }))
                    .collect();
                body["userProperties"] = json!(B64.encode(serde_json::to_vec(&arr).unwrap_or_default()));
            }
            Ok(json_ok(body))
        }
        None => Err(ApiError::not_found(format!(
            "No retained message on topic {topic}"
        ))),
    }
}

/// The client id HTTP publishes appear to come from.
pub fn http_client_id() -> ClientId {
    // A '$' prefix cannot collide with an MQTT client's id in practice and marks the origin.
    ClientId::parse("$http", 128).unwrap_or_else(|_| ClientId::generate())
}
