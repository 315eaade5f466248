-- OpenAI files and batches passed through to a provider, and who owns them.
-- Every file and batch belongs to the client key that created it (a batch's output and
-- error files to the batch's owner, once Stockyard sees them): another key gets 404, and
-- lists show only a key's own objects. Later calls on an object go to the provider recorded.
-- Rows stay until the object is deleted through Stockyard (retention leaves them: the object
-- lives on at the provider, and its owner must keep reaching it).
CREATE TABLE owned_objects (
    id          TEXT PRIMARY KEY,                 -- file-… or batch_…: the provider's id
    kind        TEXT NOT NULL,                    -- file | batch
    key_id      TEXT NOT NULL,                    -- the owner; '' in open mode (no client keys)
    provider    TEXT NOT NULL,                    -- the provider's name
    created_at  INTEGER NOT NULL,                 -- ms since the epoch, UTC
    billed      INTEGER NOT NULL DEFAULT 0        -- batch: its usage is recorded as a trace (once)
);
CREATE INDEX owned_objects_owner ON owned_objects (key_id, kind);
