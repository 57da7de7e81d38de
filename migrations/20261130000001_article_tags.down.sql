DROP TRIGGER IF EXISTS articles_reindex_tags ON articles;
DROP TRIGGER IF EXISTS articles_index_tags ON articles;
DROP FUNCTION IF EXISTS stoa_index_article_tags();
DROP TABLE IF EXISTS article_tags;
