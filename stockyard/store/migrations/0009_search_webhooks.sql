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
