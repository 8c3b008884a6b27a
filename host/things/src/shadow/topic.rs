//! Shadow MQTT topics (AWS developer guide, "Device Shadow MQTT topics").
//!
//! Every shadow topic starts with a prefix: `$aws/things/{thing}/shadow` for the classic shadow,
//! `$aws/things/{thing}/shadow/name/{shadow}` for a named one. Clients publish *requests* to
//! `{prefix}/get`, `{prefix}/update` and `{prefix}/delete`; the service answers on
//! `…/accepted` and `…/rejected` under each, plus `{prefix}/update/delta` and
//! `{prefix}/update/documents`. [`ShadowTopic::parse`] recognises request topics only: the
//! response topics are ordinary topics that clients subscribe to.

use std::fmt;

use super::error::ShadowError;
use super::names::{NameError, ShadowName, ThingName};

/// A shadow request operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShadowOp {
    /// `…/get`: read the document.
    Get,
    /// `…/update`: create or update the document.
    Update,
    /// `…/delete`: delete the document.
    Delete,
}

impl ShadowOp {
    /// The topic segment: `get`, `update` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowOp::Get => "get",
            ShadowOp::Update => "update",
            ShadowOp::Delete => "delete",
        }
    }

    fn from_segment(segment: &str) -> Option<Self> {
        match segment {
            "get" => Some(ShadowOp::Get),
            "update" => Some(ShadowOp::Update),
            "delete" => Some(ShadowOp::Delete),
            _ => None,
        }
    }

    /// The `…/accepted` response of this operation.
    pub fn accepted(self) -> ShadowResponse {
        match self {
            ShadowOp::Get => ShadowResponse::GetAccepted,
            ShadowOp::Update => ShadowResponse::UpdateAccepted,
            ShadowOp::Delete => ShadowResponse::DeleteAccepted,
        }
    }

    /// The `…/rejected` response of this operation.
    pub fn rejected(self) -> ShadowResponse {
        match self {
            ShadowOp::Get => ShadowResponse::GetRejected,
            ShadowOp::Update => ShadowResponse::UpdateRejected,
            ShadowOp::Delete => ShadowResponse::DeleteRejected,
        }
    }
}

impl fmt::Display for ShadowOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic the shadow service publishes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShadowResponse {
    /// `…/get/accepted`
    GetAccepted,
    /// `…/get/rejected`
    GetRejected,
    /// `…/update/accepted`
    UpdateAccepted,
    /// `…/update/rejected`
    UpdateRejected,
    /// `…/update/delta`
    UpdateDelta,
    /// `…/update/documents`
    UpdateDocuments,
    /// `…/delete/accepted`
    DeleteAccepted,
    /// `…/delete/rejected`
    DeleteRejected,
}

impl ShadowResponse {
    /// The part after the shadow prefix, e.g. `update/delta`.
    pub fn suffix(self) -> &'static str {
        match self {
            ShadowResponse::GetAccepted => "get/accepted",
            ShadowResponse::GetRejected => "get/rejected",
            ShadowResponse::UpdateAccepted => "update/accepted",
            ShadowResponse::UpdateRejected => "update/rejected",
            ShadowResponse::UpdateDelta => "update/delta",
            ShadowResponse::UpdateDocuments => "update/documents",
            ShadowResponse::DeleteAccepted => "delete/accepted",
            ShadowResponse::DeleteRejected => "delete/rejected",
        }
    }
}

/// A parsed shadow request topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShadowTopic {
    /// The thing.
    pub thing: ThingName,
    /// The named shadow, `None` for the classic shadow.
    pub shadow: Option<ShadowName>,
    /// The requested operation.
    pub op: ShadowOp,
}

/// A shadow request topic whose thing or shadow name breaks the AWS pattern.
///
/// The caller should reject the request: [`InvalidShadowTopic::rejected_topic`] is where
/// (`<request topic>/rejected`) and [`InvalidShadowTopic::shadow_error`] what (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{topic}: {error}")]
pub struct InvalidShadowTopic {
    /// The request topic as published.
    pub topic: String,
    /// The requested operation.
    pub op: ShadowOp,
    /// Which name is invalid.
    pub error: NameError,
}

impl InvalidShadowTopic {
    /// `<request topic>/rejected`.
    pub fn rejected_topic(&self) -> String {
        format!("{}/rejected", self.topic)
    }

    /// The 400 error to publish there.
    pub fn shadow_error(&self) -> ShadowError {
        ShadowError::invalid_name(&self.error)
    }
}

impl ShadowTopic {
    /// Recognises a shadow request topic.
    ///
    /// * `None`: not a shadow request (any other topic, including the `…/accepted`,
    ///   `…/rejected`, `…/delta` and `…/documents` response topics, and unknown operations such
    ///   as `…/shadow/list`). Such publishes are ordinary messages.
    /// * `Some(Err(_))`: `$aws/things/{thing}/shadow/{op}` or
    ///   `$aws/things/{thing}/shadow/name/{shadow}/{op}` with `op` one of `get`, `update`,
    ///   `delete`, but an invalid thing or shadow name (empty, too long, or a character outside
    ///   the pattern).
    /// * `Some(Ok(_))`: a valid request.
    ///
    /// Matching is case-sensitive, as MQTT topics are.
    pub fn parse(topic: &str) -> Option<Result<ShadowTopic, InvalidShadowTopic>> {
        let rest = topic.strip_prefix("$aws/things/")?;
        // The operation first: it turns away, before any split, the service's own responses
        // (`…/accepted`, `…/delta`, ...), which the shadow hook sees twice each.
        let op = ShadowOp::from_segment(rest.rsplit_once('/')?.1)?;
        // At most five segments are read; a sixth means no match (no Vec of them).
        let mut it = rest.splitn(6, '/');
        let segments = [it.next(), it.next(), it.next(), it.next(), it.next(), it.next()];
        // (The last segment, checked above, is the operation.)
        let (thing, shadow) = match segments {
            [Some(thing), Some("shadow"), Some(_), None, None, None] => (thing, None),
            [
                Some(thing),
                Some("shadow"),
                Some("name"),
                Some(shadow),
                Some(_),
                None,
            ] => (thing, Some(shadow)),
            _ => return None,
        };
        let invalid = |error| InvalidShadowTopic {
            topic: topic.to_owned(),
            op,
            error,
        };
        let thing = match ThingName::parse(thing) {
            Ok(thing) => thing,
            Err(error) => return Some(Err(invalid(error))),
        };
        let shadow = match shadow.map(ShadowName::parse).transpose() {
            Ok(shadow) => shadow,
            Err(error) => return Some(Err(invalid(error))),
        };
        Some(Ok(ShadowTopic { thing, shadow, op }))
    }

    /// The topic prefix of this shadow (see [`topic_prefix`]).
    pub fn prefix(&self) -> String {
        topic_prefix(&self.thing, self.shadow.as_ref())
    }

    /// The request topic, `{prefix}/{op}`.
    pub fn request_topic(&self) -> String {
        request_topic(&self.thing, self.shadow.as_ref(), self.op)
    }

    /// A response topic of this shadow, `{prefix}/{response suffix}`.
    pub fn response_topic(&self, response: ShadowResponse) -> String {
        response_topic(&self.thing, self.shadow.as_ref(), response)
    }

    /// `{prefix}/{op}/accepted`.
    pub fn accepted_topic(&self) -> String {
        self.response_topic(self.op.accepted())
    }

    /// `{prefix}/{op}/rejected`.
    pub fn rejected_topic(&self) -> String {
        self.response_topic(self.op.rejected())
    }
}

/// `$aws/things/{thing}/shadow` (classic) or `$aws/things/{thing}/shadow/name/{shadow}`.
pub fn topic_prefix(thing: &ThingName, shadow: Option<&ShadowName>) -> String {
    match shadow {
        None => format!("$aws/things/{thing}/shadow"),
        Some(shadow) => format!("$aws/things/{thing}/shadow/name/{shadow}"),
    }
}

/// `{prefix}/{op}`: where clients publish requests.
pub fn request_topic(thing: &ThingName, shadow: Option<&ShadowName>, op: ShadowOp) -> String {
    format!("{}/{op}", topic_prefix(thing, shadow))
}

/// `{prefix}/{suffix}`: where the service publishes a response, e.g.
/// `$aws/things/t1/shadow/name/cfg/update/delta`.
pub fn response_topic(thing: &ThingName, shadow: Option<&ShadowName>, response: ShadowResponse) -> String {
    let mut topic = topic_prefix(thing, shadow);
    topic.push('/');
    topic.push_str(response.suffix());
    topic
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thing(name: &str) -> ThingName {
        ThingName::parse(name).unwrap()
    }

    fn shadow(name: &str) -> ShadowName {
        ShadowName::parse(name).unwrap()
    }

    #[test]
    fn parses_classic_request_topics() {
        for (segment, op) in [
            ("get", ShadowOp::Get),
            ("update", ShadowOp::Update),
            ("delete", ShadowOp::Delete),
        ] {
            let topic = format!("$aws/things/myLightBulb/shadow/{segment}");
            assert_eq!(
                ShadowTopic::parse(&topic),
                Some(Ok(ShadowTopic {
                    thing: thing("myLightBulb"),
                    shadow: None,
                    op
                }))
            );
        }
    }

    #[test]
    fn parses_named_request_topics() {
        assert_eq!(
            ShadowTopic::parse("$aws/things/mySimulatedThing/shadow/name/simShadow1/update"),
            Some(Ok(ShadowTopic {
                thing: thing("mySimulatedThing"),
                shadow: Some(shadow("simShadow1")),
                op: ShadowOp::Update
            }))
        );
        // `$` is allowed in shadow names; names that look like keywords are just names.
        assert_eq!(
            ShadowTopic::parse("$aws/things/name/shadow/name/$get/delete"),
            Some(Ok(ShadowTopic {
                thing: thing("name"),
                shadow: Some(shadow("$get")),
                op: ShadowOp::Delete
            }))
        );
    }

    #[test]
    fn response_and_other_topics_are_not_requests() {
        for topic in [
            "$aws/things/t1/shadow/get/accepted",
            "$aws/things/t1/shadow/get/rejected",
            "$aws/things/t1/shadow/update/accepted",
            "$aws/things/t1/shadow/update/rejected",
            "$aws/things/t1/shadow/update/delta",
            "$aws/things/t1/shadow/update/documents",
            "$aws/things/t1/shadow/delete/accepted",
            "$aws/things/t1/shadow/delete/rejected",
            "$aws/things/t1/shadow/name/s1/get/accepted",
            "$aws/things/t1/shadow/name/s1/update/delta",
            "$aws/things/t1/shadow/name/s1/update/documents",
            "$aws/things/t1/shadow/name/s1/delete/rejected",
            "$aws/things/t1/shadow/list",
            "$aws/things/t1/shadow/name/s1",
            "$aws/things/t1/shadow/name/get",
            "$aws/things/t1/shadow",
            "$aws/things/t1/shadow/",
            "$aws/things/t1/shadow/GET",
            "$aws/things/t1/jobs/get",
            "$aws/things/t1/shadow/named/s1/get",
            "$aws/rules/r1/shadow/get",
            "things/t1/shadow/get",
            "$AWS/things/t1/shadow/get",
            "fleet/truck-1/telemetry",
            "",
        ] {
            assert_eq!(ShadowTopic::parse(topic), None, "{topic}");
        }
    }

    #[test]
    fn invalid_names_are_reported_for_rejection() {
        let parsed = ShadowTopic::parse("$aws/things/bad thing/shadow/update")
            .unwrap()
            .unwrap_err();
        assert_eq!(
            parsed,
            InvalidShadowTopic {
                topic: "$aws/things/bad thing/shadow/update".into(),
                op: ShadowOp::Update,
                error: NameError::InvalidThingName
            }
        );
        assert_eq!(
            parsed.rejected_topic(),
            "$aws/things/bad thing/shadow/update/rejected"
        );
        assert_eq!(
            parsed.shadow_error(),
            ShadowError::invalid_name(&NameError::InvalidThingName)
        );

        let long_thing = format!("$aws/things/{}/shadow/get", "t".repeat(129));
        let long_shadow = format!("$aws/things/t1/shadow/name/{}/get", "s".repeat(65));
        for (topic, error) in [
            ("$aws/things//shadow/get", NameError::InvalidThingName),
            ("$aws/things/+/shadow/get", NameError::InvalidThingName),
            ("$aws/things/t.1/shadow/name/s1/get", NameError::InvalidThingName),
            (long_thing.as_str(), NameError::InvalidThingName),
            ("$aws/things/t1/shadow/name//delete", NameError::InvalidShadowName),
            ("$aws/things/t1/shadow/name/#/get", NameError::InvalidShadowName),
            (
                "$aws/things/t1/shadow/name/a.b/update",
                NameError::InvalidShadowName,
            ),
            (long_shadow.as_str(), NameError::InvalidShadowName),
        ] {
            assert_eq!(
                ShadowTopic::parse(topic).unwrap().unwrap_err().error,
                error,
                "{topic}"
            );
        }
        // The longest valid names are fine.
        let longest = format!(
            "$aws/things/{}/shadow/name/{}/get",
            "t".repeat(128),
            "s".repeat(64)
        );
        assert!(ShadowTopic::parse(&longest).unwrap().is_ok());
    }

    #[test]
    fn builds_every_response_topic() {
        let classic = ShadowTopic {
            thing: thing("t1"),
            shadow: None,
            op: ShadowOp::Update,
        };
        let named = ShadowTopic {
            thing: thing("t1"),
            shadow: Some(shadow("cfg")),
            op: ShadowOp::Get,
        };
        assert_eq!(classic.prefix(), "$aws/things/t1/shadow");
        assert_eq!(named.prefix(), "$aws/things/t1/shadow/name/cfg");
        assert_eq!(classic.request_topic(), "$aws/things/t1/shadow/update");
        assert_eq!(named.request_topic(), "$aws/things/t1/shadow/name/cfg/get");
        assert_eq!(classic.accepted_topic(), "$aws/things/t1/shadow/update/accepted");
        assert_eq!(classic.rejected_topic(), "$aws/things/t1/shadow/update/rejected");
        assert_eq!(
            named.accepted_topic(),
            "$aws/things/t1/shadow/name/cfg/get/accepted"
        );
        assert_eq!(
            named.rejected_topic(),
            "$aws/things/t1/shadow/name/cfg/get/rejected"
        );

        let all = [
            ShadowResponse::GetAccepted,
            ShadowResponse::GetRejected,
            ShadowResponse::UpdateAccepted,
            ShadowResponse::UpdateRejected,
            ShadowResponse::UpdateDelta,
            ShadowResponse::UpdateDocuments,
            ShadowResponse::DeleteAccepted,
            ShadowResponse::DeleteRejected,
        ];
        let topics: Vec<String> = all
            .iter()
            .map(|r| response_topic(&thing("t1"), Some(&shadow("cfg")), *r))
            .collect();
        assert_eq!(
            topics,
            [
                "$aws/things/t1/shadow/name/cfg/get/accepted",
                "$aws/things/t1/shadow/name/cfg/get/rejected",
                "$aws/things/t1/shadow/name/cfg/update/accepted",
                "$aws/things/t1/shadow/name/cfg/update/rejected",
                "$aws/things/t1/shadow/name/cfg/update/delta",
                "$aws/things/t1/shadow/name/cfg/update/documents",
                "$aws/things/t1/shadow/name/cfg/delete/accepted",
                "$aws/things/t1/shadow/name/cfg/delete/rejected",
            ]
        );
        // Response topics are never parsed as requests, and request topics round-trip.
        for response in all {
            assert_eq!(ShadowTopic::parse(&classic.response_topic(response)), None);
        }
        assert_eq!(
            ShadowTopic::parse(&named.request_topic()),
            Some(Ok(named.clone()))
        );
        assert_eq!(
            request_topic(&thing("t1"), None, ShadowOp::Delete),
            "$aws/things/t1/shadow/delete"
        );
    }

    #[test]
    fn op_helpers() {
        assert_eq!(ShadowOp::Get.to_string(), "get");
        assert_eq!(ShadowOp::Delete.accepted(), ShadowResponse::DeleteAccepted);
        assert_eq!(ShadowOp::Delete.rejected(), ShadowResponse::DeleteRejected);
        assert_eq!(ShadowOp::Get.accepted().suffix(), "get/accepted");
        assert_eq!(ShadowOp::Update.rejected().suffix(), "update/rejected");
    }
}
