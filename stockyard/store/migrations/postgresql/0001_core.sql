-- PostgreSQL twin of ../0001_core.sql (same tables, PostgreSQL types).
-- Core schema: settings, traces with their bodies apart, daily rollups, the audit chain.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE traces (
    id                  TEXT PRIMARY KEY,          -- time-sortable: tr_<ms hex><random>
    ts                  TEXT NOT NULL,             -- UTC ISO-8601 with milliseconds
    ts_ms               BIGINT NOT NULL,
    client_addr         TEXT,
    endpoint            TEXT NOT NULL,             -- chat, completions, embeddings, messages, count_tokens
    dialect             TEXT NOT NULL,             -- openai or anthropic: what the client spoke
    provider            TEXT,
    model               TEXT,                      -- as the client asked
    served_model        TEXT,                      -- as the provider answered
    stream              BIGINT NOT NULL DEFAULT 0,
    status              BIGINT NOT NULL,
    outcome             TEXT NOT NULL,             -- ok, upstream_error, error, rejected, client_disconnected, stream_broken
    latency_us          BIGINT NOT NULL,
    ttfb_us             BIGINT,
    prompt_tokens       BIGINT,
    completion_tokens   BIGINT,
    cached_tokens       BIGINT,
    cache_write_tokens  BIGINT,
    reasoning_tokens    BIGINT,
    usage_estimated     BIGINT NOT NULL DEFAULT 0,
    cost_uc             BIGINT,                   -- micro-cents; NULL when unknown
    cost_status         TEXT NOT NULL DEFAULT 'none', -- exact, estimate, unknown, none
    upstream_request_id TEXT,
    error_type          TEXT,
    error_message       TEXT,
    key_id              TEXT,
    project             TEXT,
    parent_id           TEXT,                      -- set on the extra attempts of a fallback/retry
    attempt             BIGINT NOT NULL DEFAULT 1,
    cache_hit           BIGINT NOT NULL DEFAULT 0,
    cost_saved_uc       BIGINT
);
CREATE INDEX traces_ts ON traces (ts_ms);
CREATE INDEX traces_key ON traces (key_id, ts_ms);
CREATE INDEX traces_parent ON traces (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE trace_bodies (
    trace_id           TEXT PRIMARY KEY REFERENCES traces (id) ON DELETE CASCADE,
    request            BYTEA,                       -- zlib-compressed, capped
    response           BYTEA,
    request_truncated  BIGINT NOT NULL DEFAULT 0,
    response_truncated BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE rollups_daily (
    day                TEXT NOT NULL,              -- YYYY-MM-DD, UTC
    key_id             TEXT NOT NULL DEFAULT '',
    project            TEXT NOT NULL DEFAULT '',
    provider           TEXT NOT NULL DEFAULT '',
    model              TEXT NOT NULL DEFAULT '',
    requests           BIGINT NOT NULL DEFAULT 0,
    errors             BIGINT NOT NULL DEFAULT 0,
    prompt_tokens      BIGINT NOT NULL DEFAULT 0,
    completion_tokens  BIGINT NOT NULL DEFAULT 0,
    cached_tokens      BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens   BIGINT NOT NULL DEFAULT 0,
    cost_uc            BIGINT NOT NULL DEFAULT 0,
    unknown_cost       BIGINT NOT NULL DEFAULT 0,  -- requests whose cost could not be priced
    PRIMARY KEY (day, key_id, project, provider, model)
);

CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    ts        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    details   TEXT NOT NULL,                       -- canonical JSON
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL,
    mac       TEXT NOT NULL                        -- 'sha256' or 'hmac-sha256:<key id>'
);
