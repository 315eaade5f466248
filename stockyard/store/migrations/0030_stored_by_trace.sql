-- What a request stored for the Responses and Conversations APIs names the request's trace, so an
-- erase of the trace's bodies (`stockyard traces --erase-body`, DELETE /api/traces/{id}/body) erases
-- it too: the stored response (its input and output items) and the items its turn appended to a
-- conversation (stockyard.operations.stored). NULL for rows kept before this version, and for items
-- added through the Conversations API itself (delete those with DELETE /api/conversations/{id}).
ALTER TABLE responses ADD COLUMN trace_id TEXT;
CREATE INDEX responses_trace ON responses (trace_id) WHERE trace_id IS NOT NULL;
ALTER TABLE conversation_items ADD COLUMN trace_id TEXT;
CREATE INDEX conversation_items_trace ON conversation_items (trace_id) WHERE trace_id IS NOT NULL;
