-- Expand: sessions get an absolute lifetime, and a spent refresh token remembers its
-- successor (as a hash) so a concurrent refresh from a second tab can be answered with
-- the same successor instead of being taken for theft. Nullable: rows written by the
-- previous release (and by it during the rollout) simply have no absolute limit.
ALTER TABLE refresh_tokens
    ADD COLUMN session_expires_at timestamptz,
    ADD COLUMN successor_hash bytea;
