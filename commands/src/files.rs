//! `POST /v1/files`: uploads, stored before any message refers to them.
//!
//! The bytes are streamed to the file store while they are counted and hashed, so an upload
//! over the limit (or over the uploader's quota) is refused without ever being held in memory.
//! The type is sniffed from the bytes (magic numbers, then UTF-8 text), never taken from the
//! client's Content-Type. A partial upload never stays behind: its temporary file goes with the
//! request however it ends (an error, or a client that hung up, which drops the request), and
//! ones left by a crash are swept at start-up. An upload no post names within the grace period
//! is deleted ([`collect`]).

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
    quota_bytes: u64,
}

/// A partial upload's temporary file, removed when dropped unless it was moved into place.
struct Partial {
    path: PathBuf,
    kept: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl FileStore {
    pub async fn new(dir: PathBuf, max_bytes: u64, quota_bytes: u64) -> Result<Self, CommandError> {
        let io = |e: std::io::Error| {
            CommandError::Internal(format!("file store {}: {e}", dir.display()))
        };
        tokio::fs::create_dir_all(dir.join("tmp"))
            .await
            .map_err(io)?;
        // What a crash left half-written: no request is using it any more.
        let mut stale = tokio::fs::read_dir(dir.join("tmp")).await.map_err(io)?;
        while let Some(entry) = stale.next_entry().await.map_err(io)? {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
        Ok(Self {
            dir,
            max_bytes,
            quota_bytes,
        })
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
    let used = stored_bytes(app.store.pool(), uploader).await?;
    let room_left = store.quota_bytes.saturating_sub(used);
    if room_left == 0 {
        return Err(quota_exceeded(store.quota_bytes));
    }
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
        let info = store_field(store, file_id, field, room_left).await?;
        let (size, sha256, mime_type) = info;
        // Parallel uploads of one user are counted one after another here.
        let recorded: Result<bool, sqlx::Error> = async {
            let mut tx = app.store.pool().begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
                .bind(uploader)
                .execute(&mut *tx)
                .await?;
            let inserted = sqlx::query(
                "INSERT INTO files (id, uploader_id, filename, size, mime_type, sha256) \
                 SELECT $1, $2, $3, $4, $5, $6 \
                 WHERE (SELECT COALESCE(sum(size), 0) FROM files WHERE uploader_id = $2) + $4 <= $7",
            )
            .bind(file_id)
            .bind(uploader)
            .bind(&filename)
            .bind(size as i64)
            .bind(&mime_type)
            .bind(&sha256)
            .bind(store.quota_bytes as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            tx.commit().await?;
            Ok(inserted)
        }
        .await;
        if !matches!(recorded, Ok(true)) {
            let _ = tokio::fs::remove_file(store.path_of(&file_id)).await;
            recorded?;
            return Err(quota_exceeded(store.quota_bytes));
        }
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

fn quota_exceeded(quota: u64) -> CommandError {
    CommandError::QuotaExceeded(format!(
        "your stored files would exceed your quota of {quota} bytes; files no message shows are deleted after a day"
    ))
}

/// What `uploader`'s stored files add up to.
async fn stored_bytes(pool: &sqlx::PgPool, uploader: Uuid) -> Result<u64, CommandError> {
    let used: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(size), 0)::bigint FROM files WHERE uploader_id = $1",
    )
    .bind(uploader)
    .fetch_one(pool)
    .await?;
    Ok(used.max(0) as u64)
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
    room_left: u64,
) -> Result<(u64, String, String), CommandError> {
    let io = |e: std::io::Error| CommandError::Internal(format!("file store: {e}"));
    let tmp = store.dir.join("tmp").join(file_id.simple().to_string());
    let mut partial = Partial {
        path: tmp.clone(),
        kept: false,
    };
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
            if size > room_left {
                return Err(quota_exceeded(store.quota_bytes));
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
    outcome?;
    let complete = size as usize <= SNIFF_BYTES;
    let mime = sniff(&head, complete);
    let target = store.path_of(&file_id);
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    tokio::fs::rename(&tmp, &target).await.map_err(io)?;
    partial.kept = true;
    Ok((size, hex::encode(hasher.finalize()), mime))
}

/// Resolves attachment ids for a post: each must be a file the poster uploaded.
/// A post's `attachments` as file ids: at most ten, each once.
pub fn attachment_ids(raw: &[String]) -> Result<Vec<Uuid>, CommandError> {
    const MAX_ATTACHMENTS: usize = 10;
    if raw.len() > MAX_ATTACHMENTS {
        return Err(CommandError::invalid(format!(
            "at most {MAX_ATTACHMENTS} attachments per message"
        )));
    }
    let mut ids = Vec::with_capacity(raw.len());
    for text in raw {
        let id = Uuid::parse_str(text).map_err(|_| {
            let shown: String = text.chars().take(64).collect();
            CommandError::invalid(format!("attachments: {shown:?} is not a file id"))
        })?;
        if ids.contains(&id) {
            return Err(CommandError::invalid("attachments: the same file twice"));
        }
        ids.push(id);
    }
    Ok(ids)
}

pub async fn resolve_attachments(
    app: &AppState,
    uploader: &str,
    file_ids: &[Uuid],
) -> Result<Vec<FileInfo>, CommandError> {
    let uploader = Uuid::parse_str(uploader)
        .map_err(|_| CommandError::Auth(platform::auth::AuthError::Invalid))?;
    let mut files = Vec::with_capacity(file_ids.len());
    for &id in file_ids {
        // Marked attached before the post is written: a file a post may show is never collected.
        let row = sqlx::query(
            "UPDATE files SET attached_at = COALESCE(attached_at, now()) WHERE id = $1 AND uploader_id = $2 \
             RETURNING filename, size, mime_type, sha256",
        )
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

/// Deletes, every 30 s until `shutdown`, the uploads no post named within `grace`: their rows,
/// then their bytes. A post that names one after its row is gone is refused as naming an
/// unknown file.
pub async fn collect(
    store: FileStore,
    pool: sqlx::PgPool,
    grace: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
        }
        let gone: Result<Vec<Uuid>, sqlx::Error> = sqlx::query_scalar(
            "DELETE FROM files WHERE attached_at IS NULL \
             AND created_at < now() - make_interval(secs => $1) RETURNING id",
        )
        .bind(grace.as_secs_f64())
        .fetch_all(&pool)
        .await;
        match gone {
            Ok(ids) => {
                for id in &ids {
                    let _ = tokio::fs::remove_file(store.path_of(id)).await;
                }
                if !ids.is_empty() {
                    tracing::info!(count = ids.len(), "uploads no post named were deleted");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot collect unattached uploads; retrying"),
        }
    }
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
