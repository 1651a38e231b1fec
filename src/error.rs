//! The one error type at the HTTP edge, with a fixed status table, and the warp `recover` that
//! turns every rejection into a JSON error.
//!
//! Status codes fit the senders: Azure Monitor retries only 408/429/503/504, Azure DevOps disables a
//! hook after repeated 500s and at once on 410, Alertmanager retries 5xx only. So a transient
//! failure of ours is always 503 with `Retry-After`, a client's mistake is always 4xx.

use serde_json::json;
use std::convert::Infallible;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Rejection;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, wrong types, missing fields: names the field (a JSON path) when there is one.
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        field: Option<String>,
        message: String,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body did not arrive within `ICAHUB_BODY_TIMEOUT_SECS`.
    #[error("the request body did not arrive within {secs} s; send it at once")]
    RequestTimeout { secs: u64 },
    #[error("{0}")]
    NotFound(String),
    /// No route matches the path (as opposed to a route whose object does not exist).
    #[error("no route matches this path")]
    NoRoute,
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// Ours, and transient: the sender should retry after `retry_after` seconds.
    #[error("{message}")]
    Unavailable { message: String, retry_after: u32 },
}

impl warp::reject::Reject for ApiError {}

/// A payload that does not parse: 400 naming the JSON path (or the header, whose name the
/// problem already says) at fault.
impl From<crate::domain::alert::PayloadError> for ApiError {
    fn from(e: crate::domain::alert::PayloadError) -> Self {
        crate::services::ServiceError::from(e).into()
    }
}

impl ApiError {
    pub fn bad_request(field: Option<String>, message: impl Into<String>) -> Self {
        crate::services::ServiceError::invalid(field, message).into()
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound(_) | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::NotFound(_) => "not_found",
            ApiError::NoRoute => "no_route",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable { .. } => "unavailable",
        }
    }

    /// `{"error": {"status", "code", "message", "field"?}, "request_id"}` with the right status.
    pub fn into_response(self, request_id: &str) -> Response {
        let mut err = json!({
            "status": self.status().as_u16(),
            "code": self.code(),
            "message": self.to_string(),
        });
        if let ApiError::BadRequest {
            field: Some(field), ..
        } = &self
        {
            err["field"] = json!(field);
        }
        let body = json!({ "error": err, "request_id": request_id });
        let mut resp = json_response(self.status(), &body, request_id);
        if let ApiError::Unauthorized(_) = &self {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"icahub\""),
            );
        }
        if let ApiError::Unavailable { retry_after, .. } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        resp
    }
}

/// A JSON response with the request id header.
pub fn json_response(status: StatusCode, body: &serde_json::Value, request_id: &str) -> Response {
    let mut resp = Response::new(body.to_string().into());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    resp
}

/// Map every rejection (ours and warp's) to a JSON error. Never a 500 for a client's mistake.
/// The answer carries the request's id ([`crate::http::RequestScope`]).
pub async fn recover(rej: Rejection) -> Result<Response, Infallible> {
    let request_id = crate::http::current_request()
        .map(|c| c.request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let err = if let Some(e) = rej.find::<ApiError>() {
        e.clone()
    } else if rej.is_not_found() {
        ApiError::NoRoute
    } else if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed("this method is not allowed on this path".into())
    } else if let Some(e) = rej.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(
            Some(format!("header:{}", e.name())),
            format!("header {} is invalid", e.name()),
        )
    } else if let Some(e) = rej.find::<warp::reject::MissingHeader>() {
        ApiError::bad_request(
            Some(format!("header:{}", e.name())),
            format!("header {} is required", e.name()),
        )
    } else if let Some(e) = rej.find::<warp::reject::InvalidQuery>() {
        ApiError::bad_request(None, format!("invalid query string: {e}"))
    } else if rej.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge { limit: 0 }
    } else if rej.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::UnsupportedMediaType("unsupported content type".into())
    } else if rej.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::bad_request(None, "Content-Length is required")
    } else {
        tracing::warn!(rejection = ?rej, "unhandled rejection");
        ApiError::Unavailable {
            message: "the request could not be handled; retry later".into(),
            retry_after: 5,
        }
    };
    Ok(err.into_response(&request_id))
}

/// The HTTP status of each service outcome. A storage failure is logged here, once, with its
/// cause; the caller is told only what was not done.
impl From<crate::services::ServiceError> for ApiError {
    fn from(e: crate::services::ServiceError) -> Self {
        use crate::services::ServiceError as S;
        match e {
            S::Invalid {
                code,
                field,
                message,
            } => ApiError::BadRequest {
                code,
                field,
                message,
            },
            S::NotFound(m) => ApiError::NotFound(m),
            S::Forbidden(m) => ApiError::Forbidden(m),
            S::Unauthorized(m) => ApiError::Unauthorized(m),
            S::Conflict(m) => ApiError::Conflict(m),
            S::Busy {
                message,
                retry_after,
            } => {
                tracing::warn!(%message, "storage contention; the caller is asked to retry");
                ApiError::Unavailable {
                    message,
                    retry_after,
                }
            }
            S::Unavailable {
                message,
                retry_after,
            } => ApiError::Unavailable {
                message,
                retry_after,
            },
            S::Storage { ref source, .. } => {
                tracing::error!(error = %source, "storage failed");
                ApiError::Unavailable {
                    message: e.caller_message(),
                    retry_after: 5,
                }
            }
        }
    }
}
