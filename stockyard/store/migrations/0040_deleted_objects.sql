-- What a key deleted through Stockyard, kept a day as that key's list cursors (files_api.Ownership.forget,
-- ConversationStore.delete_item). The SDKs page on from the last object a page gave (``after``,
-- ``after_id``, ``before_id``), which a client deleting each object as it lists them has deleted:
-- without this its next page named an id no longer the key's, and the walk ended at the first page.
-- Nothing else reads it: a deleted object is not the key's to open, count, hold or bill
-- (``owned_objects`` loses its row as before), and another key's cursor is no one's still.
-- Rows older than a day are no cursor; each delete removes up to a hundred of them (deleted_at's index).
CREATE TABLE deleted_objects (
    id          TEXT NOT NULL,                    -- the object's id as its list names it
    kind        TEXT NOT NULL,                    -- its owned_objects kind; 'conversation_item'
    key_id      TEXT NOT NULL,                    -- who deleted it (its owner); '' in open mode
    place       TEXT NOT NULL,                    -- the provider's name; a conversation item's conversation id
    seq         INTEGER,                          -- a conversation item's place in its conversation
    deleted_at  INTEGER NOT NULL,                 -- ms since the epoch, UTC
    PRIMARY KEY (kind, place, id)
);
CREATE INDEX deleted_objects_age ON deleted_objects (deleted_at);
