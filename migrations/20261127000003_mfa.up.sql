-- Expand: multi-factor authentication with TOTP (RFC 6238).
-- `user_totp`: one authenticator per user; enrolment is pending until confirmed with a
-- first code. `last_step` is the newest time step a code was accepted for: a code is
-- accepted only for a later step, so none can be replayed within its window.
CREATE TABLE user_totp (
    user_id      uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret       bytea NOT NULL,
    confirmed_at timestamptz,
    last_step    bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Single-use recovery codes, stored as SHA-256 (80 random bits each: a slow hash would
-- add nothing against guessing, and guesses are throttled).
CREATE TABLE mfa_recovery_codes (
    user_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash bytea NOT NULL,
    used_at   timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

-- A sign-in that passed the password and waits for the second factor. The token is
-- stored as SHA-256, spent by the first right code, and dies after a few wrong ones.
CREATE TABLE mfa_challenges (
    token_hash bytea PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    attempts   integer NOT NULL DEFAULT 0
);
CREATE INDEX mfa_challenges_expiry_idx ON mfa_challenges (expires_at);
