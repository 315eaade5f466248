-- PostgreSQL twin of ../0022_failed_login_index.sql.
-- Failed admin logins by sender and time: the login throttle (stockyard.api.logins) counts a
-- sender's failures of the last minute here, in the transaction that audits the next one, so its
-- limit holds across the workers of one file and the replicas of one PostgreSQL database. Partial:
-- only these rows, a few a minute per sender, are indexed (their target is the sender).
CREATE INDEX audit_log_failed_logins ON audit_log (target, ts) WHERE action = 'admin.auth_failed';
