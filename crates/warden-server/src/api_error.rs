//! The REST API's error responses: the stable [`ErrorCode`]s, the status each one maps to, and
//! the JSON body every failed request gets:
//!
//! ```json
//! {"error": {"code": "invalid_job_spec", "message": "invalid `replicas`: ...", "field": "replicas"}}
//! ```
//!
//! Clients branch on `code` (and the status), never on `message`, which is for people.

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::view::{ApiError, ApiErrorKind};

/// What went wrong with a request, as the `error.code` field of an error response names it.
/// Each code always comes with the same HTTP status ([`ErrorCode::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not a job spec: a TOML/JSON syntax error, a wrong type, a missing field,
    /// or bytes that are not UTF-8. The message carries the parser's line and column.
    MalformedBody,
    /// 400: the body has a field the job spec does not know (`field` names it).
    UnknownField,
    /// 400: a query parameter is malformed, out of range or unknown.
    InvalidQuery,
    /// 400: a path segment cannot be decoded (e.g. percent-encoding that is not UTF-8).
    InvalidPath,
    /// 401: the server requires an API token and the request has none, or one it does not
    /// know. The `WWW-Authenticate` header carries the challenge.
    Unauthorized,
    /// 403: the request's token is valid but its role does not allow the request (a `read`
    /// token on a write).
    Forbidden,
    /// 404: no such route, or no such job.
    NotFound,
    /// 405: the route exists but not for this method (the `Allow` header lists the methods).
    MethodNotAllowed,
    /// 409: the request conflicts with the current state.
    Conflict,
    /// 413: the body is larger than the limit (1 MiB by default).
    PayloadTooLarge,
    /// 415: the `Content-Type` is neither TOML nor JSON.
    UnsupportedMediaType,
    /// 422: the job spec parsed but can never work (`field` names the offending field).
    InvalidJobSpec,
    /// 422: the control plane refused the request as impossible.
    InvalidRequest,
    /// 422: the job spec is over one of the server's limits (`[limits.jobs]`: replicas, env
    /// entries, arguments, command length, number of jobs); `field` names the field.
    LimitExceeded,
    /// 503: the control plane cannot serve the request now; retry later.
    Unavailable,
    /// 307: this server is a standby; the `Location` header names the same request on the
    /// leader (a replicated control plane, see docs/ha.md).
    NotLeader,
    /// 503: too many requests in flight; the request was shed without being run. Retry later.
    Overloaded,
    /// 503: the request took longer than the request timeout (10 s by default). A write may
    /// still have been applied; submitting the same spec again is safe.
    Timeout,
    /// 500: a bug or a storage failure.
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is always sent with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::MalformedBody
            | ErrorCode::UnknownField
            | ErrorCode::InvalidQuery
            | ErrorCode::InvalidPath => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidJobSpec | ErrorCode::InvalidRequest | ErrorCode::LimitExceeded => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorCode::Unavailable | ErrorCode::Overloaded | ErrorCode::Timeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::NotLeader => StatusCode::TEMPORARY_REDIRECT,
        }
    }

    /// The code as it appears on the wire, e.g. `"invalid_job_spec"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedBody => "malformed_body",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidJobSpec => "invalid_job_spec",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::NotLeader => "not_leader",
        }
    }
}

/// A failed request on its way to becoming an error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// The offending field of a job spec, when one is known.
    pub(crate) field: Option<String>,
}

impl HttpError {
    /// The error's code (and so its status).
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The offending field, when one is known.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HttpError {
            code,
            message: clip(message.into(), MAX_MESSAGE_BYTES),
            field: None,
        }
    }

    pub(crate) fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(clip(field.into(), MAX_FIELD_BYTES));
        self
    }

    /// An error the control plane returned. `invalid` is the code for [`ApiErrorKind::Invalid`],
    /// which depends on what was asked (a job spec, or anything else).
    pub(crate) fn from_api(err: ApiError, invalid: ErrorCode) -> Self {
        let code = match err.kind {
            ApiErrorKind::Invalid => invalid,
            ApiErrorKind::NotFound => ErrorCode::NotFound,
            ApiErrorKind::Conflict => ErrorCode::Conflict,
            ApiErrorKind::Unavailable => ErrorCode::Unavailable,
            ApiErrorKind::Internal => ErrorCode::Internal,
            ApiErrorKind::NotLeader => ErrorCode::NotLeader,
        };
        HttpError::new(code, err.message)
    }
}

/// Longest `message` sent back. Parser messages may quote the client's input, which can be
/// most of a megabyte; the reply need not be.
const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest `field` sent back (a field name quoted from the input may be just as long).
const MAX_FIELD_BYTES: usize = 128;

/// `text` cut to at most `max` bytes on a character boundary, marked with "…" when cut.
fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        // The edge is where API errors are handled, so this is where they are logged: server
        // faults loudly, client mistakes quietly.
        if status.is_server_error() {
            tracing::warn!(code = self.code.as_str(), message = %self.message, "request failed");
        } else {
            tracing::debug!(code = self.code.as_str(), message = %self.message, "request rejected");
        }
        let body = ErrorBody {
            error: ErrorObject {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 is temporary: shed load, a slow call, a control plane not ready.
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        response
    }
}

/// `Retry-After` of every 503, seconds.
pub const RETRY_AFTER_SECS: &str = "1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        let all = [
            ErrorCode::MalformedBody,
            ErrorCode::UnknownField,
            ErrorCode::InvalidQuery,
            ErrorCode::InvalidPath,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Conflict,
            ErrorCode::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::InvalidJobSpec,
            ErrorCode::InvalidRequest,
            ErrorCode::LimitExceeded,
            ErrorCode::Unavailable,
            ErrorCode::Overloaded,
            ErrorCode::Timeout,
            ErrorCode::Internal,
            ErrorCode::NotLeader,
        ];
        for code in all {
            let json = serde_json::to_value(code).expect("serialize code");
            assert_eq!(json, serde_json::Value::from(code.as_str()));
            assert!(
                code.status().is_client_error()
                    || code.status().is_server_error()
                    || code == ErrorCode::NotLeader && code.status().is_redirection()
            );
        }
    }

    #[test]
    fn long_messages_are_clipped_on_a_char_boundary() {
        let err =
            HttpError::new(ErrorCode::MalformedBody, "é".repeat(5000)).with_field("x".repeat(500));
        assert!(err.message.len() <= MAX_MESSAGE_BYTES);
        assert!(err.message.ends_with('…'));
        assert!(
            err.field
                .as_ref()
                .is_some_and(|f| f.len() <= MAX_FIELD_BYTES)
        );
        let short = HttpError::new(ErrorCode::MalformedBody, "short");
        assert_eq!(short.message, "short");
    }

    #[test]
    fn api_error_kinds_map_to_statuses() {
        let cases = [
            (ApiErrorKind::Invalid, StatusCode::UNPROCESSABLE_ENTITY),
            (ApiErrorKind::NotFound, StatusCode::NOT_FOUND),
            (ApiErrorKind::Conflict, StatusCode::CONFLICT),
            (ApiErrorKind::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            (ApiErrorKind::Internal, StatusCode::INTERNAL_SERVER_ERROR),
            (ApiErrorKind::NotLeader, StatusCode::TEMPORARY_REDIRECT),
        ];
        for (kind, status) in cases {
            let err = HttpError::from_api(ApiError::new(kind, "x"), ErrorCode::InvalidRequest);
            assert_eq!(err.code.status(), status, "{kind:?}");
        }
    }
}
