-- PostgreSQL twin of ../0003_keys.sql.
-- Client keys, project budgets, operator price overrides, budget warnings already given.
-- Money columns are integer micro-cents (µ¢, 10⁻⁸ USD); rates are µ¢ per 1,000,000 tokens.

CREATE TABLE client_keys (
    id            TEXT PRIMARY KEY,                -- key_<hex>: how keys are named everywhere else
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL,                   -- first 12 characters, e.g. sk-sy-ab12cd
    hash          TEXT NOT NULL UNIQUE,            -- SHA-256 hex of the whole key; the key itself is never stored
    project       TEXT,
    models        TEXT,                            -- JSON list of allowed models; NULL = any model
    expires_at    TEXT,                            -- UTC ISO-8601; NULL = never
    revoked_at    TEXT,
    budget_uc     BIGINT CHECK (budget_uc IS NULL OR budget_uc >= 0),
    budget_period TEXT CHECK (budget_period IN ('day', 'month', 'total')),
    rpm           BIGINT CHECK (rpm IS NULL OR rpm > 0),
    tpm           BIGINT CHECK (tpm IS NULL OR tpm > 0),
    created_at    TEXT NOT NULL,
    last_used_at  TEXT,
    rowid         BIGINT GENERATED ALWAYS AS IDENTITY,  -- insertion order, as SQLite's rowid
    CHECK ((budget_uc IS NULL) = (budget_period IS NULL))
);
-- A name picks one live key; a revoked key's name may be reused.
CREATE UNIQUE INDEX client_keys_live_name ON client_keys (name) WHERE revoked_at IS NULL;

CREATE TABLE project_budgets (
    project    TEXT PRIMARY KEY,
    budget_uc  BIGINT NOT NULL CHECK (budget_uc >= 0),
    period     TEXT NOT NULL CHECK (period IN ('day', 'month', 'total')),
    updated_at TEXT NOT NULL
);

CREATE TABLE price_overrides (
    model           TEXT PRIMARY KEY,              -- as in prices.json: 'gpt-4o' or 'groq/llama-3.3-70b'
    input_uc        BIGINT NOT NULL CHECK (input_uc >= 0),
    cached_input_uc BIGINT NOT NULL CHECK (cached_input_uc >= 0),
    cache_write_uc  BIGINT NOT NULL CHECK (cache_write_uc >= 0),
    output_uc       BIGINT NOT NULL CHECK (output_uc >= 0),
    reasoning_uc    BIGINT CHECK (reasoning_uc IS NULL OR reasoning_uc >= 0),  -- NULL = output rate
    updated_at      TEXT NOT NULL
);

-- One row per warning given, so each threshold warns once per budget period, restarts included.
CREATE TABLE budget_warnings (
    scope        TEXT NOT NULL,                    -- key:<id> or project:<name>
    period_start TEXT NOT NULL,                    -- YYYY-MM-DD, YYYY-MM or 'total'
    threshold    BIGINT NOT NULL,                 -- percent
    created_at   TEXT NOT NULL,
    PRIMARY KEY (scope, period_start, threshold)
);

-- Spend of one key or project in a period comes from the rollups, never from traces.
CREATE INDEX rollups_key_day ON rollups_daily (key_id, day);
CREATE INDEX rollups_project_day ON rollups_daily (project, day);
