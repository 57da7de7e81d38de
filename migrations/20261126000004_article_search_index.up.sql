-- no-transaction
-- Expand: the GIN index searches use, built without blocking writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS articles_search_idx ON articles USING gin (search);
