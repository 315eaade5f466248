-- Providers added with the CLI or the admin API (environment providers are never stored).
-- key_token is the vault's encrypted value (v1:<key id>:<data>), bound to this row's id and
-- name; key_hint is only the last 4 characters, for display.
CREATE TABLE providers (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    base_url    TEXT NOT NULL,
    models      TEXT NOT NULL DEFAULT '[]',         -- JSON array of model names or prefixes
    api_version TEXT,
    key_token   TEXT,
    key_hint    TEXT,
    created_at  TEXT NOT NULL,                      -- UTC ISO-8601
    updated_at  TEXT NOT NULL
);
