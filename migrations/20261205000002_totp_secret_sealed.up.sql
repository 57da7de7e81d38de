-- Expand: second-factor secrets encrypted at rest (api-server/src/auth/sealing.rs).
-- `sealed_secret` is `nonce || XChaCha20-Poly1305 ciphertext` under the MFA key
-- `secret_key_id` (a mounted Secret, not the database), bound to the user id. `secret`
-- (the clear form) is now only on rows from before this step: stoa-api seals them at
-- start-up and writes NULL there; a later contract step drops the column.
ALTER TABLE user_totp
    ALTER COLUMN secret DROP NOT NULL,
    ADD COLUMN sealed_secret bytea,
    ADD COLUMN secret_key_id text,
    ADD CONSTRAINT user_totp_secret_present CHECK (
        secret IS NOT NULL OR (sealed_secret IS NOT NULL AND secret_key_id IS NOT NULL));
