-- The end users' rollups summed again two ways, written by the writer in the same transaction as
-- rollups_users (store/traces.RollupSums), so that a cost report by user over a long range reads a
-- few rows per user instead of one per user per day (issue 18, bench/README.md "End users'
-- rollups by month"):
--   rollups_users_months: per end user, month, key and project. A report by user (alone or with
--     key or project) over whole months, or all time, reads this table; any other range reads
--     rollups_users.
--   rollups_users_days: per day, every end user together. The per-day totals a top=N report by
--     day,user needs for its "(other)" rows, without sorting every user's rows by day.
-- Both are sums of rollups_users and never hold anything it does not; a refusal makes no row in
-- any of the three (context.is_refusal).

CREATE TABLE rollups_users_months (
    month              TEXT NOT NULL,              -- YYYY-MM, UTC
    key_id             TEXT NOT NULL DEFAULT '',
    project            TEXT NOT NULL DEFAULT '',
    end_user           TEXT NOT NULL DEFAULT '',   -- '' = no end user named
    requests           INTEGER NOT NULL DEFAULT 0,
    errors             INTEGER NOT NULL DEFAULT 0,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    cached_tokens      INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens   INTEGER NOT NULL DEFAULT 0,
    cost_uc            INTEGER NOT NULL DEFAULT 0,
    unknown_cost       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (end_user, month, key_id, project)
) WITHOUT ROWID;
INSERT INTO rollups_users_months (month, key_id, project, end_user, requests, errors, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, cost_uc, unknown_cost)
SELECT substr(day, 1, 7) AS m, key_id, project, end_user, SUM(requests), SUM(errors), SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(cost_uc), SUM(unknown_cost)
FROM rollups_users GROUP BY end_user, m, key_id, project ORDER BY end_user, m, key_id, project;

CREATE TABLE rollups_users_days (
    day                TEXT NOT NULL PRIMARY KEY,  -- YYYY-MM-DD, UTC
    requests           INTEGER NOT NULL DEFAULT 0,
    errors             INTEGER NOT NULL DEFAULT 0,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    cached_tokens      INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens   INTEGER NOT NULL DEFAULT 0,
    cost_uc            INTEGER NOT NULL DEFAULT 0,
    unknown_cost       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO rollups_users_days (day, requests, errors, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, cost_uc, unknown_cost)
SELECT day, SUM(requests), SUM(errors), SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(cost_uc), SUM(unknown_cost)
FROM rollups_users GROUP BY day ORDER BY day;
