-- Expand: roles and disabled accounts (`/api/admin/*`, `stoa-api admin`).
-- Both columns are added without rewriting the table (a constant default is stored in the
-- catalogue), and the previous release's inserts still succeed. The check is NOT VALID:
-- it holds for every new or updated row at once, and every existing row has the default
-- 'user', so validating it (a full scan) would prove nothing.
ALTER TABLE users
    ADD COLUMN role text NOT NULL DEFAULT 'user',
    ADD COLUMN disabled_at timestamptz;
ALTER TABLE users
    ADD CONSTRAINT users_role_known CHECK (role IN ('user', 'admin')) NOT VALID;
