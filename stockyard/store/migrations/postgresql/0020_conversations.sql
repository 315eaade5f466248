-- PostgreSQL twin of ../0020_conversations.sql.
-- OpenAI's Conversations API (/v1/conversations…), served by Stockyard for every provider
-- (stockyard.conversations_api): a conversation is a list of Responses items that a
-- /v1/responses request naming it (``conversation``) gets in front of its input, and that the
-- answer's input and output items are appended to. Scoped to the client key that made it, as a
-- stored response is; retention deletes it once it has not changed for as long as stored
-- responses are kept (STOCKYARD_RETENTION_RESPONSES), its items with it.
CREATE TABLE conversations (
    id          TEXT PRIMARY KEY,                  -- conv_…: minted by Stockyard
    key_id      TEXT,                              -- the client key that created it; NULL in open mode
    created_at  BIGINT NOT NULL,                  -- ms since the epoch, UTC
    updated_at  BIGINT NOT NULL,                  -- ms: the last change (items added or deleted, metadata)
    metadata    TEXT NOT NULL DEFAULT '{}',        -- JSON object of strings
    next_seq    BIGINT NOT NULL DEFAULT 0,        -- the position the next item gets
    bytes       BIGINT NOT NULL DEFAULT 0         -- the items' JSON size, bounded like a request body
);
CREATE INDEX conversations_updated ON conversations (updated_at);

-- A conversation's items in order (seq), each its JSON (zlib-compressed); ids are unique within it.
CREATE TABLE conversation_items (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL,
    id              TEXT NOT NULL,
    bytes           BIGINT NOT NULL,
    item            BYTEA NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
CREATE INDEX conversation_items_id ON conversation_items (conversation_id, id);
