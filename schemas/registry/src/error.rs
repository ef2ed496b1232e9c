use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything the registry can answer with other than success. Mapped once, below, to the
/// Confluent error body `{"error_code", "message"}` whose first three digits are the status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {version} not found under subject '{subject}'.")]
    VersionNotFound { subject: String, version: String },
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\": {details}"
    )]
    Incompatible { subject: String, details: String },
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error("Invalid compatibility level: {0}")]
    InvalidCompatibilityLevel(String),
    #[error("Malformed request body: {0}")]
    MalformedBody(String),
    #[error("Error in the backend data store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("Error in the backend data store: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("configuration: {0}")]
    Config(String),
}

impl From<platform::ConfigError> for RegistryError {
    fn from(e: platform::ConfigError) -> Self {
        RegistryError::Config(e.to_string())
    }
}

impl RegistryError {
    /// Confluent's error code; its first three digits are the HTTP status.
    pub fn error_code(&self) -> u32 {
        match self {
            RegistryError::SubjectNotFound(_) => 40401,
            RegistryError::VersionNotFound { .. } => 40402,
            RegistryError::SchemaNotFound(_) => 40403,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::InvalidSchema(_) => 42201,
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidCompatibilityLevel(_) => 42203,
            RegistryError::MalformedBody(_) => 400,
            RegistryError::Store(_) | RegistryError::Migration(_) | RegistryError::Config(_) => {
                50001
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        let code = self.error_code();
        let status = if code >= 1000 { code / 100 } else { code };
        StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        if matches!(self, RegistryError::Store(_) | RegistryError::Migration(_)) {
            tracing::error!(error = %self, "store error");
        }
        let body = serde_json::json!({
            "error_code": self.error_code(),
            "message": self.to_string(),
        });
        let mut response = (self.status(), Json(body)).into_response();
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(crate::api::CONTENT_TYPE),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_the_first_three_digits() {
        assert_eq!(RegistryError::SubjectNotFound("s".into()).status(), 404);
        assert_eq!(
            RegistryError::Incompatible {
                subject: "s".into(),
                details: "d".into()
            }
            .status(),
            409
        );
        assert_eq!(RegistryError::InvalidSchema("x".into()).status(), 422);
        assert_eq!(RegistryError::MalformedBody("x".into()).status(), 400);
    }
}
