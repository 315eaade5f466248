-- Full-text search over stored bodies, and webhooks with their delivery log.
--
-- trace_search holds the text of each stored body (as stored: redacted, capped), written by
-- the writer in the same transaction as the body. Bodies are compressed in trace_bodies, so
-- the index keeps its own copy of the text; a body that leaves (retention, the trace deleted)
-- leaves the index through the trigger below. Bodies stored before this version are not indexed.
CREATE VIRTUAL TABLE trace_search USING fts5(
    trace_id UNINDEXED,
    body,
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER trace_bodies_leave_search AFTER DELETE ON trace_bodies BEGIN
    DELETE FROM trace_search WHERE trace_id = old.trace_id;
END;

-- Webhooks: where events go. The URL (a Slack webhook URL is itself a credential) and the
-- signing secret are vault tokens bound to the row's id; only the URL's scheme and host are
-- kept in clear. The thresholds belong to the webhook (events are checked per webhook).
CREATE TABLE webhooks (
    id                 TEXT PRIMARY KEY,           -- wh_<hex>
    url_hint           TEXT NOT NULL,              -- scheme://host[:port]/… as listings show it
    url_token          TEXT NOT NULL,              -- vault token of the whole URL, bound to id
    events             TEXT NOT NULL,              -- JSON array of event names
    format             TEXT NOT NULL DEFAULT 'json' CHECK (format IN ('json', 'slack')),
    secret_token       TEXT NOT NULL,              -- vault token (AES-256-GCM), bound to id
    expiry_days        INTEGER NOT NULL DEFAULT 7, -- key.expiring: keys expiring within this many days
    error_rate_percent INTEGER NOT NULL DEFAULT 20,-- error_rate.high: errors at or over this share ...
    error_window_min   INTEGER NOT NULL DEFAULT 5, -- ... of the requests in this many minutes ...
    error_min_requests INTEGER NOT NULL DEFAULT 20,-- ... once there are at least this many
    created_at         TEXT NOT NULL
);

-- One row per delivery attempt. No foreign key: the log outlives a removed webhook.
CREATE TABLE webhook_deliveries (
    id          INTEGER PRIMARY KEY,
    webhook_id  TEXT NOT NULL,
    event_id    TEXT NOT NULL,                     -- evt_…: the same on every retry (receivers dedupe on it)
    event       TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    ts          TEXT NOT NULL,                     -- UTC ISO-8601
    status      INTEGER,                           -- the receiver's HTTP status; NULL when none came
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    outcome     TEXT NOT NULL                      -- delivered, retrying, failed
);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (webhook_id, event_id);

-- Latency histograms per minute for answered requests (no extra attempts): percentiles over any
-- range without reading traces. Bucket b holds latencies in [1.1^b, 1.1^(b+1)) microseconds,
-- so a percentile read from it is within 10%. Rows age out with the traces' age limit.
CREATE TABLE latency_minutes (
    minute INTEGER NOT NULL,                       -- ms since the epoch // 60000, UTC
    bucket INTEGER NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (minute, bucket)
) WITHOUT ROWID;

-- Bodies stored before this version are indexed after it, a batch at a time, by an idle task of
-- the writer (store/traces.backfill_search): up to this trace id, remembered here until done.
INSERT INTO meta (key, value)
SELECT 'search_backfill_until', max(trace_id) FROM trace_bodies HAVING max(trace_id) IS NOT NULL;
