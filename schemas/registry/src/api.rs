//! The HTTP surface: Confluent's paths, bodies and error codes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::FutureExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::RegistryError;
use crate::normalize::NormalizedSchema;
use crate::store::{Store, VersionRef};
use schemas::compat::{self, Level};

pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub struct AppState {
    pub store: Store,
    pub max_body_bytes: usize,
}

pub fn router(
    state: Arc<AppState>,
    registry: prometheus::Registry,
) -> Result<Router, prometheus::Error> {
    let metrics = platform::ops::HttpMetrics::register(&registry)?;
    let probe_store = state.store.clone();
    let ops = platform::ops::Ops::new(registry).probe("postgres", move || {
        let store = probe_store.clone();
        async move { store.ping().await.map_err(|e| e.to_string()) }.boxed()
    });
    let api = Router::new()
        .route("/", get(|| async { confluent(json!({})) }))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route("/subjects/{subject}/versions/{version}", get(get_version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/ids/{id}", get(get_schema))
        .route("/schemas/ids/{id}/versions", get(get_schema_versions))
        .route(
            "/schemas/types",
            get(|| async { confluent(json!(["AVRO"])) }),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_compatibility),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config).put(put_subject_config),
        )
        .fallback(|| async { confluent_error(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found") })
        .method_not_allowed_fallback(|| async {
            confluent_error(
                StatusCode::METHOD_NOT_ALLOWED,
                405,
                "HTTP 405 Method Not Allowed",
            )
        })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            platform::ops::HttpMetrics::track,
        ));
    Ok(api.merge(ops.router()))
}

fn confluent(body: serde_json::Value) -> Response {
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

fn confluent_error(status: StatusCode, code: u32, message: &str) -> Response {
    let mut response = confluent(json!({"error_code": code, "message": message}));
    *response.status_mut() = status;
    response
}

/// A JSON body parsed by hand so that a missing content type, malformed JSON, a wrong field
/// type or an oversize body each get a Confluent error body rather than axum's plain text.
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
    Arc<AppState>: axum::extract::FromRef<S>,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let app: Arc<AppState> = axum::extract::FromRef::from_ref(state);
        let bytes = read_limited(request.into_body(), app.max_body_bytes).await?;
        parse_body(&bytes)
            .map(Body)
            .map_err(IntoResponse::into_response)
    }
}

/// Reads at most `limit` bytes. An oversize body is still read (and dropped) up to 16 times the
/// limit before answering 413: a server that answers while the client is still sending and
/// then closes makes most clients report a broken connection instead of the 413.
async fn read_limited(body: axum::body::Body, limit: usize) -> Result<Bytes, Response> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::MalformedBody(format!("cannot read the request body: {e}"))
                .into_response()
        })?;
        seen += chunk.len();
        if seen <= limit {
            buffer.extend_from_slice(&chunk);
        } else if seen > limit.saturating_mul(16) {
            break;
        }
    }
    if seen > limit {
        return Err(confluent_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            413,
            &format!("request body larger than {limit} bytes"),
        ));
    }
    Ok(Bytes::from(buffer))
}

fn parse_body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, RegistryError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| RegistryError::MalformedBody(e.to_string()))?;
    // Well-formed JSON of the wrong shape is Confluent's 422, not 400.
    serde_json::from_value(value)
        .map_err(|e| RegistryError::InvalidSchema(format!("bad request body: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: String,
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

impl SchemaRequest {
    fn normalized(&self) -> Result<NormalizedSchema, RegistryError> {
        match self.schema_type.as_deref() {
            None | Some("AVRO") => {}
            Some(other) => {
                return Err(RegistryError::InvalidSchema(format!(
                    "schemaType {other} is not supported; this registry stores AVRO"
                )));
            }
        }
        if !self.references.is_empty() {
            return Err(RegistryError::InvalidSchema(
                "schema references are not supported; submit self-contained schemas".into(),
            ));
        }
        NormalizedSchema::parse(&self.schema)
    }
}

async fn list_subjects(State(app): State<Arc<AppState>>) -> Result<Response, RegistryError> {
    Ok(confluent(json!(app.store.subjects().await?)))
}

async fn list_versions(
    State(app): State<Arc<AppState>>,
    Path(subject): Path<String>,
) -> Result<Response, RegistryError> {
    Ok(confluent(json!(app.store.versions(&subject).await?)))
}

async fn register(
    State(app): State<Arc<AppState>>,
    Path(subject): Path<String>,
    Body(request): Body<SchemaRequest>,
) -> Result<Response, RegistryError> {
    let schema = request.normalized()?;
    let id = app.store.register(&subject, &schema).await?;
    Ok(confluent(json!({"id": id})))
}

async fn lookup(
    State(app): State<Arc<AppState>>,
    Path(subject): Path<String>,
    Body(request): Body<SchemaRequest>,
) -> Result<Response, RegistryError> {
    let schema = request.normalized()?;
    let found = app.store.lookup(&subject, &schema).await?;
    Ok(confluent(json!({
        "subject": found.subject, "id": found.id, "version": found.version, "schema": found.schema,
    })))
}

async fn get_version(
    State(app): State<Arc<AppState>>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, RegistryError> {
    let found = app
        .store
        .version(&subject, VersionRef::parse(&version)?)
        .await?;
    Ok(confluent(json!({
        "subject": found.subject, "id": found.id, "version": found.version, "schema": found.schema,
    })))
}

async fn get_version_schema(
    State(app): State<Arc<AppState>>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, RegistryError> {
    let found = app
        .store
        .version(&subject, VersionRef::parse(&version)?)
        .await?;
    let mut response = found.schema.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

fn parse_id(id: &str) -> Result<i32, RegistryError> {
    id.parse::<i32>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))
}

async fn get_schema(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, RegistryError> {
    let (schema, schema_type) = app.store.schema_by_id(parse_id(&id)?).await?;
    // Confluent omits schemaType for AVRO, the default.
    Ok(if schema_type == "AVRO" {
        confluent(json!({"schema": schema}))
    } else {
        confluent(json!({"schema": schema, "schemaType": schema_type}))
    })
}

async fn get_schema_versions(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, RegistryError> {
    let pairs = app.store.subject_versions_of(parse_id(&id)?).await?;
    Ok(confluent(json!(
        pairs
            .into_iter()
            .map(|(subject, version)| json!({"subject": subject, "version": version}))
            .collect::<Vec<_>>()
    )))
}

async fn check_compatibility(
    State(app): State<Arc<AppState>>,
    Path((subject, version)): Path<(String, String)>,
    Body(request): Body<SchemaRequest>,
) -> Result<Response, RegistryError> {
    let version = VersionRef::parse(&version)?;
    let candidate = request.normalized()?;
    let against = app.store.version(&subject, version).await?;
    let old = NormalizedSchema::parse(&against.schema)?;
    let level = app.store.level(Some(&subject)).await?;
    let outcome = compat::check(level, &candidate.parsed, &[(against.version, old.parsed)]);
    Ok(match outcome {
        Ok(()) => confluent(json!({"is_compatible": true})),
        Err(reason) => confluent(json!({"is_compatible": false, "messages": [reason]})),
    })
}

#[derive(Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

async fn get_global_config(State(app): State<Arc<AppState>>) -> Result<Response, RegistryError> {
    let level = app.store.level(None).await?;
    Ok(confluent(json!({"compatibilityLevel": level.as_str()})))
}

async fn put_global_config(
    State(app): State<Arc<AppState>>,
    Body(request): Body<ConfigRequest>,
) -> Result<Response, RegistryError> {
    let level = parse_level(&request.compatibility)?;
    app.store.set_level(None, level).await?;
    Ok(confluent(json!({"compatibility": level.as_str()})))
}

async fn get_subject_config(
    State(app): State<Arc<AppState>>,
    Path(subject): Path<String>,
) -> Result<Response, RegistryError> {
    match app.store.own_level(&subject).await? {
        Some(level) => Ok(confluent(json!({"compatibilityLevel": level.as_str()}))),
        None => Err(RegistryError::SubjectNotFound(subject)),
    }
}

async fn put_subject_config(
    State(app): State<Arc<AppState>>,
    Path(subject): Path<String>,
    Body(request): Body<ConfigRequest>,
) -> Result<Response, RegistryError> {
    let level = parse_level(&request.compatibility)?;
    app.store.set_level(Some(&subject), level).await?;
    Ok(confluent(json!({"compatibility": level.as_str()})))
}

fn parse_level(s: &str) -> Result<Level, RegistryError> {
    Level::parse(s).ok_or_else(|| RegistryError::InvalidCompatibilityLevel(s.to_string()))
}
