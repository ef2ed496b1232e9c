use axum::http::StatusCode;
use platform::auth::AuthError;

/// Everything a fan-out node can refuse or fail at. Each maps once to an error frame code (and
/// to an HTTP status for the long-polling endpoint).
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("{0}")]
    InvalidFrame(String),
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("room not found")]
    NotFound,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    /// A socket's `send`s awaiting their answers are at the node's bound: the client should wait
    /// for its acks, which is not the same as sending something wrong.
    #[error("{0}")]
    TooManyInFlight(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl FanoutError {
    /// The error code of API.md.
    pub fn code(&self) -> &'static str {
        match self {
            FanoutError::InvalidFrame(_) => "invalid_frame",
            FanoutError::UnknownType(_) => "unknown_type",
            FanoutError::Auth(e) => match e {
                AuthError::Missing => "missing_token",
                AuthError::Expired => "token_expired",
                AuthError::Revoked => "session_revoked",
                AuthError::Unavailable(_) => "auth_unavailable",
                _ => "invalid_token",
            },
            FanoutError::NotFound => "not_found",
            FanoutError::Forbidden(_) => "forbidden",
            FanoutError::Invalid(_) => "invalid_input",
            FanoutError::TooManyInFlight(_) => "too_many_in_flight",
            FanoutError::Unavailable(_) => "unavailable",
            FanoutError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            FanoutError::InvalidFrame(_)
            | FanoutError::UnknownType(_)
            | FanoutError::Invalid(_) => StatusCode::BAD_REQUEST,
            FanoutError::Auth(AuthError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            FanoutError::Auth(_) => StatusCode::UNAUTHORIZED,
            FanoutError::NotFound => StatusCode::NOT_FOUND,
            FanoutError::Forbidden(_) => StatusCode::FORBIDDEN,
            FanoutError::TooManyInFlight(_) => StatusCode::TOO_MANY_REQUESTS,
            FanoutError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            FanoutError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<redis::RedisError> for FanoutError {
    fn from(e: redis::RedisError) -> Self {
        FanoutError::Unavailable(format!("redis: {e}"))
    }
}

impl From<FanoutError> for platform::ApiError {
    fn from(e: FanoutError) -> Self {
        let retry = matches!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let error = platform::ApiError::new(e.status(), e.code(), e.to_string());
        if retry {
            error.with_retry_after(1)
        } else {
            error
        }
    }
}
