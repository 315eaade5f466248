-- PostgreSQL twin of ../0008_attribution.sql.
-- Attribution: the end user, the tags and the key's name on every trace, and rollups by user and by tag.
-- Like rollups_daily, both rollups are written in the same transaction as each trace, so costs by
-- user or by tag equal the sum of the traces; budgets per end user read their spend from rollups_users.
ALTER TABLE traces ADD COLUMN end_user TEXT;          -- x-stockyard-user, OpenAI `user`, Anthropic metadata.user_id
ALTER TABLE traces ADD COLUMN tags TEXT;              -- JSON object of name → value; NULL when none
ALTER TABLE traces ADD COLUMN key_name TEXT;          -- the key's name when the request was made
CREATE INDEX traces_end_user ON traces (end_user, ts_ms) WHERE end_user IS NOT NULL;

CREATE TABLE rollups_users (
    day                TEXT NOT NULL,              -- YYYY-MM-DD, UTC
    key_id             TEXT NOT NULL DEFAULT '',
    project            TEXT NOT NULL DEFAULT '',
    end_user           TEXT NOT NULL DEFAULT '',   -- '' = no end user named
    requests           BIGINT NOT NULL DEFAULT 0,
    errors             BIGINT NOT NULL DEFAULT 0,
    prompt_tokens      BIGINT NOT NULL DEFAULT 0,
    completion_tokens  BIGINT NOT NULL DEFAULT 0,
    cached_tokens      BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens   BIGINT NOT NULL DEFAULT 0,
    cost_uc            BIGINT NOT NULL DEFAULT 0,
    unknown_cost       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key_id, project, end_user)
);
CREATE INDEX rollups_users_user_day ON rollups_users (end_user, day);

CREATE TABLE rollups_tags (
    day                TEXT NOT NULL,
    name               TEXT NOT NULL,              -- tag name
    value              TEXT NOT NULL,              -- tag value
    requests           BIGINT NOT NULL DEFAULT 0,
    errors             BIGINT NOT NULL DEFAULT 0,
    prompt_tokens      BIGINT NOT NULL DEFAULT 0,
    completion_tokens  BIGINT NOT NULL DEFAULT 0,
    cached_tokens      BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens   BIGINT NOT NULL DEFAULT 0,
    cost_uc            BIGINT NOT NULL DEFAULT 0,
    unknown_cost       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, name, value)
);
CREATE INDEX rollups_tags_name_day ON rollups_tags (name, day);
