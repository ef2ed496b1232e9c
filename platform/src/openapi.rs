//! The public HTTP interface as OpenAPI 3.1, derived from the handlers with `utoipa`.
//!
//! Each tier builds its routes with `utoipa_axum::OpenApiRouter`, so a route cannot be served
//! without being documented. The entry point serves the whole platform's document at
//! `/v1/openapi.json` (through query-api); since no tier links another, the tiers' documents are
//! joined where the stack is deployed: each tier binary run with `--openapi [DOC.json ...]` prints
//! its own document merged with the given ones (`deploy/local` runs the three and points
//! query-api's `CHAT_OPENAPI_FILE` at the result).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, OpenApiBuilder};
use utoipa::{Modify, PartialSchema, ToSchema};

use crate::error::ErrorBody;

/// The refusals every operation may answer, each with [`ErrorBody`] (see API.md's error table).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Refused {
    /// Malformed input: bad JSON, a missing field, a value out of bounds (`invalid_input`).
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// No token, a bad or expired one, a revoked session, or wrong credentials.
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// Authenticated but not allowed: not a member, banned, not the author, role too low.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such room, message, user or file, or one the caller may not see.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The state does not allow it (a name taken, already banned, ...).
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body is larger than the endpoint takes.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Over a rate limit; `Retry-After` says when to try again.
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// A dependency is unavailable or ownership is moving; retry after `Retry-After`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Adds what every tier's operations refer to: the bearer scheme of their
/// `security(("bearer" = []))` and the error body of [`Refused`].
pub struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut schemas = vec![(ErrorBody::name().into_owned(), ErrorBody::schema())];
        <ErrorBody as ToSchema>::schemas(&mut schemas);
        components.schemas.extend(schemas);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document's title and description, the same for every tier's part.
pub fn base() -> OpenApi {
    OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("chat-platform")
                .version("1")
                .description(Some(
                    "Real-time chat and calls: the HTTP interface behind the entry point. \
                     The socket protocol (`/v1/ws`) is described in API.md.",
                ))
                .build(),
        )
        .build()
}

/// A tier's document from its routes: the common title, the bearer scheme, the error body.
pub fn finish(routes: OpenApi) -> OpenApi {
    let mut doc = base();
    doc.merge(routes);
    Shared.modify(&mut doc);
    doc
}

/// The start of a tier's `main`: with `--openapi`, prints the tier's document and returns
/// `true` (the process exits); otherwise sets up logging for `service` and returns `false`.
pub fn start(service: &'static str, own: impl FnOnce() -> OpenApi) -> Result<bool, std::io::Error> {
    if print_if_asked(own)? {
        return Ok(true);
    }
    crate::telemetry::init(service);
    Ok(false)
}

/// When the process was started with `--openapi [DOC.json ...]`: prints `own` merged with the
/// given documents and returns `true` (the caller exits); otherwise `false`.
fn print_if_asked(own: impl FnOnce() -> OpenApi) -> Result<bool, std::io::Error> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("--openapi") {
        return Ok(false);
    }
    let mut doc = own();
    for path in args {
        let text = std::fs::read_to_string(&path)?;
        let other: OpenApi = serde_json::from_str(&text).map_err(std::io::Error::other)?;
        doc.merge(other);
    }
    let json = doc.to_pretty_json().map_err(std::io::Error::other)?;
    println!("{json}");
    Ok(true)
}
