-- Expand: `GET /api/tags` reads a maintained count per tag instead of unnesting every
-- article's tags on each request (its cost grew with the table). The trigger keeps the
-- counts exact for every writer, this release's or the previous one's. Rows that fall to
-- zero stay (readers skip them): deleting them could race with a concurrent insert of the
-- same tag. A change applies every tag's +1 or -1 in one statement, in tag order, so two
-- writers never wait on each other's rows in opposite orders (no deadlock).
CREATE TABLE tag_counts (
    tag      text PRIMARY KEY,
    articles integer NOT NULL
);

CREATE INDEX tag_counts_used_idx ON tag_counts (articles DESC, tag) WHERE articles > 0;

CREATE FUNCTION stoa_count_tags() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    added   text[] := '{}';
    removed text[] := '{}';
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        added := ARRAY(SELECT DISTINCT t FROM unnest(NEW.tag_list) t);
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        removed := ARRAY(SELECT DISTINCT t FROM unnest(OLD.tag_list) t);
    END IF;
    -- An update counts only what changed.
    IF TG_OP = 'UPDATE' THEN
        SELECT ARRAY(SELECT unnest(added) EXCEPT SELECT unnest(removed)),
               ARRAY(SELECT unnest(removed) EXCEPT SELECT unnest(added))
          INTO added, removed;
    END IF;
    -- A removed tag's row exists (its article was counted), so -1 is only ever an update.
    INSERT INTO tag_counts AS c (tag, articles)
        SELECT t, delta
          FROM (SELECT t, 1 AS delta FROM unnest(added) t
                UNION ALL
                SELECT t, -1 FROM unnest(removed) t) change
         ORDER BY t
        ON CONFLICT (tag) DO UPDATE SET articles = c.articles + EXCLUDED.articles;
    RETURN NULL;
END
$$;

-- Writers wait for the count to be built (a short lock on a table of RealWorld's size;
-- on a large one, schedule the migration at a quiet time).
LOCK TABLE articles IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER articles_count_tags
    AFTER INSERT OR DELETE OR UPDATE OF tag_list ON articles
    FOR EACH ROW EXECUTE FUNCTION stoa_count_tags();

INSERT INTO tag_counts (tag, articles)
    SELECT t, count(*) FROM articles, LATERAL (SELECT DISTINCT t FROM unnest(tag_list) t) u
     GROUP BY t;
