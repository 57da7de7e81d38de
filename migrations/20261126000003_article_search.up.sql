-- Expand: full-text search over articles (`GET /api/articles?q=`). Each article keeps its
-- search vector (title weighted A, description B, body C), maintained by a trigger for
-- every writer, in the language stored in `search_settings` (`stoa-api search-language`
-- changes it and recomputes every vector). Queries read the same row, so a query and the
-- vectors it matches always use one language. The previous release ignores the column.
CREATE TABLE search_settings (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    language  regconfig NOT NULL DEFAULT 'english'
);
INSERT INTO search_settings DEFAULT VALUES;

CREATE FUNCTION stoa_search_vector(lang regconfig, title text, description text, body text)
RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT setweight(to_tsvector(lang, title), 'A')
        || setweight(to_tsvector(lang, description), 'B')
        || setweight(to_tsvector(lang, body), 'C')
$$;

ALTER TABLE articles ADD COLUMN search tsvector;

CREATE FUNCTION stoa_article_search() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.search := stoa_search_vector(
        (SELECT language FROM search_settings), NEW.title, NEW.description, NEW.body);
    RETURN NEW;
END
$$;

CREATE TRIGGER articles_search
    BEFORE INSERT OR UPDATE OF title, description, body ON articles
    FOR EACH ROW EXECUTE FUNCTION stoa_article_search();

UPDATE articles
   SET search = stoa_search_vector('english', title, description, body);
