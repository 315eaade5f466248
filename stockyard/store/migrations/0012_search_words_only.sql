-- The search index keeps which bodies hold each word, no more (issue 18): search asks only
-- "is every word of the text in the stored body" (store/traces.search_query: no phrases, NEAR
-- or ranking), so the word positions (detail=full) and per-row sizes (columnsize) FTS5 kept
-- by default were written for nothing — about a third of the writer's time per trace.
-- The table keeps its own copy of the text, which the delete trigger needs (SQLite 3.40 has
-- no contentless_delete). Rebuilt from that copy at the upgrade: about a minute of CPU per
-- million stored bodies of ~2 KB (bench/README.md, "Writer and reports, issue 18").
DROP TRIGGER trace_bodies_leave_search;
ALTER TABLE trace_search RENAME TO trace_search_old;
CREATE VIRTUAL TABLE trace_search USING fts5(
    trace_id UNINDEXED,
    body,
    tokenize = 'unicode61 remove_diacritics 2',
    detail = none,
    columnsize = 0
);
INSERT INTO trace_search (trace_id, body) SELECT trace_id, body FROM trace_search_old;
DROP TABLE trace_search_old;
CREATE TRIGGER trace_bodies_leave_search AFTER DELETE ON trace_bodies BEGIN
    DELETE FROM trace_search WHERE trace_id = old.trace_id;
END;
