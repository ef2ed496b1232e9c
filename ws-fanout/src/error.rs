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
    /// A budget of `crate::limits` is spent.
    #[error("too many requests; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// A bound on what a user holds (sockets, subscriptions): its code and message.
    #[error("{1}")]
    TooMany(&'static str, String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl FanoutError {
    /// A dependency that may answer again (the broker electing leaders, say): worth waiting
    /// for with `platform::retry::while_transient`.
    pub fn is_transient(&self) -> bool {
        matches!(self, FanoutError::Unavailable(_))
    }

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
            FanoutError::RateLimited { .. } => "rate_limited",
            FanoutError::TooMany(code, _) => code,
            FanoutError::Unavailable(_) => "unavailable",
            FanoutError::Internal(_) => "internal",
        }
    }

    /// When to try again, for refusals that pass.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            FanoutError::RateLimited { retry_after } => Some(*retry_after),
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        }
    }

    /// This error as the socket's error frame (API.md), answering the frame `reference` names.
    pub fn frame(&self, reference: Option<&str>) -> String {
        crate::protocol::error_frame_after(
            self.code(),
            &self.to_string(),
            reference,
            self.retry_after(),
        )
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
            FanoutError::TooManyInFlight(_)
            | FanoutError::RateLimited { .. }
            | FanoutError::TooMany(..) => StatusCode::TOO_MANY_REQUESTS,
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
        let error = platform::ApiError::new(e.status(), e.code(), e.to_string());
        match e.retry_after() {
            Some(seconds) => error.with_retry_after(seconds),
            None => error,
        }
    }
}
