//! Article lists and the feed: one prepared statement per combination of filters and page
//! size, so PostgreSQL plans each with the right indexes and keeps the plan; always one
//! round trip, with the page, its authors, tags, counts, the caller's flags and the total.

use std::convert::Infallible;
use std::ops::Not;
use std::sync::{Arc, LazyLock};

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};
use uuid::Uuid;

use crate::auth::{AuthUser, MaybeAuthUser};
use crate::cache::Prefetched;
use crate::error::{ApiError, ApiResult, Validator};
use crate::http::cursor;
use crate::http::extract::{ApiQuery, CursorPagination, Pagination};
use crate::http::types::{Article, ArticlesResponse};
use crate::http::{json_bytes, to_json_bytes};
use crate::reads::Reader;
use crate::state::AppState;
use crate::validate;

use super::feed_plan;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only articles with this tag.
    tag: Option<String>,
    /// Only articles by this username.
    author: Option<String>,
    /// Only articles favorited by this username.
    favorited: Option<String>,
    /// Full-text search over title, description and body, best matches first, in web
    /// search syntax (`"some phrase"`, `or`, `-word`). Combines with the other filters.
    q: Option<String>,
    /// Page size: default 20, at most 100.
    #[param(minimum = 1)]
    limit: Option<i64>,
    /// Items to skip: default 0.
    #[param(minimum = 0)]
    offset: Option<i64>,
    /// The items after this one: `nextCursor` of the previous page (stable under
    /// concurrent inserts). Not with `offset` or `q`.
    #[param(max_length = 128)]
    cursor: Option<String>,
}

/// Which filters a list query uses and whether the caller is anonymous; each combination
/// has its own prepared statement, so PostgreSQL plans it with the right indexes and an
/// anonymous list does not evaluate the caller's favorited/following flags at all.
#[derive(Clone, Copy)]
struct ListShape {
    tag: bool,
    author: bool,
    favorited: bool,
    feed: bool,
    anonymous: bool,
    search: bool,
    /// After a cursor's position.
    after: bool,
    /// The feed's first page by walking the site's newest articles (see [`feed_plan`]).
    walk: bool,
}

/// A list's WHERE clause over `a` (articles), with the parameters of the filters whose
/// totals are kept.
struct Filter {
    condition: String,
    tag: Option<String>,
    /// The author's id (a subquery on the username parameter).
    author: Option<String>,
    /// The search query's placeholder.
    search: Option<String>,
}

/// A value a list statement takes. Each statement is built together with the list of its
/// parameters in the order its text numbers them, and values are bound from that list
/// by name ([`ListValues::bind`]): no numbering is kept by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Param {
    Offset,
    Viewer,
    Tag,
    Author,
    Favorited,
    Search,
    AfterAt,
    AfterId,
}

/// The parameters of a statement being built, in order.
#[derive(Default)]
struct Params(Vec<Param>);

impl Params {
    /// The placeholder of `param`, numbered after those before it.
    fn next(&mut self, param: Param) -> String {
        self.0.push(param);
        format!("${}", self.0.len())
    }
}

/// A list statement and what each of its parameters is, in order.
struct ListStatement {
    sql: Arc<str>,
    params: Vec<Param>,
}

/// The values a list's parameters are bound from.
struct ListValues<'a> {
    offset: i64,
    viewer: Option<Uuid>,
    tag: Option<&'a str>,
    author: Option<&'a str>,
    favorited: Option<&'a str>,
    search: Option<&'a str>,
    after: Option<cursor::Position>,
}

impl<'a> ListValues<'a> {
    /// `statement`, with each parameter bound to its value.
    fn bind(
        &self,
        statement: &ListStatement,
    ) -> sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement.sql.clone()));
        for param in &statement.params {
            query = match param {
                Param::Offset => query.bind(self.offset),
                Param::Viewer => query.bind(self.viewer),
                Param::Tag => query.bind(self.tag),
                Param::Author => query.bind(self.author),
                Param::Favorited => query.bind(self.favorited),
                Param::Search => query.bind(self.search),
                Param::AfterAt => query.bind(self.after.map(|p| p.created_at)),
                Param::AfterId => query.bind(self.after.map(|p| p.id)),
            };
        }
        query
    }
}

impl ListShape {
    #[cfg(test)]
    const VARIANTS: usize = 256;

    #[cfg(test)]
    fn from_index(i: usize) -> Self {
        ListShape {
            tag: i & 1 != 0,
            author: i & 2 != 0,
            favorited: i & 4 != 0,
            feed: i & 8 != 0,
            anonymous: i & 16 != 0,
            search: i & 32 != 0,
            after: i & 64 != 0,
            walk: i & 128 != 0,
        }
    }

    fn index(self) -> usize {
        usize::from(self.tag)
            | usize::from(self.author) << 1
            | usize::from(self.favorited) << 2
            | usize::from(self.feed) << 3
            | usize::from(self.anonymous) << 4
            | usize::from(self.search) << 5
            | usize::from(self.after) << 6
            | usize::from(self.walk) << 7
    }

    /// The WHERE clause over `a` (articles); filter values take the next parameters.
    fn filter(self, params: &mut Params, viewer: Option<&str>) -> Filter {
        let mut conditions = Vec::new();
        let tag = self.tag.then(|| params.next(Param::Tag));
        if let Some(tag) = &tag {
            conditions.push(format!("a.tag_list @> ARRAY[{tag}::text]"));
        }
        let author = self.author.then(|| {
            format!(
                "(SELECT id FROM users WHERE username = {})",
                params.next(Param::Author)
            )
        });
        if let Some(author) = &author {
            conditions.push(format!("a.author_id = {author}"));
        }
        if self.favorited {
            conditions.push(format!(
                "a.id IN (SELECT fv.article_id FROM favorites fv JOIN users fu ON fu.id = fv.user_id WHERE fu.username = {})",
                params.next(Param::Favorited)
            ));
        }
        if let (true, Some(viewer)) = (self.feed, viewer) {
            conditions.push(format!("a.author_id IN (SELECT followed_id FROM follows WHERE follower_id = {viewer}::uuid)"));
        }
        let search = self.search.then(|| params.next(Param::Search));
        if let Some(search) = &search {
            conditions.push(format!("a.search @@ {}", search_query(search)));
        }
        let condition = if conditions.is_empty() {
            "true".to_owned()
        } else {
            conditions.join(" AND ")
        };
        Filter {
            condition,
            tag,
            author,
            search,
        }
    }

    /// The feed with no other filter: its page is read author by author (see
    /// [`followed_ids`]).
    fn followed_only(self) -> bool {
        self.feed && !(self.tag || self.author || self.favorited || self.search)
    }

    /// The feed's first page, whose plan is chosen per viewer ([`feed_plan`]).
    fn feed_first_page(self, with_offset: bool) -> bool {
        self.followed_only() && !with_offset && !self.after
    }

    /// One tag's list with no other filter: its page is read from `article_tags` (see
    /// [`tagged_ids`]).
    fn tagged_only(self) -> bool {
        self.tag && !(self.author || self.favorited || self.feed || self.search)
    }

    /// The total of matches: maintained counters for the whole table (the sum of its
    /// shards: migration `20261205000004_article_count_shards`), one tag's articles
    /// (`tag_counts`), one author's (`author_article_counts`) and the feed (the sum over
    /// the followed authors); a count of the matches otherwise.
    fn total(self, filter: &Filter, viewer: Option<&str>) -> String {
        // The tag and the author are the filter's; a kept count covers at most one of them.
        let counted = !(self.favorited || self.feed || self.search);
        match (&filter.tag, &filter.author, viewer) {
            (None, None, _) if counted => {
                "(SELECT COALESCE(sum(articles), 0)::bigint FROM article_count_shards)".to_owned()
            }
            (Some(tag), None, _) if counted => format!(
                "(SELECT COALESCE(sum(c.articles), 0)::bigint FROM tag_counts c WHERE c.tag = {tag})"
            ),
            (None, Some(author), _) if counted => format!(
                "(SELECT COALESCE(sum(c.articles), 0)::bigint FROM author_article_counts c
                   WHERE c.author_id = {author})"
            ),
            (_, _, Some(viewer)) if self.followed_only() => format!(
                "(SELECT COALESCE(sum(c.articles), 0)::bigint
                   FROM follows fl JOIN author_article_counts c ON c.author_id = fl.followed_id
                  WHERE fl.follower_id = {viewer}::uuid)"
            ),
            _ => format!(
                "(SELECT count(*) FROM articles a WHERE {})",
                filter.condition
            ),
        }
    }

    /// The page with its total on every row, and its parameters in order.
    ///
    /// The limit is written into the text and the offset is left out of first pages: bound
    /// as parameters, PostgreSQL estimates a generic plan for an unknown limit and offset
    /// at a tenth of the table each, finds it dearer than a plan for the values at hand and
    /// so plans the statement anew on every execution, which took longer than running it
    /// (0.17–0.24 ms of planning against 0.10 ms of execution for a page of 20 on the bench
    /// data). With both known the generic plan costs the same and is kept.
    ///
    /// A page after the first (at an offset or after a cursor) may lie past the end, where
    /// no row would carry the total; its query joins the page to the total, so it still
    /// answers one row (with a NULL article) and every list stays one round trip. First
    /// pages use the cheaper form.
    ///
    /// Longer than most: one statement's text, put together in the order it reads; its
    /// parts are the helpers around it (`filter`, `total`, the `*_ids` page choosers).
    fn page_sql(self, with_offset: bool, limit: i64) -> ListStatement {
        let mut params = Params::default();
        let offset_param = with_offset.then(|| params.next(Param::Offset));
        let offset = offset_param
            .as_ref()
            .map_or_else(String::new, |p| format!(" OFFSET {p}"));
        // The viewer is hidden from the planner (an init plan's value): a plan for one
        // viewer's follows was estimated cheaper than the plan for any viewer for a reader
        // of a few authors, so PostgreSQL never kept a generic plan for them and planned
        // the feed on every execution (0.62 ms against 0.22 ms on the bench data).
        let viewer =
            (!self.anonymous).then(|| format!("(SELECT {}::uuid)", params.next(Param::Viewer)));
        let filter = self.filter(&mut params, viewer.as_deref());
        // The cursor narrows the page, never the total.
        let position = self.after.then(|| {
            let (at, id) = (params.next(Param::AfterAt), params.next(Param::AfterId));
            format!("({at}::timestamptz, {id}::bigint)")
        });
        let page_filter = match &position {
            Some(position) => format!("{} AND (a.created_at, a.id) < {position}", filter.condition),
            None => filter.condition.clone(),
        };
        // Where the page's ids are chosen first (offset and cursor included), only the
        // page's rows are then read, joined and given the caller's flags.
        let chosen = |ids: String| {
            let page = format!(
                "({ids}) page
                 JOIN articles a ON a.id = page.id
                 JOIN users u ON u.id = a.author_id"
            );
            (page, "true".to_owned(), String::new())
        };
        let (source, page_filter, offset) = match (self.followed_only(), &viewer, &filter.tag) {
            (true, Some(viewer), _) if self.walk && self.feed_first_page(with_offset) => {
                chosen(walked_ids(viewer, limit))
            }
            (true, Some(viewer), _) => chosen(followed_ids(
                viewer,
                limit,
                offset_param.as_deref(),
                position.as_deref(),
            )),
            (_, _, Some(tag)) if self.tagged_only() => {
                chosen(tagged_ids(tag, limit, &offset, position.as_deref()))
            }
            _ if with_offset && !self.search => chosen(offset_ids(&page_filter, limit, &offset)),
            _ => (
                "articles a JOIN users u ON u.id = a.author_id".to_owned(),
                page_filter,
                offset,
            ),
        };
        let flags = match &viewer {
            None => "false AS favorited, false AS following".to_owned(),
            // Every article of the feed is by someone the viewer follows.
            Some(v) if self.followed_only() => format!(
                "EXISTS (SELECT 1 FROM favorites f WHERE f.article_id = a.id AND f.user_id = {v}::uuid) AS favorited,
                 true AS following"
            ),
            Some(v) => format!(
                "EXISTS (SELECT 1 FROM favorites f WHERE f.article_id = a.id AND f.user_id = {v}::uuid) AS favorited,
                 EXISTS (SELECT 1 FROM follows fo WHERE fo.followed_id = a.author_id AND fo.follower_id = {v}::uuid) AS following"
            ),
        };
        // A search ranks matches; lists are newest first.
        let (rank, order, outer_order) = if let Some(search) = &filter.search {
            (
                format!(", ts_rank(a.search, {}) AS rank", search_query(search)),
                "rank DESC, a.created_at DESC, a.id DESC",
                "p.rank DESC, p.created_at DESC, p.id DESC",
            )
        } else {
            (
                String::new(),
                "a.created_at DESC, a.id DESC",
                "p.created_at DESC, p.id DESC",
            )
        };
        // What chooses the viewer's next first page's plan ([`feed_plan`]).
        let feed_shape = match &viewer {
            Some(v) if self.feed_first_page(with_offset) => format!(
                ", (SELECT max(id) FROM articles) AS newest_id,
                 (SELECT count(*) FROM follows WHERE follower_id = {v}::uuid) AS followed_authors"
            ),
            _ => String::new(),
        };
        let columns = format!(
            "a.id, a.slug, a.title, a.description, NULL::text AS body, a.tag_list, a.created_at, a.updated_at,
             a.favorites_count, u.username, u.bio, u.image, {flags}{rank}{feed_shape}"
        );
        let page = format!(
            "SELECT {columns}
             FROM {source}
             WHERE {page_filter}
             ORDER BY {order}
             LIMIT {limit}{offset}"
        );
        let total = self.total(&filter, viewer.as_deref());
        let sql = if with_offset || self.after {
            format!(
                "SELECT t.total, p.* FROM (SELECT {total} AS total) t
                 LEFT JOIN LATERAL ({page}) p ON true
                 ORDER BY {outer_order}"
            )
        } else {
            page.replacen("SELECT ", &format!("SELECT {total} AS total, "), 1)
        };
        ListStatement {
            sql: Arc::from(sql),
            params: params.0,
        }
    }
}

/// The ids of the feed's page: the newest articles (past `offset`, or after `position`)
/// among at most as many of each followed author's, chosen from their `(author_id, created_at, id)` index alone; only the page's articles
/// and authors are then read. Filtered on the follows instead, PostgreSQL walks the
/// site-wide recency index and skips every newer article by someone else: with 20 000
/// newer articles by an author the viewer does not follow, 20 062 rows read for a page of
/// 20 (8–13 ms); this way, at most a page of index entries per followed author and the
/// page's 20 rows.
fn followed_ids(viewer: &str, limit: i64, offset: Option<&str>, position: Option<&str>) -> String {
    let (newest, skip) = match offset {
        // Any offset is valid: capped, the sum cannot overflow (and still exceeds what any
        // author wrote).
        Some(offset) => (
            format!("{limit} + least({offset}, {})", i64::MAX - limit),
            format!(" OFFSET {offset}"),
        ),
        None => (limit.to_string(), String::new()),
    };
    let before = position.map_or_else(String::new, |position| {
        format!(" AND (x.created_at, x.id) < {position}")
    });
    format!(
        "SELECT x.id FROM follows fl CROSS JOIN LATERAL (
             SELECT x.created_at, x.id FROM articles x
             WHERE x.author_id = fl.followed_id{before}
             ORDER BY x.created_at DESC, x.id DESC LIMIT {newest}) x
         WHERE fl.follower_id = {viewer}::uuid
         ORDER BY x.created_at DESC, x.id DESC LIMIT {limit}{skip}"
    )
}

/// The ids of the feed's first page found by walking the site's newest articles and keeping
/// the followed authors' ones: it costs how deep the page's last row lies, which
/// [`feed_plan`] estimates before choosing it. The follow check is a scalar subquery,
/// which PostgreSQL runs per row as a filter of the walk; written as `EXISTS` or `IN` it
/// becomes a join, planned as the per-author read.
fn walked_ids(viewer: &str, limit: i64) -> String {
    format!(
        "SELECT a.id FROM articles a
         WHERE (SELECT true FROM follows fw
                WHERE fw.follower_id = {viewer}::uuid AND fw.followed_id = a.author_id)
         ORDER BY a.created_at DESC, a.id DESC LIMIT {limit}"
    )
}

/// The ids of a tag's page (`offset`: the statement's ` OFFSET $n`, if any), from
/// `article_tags`' primary key `(tag, created_at, article_id)`, walked newest first, so a
/// page costs its own rows (past `offset`, or after `position`) whatever the number of
/// articles with the tag. Through the GIN index on `tag_list`, PostgreSQL collected every
/// article with the tag and sorted them on each request (its generic plan cannot know the
/// tag is popular).
fn tagged_ids(tag: &str, limit: i64, offset: &str, position: Option<&str>) -> String {
    let before = position.map_or_else(String::new, |position| {
        format!(" AND (t.created_at, t.article_id) < {position}")
    });
    format!(
        "SELECT t.article_id AS id FROM article_tags t
         WHERE t.tag = {tag}{before}
         ORDER BY t.created_at DESC, t.article_id DESC LIMIT {limit}{offset}"
    )
}

/// The ids of a page past an offset (`offset`: the statement's ` OFFSET $n`), chosen first
/// (from the recency or the author's index alone where the filter allows), so the rows
/// skipped are not joined to their authors nor given the caller's flags, which PostgreSQL
/// otherwise computes for every row below the limit (0.45 ms against 0.11 ms for a page at
/// offset 360 of 400 articles).
fn offset_ids(condition: &str, limit: i64, offset: &str) -> String {
    format!(
        "SELECT a.id FROM articles a
         WHERE {condition}
         ORDER BY a.created_at DESC, a.id DESC LIMIT {limit}{offset}"
    )
}

/// The search query of parameter `param`, in the language the vectors are kept in.
fn search_query(param: &str) -> String {
    format!("websearch_to_tsquery((SELECT language FROM search_settings), {param})")
}

/// The statements built so far, by shape, offset or not, and limit (a few in practice:
/// clients keep to one or two page sizes); bounded, as every limit up to the maximum is
/// allowed.
static LIST_SQL: LazyLock<quick_cache::sync::Cache<(usize, bool, i64), Arc<ListStatement>>> =
    LazyLock::new(|| quick_cache::sync::Cache::new(1024));

fn list_sql(shape: ListShape, with_offset: bool, limit: i64) -> Arc<ListStatement> {
    let Ok(statement) = LIST_SQL.get_or_insert_with(&(shape.index(), with_offset, limit), || {
        Ok::<_, Infallible>(Arc::new(shape.page_sql(with_offset, limit)))
    });
    statement
}

/// Which list a cursor belongs to: the feed is per viewer; other lists by their filters.
fn list_fingerprint(query: &ListQuery, feed: Option<Uuid>) -> [u8; 8] {
    match feed {
        Some(viewer) => cursor::fingerprint(&[Some(b"feed"), Some(viewer.as_bytes())]),
        None => cursor::fingerprint(&[
            Some(b"articles"),
            query.tag.as_deref().map(str::as_bytes),
            query.author.as_deref().map(str::as_bytes),
            query.favorited.as_deref().map(str::as_bytes),
        ]),
    }
}

/// What a feed's first page reports for the reader's next plan ([`feed_plan`]): its first
/// row carries the site's newest id and the followed authors, its last row (if the page
/// was full) where it ended.
fn reported_shape(
    first: &PgRow,
    last: &PgRow,
    full: bool,
) -> Result<feed_plan::Shape, sqlx::Error> {
    let last_id = full.then(|| last.try_get::<i64, _>("id")).transpose()?;
    Ok(feed_plan::Shape::of(
        first.try_get("newest_id")?,
        first.try_get("followed_authors")?,
        last_id,
    ))
}

/// Always one round trip: the page, its authors, tags, counts, the caller's flags and the
/// total of matches.
/// `limit` and `offset` are the callers' validated `Pagination`.
async fn fetch_list(
    state: &AppState,
    reader: Reader,
    query: ListQuery,
    (limit, offset): (i64, i64),
    feed: bool,
) -> ApiResult<ArticlesResponse> {
    let viewer = reader.caller();
    let list = list_fingerprint(&query, viewer.filter(|_| feed));
    let after = cursor::resolve(state, query.cursor.as_deref(), offset, list)?;
    if query.q.is_some() && after.is_some() {
        return Err(ApiError::field("cursor", "cannot be combined with q"));
    }
    let shape = ListShape {
        tag: query.tag.is_some(),
        author: query.author.is_some(),
        favorited: query.favorited.is_some(),
        feed,
        anonymous: viewer.is_none(),
        search: query.q.is_some(),
        after: after.is_some(),
        walk: false,
    };
    let with_offset = offset > 0;
    // The feed's first page: the plan the viewer's previous first page chose.
    let feed_viewer = viewer.filter(|_| shape.feed_first_page(with_offset));
    let shape = ListShape {
        walk: feed_viewer.is_some_and(feed_plan::walk),
        ..shape
    };
    // Built from this module's own fragments and a validated integer: nothing of the caller's.
    let values = ListValues {
        offset,
        viewer,
        tag: query.tag.as_deref(),
        author: query.author.as_deref(),
        favorited: query.favorited.as_deref(),
        search: query.q.as_deref(),
        after,
    };
    let page = values.bind(&list_sql(shape, with_offset, limit));
    let rows: Vec<PgRow> = page.fetch_all(&**state.read_db(reader)).await?;
    let articles_count = match rows.first() {
        Some(row) => row.try_get("total")?,
        // Only a first page can come back without rows: nothing matches.
        None => 0,
    };
    // A later page past the end is one row with a NULL article.
    let mut articles = Vec::with_capacity(rows.len());
    let mut last = None;
    for row in &rows {
        if row.try_get::<Option<&str>, _>("slug")?.is_some() {
            articles.push(Article::from_row(row)?);
            last = Some(row);
        }
    }
    if let (Some(viewer), Some(first), Some(last)) = (feed_viewer, rows.first(), last) {
        let full = articles.len() as i64 == limit;
        feed_plan::learn(viewer, reported_shape(first, last, full)?);
    }
    // A full page may have more after it; a search is ranked, not positioned.
    let next_cursor = match last {
        Some(row) if articles.len() as i64 == limit && shape.search.not() => {
            let position = cursor::Position {
                created_at: row.try_get("created_at")?,
                id: row.try_get("id")?,
            };
            cursor::encode(state.tokens.ring().cursor_secrets(), position, list)
        }
        _ => None,
    };
    Ok(ArticlesResponse {
        articles,
        articles_count,
        next_cursor,
    })
}

/// List articles, newest first, optionally filtered by tag, author and favoriter, or
/// searched (`q`, best matches first).
#[utoipa::path(get, path = "/api/articles", tag = "articles",
    params(ListQuery),
    responses((status = 200, body = ArticlesResponse), (status = 422)))]
pub(super) async fn list_articles(
    State(state): State<AppState>,
    viewer: MaybeAuthUser,
    prefetched: Option<Extension<Prefetched>>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Response> {
    let (limit, offset) = Pagination {
        limit: query.limit,
        offset: query.offset,
    }
    .resolve()?;
    if let Some(q) = &query.q {
        Validator::default()
            .check(!q.trim().is_empty(), "q", "can't be blank")
            .check(
                validate::within(q, validate::SEARCH_MAX),
                "q",
                "is too long (at most 256 characters)",
            )
            .finish()?;
    }
    // Searches and cursor pages are not cached: their variety would only evict the hot
    // entries.
    let cache_key = (viewer.0.is_none()
        && query.q.is_none()
        && query.cursor.as_deref().is_none_or(str::is_empty)
        && state.cache.enabled())
    .then(|| {
        crate::cache::list_key(
            limit,
            offset,
            query.tag.as_deref(),
            query.author.as_deref(),
            query.favorited.as_deref(),
        )
    })
    .flatten();
    if let Some(key) = &cache_key
        && let Some(body) = state
            .cache
            .lookup(key, prefetched.as_ref().map(|p| &p.0))
            .await
    {
        return Ok(json_bytes(body));
    }
    let reader = Reader::of(viewer.id(), cache_key.is_some());
    let list = fetch_list(&state, reader, query, (limit, offset), false).await?;
    let body = to_json_bytes(&list)?;
    if let Some(key) = &cache_key {
        state.cache.put(key, &body).await;
    }
    Ok(json_bytes(body))
}

/// Articles by the users the caller follows, newest first.
#[utoipa::path(get, path = "/api/articles/feed", tag = "articles",
    security(("token" = [])),
    params(CursorPagination),
    responses((status = 200, body = ArticlesResponse), (status = 401)))]
pub(super) async fn feed(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(page): ApiQuery<CursorPagination>,
) -> ApiResult<Response> {
    let (limit, offset) = page.pagination().resolve()?;
    // First pages are kept in this replica's copy (with Redis: `cache` module comment).
    let cached = page
        .cursor
        .as_deref()
        .is_none_or(str::is_empty)
        .then(|| crate::cache::feed_key(auth.id, limit, offset))
        .flatten()
        .and_then(|key| Some((state.cache.feed_lookup(&key)?, key)));
    let seen = match cached {
        Some((Ok(body), _)) => return Ok(json_bytes(body)),
        Some((Err(seen), key)) => Some((seen, key)),
        None => None,
    };
    let query = ListQuery {
        cursor: page.cursor,
        ..ListQuery::default()
    };
    let list = fetch_list(
        &state,
        Reader::Caller(auth.id),
        query,
        (limit, offset),
        true,
    )
    .await?;
    let body = to_json_bytes(&list)?;
    if let Some((seen, key)) = seen {
        state.cache.near_fill(&key, &body, seen);
    }
    Ok(json_bytes(body))
}

#[cfg(test)]
mod tests {
    use sqlx::{Executor, PgPool, Statement};

    use super::*;

    /// Users `u<first>` to `u<last>`, created in that order.
    async fn numbered_users(pool: &PgPool, first: i32, last: i32) -> Vec<Uuid> {
        sqlx::query_scalar(
            "INSERT INTO users (username, email, password_hash)
             SELECT 'u' || n, 'u' || n || '@example.com', 'x' FROM generate_series($1, $2) n
             ORDER BY n
             RETURNING id",
        )
        .bind(first)
        .bind(last)
        .fetch_all(pool)
        .await
        .unwrap()
    }

    async fn follow(pool: &PgPool, follower: Uuid, followed: Uuid) {
        sqlx::query("INSERT INTO follows (follower_id, followed_id) VALUES ($1, $2)")
            .bind(follower)
            .bind(followed)
            .execute(pool)
            .await
            .unwrap();
    }

    /// A list statement's text.
    fn sql_of(shape: ListShape, with_offset: bool, limit: i64) -> Arc<str> {
        list_sql(shape, with_offset, limit).sql.clone()
    }

    /// Parameters `fetch_list` binds for a shape, with an offset or not.
    fn bound(shape: ListShape, with_offset: bool) -> usize {
        usize::from(with_offset)
            + usize::from(!shape.anonymous)
            + [shape.tag, shape.author, shape.favorited, shape.search]
                .into_iter()
                .filter(|f| *f)
                .count()
            + if shape.after { 2 } else { 0 }
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn every_list_statement_prepares_with_the_parameters_it_is_bound(pool: PgPool) {
        let mut conn = pool.acquire().await.unwrap();
        for i in 0..ListShape::VARIANTS {
            let shape = ListShape::from_index(i);
            // A cursor never comes with an offset.
            let offsets: &[bool] = if shape.after {
                &[false]
            } else {
                &[false, true]
            };
            for &with_offset in offsets {
                let sql = sql_of(shape, with_offset, 20);
                let prepared = conn
                    .prepare(sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(
                        sql.clone(),
                    )))
                    .await
                    .unwrap_or_else(|e| panic!("shape {i}: {e}\n{sql}"));
                let parameters = prepared.parameters().and_then(|p| p.left().map(<[_]>::len));
                assert_eq!(
                    parameters,
                    Some(bound(shape, with_offset)),
                    "shape {i}:\n{sql}"
                );
                // Each value is bound once, by name, from the statement's own list.
                let named = &list_sql(shape, with_offset, 20).params;
                assert_eq!(named.len(), bound(shape, with_offset), "shape {i}");
                for (k, param) in named.iter().enumerate() {
                    assert!(!named[..k].contains(param), "shape {i}: {param:?} twice");
                }
            }
        }
    }

    /// PostgreSQL plans a prepared statement for its values five times, then keeps a generic
    /// plan only if that plan's estimate is no dearer: a list statement that never gets one
    /// is planned anew on every request.
    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn first_pages_keep_a_generic_plan(pool: PgPool) {
        let mut conn = pool.acquire().await.unwrap();
        let signed_in = ListShape::from_index(0);
        let feed = ListShape {
            feed: true,
            ..signed_in
        };
        let tagged = ListShape {
            tag: true,
            ..signed_in
        };
        for shape in [signed_in, feed, tagged] {
            let sql = sql_of(shape, false, 20);
            for _ in 0..8 {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(Uuid::new_v4());
                if shape.tag {
                    query = query.bind("rust");
                }
                query.fetch_all(&mut *conn).await.unwrap();
            }
            let generic: i64 = sqlx::query_scalar(
                "SELECT generic_plans FROM pg_prepared_statements WHERE statement = $1",
            )
            .bind(&*sql)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            assert!(generic > 0, "planned for its values every time:\n{sql}");
        }
    }

    /// A reader of a few authors among readers of many: the feed's statement still keeps a
    /// generic plan (PostgreSQL estimated a plan for that reader's few follows cheaper than
    /// the generic one, and so planned it anew on every request).
    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn the_feed_keeps_a_generic_plan_for_a_reader_of_few_authors(pool: PgPool) {
        let users = numbered_users(&pool, 1, 60).await;
        // Each follows the next 20, except the last, who follows 3.
        sqlx::query(
            "INSERT INTO follows (follower_id, followed_id)
             SELECT ($1::uuid[])[i], ($1::uuid[])[(i + k - 1) % 60 + 1]
             FROM generate_series(1, 59) i, generate_series(1, 20) k
             UNION ALL
             SELECT ($1::uuid[])[60], ($1::uuid[])[k] FROM generate_series(1, 3) k",
        )
        .bind(&users)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO articles (slug, author_id, title, description, body)
             SELECT 'a' || n, ($1::uuid[])[n % 60 + 1], 't', 'd', 'b' FROM generate_series(1, 1200) n",
        )
        .bind(&users)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
        let feed = ListShape {
            feed: true,
            ..ListShape::from_index(0)
        };
        let sql = sql_of(feed, false, 20);
        let mut conn = pool.acquire().await.unwrap();
        for _ in 0..8 {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(users[59])
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        }
        let generic: i64 = sqlx::query_scalar(
            "SELECT generic_plans FROM pg_prepared_statements WHERE statement = $1",
        )
        .bind(&*sql)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert!(
            generic > 0,
            "planned for the reader's values every time:\n{sql}"
        );
    }

    /// Article rows the page's scans in `plan` produced (the total, an init plan, and
    /// index-only scans, which fetch no row, excepted).
    fn article_rows_fetched(plan: &serde_json::Value) -> f64 {
        if plan["Parent Relationship"] == "InitPlan" {
            return 0.0;
        }
        let own = match (plan["Relation Name"].as_str(), plan["Node Type"].as_str()) {
            (Some("articles"), Some(node)) if node != "Index Only Scan" => {
                plan["Actual Rows"].as_f64().unwrap() * plan["Actual Loops"].as_f64().unwrap()
            }
            _ => 0.0,
        };
        let children = plan["Plans"].as_array().map_or(0.0, |plans| {
            plans.iter().map(article_rows_fetched).sum::<f64>()
        });
        own + children
    }

    /// A tag's list costs its page, however many articles carry the tag; so does a page
    /// past an offset, however deep.
    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn a_tag_list_or_a_deep_page_reads_only_its_own_rows(pool: PgPool) {
        let author: Uuid = sqlx::query_scalar(
            "INSERT INTO users (username, email, password_hash) VALUES ('u', 'u@example.com', 'x')
             RETURNING id",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        // 5 000 articles with the popular tag, every tenth also with a rare one.
        sqlx::query(
            "INSERT INTO articles (slug, author_id, title, description, body, tag_list, created_at)
             SELECT 'a' || n, $1, 't', 'd', 'b',
                    CASE WHEN n % 10 = 0 THEN ARRAY['popular', 'rare'] ELSE ARRAY['popular'] END,
                    now() - n * interval '1 s'
             FROM generate_series(1, 5000) n",
        )
        .bind(author)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
        // The plan every request gets once PostgreSQL keeps the statement's generic plan
        // (the first executions are planned for their values, and so is a parameterised
        // EXPLAIN): each statement is prepared in SQL and explained with force_generic_plan.
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("SET plan_cache_mode = force_generic_plan")
            .execute(&mut *conn)
            .await
            .unwrap();

        let anonymous = ListShape {
            anonymous: true,
            ..ListShape::from_index(0)
        };
        let tagged = ListShape {
            tag: true,
            ..anonymous
        };
        let cases: [(ListShape, Option<i64>, Option<&str>); 5] = [
            (tagged, None, Some("popular")),
            (tagged, None, Some("rare")),
            (tagged, Some(4000), Some("popular")),
            (anonymous, Some(4900), None),
            (tagged, Some(400), Some("rare")),
        ];
        for (i, (shape, offset, tag)) in cases.into_iter().enumerate() {
            let prepare = format!(
                "PREPARE page_{i} AS {}",
                sql_of(shape, offset.is_some(), 20)
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(prepare))
                .execute(&mut *conn)
                .await
                .unwrap();
            let values = [offset.map(|o| o.to_string()), tag.map(|t| format!("'{t}'"))];
            let values: Vec<_> = values.into_iter().flatten().collect();
            let explain = format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE page_{i}({})",
                values.join(", ")
            );
            let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            let fetched = article_rows_fetched(&plan[0]["Plan"]);
            assert!(
                fetched <= 40.0,
                "{fetched} article rows read for a page of 20 ({tag:?} at {offset:?}):\n{plan:#}"
            );
        }
        // And the pages are the right ones.
        let page = |offset: i64, tag: &'static str| {
            let pool = pool.clone();
            async move {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql_of(tagged, true, 20)))
                    .bind(offset)
                    .bind(tag)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                rows.iter()
                    .map(|r| r.get::<String, _>("slug"))
                    .collect::<Vec<_>>()
            }
        };
        let expected = |from: i64, step: i64| {
            (0..20)
                .map(|i| format!("a{}", from + i * step))
                .collect::<Vec<_>>()
        };
        assert_eq!(page(4000, "popular").await, expected(4001, 1));
        assert_eq!(page(100, "rare").await, expected(1010, 10));
    }

    /// The feed costs what the followed authors wrote, not what the whole site wrote since.
    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn the_feed_reads_a_page_per_followed_author_whatever_others_wrote(pool: PgPool) {
        let users = numbered_users(&pool, 1, 4).await;
        let (viewer, followed, other) = (users[0], &users[1..3], users[3]);
        for author in followed {
            follow(&pool, viewer, *author).await;
        }
        // 30 older articles by each followed author, then 20 000 newer by someone else.
        sqlx::query(
            "INSERT INTO articles (slug, author_id, title, description, body, created_at)
             SELECT 'a' || n || '-' || author, author, 't', 'd', 'b', now() - interval '1 day' + n * interval '1 s'
             FROM unnest($1::uuid[]) author, generate_series(1, 30) n",
        )
        .bind(followed)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO articles (slug, author_id, title, description, body)
             SELECT 'other-' || n, $1, 't', 'd', 'b' FROM generate_series(1, 20000) n",
        )
        .bind(other)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();

        let feed = ListShape {
            feed: true,
            ..ListShape::from_index(0)
        };
        for with_offset in [false, true] {
            let sql = format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) {}",
                sql_of(feed, with_offset, 20)
            );
            let mut explain = sqlx::query_scalar::<_, serde_json::Value>(sqlx::AssertSqlSafe(sql));
            if with_offset {
                explain = explain.bind(20i64);
            }
            let plan = explain.bind(viewer).fetch_one(&pool).await.unwrap();
            let fetched = article_rows_fetched(&plan[0]["Plan"]);
            let page_end = if with_offset { 40.0 } else { 20.0 };
            assert!(
                fetched <= page_end * 2.0,
                "{fetched} article rows read for a page ending at {page_end} of two authors' feed:\n{plan:#}"
            );
        }
    }

    /// Both plans of the feed's first page read the same page, and what the page reports
    /// chooses the walk where the followed authors wrote much of what is newest and the
    /// per-author read where they did not.
    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn both_feed_plans_read_the_same_page_and_the_data_chooses(pool: PgPool) {
        let users = numbered_users(&pool, 0, 6).await;
        let (active, quiet) = (&users[1..5], users[5]);
        // A quiet author wrote long ago.
        sqlx::query(
            "INSERT INTO articles (slug, author_id, title, description, body, created_at)
             SELECT 'old' || n, $1, 't', 'd', 'b', now() - interval '1 day' - n * interval '1 s'
             FROM generate_series(1, 30) n
             ORDER BY n DESC",
        )
        .bind(quiet)
        .execute(&pool)
        .await
        .unwrap();
        // Four active authors and one more write in turn.
        sqlx::query(
            "INSERT INTO articles (slug, author_id, title, description, body, created_at)
             SELECT 'a' || n || '-' || k, (($1::uuid[])[k]), 't', 'd', 'b',
                    now() - (n * 5 + k) * interval '1 s'
             FROM generate_series(1, 30) n, generate_series(1, 5) k
             ORDER BY n * 5 + k DESC",
        )
        .bind([active, &[users[6]]].concat())
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();

        let per_author = ListShape {
            feed: true,
            ..ListShape::from_index(0)
        };
        let walk = ListShape {
            walk: true,
            ..per_author
        };
        let page = |shape: ListShape, viewer: Uuid| {
            let pool = pool.clone();
            async move {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql_of(shape, false, 20)))
                    .bind(viewer)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                let slugs: Vec<String> = rows.iter().map(|r| r.get("slug")).collect();
                let shape = feed_plan::Shape::of(
                    rows[0].get("newest_id"),
                    rows[0].get("followed_authors"),
                    (rows.len() == 20).then(|| rows[19].get("id")),
                );
                (slugs, shape)
            }
        };
        // Following the four active authors: the walk.
        let reader = users[0];
        for author in active {
            follow(&pool, reader, *author).await;
        }
        let (by_author, shape) = page(per_author, reader).await;
        assert_eq!(by_author.len(), 20);
        assert_eq!(page(walk, reader).await.0, by_author);
        assert!(shape.walk(), "{shape:?}");
        // Following only the quiet author, whose articles lie behind everything newer: per
        // author (the walk would pass every other article first).
        follow(&pool, users[6], quiet).await;
        let (by_author, shape) = page(per_author, users[6]).await;
        assert_eq!(by_author.len(), 20);
        assert_eq!(page(walk, users[6]).await.0, by_author);
        assert!(!shape.walk(), "{shape:?}");
    }

    /// The titles of an anonymous first page with these filters, bound as a request's are.
    async fn titles(
        pool: &PgPool,
        tag: Option<&str>,
        author: Option<&str>,
        favorited: Option<&str>,
        search: Option<&str>,
    ) -> Vec<String> {
        let shape = ListShape {
            tag: tag.is_some(),
            author: author.is_some(),
            favorited: favorited.is_some(),
            search: search.is_some(),
            anonymous: true,
            ..ListShape::from_index(0)
        };
        let values = ListValues {
            offset: 0,
            viewer: None,
            tag,
            author,
            favorited,
            search,
            after: None,
        };
        let rows = values
            .bind(&list_sql(shape, false, 20))
            .fetch_all(pool)
            .await
            .unwrap();
        let mut titles: Vec<String> = rows.iter().map(|r| r.get("title")).collect();
        titles.sort();
        titles
    }

    /// Every filter reaches its own parameter: each pair of text filters below gives a
    /// different page if their values were bound to each other's places.
    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn filters_are_bound_to_their_own_parameters(pool: PgPool) {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO users (username, email, password_hash)
             VALUES ('jake', 'jake@example.com', 'x'), ('jane', 'jane@example.com', 'x')
             RETURNING id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let (jake, jane) = (ids[0], ids[1]);
        for (slug, author, title, tag) in [
            ("r1", jake, "Alpha rust", "rust"),
            ("g1", jake, "Alpha go", "go"),
            ("r2", jane, "Beta rust", "rust"),
        ] {
            sqlx::query(
                "INSERT INTO articles (slug, author_id, title, description, body, tag_list)
                 VALUES ($1, $2, $3, 'd', 'b', ARRAY[$4])",
            )
            .bind(slug)
            .bind(author)
            .bind(title)
            .bind(tag)
            .execute(&pool)
            .await
            .unwrap();
        }
        for (user, slug) in [(jake, "r2"), (jane, "g1")] {
            sqlx::query(
                "INSERT INTO favorites (user_id, article_id) SELECT $1, id FROM articles WHERE slug = $2",
            )
            .bind(user)
            .bind(slug)
            .execute(&pool)
            .await
            .unwrap();
        }
        let p = &pool;
        // Swapped, each would find nothing or another article.
        assert_eq!(
            titles(p, Some("rust"), Some("jane"), None, None).await,
            ["Beta rust"]
        );
        assert_eq!(
            titles(p, None, Some("jake"), Some("jane"), None).await,
            ["Alpha go"]
        );
        assert_eq!(
            titles(p, Some("rust"), None, Some("jake"), None).await,
            ["Beta rust"]
        );
        assert_eq!(
            titles(p, Some("rust"), None, None, Some("alpha")).await,
            ["Alpha rust"]
        );
        assert_eq!(
            titles(p, None, Some("jake"), None, Some("alpha")).await,
            ["Alpha go", "Alpha rust"]
        );
        assert_eq!(
            titles(p, Some("go"), Some("jake"), Some("jane"), Some("alpha")).await,
            ["Alpha go"]
        );
    }
}
