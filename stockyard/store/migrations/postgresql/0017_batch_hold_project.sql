-- The project a batch's hold counts against (migrations/0017_batch_hold_project.sql).
ALTER TABLE owned_objects ADD COLUMN held_project TEXT;
UPDATE owned_objects SET held_project = (SELECT project FROM client_keys WHERE client_keys.id = owned_objects.key_id)
WHERE held_uc > 0;
