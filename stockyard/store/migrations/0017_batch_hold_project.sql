-- The project a batch's hold counts against: its key's project when the batch started. A key
-- moved to another project while its batch runs leaves the hold where it was counted; the
-- batch's cost, billed later, counts where its key is then (as its trace row does). NULL: none.
ALTER TABLE owned_objects ADD COLUMN held_project TEXT;
UPDATE owned_objects SET held_project = (SELECT project FROM client_keys WHERE client_keys.id = owned_objects.key_id)
WHERE held_uc > 0;
