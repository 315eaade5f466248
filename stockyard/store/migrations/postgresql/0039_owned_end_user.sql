-- PostgreSQL twin of ../0039_owned_end_user.sql.
-- The end user the request that made an object named, kept with a video or a background response
-- billed later, so its bill names that user whether or not an end user's budget held it.
ALTER TABLE owned_objects ADD COLUMN end_user TEXT;
