ALTER TABLE refresh_tokens
    DROP COLUMN IF EXISTS session_expires_at,
    DROP COLUMN IF EXISTS successor_hash;
