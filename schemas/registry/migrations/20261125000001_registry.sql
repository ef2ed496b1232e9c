-- Schemas are global: the same schema text under several subjects has one id, as in Confluent.
CREATE TABLE IF NOT EXISTS schemas (
    id          SERIAL PRIMARY KEY,
    schema_type TEXT NOT NULL DEFAULT 'AVRO',
    -- Canonical JSON (sorted keys, no whitespace); what GET answers and what is fingerprinted.
    schema_text TEXT NOT NULL,
    -- sha256 of schema_text: the identity of a schema (a b-tree on the text itself would fail
    -- for schemas larger than a index page).
    fingerprint BYTEA NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS subject_versions (
    subject    TEXT NOT NULL,
    version    INTEGER NOT NULL CHECK (version > 0),
    schema_id  INTEGER NOT NULL REFERENCES schemas (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, version),
    UNIQUE (subject, schema_id)
);

-- Compatibility level per subject; the row with subject '' is the global default.
CREATE TABLE IF NOT EXISTS compatibility_config (
    subject       TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL
);
