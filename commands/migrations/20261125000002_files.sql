-- Uploaded files: metadata here, bytes in the file store (a directory locally, an object store
-- in production). A file becomes visible to a room when a message shares it there
-- (AttachmentUploaded on chat.room-events); until then only its uploader may use it.
CREATE TABLE IF NOT EXISTS files (
    id          UUID PRIMARY KEY,
    uploader_id UUID NOT NULL,
    filename    TEXT NOT NULL,
    size        BIGINT NOT NULL CHECK (size >= 0),
    mime_type   TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_files_uploader ON files (uploader_id, created_at);
