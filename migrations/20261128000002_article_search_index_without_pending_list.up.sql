-- Expand: searches read the GIN index alone. With GIN's fast update, new articles wait in
-- a pending list that every search scans in full until VACUUM or autoanalyze merges it
-- (up to gin_pending_list_limit, 4 MB by default): on the bench data (400 articles) a
-- search's index scan took 1.06 ms with 24 pending pages and 0.02 ms without, twice per
-- request (the page and its total). Articles are written far less often than they are
-- searched, so each insert now updates the index itself.
-- Changing `fastupdate` takes an exclusive lock on the index for an instant; wait for it
-- at most 5 s rather than queue every search behind a long-running one (the migration Job
-- fails and is retried; the rollout waits for it).
SET LOCAL lock_timeout = '5s';
ALTER INDEX articles_search_idx SET (fastupdate = off);
-- Turning it off does not merge what is already pending.
SELECT gin_clean_pending_list('articles_search_idx');
