-- What a batch holds against its owner's budgets until it is billed: its worst case (every
-- request as a budget reserves it, at the batch price), in µ¢, recorded when it is created under
-- a budget (0 without one). A new batch must fit beside the holds of every unbilled batch of its
-- key and project; a billed or deleted batch holds nothing.
ALTER TABLE owned_objects ADD COLUMN held_uc INTEGER NOT NULL DEFAULT 0;
