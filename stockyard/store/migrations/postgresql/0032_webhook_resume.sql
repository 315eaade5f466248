-- PostgreSQL twin of ../0032_webhook_resume.sql.
-- Webhook deliveries a stopped or crashed server left are sent again by the next one (stockyard.webhooks,
-- Dispatcher._resume): a row logged ``abandoned`` (a stop) or ``retrying`` (then no later row: a crash
-- during the backoff) carries the event as sent, and the server that resumes it clears that copy in the
-- same statement that claims it (so two servers starting at once send it once).
ALTER TABLE webhook_deliveries ADD COLUMN event_json TEXT;
CREATE INDEX webhook_deliveries_resumable ON webhook_deliveries (ts) WHERE event_json IS NOT NULL;
