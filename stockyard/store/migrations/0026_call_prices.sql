-- Prices per call (unit 'call'): OpenAI's hosted tools, billed per call its usage does not count
-- (stockyard/toolfees.py: web search, file search); the rate is input_uc, in µ¢ per 1M calls.
-- SQLite cannot change a CHECK in place: the table is rebuilt with the same columns, in the same
-- order, and its rows.
CREATE TABLE price_overrides_new (
    model           TEXT PRIMARY KEY,              -- as in prices.json: 'gpt-4o' or 'groq/llama-3.3-70b'
    input_uc        INTEGER NOT NULL CHECK (input_uc >= 0),
    cached_input_uc INTEGER NOT NULL CHECK (cached_input_uc >= 0),
    cache_write_uc  INTEGER NOT NULL CHECK (cache_write_uc >= 0),
    output_uc       INTEGER NOT NULL CHECK (output_uc >= 0),
    reasoning_uc    INTEGER CHECK (reasoning_uc IS NULL OR reasoning_uc >= 0),  -- NULL = output rate
    updated_at      TEXT NOT NULL,
    unit            TEXT NOT NULL DEFAULT 'token' CHECK (unit IN ('token', 'image', 'second', 'character', 'call')),
    media_input_uc  INTEGER CHECK (media_input_uc IS NULL OR media_input_uc >= 0),
    media_output_uc INTEGER CHECK (media_output_uc IS NULL OR media_output_uc >= 0)
);
INSERT INTO price_overrides_new (model, input_uc, cached_input_uc, cache_write_uc, output_uc, reasoning_uc, updated_at, unit, media_input_uc, media_output_uc)
SELECT model, input_uc, cached_input_uc, cache_write_uc, output_uc, reasoning_uc, updated_at, unit, media_input_uc, media_output_uc FROM price_overrides;
DROP TABLE price_overrides;
ALTER TABLE price_overrides_new RENAME TO price_overrides;
