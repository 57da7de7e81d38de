-- Back to clear secrets is not possible without the key: refuse while sealed rows exist,
-- rather than losing every enrolment.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM user_totp WHERE secret IS NULL) THEN
        RAISE EXCEPTION 'user_totp holds sealed secrets; unsealing needs the MFA key (reset MFA for those users first)';
    END IF;
END $$;
ALTER TABLE user_totp
    DROP CONSTRAINT user_totp_secret_present,
    DROP COLUMN secret_key_id,
    DROP COLUMN sealed_secret,
    ALTER COLUMN secret SET NOT NULL;
