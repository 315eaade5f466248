-- PostgreSQL twin of ../0026_call_prices.sql.
-- Prices per call (unit 'call'): OpenAI's hosted tools, billed per call its usage does not count
-- (stockyard/toolfees.py: web search, file search); the rate is input_uc, in µ¢ per 1M calls.
ALTER TABLE price_overrides DROP CONSTRAINT IF EXISTS price_overrides_unit_check;
ALTER TABLE price_overrides ADD CONSTRAINT price_overrides_unit_check
    CHECK (unit IN ('token', 'image', 'second', 'character', 'call'));
