-- Expand: the admin audit log. Every admin action (API, console or command line) is a
-- row written in the same transaction as the change itself, naming the acting admin
-- (NULL from the command line, which any operator with database access can run), what
-- was done, to whom or what, and the reason given (required in the console for
-- removals).
CREATE TABLE admin_audit (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    admin_id   uuid REFERENCES users (id) ON DELETE SET NULL,
    -- Kept as it was, so the log still names an admin whose account is gone.
    admin_name text,
    action     text NOT NULL,
    -- The username, article slug or comment it was done to.
    subject    text NOT NULL,
    reason     text
);
CREATE INDEX admin_audit_action_idx ON admin_audit (action, id);
