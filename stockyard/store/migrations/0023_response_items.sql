-- The output item ids of the passed-through responses Stockyard keeps: the provider holds every
-- key's responses under the one provider key and resolves an ``item_reference`` (or a reasoning item
-- sent by its id alone) from any of them, so such an id is let through only for the key whose
-- response made it (stockyard.conversations: ``Conversations.check_stored_names``). The rows go with
-- their response (ON DELETE CASCADE): DELETE /v1/responses/{id} and retention.
CREATE TABLE response_items (
    item_id     TEXT PRIMARY KEY,                  -- msg_…, rs_…, fc_…: as the provider named it
    response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE
);
CREATE INDEX response_items_response ON response_items (response_id);
