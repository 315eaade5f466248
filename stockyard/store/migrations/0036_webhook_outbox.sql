-- Webhook events not yet attempted (stockyard.webhooks): written as an event is emitted, one row per
-- webhook it goes to, and removed in the write of its first delivery-log row (which keeps a copy to
-- resume from while a retry or a resumed attempt is pending). A server that starts after a crash sends
-- the rows left (Dispatcher._resume, claim_outbox), so an event queued in memory at the crash arrives.
CREATE TABLE webhook_outbox (
    webhook_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (webhook_id, event_id)
);
CREATE INDEX webhook_outbox_created ON webhook_outbox (created_at);
