-- A conversation's item found by its id alone: an ``item_reference`` naming an item Stockyard minted
-- the id of (``msg_sy…``), which no provider knows, is replaced by the item itself, found among the
-- conversations of the key that sent it (stockyard.conversations.Conversations.resolve_references).
CREATE INDEX conversation_item_ids ON conversation_items (id);
