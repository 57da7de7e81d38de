-- Expand: each tag's articles in recency order, so a tag's list reads its page from the
-- primary key `(tag, created_at, article_id)` (walked backwards: newest first) whatever
-- the number of articles carrying the tag. Through the GIN index on `tag_list` it
-- collected every one of them and sorted them on each request: the cost of a popular
-- tag's first page grew with the tag. Kept exact by triggers for every writer, this
-- release's or the previous one's (like `tag_counts`); `recount_counters` repairs it.
CREATE TABLE article_tags (
    tag        text        NOT NULL,
    created_at timestamptz NOT NULL,
    article_id bigint      NOT NULL,
    PRIMARY KEY (tag, created_at, article_id)
);

-- Entries are found by their whole key (the old row's tags, creation time and id), so
-- no second index is needed to drop them. An article's entries are its own: writers of
-- different articles never touch the same entry.
CREATE FUNCTION stoa_index_article_tags() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        DELETE FROM article_tags e
         USING (SELECT DISTINCT t FROM unnest(OLD.tag_list) t) removed
         WHERE e.tag = removed.t AND e.created_at = OLD.created_at AND e.article_id = OLD.id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO article_tags (tag, created_at, article_id)
        SELECT DISTINCT t, NEW.created_at, NEW.id FROM unnest(NEW.tag_list) t;
    END IF;
    RETURN NULL;
END $$;

-- Writers wait for the entries to be built (a short lock on a table of RealWorld's size;
-- on a large one, schedule the migration at a quiet time), so the backfill and the
-- triggers see the same articles.
LOCK TABLE articles IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER articles_index_tags
    AFTER INSERT OR DELETE ON articles
    FOR EACH ROW EXECUTE FUNCTION stoa_index_article_tags();
-- An edit that leaves the tags and the creation time alone costs nothing here.
CREATE TRIGGER articles_reindex_tags
    AFTER UPDATE OF tag_list, created_at ON articles
    FOR EACH ROW
    WHEN (OLD.tag_list IS DISTINCT FROM NEW.tag_list OR OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION stoa_index_article_tags();

INSERT INTO article_tags (tag, created_at, article_id)
SELECT DISTINCT t, a.created_at, a.id FROM articles a, unnest(a.tag_list) t;
