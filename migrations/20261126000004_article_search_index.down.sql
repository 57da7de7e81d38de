-- no-transaction
DROP INDEX CONCURRENTLY IF EXISTS articles_search_idx;
