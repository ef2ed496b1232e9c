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
        }
    }
}

impl IntoResponse for SignalingError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
