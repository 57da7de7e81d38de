-- Expand: the admin console's sessions (api-server/src/http/console/). A browser holds
-- the token in an HttpOnly cookie; only its hash is stored. A session ends when idle for
-- STOA_CONSOLE_SESSION_IDLE or at `expires_at` (STOA_CONSOLE_SESSION_LIFETIME after
-- sign-in), whichever comes first, and with "sign out everywhere". Every form carries
-- the session's CSRF token.
CREATE TABLE console_sessions (
    token_hash   bytea PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX console_sessions_user_idx ON console_sessions (user_id);
