-- Prices in units other than tokens (the media endpoints): per image, second of audio or character
-- of speech input; the rate is input_uc, in µ¢ per 1M units. media_input_uc prices the audio or
-- image input tokens of token-priced media models (NULL = the input rate).
ALTER TABLE price_overrides ADD COLUMN unit TEXT NOT NULL DEFAULT 'token'
    CHECK (unit IN ('token', 'image', 'second', 'character'));
ALTER TABLE price_overrides ADD COLUMN media_input_uc INTEGER CHECK (media_input_uc IS NULL OR media_input_uc >= 0);
