-- no-transaction
-- Expand: the admin list of users pages by creation time, newest first.
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_created_idx ON users (created_at DESC, id DESC);
