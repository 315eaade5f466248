-- Gemini Files API uploads in progress (stockyard.gemini_files): google-genai starts a resumable
-- upload, then sends the bytes to the URL the start answered. Stockyard answers with a URL of its
-- own carrying a random token; the row behind it says which key started the upload and where the
-- provider takes its bytes, so any replica can continue it. Gone when the upload is finalized,
-- and once expired (deleted by the next start).
CREATE TABLE gemini_uploads (
    token_hash  TEXT PRIMARY KEY,                 -- SHA-256 (hex) of the token in Stockyard's upload URL
    key_id      TEXT NOT NULL,                    -- the key that started it; '' in open mode
    provider    TEXT NOT NULL,                    -- the provider's name
    upload_path TEXT NOT NULL,                    -- the provider's upload URL: path and query at its origin
    created_at  INTEGER NOT NULL,                 -- ms since the epoch, UTC
    expires_at  INTEGER NOT NULL                  -- ms since the epoch, UTC
);
CREATE INDEX gemini_uploads_expiry ON gemini_uploads (expires_at);
