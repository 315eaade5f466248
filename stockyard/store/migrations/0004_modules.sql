-- Modules: enabled state and options set by an operator (no row: the module's defaults),
-- and the cache module's answers with running totals (so bounding the cache never scans it).
CREATE TABLE modules (
    name       TEXT PRIMARY KEY,
    enabled    INTEGER NOT NULL,
    config     TEXT NOT NULL DEFAULT '{}',         -- JSON: only the options an operator set
    updated_at TEXT NOT NULL                       -- UTC ISO-8601
);

CREATE TABLE cache_entries (
    key          TEXT PRIMARY KEY,                 -- sha256 of the request, then ':json', ':sse' or ':sse+usage'
    created_at   INTEGER NOT NULL,                 -- ms since the epoch, UTC
    expires_at   INTEGER NOT NULL,
    size         INTEGER NOT NULL,                 -- bytes of body
    body         BLOB NOT NULL,                    -- the answer exactly as the client got it
    content_type TEXT NOT NULL,
    usage        TEXT,                             -- JSON: the token usage of the original answer
    cost_uc      INTEGER                           -- what the original answer cost (µ¢); NULL if unknown
);
CREATE INDEX cache_entries_created ON cache_entries (created_at);
CREATE INDEX cache_entries_expires ON cache_entries (expires_at);

CREATE TABLE cache_stats (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    entries INTEGER NOT NULL,
    bytes   INTEGER NOT NULL
);
INSERT INTO cache_stats (id, entries, bytes) VALUES (1, 0, 0);
CREATE TRIGGER cache_entries_added AFTER INSERT ON cache_entries BEGIN
    UPDATE cache_stats SET entries = entries + 1, bytes = bytes + new.size WHERE id = 1;
END;
CREATE TRIGGER cache_entries_removed AFTER DELETE ON cache_entries BEGIN
    UPDATE cache_stats SET entries = entries - 1, bytes = bytes - old.size WHERE id = 1;
END;
