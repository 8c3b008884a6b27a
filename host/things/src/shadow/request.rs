//! Parsing and validating shadow request payloads.
//!
//! [`UpdateRequest::parse`] turns the body of an `/update` publish (or of an HTTP
//! `UpdateThingShadow`) into a validated [`UpdateRequest`], or into a [`RequestRejection`] that
//! carries the AWS error and, whenever it could be read, the request's `clientToken` so the
//! rejection can echo it. [`request_client_token`] reads the token from `/get` and `/delete`
//! bodies, whose other content AWS ignores.

use serde_json::{Map, Value};

use super::error::ShadowError;
use super::limits::ShadowLimits;

/// A validated update request: `{"state":{"desired":…,"reported":…},"clientToken":…,"version":…}`.
///
/// Top-level keys other than `state`, `clientToken` and `version` are ignored, as on AWS.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    state: StatePatch,
    version: Option<u64>,
    client_token: Option<String>,
}

/// What an update does to the shadow's state.
#[derive(Debug, Clone, PartialEq)]
pub enum StatePatch {
    /// `"state": null`: clears both `desired` and `reported`. The shadow is *not* deleted: it
    /// keeps existing with an empty state and its version still increases (AWS: "Setting the
    /// device's shadow state to null does not delete the shadow").
    Clear,
    /// `"state": {…}`: patches to each section (`{}` leaves both untouched but still counts as
    /// an update: the version increases).
    Sections {
        /// The patch to `desired`.
        desired: SectionPatch,
        /// The patch to `reported`.
        reported: SectionPatch,
    },
}

/// What an update does to one section (`desired` or `reported`).
#[derive(Debug, Clone, PartialEq)]
pub enum SectionPatch {
    /// The section was not named in the request: leave it as it is.
    Keep,
    /// `"desired": null` / `"reported": null`: remove the whole section.
    Remove,
    /// An object to merge into the section (null deletes a key, objects merge recursively,
    /// everything else, arrays included, replaces).
    Merge(Map<String, Value>),
}

/// A request that failed validation: the error to publish or return, and the request's
/// `clientToken` if it could be read (so `…/rejected` can echo it).
///
/// The token is `None` when the payload was too large, not UTF-8, not JSON, not an object, or
/// when the token itself was invalid (an over-long token is never echoed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct RequestRejection {
    /// The AWS error.
    pub error: ShadowError,
    /// The request's valid `clientToken`, if it could be read.
    pub client_token: Option<String>,
}

impl RequestRejection {
    /// The `…/rejected` body for this rejection (see [`ShadowError::rejected_payload`]).
    pub fn rejected_payload(&self, now_secs: u64) -> Value {
        self.error
            .rejected_payload(self.client_token.as_deref(), now_secs)
    }
}

impl UpdateRequest {
    /// Validates an update payload.
    ///
    /// Checks, in this order (the first failure wins):
    /// 1. size ≤ `max_request_bytes`, else 413 `The payload exceeds the maximum size allowed`;
    /// 2. UTF-8, else 415 `Unsupported documented encoding; supported encoding is UTF-8`;
    /// 3. valid JSON whose top level is an object, else 400 `Invalid JSON`;
    /// 4. `clientToken`, if present and not `null`: a string of at most
    ///    `max_client_token_bytes` bytes, else 400 `Invalid clientToken`;
    /// 5. `version`, if present and not `null`: an integer in `0..=u64::MAX`, else 400
    ///    `Invalid version` (`3.0` and `-1` are invalid);
    /// 6. `state` present (else 400 `Missing required node: state`) and an object or `null`
    ///    (else 400 `State node must be an object`);
    /// 7. no key under `state` other than `desired` and `reported` (else 400
    ///    `State contains an invalid node: '<key>'`; a `delta` copied from a GET is rejected
    ///    too, as on AWS);
    /// 8. `desired` then `reported`: an object or `null` (else 400 `Desired node must be an
    ///    object` / `Reported node must be an object`), nested at most `max_depth` levels (see
    ///    [`json_depth`]; else 400 `JSON contains too many levels of nesting; maximum is 6`),
    ///    and with no `null` anywhere inside an array (else 400
    ///    `Invalid JSON: null is not allowed in arrays`).
    ///
    /// A `null` `clientToken` or `version` is treated as absent (AWS SDKs omit them instead;
    /// other clients serialize unset optionals as `null`). Every rejection from step 5 on
    /// carries the client token.
    pub fn parse(payload: &[u8], limits: &ShadowLimits) -> Result<Self, RequestRejection> {
        let reject =
            |error: ShadowError, client_token: Option<String>| RequestRejection { error, client_token };
        if payload.len() > limits.max_request_bytes {
            return Err(reject(ShadowError::payload_too_large(), None));
        }
        let text =
            std::str::from_utf8(payload).map_err(|_| reject(ShadowError::unsupported_encoding(), None))?;
        let Ok(Value::Object(mut root)) = serde_json::from_str::<Value>(text) else {
            return Err(reject(ShadowError::invalid_json(), None));
        };
        let client_token = match root.remove("clientToken") {
            None | Some(Value::Null) => None,
            Some(Value::String(token)) if token.len() <= limits.max_client_token_bytes => Some(token),
            Some(_) => return Err(reject(ShadowError::invalid_client_token(), None)),
        };
        let reject = |error: ShadowError| reject(error, client_token.clone());
        let version = match root.get("version") {
            None | Some(Value::Null) => None,
            Some(Value::Number(number)) => Some(
                number
                    .as_u64()
                    .ok_or_else(|| reject(ShadowError::invalid_version()))?,
            ),
            Some(_) => return Err(reject(ShadowError::invalid_version())),
        };
        let state = match root.remove("state") {
            None => return Err(reject(ShadowError::missing_state())),
            Some(Value::Null) => StatePatch::Clear,
            Some(Value::Object(mut state)) => {
                if let Some(key) = state.keys().find(|key| *key != "desired" && *key != "reported") {
                    return Err(reject(ShadowError::invalid_state_node(key)));
                }
                let desired = section_patch(state.remove("desired"), ShadowError::desired_not_object, limits)
                    .map_err(reject)?;
                let reported =
                    section_patch(state.remove("reported"), ShadowError::reported_not_object, limits)
                        .map_err(reject)?;
                StatePatch::Sections { desired, reported }
            }
            Some(_) => return Err(reject(ShadowError::state_not_object())),
        };
        Ok(Self {
            state,
            version,
            client_token,
        })
    }

    /// What the update does to the state.
    pub fn state(&self) -> &StatePatch {
        &self.state
    }

    /// The expected current version, if the request asked for optimistic locking.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The request's client token, to echo in every response.
    pub fn client_token(&self) -> Option<&str> {
        self.client_token.as_deref()
    }
}

impl StatePatch {
    /// The request's `state` node as received (it is what `/update/accepted` echoes):
    /// `null` for [`StatePatch::Clear`], otherwise an object with the sections the request named,
    /// `null` for a removed section.
    pub fn to_json(&self) -> Value {
        match self {
            StatePatch::Clear => Value::Null,
            StatePatch::Sections { desired, reported } => {
                let mut state = Map::new();
                for (name, section) in [("desired", desired), ("reported", reported)] {
                    match section {
                        SectionPatch::Keep => {}
                        SectionPatch::Remove => {
                            state.insert(name.into(), Value::Null);
                        }
                        SectionPatch::Merge(patch) => {
                            state.insert(name.into(), Value::Object(patch.clone()));
                        }
                    }
                }
                Value::Object(state)
            }
        }
    }
}

fn section_patch(
    value: Option<Value>,
    not_object: fn() -> ShadowError,
    limits: &ShadowLimits,
) -> Result<SectionPatch, ShadowError> {
    match value {
        None => Ok(SectionPatch::Keep),
        Some(Value::Null) => Ok(SectionPatch::Remove),
        Some(Value::Object(patch)) => {
            if object_depth(&patch) > limits.max_depth {
                return Err(ShadowError::too_deep(limits.max_depth));
            }
            if patch.values().any(|value| has_null_in_array(value, false)) {
                return Err(ShadowError::null_in_array());
            }
            Ok(SectionPatch::Merge(patch))
        }
        Some(_) => Err(not_object()),
    }
}

/// The nesting depth of a JSON value, as the shadow depth limit counts it.
///
/// A scalar, `null`, `{}` or `[]` has depth 0; a non-empty object or array has depth 1 plus the
/// largest depth among its members. The limit applies to the `desired` and `reported` objects
/// themselves, so the depth is the number of keys (and array indices) on the longest path from
/// the section to a value: `{"desired":{"a":1}}` has depth 1, and
/// `desired.one.two.three.four.five.six = "x"` has depth 6, the AWS maximum; one more level is
/// rejected. This matches AWS's "maximum number of levels in the desired or reported section"
/// and the AWS Greengrass shadow manager's counting.
pub fn json_depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => object_depth(map),
        Value::Array(items) if !items.is_empty() => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn object_depth(map: &Map<String, Value>) -> usize {
    if map.is_empty() {
        return 0;
    }
    1 + map.values().map(json_depth).max().unwrap_or(0)
}

fn has_null_in_array(value: &Value, inside_array: bool) -> bool {
    match value {
        Value::Null => inside_array,
        Value::Array(items) => items.iter().any(|item| has_null_in_array(item, true)),
        Value::Object(map) => map.values().any(|member| has_null_in_array(member, inside_array)),
        _ => false,
    }
}

/// The `clientToken` of a `/get` or `/delete` request body, if it has a usable one.
///
/// AWS ignores these bodies except for the token, which token-correlating clients (the V2
/// SDKs send `{"clientToken":"<uuid>"}`) need echoed on `…/accepted` and `…/rejected`. Empty,
/// oversized, non-JSON or token-less bodies, and tokens that are not strings or are longer
/// than `max_client_token_bytes`, all yield `None`; they never cause a rejection.
pub fn request_client_token(payload: &[u8], limits: &ShadowLimits) -> Option<String> {
    if payload.is_empty() || payload.len() > limits.max_request_bytes {
        return None;
    }
    let Ok(Value::Object(mut root)) = serde_json::from_slice::<Value>(payload) else {
        return None;
    };
    match root.remove("clientToken") {
        Some(Value::String(token)) if token.len() <= limits.max_client_token_bytes => Some(token),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<UpdateRequest, RequestRejection> {
        UpdateRequest::parse(value.to_string().as_bytes(), &ShadowLimits::default())
    }

    fn rejection(value: Value) -> RequestRejection {
        parse(value).unwrap_err()
    }

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    /// Builds `{"desired": {"l1": {"l2": … {"lN": "x"}}}}`: a desired section of depth `levels`.
    fn nested(levels: usize) -> Value {
        let mut value = json!("x");
        for level in (1..=levels).rev() {
            value = json!({ format!("l{level}"): value });
        }
        value
    }

    #[test]
    fn parses_the_developer_guide_request_document() {
        let request = parse(json!({
            "state": {
                "desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]},
                "reported": {"color": "GREEN"}
            },
            "clientToken": "token",
            "version": 10
        }))
        .unwrap();
        assert_eq!(request.client_token(), Some("token"));
        assert_eq!(request.version(), Some(10));
        assert_eq!(
            request.state(),
            &StatePatch::Sections {
                desired: SectionPatch::Merge(obj(
                    json!({"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]})
                )),
                reported: SectionPatch::Merge(obj(json!({"color": "GREEN"}))),
            }
        );
    }

    #[test]
    fn sections_may_be_missing_null_or_empty() {
        let request = parse(json!({"state": {"reported": {"color": "red"}, "desired": null}})).unwrap();
        assert_eq!(
            request.state(),
            &StatePatch::Sections {
                desired: SectionPatch::Remove,
                reported: SectionPatch::Merge(obj(json!({"color": "red"}))),
            }
        );
        let request = parse(json!({"state": {}})).unwrap();
        assert_eq!(
            request.state(),
            &StatePatch::Sections {
                desired: SectionPatch::Keep,
                reported: SectionPatch::Keep
            }
        );
        let request = parse(json!({"state": {"desired": {}}})).unwrap();
        assert_eq!(
            request.state(),
            &StatePatch::Sections {
                desired: SectionPatch::Merge(Map::new()),
                reported: SectionPatch::Keep
            }
        );
        assert_eq!(request.version(), None);
        assert_eq!(request.client_token(), None);
    }

    #[test]
    fn null_state_clears_and_null_optionals_are_absent() {
        let request = parse(json!({"state": null, "version": null, "clientToken": null})).unwrap();
        assert_eq!(request.state(), &StatePatch::Clear);
        assert_eq!(request.version(), None);
        assert_eq!(request.client_token(), None);
    }

    #[test]
    fn other_top_level_keys_are_ignored() {
        let request = parse(json!({
            "state": {"desired": {"a": 1}},
            "metadata": {"desired": {"a": {"timestamp": 1}}},
            "timestamp": 5,
            "anything": [1, 2]
        }))
        .unwrap();
        assert_eq!(
            request.state(),
            &StatePatch::Sections {
                desired: SectionPatch::Merge(obj(json!({"a": 1}))),
                reported: SectionPatch::Keep
            }
        );
    }

    #[test]
    fn echo_reproduces_the_state_node() {
        for state in [
            json!(null),
            json!({}),
            json!({"desired": null}),
            json!({"desired": {"a": null, "b": {"c": [1, 2]}}, "reported": {"x": true}}),
        ] {
            let request = parse(json!({ "state": state.clone() })).unwrap();
            assert_eq!(request.state().to_json(), state);
        }
    }

    #[test]
    fn oversized_payloads_are_413_without_a_token() {
        let limits = ShadowLimits {
            max_request_bytes: 40,
            ..ShadowLimits::default()
        };
        let body = br#"{"state":{"desired":{"a":1}},"clientToken":"t"}"#;
        assert!(body.len() > 40);
        let rejection = UpdateRequest::parse(body, &limits).unwrap_err();
        assert_eq!(
            rejection,
            RequestRejection {
                error: ShadowError::payload_too_large(),
                client_token: None
            }
        );
        let body = br#"{"state":{"desired":{"a":1}}}"#;
        assert!(UpdateRequest::parse(body, &limits).is_ok());
    }

    #[test]
    fn non_utf8_is_415() {
        let rejection = UpdateRequest::parse(
            b"{\"state\":{\"desired\":{\"a\":\"\xff\"}}}",
            &ShadowLimits::default(),
        )
        .unwrap_err();
        assert_eq!(rejection.error, ShadowError::unsupported_encoding());
        assert_eq!(rejection.client_token, None);
    }

    #[test]
    fn unparsable_or_non_object_json_is_invalid_json() {
        for body in [
            &b""[..],
            b"{",
            b"{\"state\":}",
            b"[]",
            b"null",
            b"\"state\"",
            b"42",
            b"{\"a\":1} x",
        ] {
            let rejection = UpdateRequest::parse(body, &ShadowLimits::default()).unwrap_err();
            assert_eq!(
                rejection,
                RequestRejection {
                    error: ShadowError::invalid_json(),
                    client_token: None
                },
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn client_token_must_be_a_short_string() {
        let token64 = "t".repeat(64);
        let request = parse(json!({"state": {}, "clientToken": token64})).unwrap();
        assert_eq!(request.client_token(), Some(token64.as_str()));
        // 64 bytes, fewer characters: the limit counts bytes.
        let multibyte = "\u{e9}".repeat(33);
        assert_eq!(multibyte.len(), 66);
        for token in [
            json!("t".repeat(65)),
            json!(multibyte),
            json!(7),
            json!({"a": 1}),
            json!(["t"]),
            json!(true),
        ] {
            assert_eq!(
                rejection(json!({"state": {}, "clientToken": token})),
                RequestRejection {
                    error: ShadowError::invalid_client_token(),
                    client_token: None
                }
            );
        }
        let request = parse(json!({"state": {}, "clientToken": ""})).unwrap();
        assert_eq!(request.client_token(), Some(""));
    }

    #[test]
    fn version_must_be_a_non_negative_integer() {
        assert_eq!(
            parse(json!({"state": {}, "version": 0})).unwrap().version(),
            Some(0)
        );
        assert_eq!(
            parse(json!({"state": {}, "version": u64::MAX}))
                .unwrap()
                .version(),
            Some(u64::MAX)
        );
        for version in [
            json!(-1),
            json!(1.5),
            json!(3.0),
            json!("3"),
            json!(true),
            json!([1]),
            json!({}),
        ] {
            assert_eq!(
                rejection(json!({"state": {}, "version": version, "clientToken": "tok"})),
                RequestRejection {
                    error: ShadowError::invalid_version(),
                    client_token: Some("tok".into())
                },
                "{version}"
            );
        }
        let too_big = br#"{"state":{},"version":18446744073709551616}"#;
        let rejection = UpdateRequest::parse(too_big, &ShadowLimits::default()).unwrap_err();
        assert_eq!(rejection.error, ShadowError::invalid_version());
    }

    #[test]
    fn state_must_be_present_and_an_object() {
        assert_eq!(
            rejection(json!({"clientToken": "tok", "version": 1})),
            RequestRejection {
                error: ShadowError::missing_state(),
                client_token: Some("tok".into())
            }
        );
        assert_eq!(
            rejection(json!({"desired": {"a": 1}})).error,
            ShadowError::missing_state()
        );
        for state in [json!("on"), json!(1), json!([]), json!(true)] {
            assert_eq!(
                rejection(json!({"state": state, "clientToken": "tok"})),
                RequestRejection {
                    error: ShadowError::state_not_object(),
                    client_token: Some("tok".into())
                }
            );
        }
    }

    #[test]
    fn desired_and_reported_must_be_objects() {
        for value in [json!("RED"), json!(1), json!([1]), json!(false)] {
            assert_eq!(
                rejection(json!({"state": {"desired": value}, "clientToken": "tok"})),
                RequestRejection {
                    error: ShadowError::desired_not_object(),
                    client_token: Some("tok".into())
                }
            );
            assert_eq!(
                rejection(json!({"state": {"reported": value}, "clientToken": "tok"})),
                RequestRejection {
                    error: ShadowError::reported_not_object(),
                    client_token: Some("tok".into())
                }
            );
        }
        // desired is checked before reported.
        assert_eq!(
            rejection(json!({"state": {"desired": 1, "reported": 1}})).error,
            ShadowError::desired_not_object()
        );
    }

    #[test]
    fn other_nodes_under_state_are_invalid() {
        assert_eq!(
            rejection(json!({"state": {"desired": {"a": 1}, "delta": {"a": 1}}, "clientToken": "tok"})),
            RequestRejection {
                error: ShadowError::invalid_state_node("delta"),
                client_token: Some("tok".into())
            }
        );
        assert_eq!(
            rejection(json!({"state": {"color": "red"}})).error,
            ShadowError::new(400, "State contains an invalid node: 'color'")
        );
        // The invalid node wins even when desired is also bad.
        assert_eq!(
            rejection(json!({"state": {"desired": 1, "zzz": 1}})).error,
            ShadowError::invalid_state_node("zzz")
        );
    }

    #[test]
    fn depth_six_is_accepted_and_seven_rejected() {
        assert_eq!(json_depth(&nested(6)), 6);
        assert!(parse(json!({"state": {"desired": nested(6), "reported": nested(6)}})).is_ok());
        for section in ["desired", "reported"] {
            assert_eq!(
                rejection(json!({"state": { section: nested(7) }, "clientToken": "tok"})),
                RequestRejection {
                    error: ShadowError::new(400, "JSON contains too many levels of nesting; maximum is 6"),
                    client_token: Some("tok".into())
                }
            );
        }
        // The developer-guide style example: six keys deep is the maximum.
        let six = json!({"one": {"two": {"three": {"four": {"five": {"six": "value"}}}}}});
        assert!(parse(json!({"state": {"reported": six}})).is_ok());
    }

    #[test]
    fn depth_counts_array_levels_and_ignores_empty_containers() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!(null)), 0);
        assert_eq!(json_depth(&json!({})), 0);
        assert_eq!(json_depth(&json!([])), 0);
        assert_eq!(json_depth(&json!({"a": 1})), 1);
        assert_eq!(json_depth(&json!({"a": [1, 2]})), 2);
        assert_eq!(json_depth(&json!({"a": [[1], 2]})), 3);
        assert_eq!(json_depth(&json!({"a": {}, "b": {"c": []}})), 2);
        // Five object levels and an array: 6, accepted; an array one deeper: 7, rejected.
        let ok = json!({"l1": {"l2": {"l3": {"l4": {"l5": [1]}}}}});
        assert_eq!(json_depth(&ok), 6);
        assert!(parse(json!({"state": {"desired": ok}})).is_ok());
        let deep = json!({"l1": {"l2": {"l3": {"l4": {"l5": {"l6": [1]}}}}}});
        assert_eq!(
            rejection(json!({"state": {"desired": deep}})).error,
            ShadowError::too_deep(6)
        );
        // Deleting at level 7 is still level 7.
        let delete = json!({"l1": {"l2": {"l3": {"l4": {"l5": {"l6": {"l7": null}}}}}}});
        assert_eq!(
            rejection(json!({"state": {"desired": delete}})).error,
            ShadowError::too_deep(6)
        );
    }

    #[test]
    fn configured_depth_is_used_in_the_message() {
        let limits = ShadowLimits {
            max_depth: 2,
            ..ShadowLimits::default()
        };
        let body = json!({"state": {"desired": {"a": {"b": {"c": 1}}}}}).to_string();
        let rejection = UpdateRequest::parse(body.as_bytes(), &limits).unwrap_err();
        assert_eq!(
            rejection.error.message,
            "JSON contains too many levels of nesting; maximum is 2"
        );
    }

    #[test]
    fn arrays_containing_null_are_rejected() {
        // The developer guide's example.
        assert_eq!(
            rejection(
                json!({"state": {"desired": {"colors": [null, "RED", "GREEN"]}}, "clientToken": "tok"})
            ),
            RequestRejection {
                error: ShadowError::null_in_array(),
                client_token: Some("tok".into())
            }
        );
        for bad in [
            json!({"a": [[null]]}),
            json!({"a": [{"b": null}]}),
            json!({"a": {"b": [1, null]}}),
        ] {
            assert_eq!(
                rejection(json!({"state": {"reported": bad}})).error,
                ShadowError::null_in_array()
            );
        }
        // Nulls outside arrays are deletions, not errors.
        assert!(
            parse(json!({"state": {"desired": {"a": null, "b": {"c": null}, "d": [1, {"e": 2}]}}})).is_ok()
        );
    }

    #[test]
    fn rejection_payload_echoes_the_token() {
        let rejection = rejection(json!({"state": 5, "clientToken": "abc"}));
        assert_eq!(
            rejection.rejected_payload(100),
            json!({"code": 400, "message": "State node must be an object", "timestamp": 100, "clientToken": "abc"})
        );
        assert_eq!(rejection.to_string(), "400: State node must be an object");
    }

    #[test]
    fn get_and_delete_bodies_only_yield_a_token() {
        let limits = ShadowLimits::default();
        assert_eq!(
            request_client_token(br#"{"clientToken":"abc"}"#, &limits),
            Some("abc".into())
        );
        assert_eq!(
            request_client_token(br#"{"clientToken":"abc","state":5}"#, &limits),
            Some("abc".into())
        );
        for body in [
            &b""[..],
            b"garbage",
            b"{}",
            b"[\"clientToken\"]",
            br#"{"clientToken":5}"#,
            br#"{"clientToken":null}"#,
            b"{\"clientToken\":\"\xff\"}",
        ] {
            assert_eq!(
                request_client_token(body, &limits),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = json!({ "clientToken": "t".repeat(65) }).to_string();
        assert_eq!(request_client_token(long.as_bytes(), &limits), None);
        let tight = ShadowLimits {
            max_request_bytes: 10,
            ..limits
        };
        assert_eq!(request_client_token(br#"{"clientToken":"abc"}"#, &tight), None);
    }
}
