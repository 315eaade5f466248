-- PostgreSQL twin of ../0031_served_mode.sql.
-- The mode that served a request, as its answer said it (stockyard.pricing.MODES): OpenAI's
-- service_tier (priority, flex), Claude's fast mode and US-only inference (fast, us, fast/us), or a
-- mode no price names (scale). NULL for the standard mode and for rows kept before this version.
-- The trace's cost is at that mode's price (stockyard.billing.Pricer.billed_price).
ALTER TABLE traces ADD COLUMN served_mode TEXT;
