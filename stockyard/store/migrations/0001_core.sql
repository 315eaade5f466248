-- Core schema: settings, traces with their bodies apart, daily rollups, the audit chain.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE traces (
    id                  TEXT PRIMARY KEY,          -- time-sortable: tr_<ms hex><random>
    ts                  TEXT NOT NULL,             -- UTC ISO-8601 with milliseconds
    ts_ms               INTEGER NOT NULL,
    client_addr         TEXT,
    endpoint            TEXT NOT NULL,             -- chat, completions, embeddings, messages, count_tokens
    dialect             TEXT NOT NULL,             -- openai or anthropic: what the client spoke
    provider            TEXT,
    model               TEXT,                      -- as the client asked
    served_model        TEXT,                      -- as the provider answered
    stream              INTEGER NOT NULL DEFAULT 0,
    status              INTEGER NOT NULL,
    outcome             TEXT NOT NULL,             -- ok, upstream_error, error, rejected, client_disconnected, stream_broken
    latency_us          INTEGER NOT NULL,
    ttfb_us             INTEGER,
    prompt_tokens       INTEGER,
    completion_tokens   INTEGER,
    cached_tokens       INTEGER,
    cache_write_tokens  INTEGER,
    reasoning_tokens    INTEGER,
    usage_estimated     INTEGER NOT NULL DEFAULT 0,
    cost_uc             INTEGER,                   -- micro-cents; NULL when unknown
    cost_status         TEXT NOT NULL DEFAULT 'none', -- exact, estimate, unknown, none
    upstream_request_id TEXT,
    error_type          TEXT,
    error_message       TEXT,
    key_id              TEXT,
    project             TEXT,
    parent_id           TEXT,                      -- set on the extra attempts of a fallback/retry
    attempt             INTEGER NOT NULL DEFAULT 1,
    cache_hit           INTEGER NOT NULL DEFAULT 0,
    cost_saved_uc       INTEGER
);
CREATE INDEX traces_ts ON traces (ts_ms);
CREATE INDEX traces_key ON traces (key_id, ts_ms);
CREATE INDEX traces_parent ON traces (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE trace_bodies (
    trace_id           TEXT PRIMARY KEY REFERENCES traces (id) ON DELETE CASCADE,
    request            BLOB,                       -- zlib-compressed, capped
    response           BLOB,
    request_truncated  INTEGER NOT NULL DEFAULT 0,
    response_truncated INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE rollups_daily (
    day                TEXT NOT NULL,              -- YYYY-MM-DD, UTC
    key_id             TEXT NOT NULL DEFAULT '',
    project            TEXT NOT NULL DEFAULT '',
    provider           TEXT NOT NULL DEFAULT '',
    model              TEXT NOT NULL DEFAULT '',
    requests           INTEGER NOT NULL DEFAULT 0,
    errors             INTEGER NOT NULL DEFAULT 0,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    cached_tokens      INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens   INTEGER NOT NULL DEFAULT 0,
    cost_uc            INTEGER NOT NULL DEFAULT 0,
    unknown_cost       INTEGER NOT NULL DEFAULT 0,  -- requests whose cost could not be priced
    PRIMARY KEY (day, key_id, project, provider, model)
);

CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    ts        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    details   TEXT NOT NULL,                       -- canonical JSON
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL,
    mac       TEXT NOT NULL                        -- 'sha256' or 'hmac-sha256:<key id>'
);
