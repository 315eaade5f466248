-- PostgreSQL twin of ../0007_owned_objects.sql.
-- OpenAI files and batches passed through to a provider, and who owns them (see the SQLite file).
CREATE TABLE owned_objects (
    id          TEXT PRIMARY KEY,                 -- file-… or batch_…: the provider's id
    kind        TEXT NOT NULL,                    -- file | batch
    key_id      TEXT NOT NULL,                    -- the owner; '' in open mode (no client keys)
    provider    TEXT NOT NULL,                    -- the provider's name
    created_at  BIGINT NOT NULL,                  -- ms since the epoch, UTC
    billed      BIGINT NOT NULL DEFAULT 0         -- batch: its usage is recorded as a trace (once)
);
CREATE INDEX owned_objects_owner ON owned_objects (key_id, kind);
