DROP TRIGGER IF EXISTS refresh_tokens_announce_revoked ON refresh_tokens;
DROP FUNCTION IF EXISTS stoa_announce_revoked_family();
DROP TRIGGER IF EXISTS revoked_tokens_announce ON revoked_tokens;
DROP FUNCTION IF EXISTS stoa_announce_revoked_token();
