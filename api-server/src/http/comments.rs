//! Comments on articles. Lists are newest first, like article lists.

use crate::api_routes;
use crate::http::routing::RouteTable;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};
use uuid::Uuid;

use crate::auth::{AuthUser, MaybeAuthUser};
use crate::error::{ApiError, ApiResult, Validator};
use crate::http::cursor;
use crate::http::extract::{ApiJson, ApiQuery, CursorPagination};
use crate::http::types::{Comment, CommentResponse, CommentsResponse, NewCommentRequest};
use crate::reads::Reader;
use crate::state::AppState;
use crate::validate;

pub fn router<T: RouteTable>() -> T {
    T::empty()
        .routes(api_routes!(list_comments, add_comment))
        .routes(api_routes!(delete_comment))
}

/// Comments on an article, newest first, one page at a time (default 20, at most 100), so
/// a popular article cannot produce an unbounded response.
#[utoipa::path(get, path = "/api/articles/{slug}/comments", tag = "comments",
    params(("slug" = String, Path), CursorPagination),
    responses((status = 200, body = CommentsResponse), (status = 404), (status = 422)))]
async fn list_comments(
    State(state): State<AppState>,
    viewer: MaybeAuthUser,
    Path(slug): Path<String>,
    ApiQuery(page): ApiQuery<CursorPagination>,
) -> ApiResult<axum::Json<CommentsResponse>> {
    let (limit, offset) = page.pagination().resolve()?;
    let list = cursor::fingerprint(&[Some(b"comments"), Some(slug.as_bytes())]);
    let after = cursor::resolve(&state, page.cursor.as_deref(), offset, list)?;
    // One row even when the article is missing (`found` false) or the page is empty (the
    // comment columns NULL), so one round trip answers all three cases.
    let rows: Vec<PgRow> = sqlx::query(
        "SELECT a.id IS NOT NULL AS found, t.total, p.*
         FROM (SELECT 1) one
         LEFT JOIN articles a ON a.slug = $1
         LEFT JOIN LATERAL (SELECT count(*) AS total FROM comments WHERE article_id = a.id) t ON true
         LEFT JOIN LATERAL (
             SELECT c.id, c.created_at, c.updated_at, c.body, u.username, u.bio, u.image,
                    EXISTS (SELECT 1 FROM follows fo WHERE fo.followed_id = c.author_id AND fo.follower_id = $2::uuid) AS following
             FROM comments c JOIN users u ON u.id = c.author_id
             WHERE c.article_id = a.id
               AND ($5::timestamptz IS NULL OR (c.created_at, c.id) < ($5::timestamptz, $6::bigint))
             ORDER BY c.created_at DESC, c.id DESC
             LIMIT $3 OFFSET $4) p ON true",
    )
    .bind(&slug)
    .bind(viewer.id())
    .bind(limit)
    .bind(offset)
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .fetch_all(&**state.read_db(Reader::of(viewer.id(), false)))
    .await?;
    let Some(first) = rows.first().filter(|r| r.get::<bool, _>("found")) else {
        return Err(ApiError::NotFound("article"));
    };
    let comments_count = first.try_get::<Option<i64>, _>("total")?.unwrap_or(0);
    let mut comments = Vec::with_capacity(rows.len());
    let mut last = None;
    for row in &rows {
        if let Some(id) = row.try_get::<Option<i64>, _>("id")? {
            comments.push(Comment::from_row(row)?);
            last = Some((row.try_get("created_at")?, id));
        }
    }
    let next_cursor = match last {
        Some((created_at, id)) if comments.len() as i64 == limit => cursor::encode(
            state.tokens.ring().cursor_secrets(),
            cursor::Position { created_at, id },
            list,
        ),
        _ => None,
    };
    Ok(axum::Json(CommentsResponse {
        comments,
        comments_count,
        next_cursor,
    }))
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
            validate::within(&comment.body, validate::COMMENT_MAX),
            "body",
            "is too long (at most 16384 characters)",
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
