-- PostgreSQL twin of ../0011_replicas.sql.
-- Budget reservations shared by the replicas of one database (stockyard.store.shared).
-- Only PostgreSQL deployments write these rows: an SQLite file has one server, whose
-- ledger lives in memory; the tables exist here too so both stores have one schema.
-- One row per budget scope and period: spend so far and money held by requests in flight.
CREATE TABLE budget_ledger (
    scope       TEXT NOT NULL,                 -- key:<id>, project:<name>, user:<within>|<user>
    period_key  TEXT NOT NULL,                 -- 2026-12-03, 2026-12 or total
    spent_uc    BIGINT NOT NULL,
    reserved_uc BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, period_key)
);

-- What each replica holds in budget_ledger.reserved_uc, under a lease it renews while alive:
-- a replica that dies stops renewing, and any other replica gives its holds back.
CREATE TABLE budget_leases (
    scope       TEXT NOT NULL,
    period_key  TEXT NOT NULL,
    replica     TEXT NOT NULL,                 -- random id of one server process
    reserved_uc BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,              -- database clock, Unix milliseconds
    PRIMARY KEY (scope, period_key, replica)
);
CREATE INDEX budget_leases_expiry ON budget_leases (expires_ms);

-- Requests and tokens per rate-limit window (a key id, or an end user's window) and tenth of
-- a second of the database clock: the replicas' shared rpm/tpm windows (stockyard.store.shared).
CREATE TABLE rate_buckets (
    name     TEXT NOT NULL,
    tick     BIGINT NOT NULL,                  -- Unix time in tenths of a second
    requests BIGINT NOT NULL,
    tokens   BIGINT NOT NULL,
    PRIMARY KEY (name, tick)
);
CREATE INDEX rate_buckets_tick ON rate_buckets (tick);
