use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::ApiError;
use platform::auth::AuthError;

/// Everything a read can fail with; mapped to the API error body once, below.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{1}")]
    Forbidden(&'static str, String),
    /// Also the answer for anything the caller may not see (a private room they are not in).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("too many requests; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("{0}")]
    Internal(String),
}

impl QueryError {
    pub fn invalid(message: impl Into<String>) -> Self {
        QueryError::Invalid(message.into())
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let message = e.to_string();
        let unavailable = |code: &'static str, what: &str| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                format!("{what} unavailable"),
            )
            .with_retry_after(1)
        };
        match e {
            QueryError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
            }
            QueryError::Auth(auth) => auth.into(),
            QueryError::Forbidden(code, _) => ApiError::new(StatusCode::FORBIDDEN, code, message),
            QueryError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                match what {
                    "room" => "room_not_found",
                    "file" => "file_not_found",
                    _ => "not_found",
                },
                message,
            ),
            QueryError::RateLimited { retry_after } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                    .with_retry_after(retry_after)
            }
            QueryError::Mongo(inner) => {
                tracing::error!(error = %inner, "mongodb error");
                unavailable("history_unavailable", "message history")
            }
            QueryError::Redis(inner) => {
                tracing::error!(error = %inner, "redis error");
                unavailable("presence_unavailable", "presence")
            }
            QueryError::Postgres(inner) => {
                tracing::error!(error = %inner, "postgres error");
                unavailable("directory_unavailable", "user directory")
            }
            QueryError::Internal(inner) => {
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

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
