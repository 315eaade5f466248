-- PostgreSQL twin of ../0029_search_follows_body_updates.sql. trace_search is a plain table here that
-- keeps its own text, which SQL cannot rebuild from a compressed body: a body changed in place leaves
-- the index (its old words, a secret scrubbed by hand among them, stay searchable no longer; its new
-- ones are not indexed). Stockyard never rewrites a stored body; erase one with
-- `stockyard traces --erase-body ID`.
CREATE TRIGGER trace_bodies_change_search AFTER UPDATE OF request, response ON trace_bodies FOR EACH ROW
    WHEN (OLD.request IS DISTINCT FROM NEW.request OR OLD.response IS DISTINCT FROM NEW.response)
    EXECUTE FUNCTION trace_bodies_leave_search();
