-- The user directory read model (from chat.user-events): who is who, for member lists.
CREATE TABLE IF NOT EXISTS users (
    user_id        UUID PRIMARY KEY,
    username       TEXT NOT NULL,
    display_name   TEXT,
    avatar_file_id TEXT,
    status_text    TEXT,
    registered_at  TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    -- UUID v7 of the last event applied: newer events (larger ids) only, so a redelivered
    -- old profile change never overwrites a newer one.
    last_event_id  UUID NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_directory_username ON users (username);

-- Partition checkpoints, written in the same transaction as the rows they cover.
CREATE TABLE IF NOT EXISTS checkpoints (
    topic     TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next      BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);
