-- PostgreSQL twin of ../0040_deleted_objects.sql.
-- What a key deleted through Stockyard, kept a day as that key's list cursors (see the SQLite file).
CREATE TABLE deleted_objects (
    id          TEXT NOT NULL,                    -- the object's id as its list names it
    kind        TEXT NOT NULL,                    -- its owned_objects kind; 'conversation_item'
    key_id      TEXT NOT NULL,                    -- who deleted it (its owner); '' in open mode
    place       TEXT NOT NULL,                    -- the provider's name; a conversation item's conversation id
    seq         BIGINT,                           -- a conversation item's place in its conversation
    deleted_at  BIGINT NOT NULL,                  -- ms since the epoch, UTC
    PRIMARY KEY (kind, place, id)
);
CREATE INDEX deleted_objects_age ON deleted_objects (deleted_at);
