-- What a background response holds against an end user's budget (the userlimits module's) until it is
-- billed, beside what it holds against its key's and project's (held_uc, held_project): the budget's
-- scope ('user:<within>|<user>', budgets.user_budget) and its worst case in µ¢ (0: none). Billing it
-- replaces the hold with its cost (under that user's name); a delete or the watch's horizon gives it back.
ALTER TABLE owned_objects ADD COLUMN held_user TEXT;
ALTER TABLE owned_objects ADD COLUMN held_user_uc INTEGER NOT NULL DEFAULT 0;
