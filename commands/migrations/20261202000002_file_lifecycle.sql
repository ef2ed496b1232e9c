-- When a post first named the file. Files no post named are collected after a grace period;
-- files stored before this column existed count as attached (never collected).
ALTER TABLE files ADD COLUMN IF NOT EXISTS attached_at TIMESTAMPTZ;
UPDATE files SET attached_at = created_at WHERE attached_at IS NULL AND created_at < now() - interval '1 minute';
CREATE INDEX IF NOT EXISTS idx_files_unattached ON files (created_at) WHERE attached_at IS NULL;
