-- The revocation keeper reads the sessions revoked recently, every second.
CREATE INDEX IF NOT EXISTS idx_sessions_revoked ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
