//! `POST /v1/files`: uploads, stored before any message refers to them.
//!
//! The bytes are streamed to the file store while they are counted and hashed, so an upload
//! over the limit is refused without ever being held in memory. The type is sniffed from the
//! bytes (magic numbers, then UTF-8 text), never taken from the client's Content-Type.

use std::path::PathBuf;

use axum::Json;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use platform::auth::Caller;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::app::AppState;
use crate::error::CommandError;
use crate::rooms::FileInfo;

/// How many bytes the sniffer looks at.
const SNIFF_BYTES: usize = 8192;

/// Where uploaded bytes live: one file per upload under a directory.
#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl FileStore {
    pub async fn new(dir: PathBuf, max_bytes: u64) -> Result<Self, CommandError> {
        tokio::fs::create_dir_all(dir.join("tmp"))
            .await
            .map_err(|e| CommandError::Internal(format!("file store {}: {e}", dir.display())))?;
        Ok(Self { dir, max_bytes })
    }

    pub fn path_of(&self, file_id: &Uuid) -> PathBuf {
        let id = file_id.simple().to_string();
        platform::files::path_of(&self.dir, &id).unwrap_or_else(|| self.dir.join(id))
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

/// Keeps the last path component, drops control characters and path separators, and caps the
/// length; what remains is only ever shown and sent as a download name.
pub fn clean_filename(raw: Option<&str>) -> String {
    let base = raw.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_string();
    let cleaned: String = cleaned.chars().take(255).collect();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        "file".to_string()
    } else {
        cleaned
    }
}

/// The MIME type of `head` (the first bytes of a file).
pub fn sniff(head: &[u8], complete: bool) -> String {
    if let Some(kind) = infer::get(head) {
        return kind.mime_type().to_string();
    }
    // Text: valid UTF-8, allowing a character cut at the end of an incomplete head.
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => !complete && e.error_len().is_none() && e.valid_up_to() + 4 > head.len(),
    };
    if text && !head.contains(&0) {
        "text/plain".to_string()
    } else {
        "application/octet-stream".to_string()
    }
}

/// The multipart form of an upload.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file's bytes (its type is sniffed from them, not taken from the client).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

#[utoipa::path(post, path = "/v1/files", tag = "files",
    summary = "Upload a file to attach to posts (multipart field `file`)",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 201, description = "stored", body = FileInfo), platform::openapi::Refused),
    security(("bearer" = [])))]
pub async fn upload(
    State(app): State<AppState>,
    Caller(claims): Caller,
    mut multipart: Multipart,
) -> Result<impl IntoResponse, CommandError> {
    app.limits.uploads.check(&claims.sub)?;
    let uploader = Uuid::parse_str(&claims.sub)
        .map_err(|_| CommandError::Auth(platform::auth::AuthError::Invalid))?;
    let store = &app.files;
    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|e| multipart_error(&e.to_string(), store.max_bytes()))?
            .ok_or_else(|| CommandError::invalid("multipart body has no field named \"file\""))?;
        if field.name() != Some("file") {
            continue;
        }
        let filename = clean_filename(field.file_name());
        let file_id = Uuid::now_v7();
        let info = store_field(store, file_id, field).await?;
        let (size, sha256, mime_type) = info;
        sqlx::query(
            "INSERT INTO files (id, uploader_id, filename, size, mime_type, sha256) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(file_id)
        .bind(uploader)
        .bind(&filename)
        .bind(size as i64)
        .bind(&mime_type)
        .bind(&sha256)
        .execute(app.store.pool())
        .await?;
        let info = FileInfo {
            url: format!("/v1/files/{file_id}"),
            file_id: file_id.to_string(),
            filename,
            size: size as i64,
            mime_type,
            sha256,
        };
        tracing::info!(file_id = %info.file_id, size, mime = %info.mime_type, "file uploaded");
        return Ok((StatusCode::CREATED, Json(info)));
    }
}

fn multipart_error(message: &str, max: u64) -> CommandError {
    if message.contains("length limit") || message.contains("too large") {
        CommandError::TooLarge(format!("files are limited to {max} bytes"))
    } else {
        CommandError::invalid(format!("malformed multipart body: {message}"))
    }
}

/// Streams one field to a temporary file, then moves it into place. Returns size, SHA-256
/// (hex) and the sniffed type.
async fn store_field(
    store: &FileStore,
    file_id: Uuid,
    mut field: axum::extract::multipart::Field<'_>,
) -> Result<(u64, String, String), CommandError> {
    let io = |e: std::io::Error| CommandError::Internal(format!("file store: {e}"));
    let tmp = store.dir.join("tmp").join(file_id.simple().to_string());
    let mut out = tokio::fs::File::create(&tmp).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    let mut size = 0u64;
    let outcome: Result<(), CommandError> = async {
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| multipart_error(&e.to_string(), store.max_bytes()))?
        {
            size += chunk.len() as u64;
            if size > store.max_bytes() {
                return Err(CommandError::TooLarge(format!(
                    "files are limited to {} bytes",
                    store.max_bytes()
                )));
            }
            if head.len() < SNIFF_BYTES {
                let take = (SNIFF_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        out.sync_all().await.map_err(io)?;
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    let complete = size as usize <= SNIFF_BYTES;
    let mime = sniff(&head, complete);
    let target = store.path_of(&file_id);
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    tokio::fs::rename(&tmp, &target).await.map_err(io)?;
    Ok((size, hex(&hasher.finalize()), mime))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves attachment ids for a post: each must be a file the poster uploaded.
pub async fn resolve_attachments(
    app: &AppState,
    uploader: &str,
    file_ids: &[String],
) -> Result<Vec<FileInfo>, CommandError> {
    const MAX_ATTACHMENTS: usize = 10;
    if file_ids.len() > MAX_ATTACHMENTS {
        return Err(CommandError::invalid(format!(
            "at most {MAX_ATTACHMENTS} attachments per message"
        )));
    }
    let uploader = Uuid::parse_str(uploader)
        .map_err(|_| CommandError::Auth(platform::auth::AuthError::Invalid))?;
    let mut files = Vec::with_capacity(file_ids.len());
    for raw in file_ids {
        let id = Uuid::parse_str(raw)
            .map_err(|_| CommandError::invalid(format!("attachments: {raw:?} is not a file id")))?;
        if files.iter().any(|f: &FileInfo| f.file_id == id.to_string()) {
            return Err(CommandError::invalid("attachments: the same file twice"));
        }
        let row = sqlx::query("SELECT filename, size, mime_type, sha256 FROM files WHERE id = $1 AND uploader_id = $2")
            .bind(id)
            .bind(uploader)
            .fetch_optional(app.store.pool())
            .await?
            .ok_or_else(|| CommandError::invalid(format!("attachments: unknown file {id}")))?;
        files.push(FileInfo {
            file_id: id.to_string(),
            filename: row.get(0),
            size: row.get(1),
            mime_type: row.get(2),
            sha256: row.get(3),
            url: format!("/v1/files/{id}"),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_reduced_to_a_safe_base_name() {
        assert_eq!(clean_filename(Some("../../etc/passwd")), "passwd");
        assert_eq!(clean_filename(Some("C:\\Users\\me\\cat.png")), "cat.png");
        assert_eq!(clean_filename(Some("a\u{0}b\nc.txt")), "abc.txt");
        assert_eq!(clean_filename(Some("..")), "file");
        assert_eq!(clean_filename(None), "file");
        assert_eq!(clean_filename(Some(&"x".repeat(300))).chars().count(), 255);
    }

    #[test]
    fn types_come_from_the_bytes() {
        let png = [
            0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, b'I', b'H', b'D', b'R',
        ];
        assert_eq!(sniff(&png, true), "image/png");
        assert_eq!(sniff(b"%PDF-1.7\n", true), "application/pdf");
        assert_eq!(sniff("héllo wörld".as_bytes(), true), "text/plain");
        assert_eq!(sniff(&[0, 1, 2, 3, 255], true), "application/octet-stream");
        // A head that ends inside a multi-byte character is still text.
        let text = "é".repeat(10);
        assert_eq!(sniff(&text.as_bytes()[..19], false), "text/plain");
    }
}
