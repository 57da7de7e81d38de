-- Expand: security events kept for the admin console (api-server/src/auth/security_log.rs),
-- beside the counter `stoa_security_events_total`. Written in the background in batches;
-- the account, when the event has one; purged after STOA_SECURITY_EVENT_RETENTION.
CREATE TABLE security_events (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL,
    event   text NOT NULL,
    user_id uuid REFERENCES users (id) ON DELETE SET NULL
);
CREATE INDEX security_events_event_idx ON security_events (event, id);
CREATE INDEX security_events_user_idx ON security_events (user_id, id) WHERE user_id IS NOT NULL;
CREATE INDEX security_events_at_idx ON security_events (at);
