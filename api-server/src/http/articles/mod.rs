//! Articles: create, read, update, delete; listing and the feed in `listing`, favorites
//! in `favorites`. Every handler is one SQL statement.

use crate::api_routes;
use crate::http::routing::RouteTable;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sqlx::{FromRow, Row};
use uuid::Uuid;

use crate::auth::{AuthUser, MaybeAuthUser};
use crate::cache::{Change, Key, Prefetched};
use crate::error::{ApiError, ApiResult, Validator};
use crate::http::extract::ApiJson;
use crate::http::slug::{self, belongs_to, slugify};
use crate::http::types::{Article, ArticleResponse, NewArticleRequest, UpdateArticleRequest};
use crate::http::{json_bytes, to_json_bytes};
use crate::reads::Reader;
use crate::state::AppState;
use crate::validate;

pub fn router<T: RouteTable>() -> T {
    T::empty()
        .routes(api_routes!(listing::list_articles, create_article))
        .routes(api_routes!(listing::feed))
        .routes(api_routes!(get_article, update_article, delete_article))
        .routes(api_routes!(favorites::favorite, favorites::unfavorite))
}

/// Columns of an article as seen by the caller `$1`, given `a` (articles) and `u` (its
/// author); with a second argument, the caller's flags are those literal columns instead
/// (an anonymous read, a new article). A macro so queries stay `&'static str`.
macro_rules! article_columns {
    ($body:literal) => {
        article_columns!(
            $body,
            "EXISTS (SELECT 1 FROM favorites f WHERE f.article_id = a.id AND f.user_id = $1::uuid) AS favorited,
             EXISTS (SELECT 1 FROM follows fo WHERE fo.followed_id = a.author_id AND fo.follower_id = $1::uuid) AS following"
        )
    };
    ($body:literal, $flags:literal) => {
        concat!(
            "a.slug, a.title, a.description, ",
            $body,
            " AS body, a.tag_list, a.created_at, a.updated_at, a.favorites_count,
             u.username, u.bio, u.image, ",
            $flags
        )
    };
}

mod favorites;
mod feed_plan;
mod listing;

const GET_ARTICLE: &str = concat!(
    "SELECT ",
    article_columns!("a.body"),
    " FROM articles a JOIN users u ON u.id = a.author_id WHERE a.slug = $2"
);

/// The same for an anonymous caller, as a statement of its own: with a NULL viewer bound,
/// PostgreSQL folds the caller's flags away in each custom plan, finds every custom plan
/// cheaper than the generic one and so plans the statement anew on every execution (which
/// cost a third of this endpoint's throughput); without parameters that change the plan it
/// settles on the generic plan after five executions.
const GET_ARTICLE_ANONYMOUS: &str = concat!(
    "SELECT ",
    article_columns!("a.body", "false AS favorited, false AS following"),
    " FROM articles a JOIN users u ON u.id = a.author_id WHERE a.slug = $1"
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
    let query = match viewer.id() {
        Some(viewer) => sqlx::query_as(GET_ARTICLE).bind(viewer).bind(&slug),
        None => sqlx::query_as(GET_ARTICLE_ANONYMOUS).bind(&slug),
    };
    let reader = Reader::of(viewer.id(), cache_key.is_some());
    let article: Article = query
        .fetch_optional(&**state.read_db(reader))
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
    article_columns!("a.body", "false AS favorited, false AS following"),
    " FROM a JOIN users u ON u.id = a.author_id"
);

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
    check_fields(
        &mut v,
        Some(title),
        Some(article.description.as_str()),
        Some(article.body.as_str()),
    );
    if let Err(message) = &tags {
        v.check(false, "tagList", message);
    }
    v.finish()?;
    let tags = tags.unwrap_or_default();

    let db = state.db();
    let article = slug::claim(Some(&slugify(title)), |slug| {
        let (db, tags, description, body) =
            (&**db, &tags, article.description.trim(), &article.body);
        async move {
            sqlx::query_as::<_, Article>(CREATE_ARTICLE)
                .bind(auth.id)
                .bind(slug)
                .bind(title)
                .bind(description)
                .bind(body)
                .bind(tags)
                .fetch_optional(db)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                        ApiError::Unauthorized("belongs to no user")
                    }
                    _ => e.into(),
                })
        }
    })
    .await?;
    state
        .cache
        .invalidate(Change::Articles {
            slugs: &[],
            tags: !article.tag_list.is_empty(),
        })
        .await;
    Ok((StatusCode::CREATED, axum::Json(ArticleResponse { article })))
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

/// The rules of an article's text fields, for those present (all of them on create).
fn check_fields(
    v: &mut Validator,
    title: Option<&str>,
    description: Option<&str>,
    body: Option<&str>,
) {
    let mut field =
        |name: &'static str, value: Option<&str>, max: usize, too_long: &'static str| {
            if let Some(value) = value {
                v.check(!value.trim().is_empty(), name, "can't be blank")
                    .check(
                        validate::storable(value),
                        name,
                        "must not contain NUL characters",
                    )
                    .check(validate::within(value, max), name, too_long);
            }
        };
    field(
        "title",
        title,
        validate::TITLE_MAX,
        "is too long (at most 256 characters)",
    );
    field(
        "description",
        description,
        validate::DESCRIPTION_MAX,
        "is too long (at most 1024 characters)",
    );
    field(
        "body",
        body,
        validate::BODY_MAX,
        "is too long (at most 131072 characters)",
    );
}

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
    );
    check_fields(&mut v, title, description, article.body.as_deref());
    if let Err(message) = &tags {
        v.check(false, "tagList", message);
    }
    v.finish()?;
    let tags = tags.unwrap_or_default();

    // The slug only changes when the title gives a different one; it stays stable otherwise
    // (a slug with a collision suffix still belongs to its title).
    let base = title.map(slugify).filter(|new| !belongs_to(&slug, new));
    let db = state.db();
    let row = slug::claim(base.as_deref(), |new_slug| {
        let (db, slug, tags, body) = (&**db, &slug, &tags, article.body.as_deref());
        async move {
            let result = sqlx::query(UPDATE_ARTICLE)
                .bind(auth.id)
                .bind(slug)
                .bind(title)
                .bind(description)
                .bind(body)
                .bind(tags.as_ref())
                .bind(new_slug)
                .fetch_optional(db)
                .await;
            match result {
                Err(sqlx::Error::Database(db)) if db.constraint() == Some("articles_slug_key") => {
                    Ok(None)
                }
                other => Ok(Some(other?.ok_or(ApiError::NotFound("article"))?)),
            }
        }
    })
    .await?;
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
    Ok(axum::Json(ArticleResponse { article }))
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
