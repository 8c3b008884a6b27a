//! Configurable shadow limits, defaulting to AWS's.

use serde::{Deserialize, Serialize};

/// The limits every shadow request is checked against.
///
/// [`Default`] (and [`ShadowLimits::AWS`]) are the AWS IoT defaults. Unlike AWS, an operator
/// may raise them (AWS raises the 8 KB state limit only through a support case).
/// Deserializing fills missing fields from the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShadowLimits {
    /// Maximum size of the shadow's state after the update is merged: the compact JSON of
    /// `desired` plus the compact JSON of `reported`, in bytes (see
    /// [`StoredShadow::state_size`](super::StoredShadow::state_size)). Metadata, version and
    /// timestamps do not count. AWS: 8192.
    pub max_state_bytes: usize,
    /// Maximum nesting depth of `desired` and of `reported` (see [`json_depth`](super::json_depth)
    /// for how levels are counted). AWS: 6.
    pub max_depth: usize,
    /// Maximum length of `clientToken`, in bytes. AWS: 64.
    pub max_client_token_bytes: usize,
    /// Maximum size of a raw request payload (update, get or delete), in bytes. AWS documents
    /// no separate limit: its state limit applies after the merge, so a request may legally be
    /// larger than 8 KB (whitespace, `null` deletions). The default is AWS's MQTT message
    /// limit, 128 KiB, the largest request AWS could ever receive.
    pub max_request_bytes: usize,
}

impl ShadowLimits {
    /// The AWS IoT defaults: 8192-byte state, depth 6, 64-byte client token, 128 KiB request.
    pub const AWS: ShadowLimits = ShadowLimits {
        max_state_bytes: 8192,
        max_depth: 6,
        max_client_token_bytes: 64,
        max_request_bytes: 128 * 1024,
    };
}

impl Default for ShadowLimits {
    fn default() -> Self {
        Self::AWS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_aws_limits() {
        let limits = ShadowLimits::default();
        assert_eq!(limits.max_state_bytes, 8192);
        assert_eq!(limits.max_depth, 6);
        assert_eq!(limits.max_client_token_bytes, 64);
        assert_eq!(limits.max_request_bytes, 131_072);
        assert_eq!(limits, ShadowLimits::AWS);
    }

    #[test]
    fn missing_fields_deserialize_to_defaults() {
        let limits: ShadowLimits = serde_json::from_str(r#"{"max_state_bytes": 30720}"#).unwrap();
        assert_eq!(
            limits,
            ShadowLimits {
                max_state_bytes: 30720,
                ..ShadowLimits::AWS
            }
        );
    }
}
