-- Expand: refresh tokens written before sessions had an absolute lifetime (NULL
-- session_expires_at) could be refreshed forever. Each such session now ends when its
-- current token does (the latest moment the policy could have allowed without a limit);
-- the server also treats a NULL end as already past, so a row an old binary writes during
-- a rollout cannot refresh either.
UPDATE refresh_tokens SET session_expires_at = expires_at WHERE session_expires_at IS NULL;
