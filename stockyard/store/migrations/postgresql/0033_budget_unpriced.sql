-- PostgreSQL twin of ../0033_budget_unpriced.sql.
-- What budgets spent on answers whose cost is unknown (no price for the mode that served them): such an
-- answer spends its whole hold (modules/budget.spent_uc), which the rollups (known costs only) do not
-- hold. Written in the trace's transaction; a budget's spend loaded at a start (budgets.spent_uc) adds
-- it, so a restart does not forget it. One row per day, key, project and end user, as rollups_users.
CREATE TABLE budget_unpriced (
    day       TEXT NOT NULL,              -- YYYY-MM-DD, UTC
    key_id    TEXT NOT NULL DEFAULT '',
    project   TEXT NOT NULL DEFAULT '',
    end_user  TEXT NOT NULL DEFAULT '',   -- '' = no end user named
    spent_uc  BIGINT NOT NULL DEFAULT 0,  -- µ¢ spent beyond the known costs
    PRIMARY KEY (day, key_id, project, end_user)
);
