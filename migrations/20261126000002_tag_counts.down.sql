DROP TRIGGER IF EXISTS articles_count_tags ON articles;
DROP FUNCTION IF EXISTS stoa_count_tags();
DROP TABLE IF EXISTS tag_counts;
