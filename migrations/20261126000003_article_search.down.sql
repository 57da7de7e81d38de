DROP TRIGGER IF EXISTS articles_search ON articles;
DROP FUNCTION IF EXISTS stoa_article_search();
ALTER TABLE articles DROP COLUMN IF EXISTS search;
DROP FUNCTION IF EXISTS stoa_search_vector(regconfig, text, text, text);
DROP TABLE IF EXISTS search_settings;
