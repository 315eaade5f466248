-- Each indexed body names its search row (issue 18, retention at scale). trace_search is FTS5,
-- which cannot look its trace_id column up: the delete trigger's `WHERE trace_id = …` read the
-- whole index for every body deleted — with 20,000 bodies a retention step of 500 held the
-- writer for 15 s, with a million for hours. The writer now chooses each search row's rowid and
-- stores it in trace_bodies.search_rowid; the trigger deletes by it (a lookup).
-- Linking the bodies already stored reads the index once and looks each body up by its key
-- (store/traces.py link_search_rows runs the same two statements after a move into SQLite); search rows no body names (a
-- duplicate, or a body that left without its row) go.
ALTER TABLE trace_bodies ADD COLUMN search_rowid INTEGER;
UPDATE trace_bodies SET search_rowid = s.rowid FROM (SELECT rowid, trace_id FROM trace_search) AS s
WHERE s.trace_id = trace_bodies.trace_id;
DELETE FROM trace_search WHERE rowid NOT IN (SELECT search_rowid FROM trace_bodies WHERE search_rowid IS NOT NULL);
DROP TRIGGER trace_bodies_leave_search;
CREATE TRIGGER trace_bodies_leave_search AFTER DELETE ON trace_bodies WHEN old.search_rowid IS NOT NULL BEGIN
    DELETE FROM trace_search WHERE rowid = old.search_rowid;
END;
