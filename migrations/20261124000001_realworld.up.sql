-- RealWorld core schema.
-- Tags live on the article as an ordered array (authors choose the order; a GIN index
-- serves `?tag=`), and favorites are counted into `articles.favorites_count` by the same
-- statement that inserts or deletes the favorite, so list queries never aggregate.

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username      text NOT NULL,
    email         text NOT NULL,
    password_hash text NOT NULL,
    bio           text,
    image         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_username_key ON users (username);
-- Emails are unique regardless of case; login looks them up through the same expression.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE follows (
    follower_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    followed_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follower_id, followed_id),
    CONSTRAINT follows_not_self CHECK (follower_id <> followed_id)
);
CREATE INDEX follows_followed_idx ON follows (followed_id);

CREATE TABLE articles (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug            text NOT NULL,
    author_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title           text NOT NULL,
    description     text NOT NULL,
    body            text NOT NULL,
    tag_list        text[] NOT NULL DEFAULT '{}',
    favorites_count integer NOT NULL DEFAULT 0 CHECK (favorites_count >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX articles_slug_key ON articles (slug);
-- Lists are newest first; `id` breaks ties so pages are stable.
CREATE INDEX articles_recent_idx ON articles (created_at DESC, id DESC);
CREATE INDEX articles_author_recent_idx ON articles (author_id, created_at DESC, id DESC);
CREATE INDEX articles_tags_idx ON articles USING gin (tag_list);

-- The unfiltered article list needs the total on every request: keep it in one row,
-- maintained by statement-level triggers, instead of counting the table each time.
CREATE TABLE article_stats (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    article_count bigint NOT NULL DEFAULT 0
);
INSERT INTO article_stats DEFAULT VALUES;

CREATE FUNCTION article_stats_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE article_stats SET article_count = article_count + (SELECT count(*) FROM changed);
    ELSE
        UPDATE article_stats SET article_count = article_count - (SELECT count(*) FROM changed);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER articles_count_inserts AFTER INSERT ON articles
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION article_stats_count();
CREATE TRIGGER articles_count_deletes AFTER DELETE ON articles
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION article_stats_count();

CREATE TABLE favorites (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    article_id bigint NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, article_id)
);
CREATE INDEX favorites_article_idx ON favorites (article_id);

CREATE TABLE comments (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    article_id bigint NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    author_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX comments_article_idx ON comments (article_id, created_at DESC, id DESC);
CREATE INDEX comments_author_idx ON comments (author_id);
