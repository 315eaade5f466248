-- PostgreSQL's budget_leases gets a generation (its 0037); SQLite has no such table (0014): nothing here.
SELECT 1;
