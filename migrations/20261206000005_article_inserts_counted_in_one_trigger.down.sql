-- Back to one trigger per counter for inserts, and the search trigger's language passed
-- to `stoa_search_vector` as a subquery.
SET LOCAL lock_timeout = '5s';

DROP TRIGGER articles_inserted ON articles;
DROP FUNCTION stoa_article_inserted();
DROP TRIGGER articles_count_tags ON articles;
DROP TRIGGER articles_index_tags ON articles;

CREATE TRIGGER articles_count_tags
    AFTER INSERT OR DELETE OR UPDATE OF tag_list ON articles
    FOR EACH ROW EXECUTE FUNCTION stoa_count_tags();
CREATE TRIGGER articles_index_tags
    AFTER INSERT OR DELETE ON articles
    FOR EACH ROW EXECUTE FUNCTION stoa_index_article_tags();
CREATE TRIGGER articles_count_inserts AFTER INSERT ON articles
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION article_stats_count();
CREATE TRIGGER articles_author_count_inserts AFTER INSERT ON articles
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION author_article_counts_count();

CREATE OR REPLACE FUNCTION stoa_article_search() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.search := stoa_search_vector(
        (SELECT language FROM search_settings), NEW.title, NEW.description, NEW.body);
    RETURN NEW;
END
$$;
