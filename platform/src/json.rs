//! A JSON body extractor whose every rejection is the API error body, so malformed JSON, wrong
//! types, a missing content type and oversize bodies get `{"error": {code, message}}` with
//! 400/415/413 instead of axum's plain-text answers.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::ApiError;

pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(rejection_to_error(rejection)),
        }
    }
}

/// serde's messages quote the offending value (an unknown variant, say) whole: enough of it to
/// recognize, not the client's megabyte echoed back.
const MAX_MESSAGE_CHARS: usize = 300;

fn rejection_to_error(rejection: JsonRejection) -> ApiError {
    let text = rejection.body_text();
    let message = match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    };
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a JSON body with Content-Type: application/json",
        ),
        _ => match rejection {
            JsonRejection::JsonDataError(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message),
        },
    }
}
