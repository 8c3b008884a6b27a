//! Shadow errors: the AWS error codes and messages, and the `/rejected` payload.

use serde_json::{Map, Value};

use super::names::{NameError, ShadowName, ThingName};

/// A rejected shadow request: an HTTP-style status code and the AWS message text.
///
/// Over MQTT it becomes the body of the `…/rejected` topic (see [`ShadowError::rejected_payload`]);
/// over HTTP, `code` is the status and the same body is returned. The constructors use the
/// exact messages of the AWS "Device Shadow error messages" page where AWS documents one, and
/// live-observed AWS wording where that is more precise (noted on each constructor).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ShadowError {
    /// HTTP status code: 400, 401, 403, 404, 409, 413, 415, 429 or 500.
    pub code: u16,
    /// Human-readable message, AWS wording.
    pub message: String,
}

impl ShadowError {
    /// An error with any code and message.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// 400 `Invalid JSON`: the payload does not parse as JSON, or is not a JSON object.
    pub fn invalid_json() -> Self {
        Self::new(400, "Invalid JSON")
    }

    /// 400 `Missing required node: state`.
    pub fn missing_state() -> Self {
        Self::new(400, "Missing required node: state")
    }

    /// 400 `State node must be an object`.
    pub fn state_not_object() -> Self {
        Self::new(400, "State node must be an object")
    }

    /// 400 `Desired node must be an object`.
    pub fn desired_not_object() -> Self {
        Self::new(400, "Desired node must be an object")
    }

    /// 400 `Reported node must be an object`.
    pub fn reported_not_object() -> Self {
        Self::new(400, "Reported node must be an object")
    }

    /// 400 `Invalid version`: `version` is not a non-negative integer.
    pub fn invalid_version() -> Self {
        Self::new(400, "Invalid version")
    }

    /// 400 `Invalid clientToken`: `clientToken` is not a string or is longer than the limit
    /// (64 bytes on AWS).
    pub fn invalid_client_token() -> Self {
        Self::new(400, "Invalid clientToken")
    }

    /// 400 `JSON contains too many levels of nesting; maximum is N` (N is 6 on AWS).
    pub fn too_deep(max_depth: usize) -> Self {
        Self::new(
            400,
            format!("JSON contains too many levels of nesting; maximum is {max_depth}"),
        )
    }

    /// 400 `State contains an invalid node: '<node>'`: a key other than `desired` or `reported`
    /// under `state`.
    ///
    /// The AWS error page lists the message without the node; the live service appends the
    /// offending key in single quotes (e.g. "State contains an invalid node: 'delta'", seen in
    /// aws-greengrass-shadow-manager PR #178), and so do we.
    pub fn invalid_state_node(node: &str) -> Self {
        Self::new(400, format!("State contains an invalid node: '{node}'"))
    }

    /// 400 `Invalid JSON: null is not allowed in arrays`: AWS rejects arrays containing `null`
    /// but documents no message for it, so we keep the `Invalid JSON` prefix and say why.
    pub fn null_in_array() -> Self {
        Self::new(400, "Invalid JSON: null is not allowed in arrays")
    }

    /// 400 for a request topic whose thing or shadow name breaks the AWS pattern (AWS
    /// documents no message; ours names the pattern).
    pub fn invalid_name(error: &NameError) -> Self {
        Self::new(400, error.to_string())
    }

    /// 401 `Unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized")
    }

    /// 403 `Forbidden`.
    pub fn forbidden() -> Self {
        Self::new(403, "Forbidden")
    }

    /// 404 `Thing not found`.
    pub fn thing_not_found() -> Self {
        Self::new(404, "Thing not found")
    }

    /// 404 for a get or delete of a shadow that does not exist (or was deleted).
    ///
    /// The live service quotes the internal shadow name: the thing name for the classic shadow
    /// (`No shadow exists with name: 'truck-1'`) and `thing~shadow` for a named one
    /// (`No shadow exists with name: 'truck-1~config'`), as observed from real AWS by SDK
    /// samples and user code. (One tutorial in the developer guide shows only the shadow name;
    /// we follow the observed service.)
    pub fn no_shadow(thing: &ThingName, shadow: Option<&ShadowName>) -> Self {
        let name = match shadow {
            None => thing.to_string(),
            Some(shadow) => format!("{thing}~{shadow}"),
        };
        Self::new(404, format!("No shadow exists with name: '{name}'"))
    }

    /// 409 `Version conflict`: the request's `version` is not the shadow's current version.
    pub fn version_conflict() -> Self {
        Self::new(409, "Version conflict")
    }

    /// 413 `The payload exceeds the maximum size allowed`: the raw request is larger than
    /// [`ShadowLimits::max_request_bytes`](super::ShadowLimits::max_request_bytes).
    pub fn payload_too_large() -> Self {
        Self::new(413, "The payload exceeds the maximum size allowed")
    }

    /// 413 `Json document too large. Size is N, max allowed: M`: the merged desired+reported
    /// state is larger than the limit (live AWS wording, espressif/esp-aws-iot#70).
    pub fn document_too_large(size: usize, max: usize) -> Self {
        Self::new(
            413,
            format!("Json document too large. Size is {size}, max allowed: {max}"),
        )
    }

    /// 415 `Unsupported documented encoding; supported encoding is UTF-8` (AWS's wording,
    /// typo included): the request body is not UTF-8.
    pub fn unsupported_encoding() -> Self {
        Self::new(
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
        )
    }

    /// 429 `Too many requests`: the caller's in-flight or rate limit is exceeded.
    pub fn too_many_requests() -> Self {
        Self::new(429, "Too many requests")
    }

    /// 500 `Internal service failure`.
    pub fn internal() -> Self {
        Self::new(500, "Internal service failure")
    }

    /// The AWS exception name for this code, for the HTTP `x-amzn-ErrorType` header that
    /// botocore reads to pick the exception class (`iot-data` service model).
    pub fn aws_error_type(&self) -> &'static str {
        match self.code {
            400 => "InvalidRequestException",
            401 => "UnauthorizedException",
            403 => "ForbiddenException",
            404 => "ResourceNotFoundException",
            405 => "MethodNotAllowedException",
            409 => "ConflictException",
            413 => "RequestEntityTooLargeException",
            415 => "UnsupportedDocumentEncodingException",
            429 => "ThrottlingException",
            503 => "ServiceUnavailableException",
            _ => "InternalFailureException",
        }
    }

    /// The error response document: `{"code","message","timestamp","clientToken"?}`.
    ///
    /// `clientToken` is present only when the request carried a (valid) one, so that
    /// token-correlating clients such as `IotShadowClientV2` can match the rejection.
    /// `timestamp` (epoch seconds) is always present; AWS documents it as optional.
    pub fn rejected_payload(&self, client_token: Option<&str>, now_secs: u64) -> Value {
        let mut body = Map::new();
        body.insert("code".into(), self.code.into());
        body.insert("message".into(), self.message.clone().into());
        body.insert("timestamp".into(), now_secs.into());
        if let Some(token) = client_token {
            body.insert("clientToken".into(), token.into());
        }
        Value::Object(body)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_constructor_has_the_aws_code_and_message() {
        let thing = ThingName::parse("truck-1").unwrap();
        let shadow = ShadowName::parse("config").unwrap();
        let cases = [
            (ShadowError::invalid_json(), 400, "Invalid JSON"),
            (ShadowError::missing_state(), 400, "Missing required node: state"),
            (
                ShadowError::state_not_object(),
                400,
                "State node must be an object",
            ),
            (
                ShadowError::desired_not_object(),
                400,
                "Desired node must be an object",
            ),
            (
                ShadowError::reported_not_object(),
                400,
                "Reported node must be an object",
            ),
            (ShadowError::invalid_version(), 400, "Invalid version"),
            (ShadowError::invalid_client_token(), 400, "Invalid clientToken"),
            (
                ShadowError::too_deep(6),
                400,
                "JSON contains too many levels of nesting; maximum is 6",
            ),
            (
                ShadowError::invalid_state_node("delta"),
                400,
                "State contains an invalid node: 'delta'",
            ),
            (
                ShadowError::null_in_array(),
                400,
                "Invalid JSON: null is not allowed in arrays",
            ),
            (ShadowError::unauthorized(), 401, "Unauthorized"),
            (ShadowError::forbidden(), 403, "Forbidden"),
            (ShadowError::thing_not_found(), 404, "Thing not found"),
            (
                ShadowError::no_shadow(&thing, None),
                404,
                "No shadow exists with name: 'truck-1'",
            ),
            (
                ShadowError::no_shadow(&thing, Some(&shadow)),
                404,
                "No shadow exists with name: 'truck-1~config'",
            ),
            (ShadowError::version_conflict(), 409, "Version conflict"),
            (
                ShadowError::payload_too_large(),
                413,
                "The payload exceeds the maximum size allowed",
            ),
            (
                ShadowError::document_too_large(8582, 8192),
                413,
                "Json document too large. Size is 8582, max allowed: 8192",
            ),
            (
                ShadowError::unsupported_encoding(),
                415,
                "Unsupported documented encoding; supported encoding is UTF-8",
            ),
            (ShadowError::too_many_requests(), 429, "Too many requests"),
            (ShadowError::internal(), 500, "Internal service failure"),
        ];
        for (error, code, message) in cases {
            assert_eq!(error, ShadowError::new(code, message));
        }
    }

    #[test]
    fn rejected_payload_echoes_the_client_token_only_when_present() {
        let error = ShadowError::version_conflict();
        assert_eq!(
            error.rejected_payload(Some("426bfd96-e720-46d3-95cd-014e3ef12bb6"), 1_591_057_529),
            json!({
                "code": 409,
                "message": "Version conflict",
                "timestamp": 1_591_057_529,
                "clientToken": "426bfd96-e720-46d3-95cd-014e3ef12bb6"
            })
        );
        assert_eq!(
            error.rejected_payload(None, 7),
            json!({"code": 409, "message": "Version conflict", "timestamp": 7})
        );
    }

    #[test]
    fn aws_error_types_match_the_iot_data_model() {
        let types: Vec<_> = [400, 401, 403, 404, 405, 409, 413, 415, 429, 500, 503]
            .into_iter()
            .map(|code| ShadowError::new(code, "x").aws_error_type())
            .collect();
        assert_eq!(
            types,
            [
                "InvalidRequestException",
                "UnauthorizedException",
                "ForbiddenException",
                "ResourceNotFoundException",
                "MethodNotAllowedException",
                "ConflictException",
                "RequestEntityTooLargeException",
                "UnsupportedDocumentEncodingException",
                "ThrottlingException",
                "InternalFailureException",
                "ServiceUnavailableException",
            ]
        );
    }

    #[test]
    fn invalid_names_map_to_400_and_display_includes_the_code() {
        let error = ShadowError::invalid_name(&NameError::InvalidThingName);
        assert_eq!(error.code, 400);
        assert_eq!(error.message, NameError::InvalidThingName.to_string());
        assert_eq!(
            ShadowError::version_conflict().to_string(),
            "409: Version conflict"
        );
    }
}
