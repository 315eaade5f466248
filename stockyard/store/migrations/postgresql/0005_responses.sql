-- PostgreSQL twin of ../0005_responses.sql.
-- The Responses API: providers that speak it, and the responses Stockyard keeps.
-- An openai-compatible provider marked responses = 1 gets /v1/responses passed through;
-- openai and azure always do; the other providers are translated (over Chat Completions).
ALTER TABLE providers ADD COLUMN responses BIGINT NOT NULL DEFAULT 0;

-- One row per stored response (``store`` not false), scoped to the client key that made it.
-- A passed-through response is only a mapping (the provider keeps its state): which provider
-- to ask for it, and who may. A translated one carries its own state: this turn's input
-- items, its output items and the response object (zlib-compressed JSON), so the next
-- turn's ``previous_response_id`` rebuilds the conversation from the chain of rows.
CREATE TABLE responses (
    id           TEXT PRIMARY KEY,                 -- resp_…: the id the client got
    key_id       TEXT,                             -- the client key that created it; NULL in open mode
    provider     TEXT NOT NULL,
    model        TEXT,
    created_at   BIGINT NOT NULL,                 -- ms since the epoch, UTC
    passthrough  BIGINT NOT NULL,                 -- 1: the provider holds the state
    previous_id  TEXT,                             -- previous_response_id of this turn
    input_items  BYTEA,                             -- translated only: zlib JSON array
    output_items BYTEA,
    response     BYTEA
);
CREATE INDEX responses_created ON responses (created_at);
