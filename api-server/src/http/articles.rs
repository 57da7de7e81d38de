//! Articles: listing, feed, CRUD and favorites. Every handler is one SQL statement:
//! lists fetch authors, tags, counts, the caller's flags and the total in the same query.

use std::sync::LazyLock;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{AuthUser, MaybeAuthUser};
use crate::cache::{Change, Key, Prefetched};
use crate::error::{ApiError, ApiResult, Validator};
use crate::http::extract::{ApiJson, ApiQuery, Pagination};
use crate::http::slug::{belongs_to, first_choice, slugify, with_suffix};
use crate::http::types::{
    Article, ArticleResponse, ArticlesResponse, NewArticleRequest, UpdateArticleRequest,
};
use crate::http::{json_bytes, to_json_bytes, validate};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_articles, create_article))
        .routes(routes!(feed))
        .routes(routes!(get_article, update_article, delete_article))
        .routes(routes!(favorite, unfavorite))
}

/// Columns of an article as seen by the caller `$1` (NULL for anonymous), given `a`
/// (articles) and `u` (its author). A macro so queries stay `&'static str`.
macro_rules! article_columns {
    ($body:literal) => {
        concat!(
            "a.slug, a.title, a.description, ",
            $body,
            " AS body, a.tag_list, a.created_at, a.updated_at, a.favorites_count,
             u.username, u.bio, u.image,
             EXISTS (SELECT 1 FROM favorites f WHERE f.article_id = a.id AND f.user_id = $1::uuid) AS favorited,
             EXISTS (SELECT 1 FROM follows fo WHERE fo.followed_id = a.author_id AND fo.follower_id = $1::uuid) AS following"
        )
    };
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only articles with this tag.
    tag: Option<String>,
    /// Only articles by this username.
    author: Option<String>,
    /// Only articles favorited by this username.
    favorited: Option<String>,
    /// Page size: default 20, at most 100.
    #[param(minimum = 1)]
    limit: Option<i64>,
    /// Items to skip: default 0.
    #[param(minimum = 0)]
    offset: Option<i64>,
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
}

/// Numbers query parameters in the order they are bound.
struct Params(usize);

impl Params {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("${}", self.0)
    }
}

impl ListShape {
    const VARIANTS: usize = 32;

    fn from_index(i: usize) -> Self {
        ListShape {
            tag: i & 1 != 0,
            author: i & 2 != 0,
            favorited: i & 4 != 0,
            feed: i & 8 != 0,
            anonymous: i & 16 != 0,
        }
    }

    fn index(self) -> usize {
        usize::from(self.tag)
            | usize::from(self.author) << 1
            | usize::from(self.favorited) << 2
            | usize::from(self.feed) << 3
            | usize::from(self.anonymous) << 4
    }

    /// The WHERE clause over `a` (articles); filter values take the next parameters.
    fn filter(self, params: &mut Params, viewer: Option<&str>) -> String {
        let mut conditions = Vec::new();
        if self.tag {
            conditions.push(format!("a.tag_list @> ARRAY[{}::text]", params.next()));
        }
        if self.author {
            conditions.push(format!(
                "a.author_id = (SELECT id FROM users WHERE username = {})",
                params.next()
            ));
        }
        if self.favorited {
            conditions.push(format!(
                "a.id IN (SELECT fv.article_id FROM favorites fv JOIN users fu ON fu.id = fv.user_id WHERE fu.username = {})",
                params.next()
            ));
        }
        if let (true, Some(viewer)) = (self.feed, viewer) {
            conditions.push(format!("a.author_id IN (SELECT followed_id FROM follows WHERE follower_id = {viewer}::uuid)"));
        }
        if conditions.is_empty() {
            "true".to_owned()
        } else {
            conditions.join(" AND ")
        }
    }

    /// The total of matches: a maintained counter when unfiltered.
    fn total(self, filter: &str) -> String {
        if filter == "true" {
            "(SELECT article_count FROM article_stats)".to_owned()
        } else {
            format!("(SELECT count(*) FROM articles a WHERE {filter})")
        }
    }

    /// The page with its total on every row. Parameters: limit, offset, then the viewer
    /// (unless anonymous), then the filter values.
    ///
    /// A later page (`offset > 0`) may lie past the end, where no row would carry the
    /// total; its query joins the page to the total, so it still answers one row (with a
    /// NULL article) and every list stays one round trip. First pages use the cheaper form.
    fn page_sql(self, later_page: bool) -> String {
        let mut params = Params(2);
        let viewer = (!self.anonymous).then(|| params.next());
        let filter = self.filter(&mut params, viewer.as_deref());
        let flags = match &viewer {
            None => "false AS favorited, false AS following".to_owned(),
            Some(v) => format!(
                "EXISTS (SELECT 1 FROM favorites f WHERE f.article_id = a.id AND f.user_id = {v}::uuid) AS favorited,
                 EXISTS (SELECT 1 FROM follows fo WHERE fo.followed_id = a.author_id AND fo.follower_id = {v}::uuid) AS following"
            ),
        };
        let columns = format!(
            "a.id, a.slug, a.title, a.description, NULL::text AS body, a.tag_list, a.created_at, a.updated_at,
             a.favorites_count, u.username, u.bio, u.image, {flags}"
        );
        let page = format!(
            "SELECT {columns}
             FROM articles a JOIN users u ON u.id = a.author_id
             WHERE {filter}
             ORDER BY a.created_at DESC, a.id DESC
             LIMIT $1 OFFSET $2"
        );
        let total = self.total(&filter);
        if later_page {
            format!(
                "SELECT t.total, p.* FROM (SELECT {total} AS total) t
                 LEFT JOIN LATERAL ({page}) p ON true
                 ORDER BY p.created_at DESC, p.id DESC"
            )
        } else {
            page.replacen("SELECT ", &format!("SELECT {total} AS total, "), 1)
        }
    }
}

/// `[first page, later page]` statements for every shape.
static LIST_SQL: LazyLock<Vec<[String; 2]>> = LazyLock::new(|| {
    (0..ListShape::VARIANTS)
        .map(|i| {
            let shape = ListShape::from_index(i);
            [shape.page_sql(false), shape.page_sql(true)]
        })
        .collect()
});

/// Always one round trip: the page, its authors, tags, counts, the caller's flags and the
/// total of matches.
/// `limit` and `offset` are the callers' validated `Pagination`.
async fn fetch_list(
    state: &AppState,
    viewer: Option<Uuid>,
    query: ListQuery,
    (limit, offset): (i64, i64),
    feed: bool,
) -> ApiResult<ArticlesResponse> {
    let shape = ListShape {
        tag: query.tag.is_some(),
        author: query.author.is_some(),
        favorited: query.favorited.is_some(),
        feed,
        anonymous: viewer.is_none(),
    };
    let sql: &'static str = LIST_SQL[shape.index()][usize::from(offset > 0)].as_str();
    let mut page = sqlx::query(sql).bind(limit).bind(offset);
    if let Some(viewer) = viewer {
        page = page.bind(viewer);
    }
    for value in [query.tag, query.author, query.favorited]
        .into_iter()
        .flatten()
    {
        page = page.bind(value);
    }
    let rows: Vec<PgRow> = page.fetch_all(&**state.db()).await?;
    let articles_count = match rows.first() {
        Some(row) => row.try_get("total")?,
        // Only a first page can come back without rows: nothing matches.
        None => 0,
    };
    // A later page past the end is one row with a NULL article.
    let mut articles = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<Option<&str>, _>("slug")?.is_some() {
            articles.push(Article::from_row(row)?);
        }
    }
    Ok(ArticlesResponse {
        articles,
        articles_count,
    })
}

/// List articles, newest first, optionally filtered by tag, author and favoriter.
#[utoipa::path(get, path = "/api/articles", tag = "articles",
    params(ListQuery),
    responses((status = 200, body = ArticlesResponse), (status = 422)))]
async fn list_articles(
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
    let cache_key = (viewer.0.is_none() && state.cache.enabled())
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
    let list = fetch_list(&state, viewer.id(), query, (limit, offset), false).await?;
    let body = to_json_bytes(&list)?;
    if let Some(key) = &cache_key {
        state.cache.put(key, &body).await;
    }
    Ok(json_bytes(body))
}

/// Articles by the users the caller follows, newest first.
#[utoipa::path(get, path = "/api/articles/feed", tag = "articles",
    security(("token" = [])),
    params(Pagination),
    responses((status = 200, body = ArticlesResponse), (status = 401)))]
async fn feed(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(page): ApiQuery<Pagination>,
) -> ApiResult<axum::Json<ArticlesResponse>> {
    let page = page.resolve()?;
    let list = fetch_list(&state, Some(auth.id), ListQuery::default(), page, true).await?;
    Ok(axum::Json(list))
}

const GET_ARTICLE: &str = concat!(
    "SELECT ",
    article_columns!("a.body"),
    " FROM articles a JOIN users u ON u.id = a.author_id WHERE a.slug = $2"
);

/// One article, with its body.
#[utoipa::path(get, path = "/api/articles/{slug}", tag = "articles",
    params(("slug" = String, Path)),
    responses((status = 200, body = ArticleResponse), (status = 404)))]
async fn get_article(
    State(state): State<AppState>,
    viewer: MaybeAuthUser,
    prefetched: Option<Extension<Prefetched>>,
    Path(slug): Path<String>,
) -> ApiResult<Response> {
    let cache_key =
        (viewer.0.is_none() && state.cache.enabled()).then(|| Key::Article(slug.clone()));
    if let Some(key) = &cache_key
        && let Some(body) = state
            .cache
            .lookup(key, prefetched.as_ref().map(|p| &p.0))
            .await
    {
        return Ok(json_bytes(body));
    }
    let article: Article = sqlx::query_as(GET_ARTICLE)
        .bind(viewer.id())
        .bind(&slug)
        .fetch_optional(&**state.db())
        .await?
        .ok_or(ApiError::NotFound("article"))?;
    let body = to_json_bytes(&ArticleResponse { article })?;
    if let Some(key) = &cache_key {
        state.cache.put(key, &body).await;
    }
    Ok(json_bytes(body))
}

const CREATE_ARTICLE: &str = concat!(
    "WITH a AS (
         INSERT INTO articles (author_id, slug, title, description, body, tag_list)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (slug) DO NOTHING
         RETURNING *)
     SELECT ",
    "a.slug, a.title, a.description, a.body, a.tag_list, a.created_at, a.updated_at, a.favorites_count,
     u.username, u.bio, u.image, false AS favorited, false AS following
     FROM a JOIN users u ON u.id = a.author_id"
);

/// How many times a slug collision is retried with a fresh random suffix.
const SLUG_ATTEMPTS: usize = 4;

/// Create an article. The slug comes from the title and is made unique.
#[utoipa::path(post, path = "/api/articles", tag = "articles",
    security(("token" = [])),
    request_body = NewArticleRequest,
    responses((status = 201, body = ArticleResponse), (status = 401), (status = 422)))]
async fn create_article(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(NewArticleRequest { article }): ApiJson<NewArticleRequest>,
) -> ApiResult<(StatusCode, axum::Json<ArticleResponse>)> {
    let title = article.title.trim();
    let tags = validate::normalize_tags(article.tag_list);
    let mut v = Validator::default();
    v.check(!title.is_empty(), "title", "can't be blank")
        .check(
            validate::within(title, validate::TITLE_MAX),
            "title",
            "is too long (at most 256 characters)",
        )
        .check(
            !article.description.trim().is_empty(),
            "description",
            "can't be blank",
        )
        .check(
            validate::within(&article.description, validate::DESCRIPTION_MAX),
            "description",
            "is too long (at most 1024 characters)",
        )
        .check(!article.body.trim().is_empty(), "body", "can't be blank")
        .check(
            validate::within(&article.body, validate::BODY_MAX),
            "body",
            "is too long (at most 131072 characters)",
        );
    if let Err(message) = &tags {
        v.check(false, "tagList", message);
    }
    v.finish()?;
    let tags = tags.unwrap_or_default();

    let base = slugify(title);
    let mut slug = first_choice(&base);
    for _ in 0..SLUG_ATTEMPTS {
        let created: Option<Article> = sqlx::query_as(CREATE_ARTICLE)
            .bind(auth.id)
            .bind(&slug)
            .bind(title)
            .bind(article.description.trim())
            .bind(&article.body)
            .bind(&tags)
            .fetch_optional(&**state.db())
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                    ApiError::Unauthorized("belongs to no user")
                }
                _ => e.into(),
            })?;
        if let Some(article) = created {
            state
                .cache
                .invalidate(Change::Articles {
                    slugs: &[],
                    tags: !article.tag_list.is_empty(),
                })
                .await;
            return Ok((StatusCode::CREATED, axum::Json(ArticleResponse { article })));
        }
        slug = with_suffix(&base);
    }
    Err(anyhow::anyhow!("could not find a free slug for {base:?}").into())
}

const UPDATE_ARTICLE: &str = concat!(
    "WITH target AS (SELECT id, author_id FROM articles WHERE slug = $2),
          a AS (
              UPDATE articles a SET
                  title = COALESCE($3, a.title),
                  slug = COALESCE($7, a.slug),
                  description = COALESCE($4, a.description),
                  body = COALESCE($5, a.body),
                  tag_list = COALESCE($6, a.tag_list),
                  updated_at = now()
              FROM target WHERE a.id = target.id AND target.author_id = $1
              RETURNING a.*)
     SELECT target.author_id AS owner_id, ",
    article_columns!("a.body"),
    " FROM target LEFT JOIN a ON true LEFT JOIN users u ON u.id = a.author_id"
);

/// Update an article (author only). A new title gives a new slug.
#[utoipa::path(put, path = "/api/articles/{slug}", tag = "articles",
    security(("token" = [])),
    params(("slug" = String, Path)),
    request_body = UpdateArticleRequest,
    responses((status = 200, body = ArticleResponse), (status = 401), (status = 403), (status = 404), (status = 422)))]
async fn update_article(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(slug): Path<String>,
    ApiJson(UpdateArticleRequest { article }): ApiJson<UpdateArticleRequest>,
) -> ApiResult<axum::Json<ArticleResponse>> {
    let title = article.title.as_deref().map(str::trim);
    let description = article.description.as_deref().map(str::trim);
    let tags = article.tag_list.map(validate::normalize_tags).transpose();
    let mut v = Validator::default();
    v.check(
        title.is_some()
            || description.is_some()
            || article.body.is_some()
            || matches!(tags, Ok(Some(_)))
            || tags.is_err(),
        "article",
        "must change at least one field",
    )
    .check(
        title.is_none_or(|t| !t.is_empty()),
        "title",
        "can't be blank",
    )
    .check(
        title.is_none_or(|t| validate::within(t, validate::TITLE_MAX)),
        "title",
        "is too long (at most 256 characters)",
    )
    .check(
        description.is_none_or(|d| !d.is_empty()),
        "description",
        "can't be blank",
    )
    .check(
        description.is_none_or(|d| validate::within(d, validate::DESCRIPTION_MAX)),
        "description",
        "is too long (at most 1024 characters)",
    )
    .check(
        article.body.as_deref().is_none_or(|b| !b.trim().is_empty()),
        "body",
        "can't be blank",
    )
    .check(
        article
            .body
            .as_deref()
            .is_none_or(|b| validate::within(b, validate::BODY_MAX)),
        "body",
        "is too long (at most 131072 characters)",
    );
    if let Err(message) = &tags {
        v.check(false, "tagList", message);
    }
    v.finish()?;
    let tags = tags.unwrap_or_default();

    // The slug only changes when the title gives a different one; it stays stable otherwise
    // (a slug with a collision suffix still belongs to its title).
    let base = title.map(slugify).filter(|new| !belongs_to(&slug, new));
    let mut new_slug = base.as_deref().map(first_choice);
    for _ in 0..SLUG_ATTEMPTS {
        let result = sqlx::query(UPDATE_ARTICLE)
            .bind(auth.id)
            .bind(&slug)
            .bind(title)
            .bind(description)
            .bind(article.body.as_deref())
            .bind(tags.as_ref())
            .bind(new_slug.as_deref())
            .fetch_optional(&**state.db())
            .await;
        let row = match result {
            Err(sqlx::Error::Database(db)) if db.constraint() == Some("articles_slug_key") => {
                new_slug = base.as_deref().map(with_suffix);
                continue;
            }
            other => other?.ok_or(ApiError::NotFound("article"))?,
        };
        let owner: Uuid = row.try_get("owner_id")?;
        if owner != auth.id {
            return Err(ApiError::Forbidden("article"));
        }
        let article = Article::from_row(&row)?;
        let slugs = [slug.as_str(), article.slug.as_str()];
        state
            .cache
            .invalidate(Change::Articles {
                slugs: &slugs,
                tags: tags.is_some(),
            })
            .await;
        return Ok(axum::Json(ArticleResponse { article }));
    }
    Err(anyhow::anyhow!("could not find a free slug while updating {slug:?}").into())
}

/// Delete an article (author only); its comments and favorites go with it.
#[utoipa::path(delete, path = "/api/articles/{slug}", tag = "articles",
    security(("token" = [])),
    params(("slug" = String, Path)),
    responses((status = 204), (status = 401), (status = 403), (status = 404)))]
async fn delete_article(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(slug): Path<String>,
) -> ApiResult<StatusCode> {
    let owner: Uuid = sqlx::query_scalar(
        "WITH target AS (SELECT id, author_id FROM articles WHERE slug = $2),
              gone AS (DELETE FROM articles a USING target WHERE a.id = target.id AND target.author_id = $1)
         SELECT author_id FROM target",
    )
    .bind(auth.id)
    .bind(&slug)
    .fetch_optional(&**state.db())
    .await?
    .ok_or(ApiError::NotFound("article"))?;
    if owner != auth.id {
        return Err(ApiError::Forbidden("article"));
    }
    state
        .cache
        .invalidate(Change::Articles {
            slugs: &[&slug],
            tags: true,
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}

// Favorites keep `articles.favorites_count` exact: the counter moves only when the
// favorite row was really inserted or deleted, in the same statement.
const FAVORITE: &str = "WITH target AS (SELECT id FROM articles WHERE slug = $2),
          added AS (
              INSERT INTO favorites (user_id, article_id) SELECT $1, id FROM target
              ON CONFLICT DO NOTHING RETURNING article_id),
          counted AS (
              UPDATE articles SET favorites_count = favorites_count + 1
              WHERE id IN (SELECT article_id FROM added) RETURNING favorites_count)
     SELECT a.slug, a.title, a.description, a.body, a.tag_list, a.created_at, a.updated_at,
            COALESCE((SELECT favorites_count FROM counted), a.favorites_count) AS favorites_count,
            u.username, u.bio, u.image, true AS favorited,
            EXISTS (SELECT 1 FROM follows fo WHERE fo.followed_id = a.author_id AND fo.follower_id = $1) AS following
     FROM target JOIN articles a ON a.id = target.id JOIN users u ON u.id = a.author_id";

const UNFAVORITE: &str = "WITH target AS (SELECT id FROM articles WHERE slug = $2),
          removed AS (
              DELETE FROM favorites f USING target
              WHERE f.user_id = $1 AND f.article_id = target.id RETURNING f.article_id),
          counted AS (
              UPDATE articles SET favorites_count = favorites_count - 1
              WHERE id IN (SELECT article_id FROM removed) RETURNING favorites_count)
     SELECT a.slug, a.title, a.description, a.body, a.tag_list, a.created_at, a.updated_at,
            COALESCE((SELECT favorites_count FROM counted), a.favorites_count) AS favorites_count,
            u.username, u.bio, u.image, false AS favorited,
            EXISTS (SELECT 1 FROM follows fo WHERE fo.followed_id = a.author_id AND fo.follower_id = $1) AS following
     FROM target JOIN articles a ON a.id = target.id JOIN users u ON u.id = a.author_id";

async fn set_favorite(
    state: &AppState,
    user: Uuid,
    slug: &str,
    sql: &'static str,
) -> ApiResult<axum::Json<ArticleResponse>> {
    let article: Article = sqlx::query_as(sql)
        .bind(user)
        .bind(slug)
        .fetch_optional(&**state.db())
        .await?
        .ok_or(ApiError::NotFound("article"))?;
    // The count is in the article page and in every list that shows it.
    state
        .cache
        .invalidate(Change::Articles {
            slugs: &[slug],
            tags: false,
        })
        .await;
    Ok(axum::Json(ArticleResponse { article }))
}

/// Favorite an article (idempotent).
#[utoipa::path(post, path = "/api/articles/{slug}/favorite", tag = "articles",
    security(("token" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = ArticleResponse), (status = 401), (status = 404)))]
async fn favorite(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(slug): Path<String>,
) -> ApiResult<axum::Json<ArticleResponse>> {
    set_favorite(&state, auth.id, &slug, FAVORITE).await
}

/// Remove a favorite (idempotent).
#[utoipa::path(delete, path = "/api/articles/{slug}/favorite", tag = "articles",
    security(("token" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = ArticleResponse), (status = 401), (status = 404)))]
async fn unfavorite(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(slug): Path<String>,
) -> ApiResult<axum::Json<ArticleResponse>> {
    set_favorite(&state, auth.id, &slug, UNFAVORITE).await
}
