-- Expand: a spent refresh token remembers which client spent it (a SHA-256 of the
-- User-Agent, truncated to 16 bytes), so the reuse grace hands the successor only to the
-- same client, as a second tab of one browser is. NULL (spent by the previous release
-- during the rollout) cannot be compared and keeps the grace as before.
ALTER TABLE refresh_tokens ADD COLUMN spent_by bytea;
