-- Expand: how many articles each author has, kept exact by statement-level triggers (as
-- `article_stats` is for the whole table), so the feed's total and an author's list total
-- read one row per author instead of counting every article of theirs on every request.
-- An author's row is removed with the author.
CREATE TABLE author_article_counts (
    author_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    articles  bigint NOT NULL CHECK (articles >= 0)
);

CREATE FUNCTION author_article_counts_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- In key order: concurrent statements by several authors take the rows' locks in
        -- the same order.
        INSERT INTO author_article_counts AS c (author_id, articles)
        SELECT author_id, count(*) FROM changed GROUP BY author_id ORDER BY author_id
        ON CONFLICT (author_id) DO UPDATE SET articles = c.articles + EXCLUDED.articles;
    ELSE
        UPDATE author_article_counts c SET articles = c.articles - d.n
          FROM (SELECT author_id, count(*) AS n FROM changed GROUP BY author_id) d
         WHERE c.author_id = d.author_id;
    END IF;
    RETURN NULL;
END $$;

-- Creating the triggers locks out article writes until this migration commits, so the
-- count below and the triggers see the same articles.
CREATE TRIGGER articles_author_count_inserts AFTER INSERT ON articles
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION author_article_counts_count();
CREATE TRIGGER articles_author_count_deletes AFTER DELETE ON articles
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION author_article_counts_count();

INSERT INTO author_article_counts (author_id, articles)
SELECT author_id, count(*) FROM articles GROUP BY author_id;
