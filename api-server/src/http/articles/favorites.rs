//! Favorites. Both statements keep `articles.favorites_count` exact: the counter moves
//! only when the favorite row was really inserted or deleted, in the same statement.

use axum::extract::{Path, State};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::cache::Change;
use crate::error::{ApiError, ApiResult};
use crate::http::types::{Article, ArticleResponse};
use crate::state::AppState;

/// The favorite/unfavorite statement: `$change` inserts or deletes the caller's favorite
/// and returns the article id when it did; the counter moves by `$delta` only then.
macro_rules! favorite_statement {
    ($change:literal, $delta:literal, $favorited:literal) => {
        concat!(
            "WITH target AS (SELECT id FROM articles WHERE slug = $2),
          changed AS (",
            $change,
            "),
          counted AS (
              UPDATE articles SET favorites_count = favorites_count ",
            $delta,
            "
              WHERE id IN (SELECT article_id FROM changed) RETURNING favorites_count)
     SELECT a.slug, a.title, a.description, a.body, a.tag_list, a.created_at, a.updated_at,
            COALESCE((SELECT favorites_count FROM counted), a.favorites_count) AS favorites_count,
            u.username, u.bio, u.image, ",
            $favorited,
            " AS favorited,
            EXISTS (SELECT 1 FROM follows fo WHERE fo.followed_id = a.author_id AND fo.follower_id = $1) AS following
     FROM target JOIN articles a ON a.id = target.id JOIN users u ON u.id = a.author_id"
        )
    };
}

const FAVORITE: &str = favorite_statement!(
    "INSERT INTO favorites (user_id, article_id) SELECT $1, id FROM target
              ON CONFLICT DO NOTHING RETURNING article_id",
    "+ 1",
    "true"
);

const UNFAVORITE: &str = favorite_statement!(
    "DELETE FROM favorites f USING target
              WHERE f.user_id = $1 AND f.article_id = target.id RETURNING f.article_id",
    "- 1",
    "false"
);

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
pub(super) async fn favorite(
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
pub(super) async fn unfavorite(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(slug): Path<String>,
) -> ApiResult<axum::Json<ArticleResponse>> {
    set_favorite(&state, auth.id, &slug, UNFAVORITE).await
}
