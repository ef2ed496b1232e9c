use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::ApiError;
use platform::auth::AuthError;

/// Everything a command can fail with. Converted to the API error body in exactly one place
/// (`From<CommandError> for ApiError`), so statuses cannot drift between handlers.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("wrong username, e-mail or password")]
    BadCredentials,
    #[error("{1}")]
    Forbidden(&'static str, String),
    /// Also the answer for a private room the caller cannot see.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("{0}")]
    TooLarge(String),
    /// The caller's stored files would exceed their quota.
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("too many requests; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// Another instance writes the room (its base URL): the forwarding layer sends the request
    /// there; a request that was already forwarded once is answered 503 instead.
    #[error("the room's writer moved; retry")]
    Moved(String),
    #[error("storage: {0}")]
    Store(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("event contract: {0}")]
    Schema(#[from] schemas::SchemaError),
    #[error("{0}")]
    Internal(String),
}

impl CommandError {
    pub fn invalid(message: impl Into<String>) -> Self {
        CommandError::Invalid(message.into())
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let message = e.to_string();
        match e {
            CommandError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
            }
            CommandError::Auth(auth) => auth.into(),
            CommandError::BadCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "bad_credentials", message)
            }
            CommandError::Forbidden(code, _) => ApiError::new(StatusCode::FORBIDDEN, code, message),
            CommandError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                match what {
                    "room" => "room_not_found",
                    "message" => "message_not_found",
                    "user" => "user_not_found",
                    "file" => "file_not_found",
                    "call" => "call_not_found",
                    _ => "not_found",
                },
                message,
            ),
            CommandError::Conflict(code, _) => ApiError::new(StatusCode::CONFLICT, code, message),
            CommandError::TooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            CommandError::QuotaExceeded(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded", message)
            }
            CommandError::RateLimited { retry_after } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                    .with_retry_after(retry_after)
            }
            CommandError::Unavailable(_) | CommandError::Moved(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
                    .with_retry_after(1)
            }
            CommandError::Store(ref inner) => {
                tracing::error!(error = %inner, "postgres error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "identity store unavailable",
                )
                .with_retry_after(1)
            }
            CommandError::Redis(ref inner) => {
                tracing::error!(error = %inner, "redis error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cache_unavailable",
                    "session store unavailable",
                )
                .with_retry_after(1)
            }
            CommandError::Schema(ref inner) => {
                tracing::error!(error = %inner, "event contract error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "log_unavailable",
                    "event log unavailable",
                )
                .with_retry_after(1)
            }
            CommandError::Internal(ref inner) => {
                tracing::error!(error = %inner, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for CommandError {
    fn into_response(self) -> Response {
        let moved = match &self {
            CommandError::Moved(owner) => Some(crate::forward::Moved(owner.clone())),
            _ => None,
        };
        let mut response = ApiError::from(self).into_response();
        if let Some(moved) = moved {
            response.extensions_mut().insert(moved);
        }
        response
    }
}
