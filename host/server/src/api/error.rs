//! Edge errors become responses here, in one place: an HTTP status, the `x-amzn-ErrorType`
//! header AWS clients (botocore) read to pick the exception, and a JSON body with `message`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shoal_things::shadow::Rejection;

/// An error answered to an HTTP caller.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The AWS exception name (`ResourceNotFoundException`...).
    pub error_type: &'static str,
    /// The JSON body (always has `message`).
    pub body: Value,
}

impl ApiError {
    /// 400 `InvalidRequestException`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error_type: "InvalidRequestException",
            body: json!({ "message": message }),
        }
    }

    /// 404 `ResourceNotFoundException`.
    pub fn not_found(message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status: StatusCode::NOT_FOUND,
            error_type: "ResourceNotFoundException",
            body: json!({ "message": message }),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let status = StatusCode::from_u16(r.error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error_type = r.error.aws_error_type();
        ApiError {
            status,
            error_type,
            body: r.payload(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        resp.headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(self.error_type));
        resp
    }
}
