-- The replicas' shared budget and rate-limit tables of 0011 (budget_ledger, budget_leases,
-- rate_buckets) go from SQLite: only PostgreSQL's replicas use them (stockyard.store.shared).
-- An SQLite file has one server, or one `serve --workers` group whose budgets and rate windows
-- live in the parent's memory (stockyard.groupstate); nothing here ever wrote a row to them,
-- and `migrate-store` and `backup` never copy them (store/move.py SKIP).
DROP TABLE budget_ledger;
DROP TABLE budget_leases;
DROP TABLE rate_buckets;
