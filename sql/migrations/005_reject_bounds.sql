-- 005: rejects keep a bounded prefix of a bad message (REJECT_PAYLOAD_PREFIX_BYTES);
-- the size of the whole message is recorded beside its SHA-256.
-- Additive: a nullable column, so an instance of the previous version keeps inserting
-- rows without it (NULL: the payload column holds the whole message). Retention
-- (REJECT_RETENTION_DAYS) deletes by created_at through idx_ingest_rejects_created_at,
-- which 002 created.
ALTER TABLE ingest_rejects ADD COLUMN IF NOT EXISTS payload_bytes integer;
COMMENT ON COLUMN ingest_rejects.payload_bytes IS
    'size of the whole message; payload holds its first REJECT_PAYLOAD_PREFIX_BYTES (NULL: payload is the whole message)';
