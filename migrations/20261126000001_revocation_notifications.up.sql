-- Expand: every committed revocation is announced on the `stoa_revocations` channel, so
-- each replica's local denylist stays current without Redis (LISTEN/NOTIFY; see
-- api-server/src/auth/pg_feed.rs). NOTIFY is transactional: the message goes out when
-- the revoking transaction commits and never if it rolls back, whichever release wrote it.
-- Payloads: `j <jti> <expires_at, unix s>` and `f <family> <revoked_at, unix s>`; PostgreSQL
-- folds identical messages of one transaction (a family's rows revoked together: one).
CREATE FUNCTION stoa_announce_revoked_token() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stoa_revocations',
        format('j %s %s', NEW.jti, floor(extract(epoch FROM NEW.expires_at))::bigint));
    RETURN NULL;
END
$$;

CREATE TRIGGER revoked_tokens_announce AFTER INSERT ON revoked_tokens
    FOR EACH ROW EXECUTE FUNCTION stoa_announce_revoked_token();

CREATE FUNCTION stoa_announce_revoked_family() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stoa_revocations',
        format('f %s %s', NEW.family_id, floor(extract(epoch FROM NEW.revoked_at))::bigint));
    RETURN NULL;
END
$$;

CREATE TRIGGER refresh_tokens_announce_revoked AFTER UPDATE OF revoked_at ON refresh_tokens
    FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)
    EXECUTE FUNCTION stoa_announce_revoked_family();
