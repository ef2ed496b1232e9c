//! A JSON body extractor whose every rejection is the API error body, so malformed JSON, wrong
//! types, a missing content type and oversize bodies get `{"error": {code, message}}` with
//! 400/415/413 instead of axum's plain-text answers.

use axum::body::Bytes;
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
        let (parts, body) = request.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|rejection| match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than this endpoint takes",
                ),
                _ => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    "the request body could not be read",
                ),
            })?;
        // JSON may carry U+0000 in a string, but no text here means it, and PostgreSQL refuses
        // it in text (which answered 503 where the client's input was at fault; schemathesis).
        if has_nul(&bytes) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_input",
                "text may not contain the NUL character (U+0000)",
            ));
        }
        let request = Request::from_parts(parts, axum::body::Body::from(bytes));
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(rejection_to_error(rejection)),
        }
    }
}

/// Whether a JSON text holds the escape `\u0000` (a raw NUL is not valid JSON anyway). Each
/// backslash escapes the character after it, so `\\u0000` (an escaped backslash, then text)
/// is not one.
fn has_nul(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            0 => return true,
            b'\\' => {
                if json.get(i + 1) == Some(&b'u') && json.get(i + 2..i + 6) == Some(&b"0000"[..]) {
                    return true;
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    false
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

#[cfg(test)]
mod tests {
    use super::has_nul;

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not_them() {
        assert!(has_nul(br#"{"login":"a\u0000b"}"#));
        assert!(has_nul(br#"["\u0000"]"#));
        assert!(has_nul(b"{\"a\":\"\0\"}"));
        assert!(!has_nul(br#"{"login":"a\\u0000b"}"#));
        assert!(has_nul(br#"{"login":"a\\\u0000b"}"#));
        assert!(has_nul(br#"{"login":"\u00000"}"#));
        assert!(!has_nul(br#"{"x":"\u0001"}"#));
        assert!(!has_nul(br#"{"a":"\u0100","b":"\n"}"#));
    }
}
