//! Where an uploaded file's bytes live in the file store: `<dir>/<last 2 hex digits>/<id>`.
//! Shared because the commands tier writes there and query-api reads (a local directory here,
//! an object store with the same keys in production).

use std::path::{Path, PathBuf};

/// The path of `file_id` (a UUID) under `dir`; `None` when the id is not a UUID.
pub fn path_of(dir: &Path, file_id: &str) -> Option<PathBuf> {
    let id = uuid::Uuid::parse_str(file_id).ok()?.simple().to_string();
    Some(dir.join(&id[id.len() - 2..]).join(id))
}
