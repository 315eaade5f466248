-- The end user the request that made an object named (``attribution``: the ``user`` field or the
-- X-Stockyard-User header), kept with a video or a background response billed later, so its bill
-- names that user whether or not an end user's budget held it (``held_user`` is that budget's scope,
-- set only then). NULL: none named, or made before this column (its bill then names the user of
-- ``held_user``, as before).
ALTER TABLE owned_objects ADD COLUMN end_user TEXT;
