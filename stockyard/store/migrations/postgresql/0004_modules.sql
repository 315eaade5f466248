-- PostgreSQL twin of ../0004_modules.sql (the counting triggers in PL/pgSQL).
-- Modules: enabled state and options set by an operator (no row: the module's defaults),
-- and the cache module's answers with running totals (so bounding the cache never scans it).
CREATE TABLE modules (
    name       TEXT PRIMARY KEY,
    enabled    BIGINT NOT NULL,
    config     TEXT NOT NULL DEFAULT '{}',         -- JSON: only the options an operator set
    updated_at TEXT NOT NULL                       -- UTC ISO-8601
);

CREATE TABLE cache_entries (
    key          TEXT PRIMARY KEY,                 -- sha256 of the request, then ':json', ':sse' or ':sse+usage'
    created_at   BIGINT NOT NULL,                 -- ms since the epoch, UTC
    expires_at   BIGINT NOT NULL,
    size         BIGINT NOT NULL,                 -- bytes of body
    body         BYTEA NOT NULL,                    -- the answer exactly as the client got it
    content_type TEXT NOT NULL,
    usage        TEXT,                             -- JSON: the token usage of the original answer
    cost_uc      BIGINT                           -- what the original answer cost (µ¢); NULL if unknown
);
CREATE INDEX cache_entries_created ON cache_entries (created_at);
CREATE INDEX cache_entries_expires ON cache_entries (expires_at);

CREATE TABLE cache_stats (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    entries BIGINT NOT NULL,
    bytes   BIGINT NOT NULL
);
INSERT INTO cache_stats (id, entries, bytes) VALUES (1, 0, 0);
CREATE FUNCTION cache_entries_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE cache_stats SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 1;
    ELSE
        UPDATE cache_stats SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER cache_entries_added AFTER INSERT ON cache_entries FOR EACH ROW EXECUTE FUNCTION cache_entries_count();
CREATE TRIGGER cache_entries_removed AFTER DELETE ON cache_entries FOR EACH ROW EXECUTE FUNCTION cache_entries_count();
