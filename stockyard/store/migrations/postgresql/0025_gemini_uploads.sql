-- PostgreSQL twin of ../0024_gemini_uploads.sql.
CREATE TABLE gemini_uploads (
    token_hash  TEXT PRIMARY KEY,                 -- SHA-256 (hex) of the token in Stockyard's upload URL
    key_id      TEXT NOT NULL,                    -- the key that started it; '' in open mode
    provider    TEXT NOT NULL,                    -- the provider's name
    upload_path TEXT NOT NULL,                    -- the provider's upload URL: path and query at its origin
    created_at  BIGINT NOT NULL,                  -- ms since the epoch, UTC
    expires_at  BIGINT NOT NULL                   -- ms since the epoch, UTC
);
CREATE INDEX gemini_uploads_expiry ON gemini_uploads (expires_at);
