use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::ApiError;
use platform::auth::AuthError;

/// Everything a signaling call can fail with; mapped to the API error body once, below.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("too many requests; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("no such call, or it ended")]
    CallNotFound,
    /// The caller may not do this to this call (`code`, message).
    #[error("{1}")]
    Forbidden(&'static str, String),
    #[error("{1}")]
    Conflict(&'static str, String),
    /// Janus refused or did not answer.
    #[error(transparent)]
    Sfu(#[from] crate::janus::JanusError),
    /// Redis (the call state, the relay) did not answer; the client retries.
    #[error("the call state is unavailable: {0}")]
    Redis(#[from] redis::RedisError),
}

impl From<SignalingError> for ApiError {
    fn from(e: SignalingError) -> Self {
        let message = e.to_string();
        match e {
            SignalingError::Auth(auth) => auth.into(),
            SignalingError::RateLimited { retry_after } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                    .with_retry_after(retry_after)
            }
            SignalingError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
            }
            SignalingError::TooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            SignalingError::CallNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "call_not_found", message)
            }
            SignalingError::Forbidden(code, _) => {
                ApiError::new(StatusCode::FORBIDDEN, code, message)
            }
            SignalingError::Conflict(code, _) => ApiError::new(StatusCode::CONFLICT, code, message),
            SignalingError::Sfu(janus) => match janus.code() {
                Some(crate::janus::codes::NO_SUCH_FEED) => ApiError::new(
                    StatusCode::CONFLICT,
                    "feed_not_found",
                    "that participant does not publish (yet, or any more)",
                ),
                Some(crate::janus::codes::INVALID_SDP) => {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
                }
                _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "sfu_unavailable", message)
                    .with_retry_after(1),
            },
            SignalingError::Redis(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
                    .with_retry_after(1)
            }
        }
    }
}

impl IntoResponse for SignalingError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
