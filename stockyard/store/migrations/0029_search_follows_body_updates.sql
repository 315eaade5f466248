-- A body changed in place takes its words in the search index with it: the old words out (the
-- text they came from rebuilt from the old body, as the delete trigger does), the new ones in under
-- the same search row. Stockyard never rewrites a stored body; this is for a change made by hand,
-- which the sqlite3 shell — lacking stockyard_search_text — now cannot make behind the index, as
-- it cannot delete a body (was: the UPDATE went through and the body's old words stayed searchable,
-- a secret scrubbed by hand among them). Erase a body with `stockyard traces --erase-body ID`.
CREATE TRIGGER trace_bodies_change_search AFTER UPDATE OF request, response ON trace_bodies
WHEN old.search_rowid IS NOT NULL BEGIN
    INSERT INTO trace_search (trace_search, rowid, trace_id, body)
    VALUES ('delete', old.search_rowid, old.trace_id, stockyard_search_text(old.request, old.response));
    INSERT INTO trace_search (rowid, trace_id, body)
    VALUES (old.search_rowid, old.trace_id, stockyard_search_text(new.request, new.response));
END;
