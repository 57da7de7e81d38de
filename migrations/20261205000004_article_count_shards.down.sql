-- Back to one row for the article count (the sum of the shards).
DROP VIEW article_stats;
DROP FUNCTION article_stats_set();
CREATE TABLE article_stats (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    article_count bigint NOT NULL DEFAULT 0
);
INSERT INTO article_stats (article_count) SELECT COALESCE(sum(articles), 0) FROM article_count_shards;
DROP TABLE article_count_shards;

CREATE OR REPLACE FUNCTION article_stats_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE article_stats SET article_count = article_count + (SELECT count(*) FROM changed);
    ELSE
        UPDATE article_stats SET article_count = article_count - (SELECT count(*) FROM changed);
    END IF;
    RETURN NULL;
END $$;
