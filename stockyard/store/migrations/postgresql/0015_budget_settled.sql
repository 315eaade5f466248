-- PostgreSQL twin of ../0015_budget_settled.sql.
-- The settlement steps the replicas' shared budget ledger has applied (stockyard.store.shared):
-- each step's statement inserts its id here as it changes budget_ledger, so a retry of a step
-- whose commit reached the database but whose answer was lost finds its id and changes nothing.
-- Ids are ordered by the time they were made (their first 48 bits are Unix milliseconds, as in
-- UUIDv7): the lease keeper deletes those older than a day by a range of the primary key, and no
-- second index costs the settlements anything.
CREATE TABLE budget_settled (
    id UUID PRIMARY KEY
);
