-- PostgreSQL twin of ../0021_media_output_price.sql.
-- The rate of output tokens that are images or audio (Gemini's image models: their image output
-- tokens, reported apart in usageMetadata.candidatesTokensDetails), in µ¢ per 1M tokens; NULL =
-- the output rate. The output side of media_input_uc (0006).
ALTER TABLE price_overrides ADD COLUMN media_output_uc BIGINT CHECK (media_output_uc IS NULL OR media_output_uc >= 0);
