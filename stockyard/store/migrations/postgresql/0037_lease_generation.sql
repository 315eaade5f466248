-- Each replica's lease of a budget period gets a generation, random, made when the lease row is made:
-- a hold reserved in a lease frees only that lease (stockyard.store.shared _SETTLE). A lease given back
-- as expired and made again by a later reservation is another lease; the earlier hold, settled after,
-- freed the later one's reservation from the ledger too (reserved_uc went below zero).
ALTER TABLE budget_leases ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
