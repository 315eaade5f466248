-- The search index keeps no copy of the text (issue 18): FTS5 kept every body a second time,
-- uncompressed, beside its words — for a ~100 KB agent body the largest part of what a trace adds
-- to the file, and a fifth of the proxy's CPU per request (bench/README.md, "Agent bodies").
-- A contentless table (content='') keeps the words only. FTS5 can take a row out of it only when
-- told the text it indexed: the delete trigger rebuilds that text from the stored body with
-- stockyard_search_text (store/search.py, registered on every connection Stockyard opens). Such a
-- table cannot be scanned (columnsize = 0): search finds rowids by MATCH and joins the bodies by
-- search_rowid (indexed here); the next rowid follows the highest a body names or the index ever gave
-- out (meta search_rowid_last: a rowid is never given twice, store/search.index_linked).
-- Rebuilt from the stored bodies, not from the old copy, so every row's words are exactly what
-- the trigger will hand back: about a minute of CPU per million bodies of ~2 KB.
DROP TRIGGER trace_bodies_leave_search;
DROP TABLE trace_search;
CREATE VIRTUAL TABLE trace_search USING fts5(
    trace_id UNINDEXED,
    body,
    content = '',
    tokenize = 'unicode61 remove_diacritics 2',
    detail = none,
    columnsize = 0
);
CREATE INDEX trace_bodies_search_row ON trace_bodies (search_rowid);
INSERT INTO trace_search (rowid, body)
SELECT search_rowid, stockyard_search_text(request, response) FROM trace_bodies WHERE search_rowid IS NOT NULL;
CREATE TRIGGER trace_bodies_leave_search AFTER DELETE ON trace_bodies WHEN old.search_rowid IS NOT NULL BEGIN
    INSERT INTO trace_search (trace_search, rowid, trace_id, body)
    VALUES ('delete', old.search_rowid, old.trace_id, stockyard_search_text(old.request, old.response));
END;
