//! Registry errors: the AWS IoT exception names, their HTTP statuses and message bodies.

use serde_json::{Map, Value};

/// A failed registry operation, one variant per AWS IoT exception (botocore `iot` 2015-05-28).
///
/// Front ends send [`RegistryError::http_status`], the header `x-amzn-ErrorType:
/// {code}` ([`RegistryError::code`]) and the body [`RegistryError::body`]; botocore reads the
/// code from that header.
///
/// Which exception an operation raises follows the `errors` list of the operation in the
/// service model: none of the registry operations lists `LimitExceededException`, so exceeded
/// registry limits (attributes, groups per thing, depth, children) are `InvalidRequestException`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// `ResourceNotFoundException` (404): the thing, type or group does not exist.
    #[error("{0}")]
    ResourceNotFound(String),
    /// `ResourceAlreadyExistsException` (409): a create with the name of an existing resource
    /// but a different configuration.
    #[error("{message}")]
    ResourceAlreadyExists {
        /// The message.
        message: String,
        /// The existing resource's id (`thingId`, `thingTypeId`, `thingGroupId`).
        resource_id: String,
        /// The existing resource's ARN.
        resource_arn: String,
    },
    /// `InvalidRequestException` (400): validation failures, exceeded limits and requests the
    /// current state does not allow (deprecated type, group with children, ...).
    #[error("{0}")]
    InvalidRequest(String),
    /// `VersionConflictException` (409): `expectedVersion` does not match the stored version.
    #[error("{0}")]
    VersionConflict(String),
    /// `LimitExceededException` (410). Not raised by the registry operations (see the type
    /// docs); kept for front ends that enforce account-level quotas.
    #[error("{0}")]
    LimitExceeded(String),
    /// `ServiceUnavailableException` (503): the store is unreachable, timed out or too
    /// contended. AWS SDKs retry it.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// `InternalFailureException` (500): stored data is corrupt or a bug was detected.
    #[error("{0}")]
    InternalFailure(String),
}

impl RegistryError {
    /// The AWS exception name, for the `x-amzn-ErrorType` header.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::ResourceNotFound(_) => "ResourceNotFoundException",
            RegistryError::ResourceAlreadyExists { .. } => "ResourceAlreadyExistsException",
            RegistryError::InvalidRequest(_) => "InvalidRequestException",
            RegistryError::VersionConflict(_) => "VersionConflictException",
            RegistryError::LimitExceeded(_) => "LimitExceededException",
            RegistryError::ServiceUnavailable(_) => "ServiceUnavailableException",
            RegistryError::InternalFailure(_) => "InternalFailureException",
        }
    }

    /// The HTTP status the service model gives the exception.
    pub fn http_status(&self) -> u16 {
        match self {
            RegistryError::ResourceNotFound(_) => 404,
            RegistryError::ResourceAlreadyExists { .. } | RegistryError::VersionConflict(_) => 409,
            RegistryError::InvalidRequest(_) => 400,
            RegistryError::LimitExceeded(_) => 410,
            RegistryError::ServiceUnavailable(_) => 503,
            RegistryError::InternalFailure(_) => 500,
        }
    }

    /// The message text.
    pub fn message(&self) -> &str {
        match self {
            RegistryError::ResourceNotFound(m)
            | RegistryError::InvalidRequest(m)
            | RegistryError::VersionConflict(m)
            | RegistryError::LimitExceeded(m)
            | RegistryError::ServiceUnavailable(m)
            | RegistryError::InternalFailure(m) => m,
            RegistryError::ResourceAlreadyExists { message, .. } => message,
        }
    }

    /// The JSON error body: `{"message": ...}`, plus `resourceId` and `resourceArn` for
    /// `ResourceAlreadyExistsException` (the members of its shape).
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("message".into(), self.message().into());
        if let RegistryError::ResourceAlreadyExists {
            resource_id,
            resource_arn,
            ..
        } = self
        {
            body.insert("resourceId".into(), resource_id.as_str().into());
            body.insert("resourceArn".into(), resource_arn.as_str().into());
        }
        Value::Object(body)
    }

    /// Whether retrying the same request may succeed (store trouble, not the request).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::ServiceUnavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn codes_and_statuses_follow_the_service_model() {
        let cases = [
            (
                RegistryError::ResourceNotFound("m".into()),
                "ResourceNotFoundException",
                404,
            ),
            (
                RegistryError::InvalidRequest("m".into()),
                "InvalidRequestException",
                400,
            ),
            (
                RegistryError::VersionConflict("m".into()),
                "VersionConflictException",
                409,
            ),
            (
                RegistryError::LimitExceeded("m".into()),
                "LimitExceededException",
                410,
            ),
            (
                RegistryError::ServiceUnavailable("m".into()),
                "ServiceUnavailableException",
                503,
            ),
            (
                RegistryError::InternalFailure("m".into()),
                "InternalFailureException",
                500,
            ),
        ];
        for (e, code, status) in cases {
            assert_eq!((e.code(), e.http_status(), e.message()), (code, status, "m"));
            assert_eq!(e.body(), json!({"message": "m"}));
        }
        let e = RegistryError::ResourceAlreadyExists {
            message: "exists".into(),
            resource_id: "id".into(),
            resource_arn: "arn".into(),
        };
        assert_eq!(
            (e.code(), e.http_status()),
            ("ResourceAlreadyExistsException", 409)
        );
        assert_eq!(
            e.body(),
            json!({"message": "exists", "resourceId": "id", "resourceArn": "arn"})
        );
        assert!(RegistryError::ServiceUnavailable("x".into()).is_retryable());
        assert!(!e.is_retryable());
    }
}
