-- Models that clients name, served by one or more deployments (stockyard.deployments).
-- A model with deployments is routed by its strategy; other names route as before.
CREATE TABLE models (
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,        -- the model name clients send
    strategy         TEXT NOT NULL DEFAULT 'weighted',
    fallbacks        TEXT NOT NULL DEFAULT '[]',  -- JSON array of model names tried after every deployment
    context_fallback TEXT,                        -- the larger-context model for "context too long" errors
    created_at       TEXT NOT NULL,               -- UTC ISO-8601
    updated_at       TEXT NOT NULL
);

-- One place that serves a model: a provider, the model name sent to it, optionally its own key.
-- key_token is the vault's encrypted key bound to this row (id and "model/name"); key_hint
-- shows its last 4 characters. Rows of a removed model are removed with it (by the operation).
CREATE TABLE model_deployments (
    id             INTEGER PRIMARY KEY,
    model          TEXT NOT NULL,                 -- models.name
    name           TEXT NOT NULL,                 -- unique within the model
    provider       TEXT NOT NULL,                 -- a provider name (env or database)
    upstream_model TEXT NOT NULL,
    weight         INTEGER NOT NULL DEFAULT 1,
    priority       INTEGER NOT NULL DEFAULT 0,    -- lower first; higher only when all lower are unavailable
    rpm            INTEGER,                       -- requests per minute; NULL: no limit
    tpm            INTEGER,                       -- tokens per minute; NULL: no limit
    key_token      TEXT,
    key_hint       TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    UNIQUE (model, name)
);
