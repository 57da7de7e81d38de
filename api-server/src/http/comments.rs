//! Comments on articles. Lists are newest first, like article lists.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{AuthUser, MaybeAuthUser};
use crate::error::{ApiError, ApiResult, Validator};
use crate::http::extract::ApiJson;
use crate::http::types::{Comment, CommentResponse, CommentsResponse, NewCommentRequest};
use crate::http::validate;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_comments, add_comment))
        .routes(routes!(delete_comment))
}

/// Comments on an article, newest first.
#[utoipa::path(get, path = "/api/articles/{slug}/comments", tag = "comments",
    params(("slug" = String, Path)),
    responses((status = 200, body = CommentsResponse), (status = 404)))]
async fn list_comments(
    State(state): State<AppState>,
    viewer: MaybeAuthUser,
    Path(slug): Path<String>,
) -> ApiResult<axum::Json<CommentsResponse>> {
    // The LEFT JOIN tells "no such article" (no row) from "no comments" (one row of NULLs).
    let rows: Vec<PgRow> = sqlx::query(
        "SELECT c.id, c.created_at, c.updated_at, c.body, u.username, u.bio, u.image,
                EXISTS (SELECT 1 FROM follows fo WHERE fo.followed_id = c.author_id AND fo.follower_id = $2::uuid) AS following
         FROM articles a
         LEFT JOIN comments c ON c.article_id = a.id
         LEFT JOIN users u ON u.id = c.author_id
         WHERE a.slug = $1
         ORDER BY c.created_at DESC, c.id DESC",
    )
    .bind(&slug)
    .bind(viewer.id())
    .fetch_all(&**state.db())
    .await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound("article"));
    }
    let mut comments = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<Option<i64>, _>("id")?.is_some() {
            comments.push(Comment::from_row(row)?);
        }
    }
    Ok(axum::Json(CommentsResponse { comments }))
}

/// Comment on an article.
#[utoipa::path(post, path = "/api/articles/{slug}/comments", tag = "comments",
    security(("token" = [])),
    params(("slug" = String, Path)),
    request_body = NewCommentRequest,
    responses((status = 200, body = CommentResponse), (status = 401), (status = 404), (status = 422)))]
async fn add_comment(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(slug): Path<String>,
    ApiJson(NewCommentRequest { comment }): ApiJson<NewCommentRequest>,
) -> ApiResult<axum::Json<CommentResponse>> {
    Validator::default()
        .check(!comment.body.trim().is_empty(), "body", "can't be blank")
        .check(
            comment.body.len() <= validate::COMMENT_MAX,
            "body",
            "is too long (at most 16 KiB)",
        )
        .finish()?;
    let comment: Comment = sqlx::query_as(
        "WITH c AS (
             INSERT INTO comments (article_id, author_id, body)
             SELECT id, $1, $3 FROM articles WHERE slug = $2
             RETURNING *)
         SELECT c.id, c.created_at, c.updated_at, c.body, u.username, u.bio, u.image, false AS following
         FROM c JOIN users u ON u.id = c.author_id",
    )
    .bind(auth.id)
    .bind(&slug)
    .bind(&comment.body)
    .fetch_optional(&**state.db())
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => ApiError::Unauthorized("belongs to no user"),
        _ => e.into(),
    })?
    .ok_or(ApiError::NotFound("article"))?;
    Ok(axum::Json(CommentResponse { comment }))
}

/// Delete a comment (its author only).
#[utoipa::path(delete, path = "/api/articles/{slug}/comments/{id}", tag = "comments",
    security(("token" = [])),
    params(("slug" = String, Path), ("id" = i64, Path)),
    responses((status = 204), (status = 401), (status = 403), (status = 404)))]
async fn delete_comment(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((slug, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound("comment"))?;
    let owner: Uuid = sqlx::query_scalar(
        "WITH target AS (
             SELECT c.id, c.author_id FROM comments c JOIN articles a ON a.id = c.article_id
             WHERE a.slug = $2 AND c.id = $3),
              gone AS (DELETE FROM comments c USING target WHERE c.id = target.id AND target.author_id = $1)
         SELECT author_id FROM target",
    )
    .bind(auth.id)
    .bind(&slug)
    .bind(id)
    .fetch_optional(&**state.db())
    .await?
    .ok_or(ApiError::NotFound("comment"))?;
    if owner != auth.id {
        return Err(ApiError::Forbidden("comment"));
    }
    Ok(StatusCode::NO_CONTENT)
}
