DROP TRIGGER IF EXISTS articles_author_count_deletes ON articles;
DROP TRIGGER IF EXISTS articles_author_count_inserts ON articles;
DROP FUNCTION IF EXISTS author_article_counts_count();
DROP TABLE IF EXISTS author_article_counts;
