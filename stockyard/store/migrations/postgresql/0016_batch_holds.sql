-- What a batch holds against its owner's budgets until it is billed (migrations/0016_batch_holds.sql).
ALTER TABLE owned_objects ADD COLUMN held_uc BIGINT NOT NULL DEFAULT 0;
