-- PostgreSQL twin of ../0024_cache_tokens.sql.
-- The tokens a Gemini context cache (kind cached_content) holds, as the provider's answer to its
-- create (or a later retrieve) states them: usageMetadata.totalTokenCount. Every generateContent
-- naming the cache is billed them as cached input, which its body does not show, so a budget holds
-- them (stockyard.files_api: Ownership.check_cached_content). NULL: not known (a cache recorded
-- before this column, or an answer without the count): a budgeted key may not use it until known.
ALTER TABLE owned_objects ADD COLUMN tokens BIGINT CHECK (tokens IS NULL OR tokens >= 0);
