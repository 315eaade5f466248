-- A conversation's item found by its id alone (the SQLite migration of the same number says why).
CREATE INDEX conversation_item_ids ON conversation_items (id);
