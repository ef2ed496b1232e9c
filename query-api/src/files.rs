//! `GET /v1/files/{file_id}`: streams a file to whoever may read a room where a message still
//! shows it. Files never shared, and files whose every message was deleted, are 404 for everyone.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use mongodb::bson::doc;
use platform::auth::Caller;
use read_model::FILES;
use read_model::documents::FileDoc;
use tokio_util::io::ReaderStream;

use crate::access::readable_room;
use crate::app::AppState;
use crate::error::QueryError;

#[utoipa::path(
    get,
    path = "/v1/files/{file_id}",
    tag = "files",
    summary = "Download a file a message shows in a room the caller may read",
    params(("file_id" = String, Path, description = "the file")),
    responses((status = 200, description = "the bytes", content_type = "application/octet-stream", body = Vec<u8>), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn download(
    State(app): State<AppState>,
    Caller(claims): Caller,
    Path(file_id): Path<String>,
) -> Result<Response, QueryError> {
    app.limits.downloads.check(&claims.sub)?;
    let path = platform::files::path_of(&app.config.files_dir, &file_id)
        .ok_or(QueryError::NotFound("file"))?;
    let file = app
        .db()
        .collection::<FileDoc>(FILES)
        .find_one(doc! {"_id": &file_id})
        .await?
        .ok_or(QueryError::NotFound("file"))?;
    // Whoever may read a room where a message still shows the file may download it: members,
    // and visitors of a public room (not its banned). A deleted message shares nothing.
    let mut readable = false;
    for room in file.readable_through() {
        if readable_room(&app, room, &claims.sub).await.is_ok() {
            readable = true;
            break;
        }
    }
    if !readable {
        return Err(QueryError::NotFound("file"));
    }
    let handle = tokio::fs::File::open(&path)
        .await
        .map_err(|_| QueryError::NotFound("file"))?;
    let mime = file
        .mime_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let filename = file.filename.as_deref().unwrap_or("file");
    // Images are shown inline; anything else is a download, never rendered by the browser.
    let disposition = if mime.starts_with("image/") && mime != "image/svg+xml" {
        "inline"
    } else {
        "attachment"
    };
    let encoded: String = filename
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut response = Response::new(Body::from_stream(ReaderStream::new(handle)));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(size) = file.size {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    if let Ok(value) = HeaderValue::from_str(&format!("{disposition}; filename*=UTF-8''{encoded}"))
    {
        h.insert(header::CONTENT_DISPOSITION, value);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(response)
}
