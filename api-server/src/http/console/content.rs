//! Articles and comments: search, view, remove with a reason (kept in the audit log),
//! through the same functions as `DELETE /api/admin/…` (`http::admin`).

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::html;
use serde::Deserialize;

use crate::auth::audit::REASON_MAX;
use crate::error::ApiError;
use crate::http::admin::{apply_article_removal, apply_comment_removal};
use crate::state::AppState;
use crate::validate;

use super::pages::{
    PAGE, contains_pattern, csrf_refused, failure, next_page, one_page, page, respond, search_term,
    urlencode,
};
use super::session::ConsoleAdmin;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    /// Part of a title, or an author's username.
    #[serde(default)]
    q: Option<String>,
    /// The last article of the previous page (its id).
    #[serde(default)]
    after: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct Listed {
    id: i64,
    slug: String,
    title: String,
    author: String,
    created_at: DateTime<Utc>,
    comments: i64,
}

pub async fn list(
    State(state): State<AppState>,
    admin: ConsoleAdmin,
    Query(query): Query<ListQuery>,
) -> Response {
    let q = search_term(query.q.as_deref(), 256);
    let rows: Result<Vec<Listed>, _> = sqlx::query_as(
        "SELECT a.id, a.slug, a.title, u.username AS author, a.created_at,
                (SELECT count(*) FROM comments c WHERE c.article_id = a.id) AS comments
         FROM articles a JOIN users u ON u.id = a.author_id
         WHERE ($1::text IS NULL OR a.title ILIKE $1 OR u.username ILIKE $1)
           AND ($2::bigint IS NULL OR (a.created_at, a.id) < (SELECT created_at, id FROM articles WHERE id = $2))
         ORDER BY a.created_at DESC, a.id DESC LIMIT $3",
    )
    .bind(q.map(contains_pattern))
    .bind(query.after)
    .bind(PAGE + 1)
    .fetch_all(&**state.db())
    .await;
    let mut rows = match rows {
        Ok(rows) => rows,
        Err(e) => return failure(&e.into()),
    };
    let more = one_page(&mut rows);
    let next = rows.last().filter(|_| more).map(|last| {
        next_page(
            "/admin/articles",
            &[("q", q)],
            ("after", &last.id.to_string()),
        )
    });
    let body = html! {
        form.search method="get" action="/admin/articles" role="search" {
            label for="q" { "Title or author contains" }
            input #q type="search" name="q" value=(q.unwrap_or(""));
            button type="submit" { "Search" }
        }
        @if rows.is_empty() { p { "No article matches." } } @else {
            table {
                thead { tr {
                    th scope="col" { "Title" } th scope="col" { "Author" }
                    th scope="col" { "Comments" } th scope="col" { "Published" }
                } }
                tbody { @for row in &rows { tr {
                    th scope="row" { a href=(format!("/admin/articles/{}", urlencode(&row.slug))) { (row.title) } }
                    td { (row.author) } td { (row.comments) }
                    td { (row.created_at.format("%Y-%m-%d %H:%M")) }
                } } }
            }
        }
        @if let Some(next) = next { p { a href=(next) rel="next" { "Next page" } } }
    };
    respond(StatusCode::OK, page("Articles", Some(admin.header()), body))
}

#[derive(sqlx::FromRow)]
struct Article {
    slug: String,
    title: String,
    description: String,
    body: String,
    author: String,
    created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Comment {
    id: i64,
    author: String,
    body: String,
    created_at: DateTime<Utc>,
}

pub async fn view(
    State(state): State<AppState>,
    admin: ConsoleAdmin,
    Path(slug): Path<String>,
) -> Response {
    let article: Result<Option<Article>, _> = sqlx::query_as(
        "SELECT a.slug, a.title, a.description, a.body, u.username AS author, a.created_at
         FROM articles a JOIN users u ON u.id = a.author_id WHERE a.slug = $1",
    )
    .bind(&slug)
    .fetch_optional(&**state.db())
    .await;
    let article = match article {
        Ok(Some(article)) => article,
        Ok(None) => return failure(&ApiError::NotFound("article")),
        Err(e) => return failure(&e.into()),
    };
    let comments: Result<Vec<Comment>, _> = sqlx::query_as(
        "SELECT c.id, u.username AS author, c.body, c.created_at
         FROM comments c JOIN articles a ON a.id = c.article_id JOIN users u ON u.id = c.author_id
         WHERE a.slug = $1 ORDER BY c.created_at DESC, c.id DESC LIMIT 200",
    )
    .bind(&slug)
    .fetch_all(&**state.db())
    .await;
    let comments = match comments {
        Ok(comments) => comments,
        Err(e) => return failure(&e.into()),
    };
    let base = format!("/admin/articles/{}", urlencode(&article.slug));
    let removal = |action: String, label: String, field: String| {
        html! {
            form.removal method="post" action=(action) {
                input type="hidden" name="csrf" value=(admin.csrf);
                label for=(field) { "Reason" }
                input id=(field) name="reason" required maxlength=(REASON_MAX);
                button type="submit" { (label) }
            }
        }
    };
    let body = html! {
        p { "By " strong { (article.author) } ", " (article.created_at.format("%Y-%m-%d %H:%M UTC")) }
        p.description { (article.description) }
        // The body as text: shown, never rendered as markup.
        pre.body { (article.body) }
        (removal(format!("{base}/remove"), "Remove the article".into(), "reason-article".into()))
        h2 { "Comments (" (comments.len()) ")" }
        @if comments.is_empty() { p { "None." } }
        @for comment in &comments {
            article.comment aria-label=(format!("Comment {}", comment.id)) {
                p { strong { (comment.author) } ", " (comment.created_at.format("%Y-%m-%d %H:%M UTC")) }
                p { (comment.body) }
                (removal(
                    format!("{base}/comments/{}/remove", comment.id),
                    format!("Remove comment {}", comment.id),
                    format!("reason-{}", comment.id),
                ))
            }
        }
    };
    respond(
        StatusCode::OK,
        page(&article.title, Some(admin.header()), body),
    )
}

#[derive(Deserialize)]
pub struct RemovalForm {
    csrf: String,
    reason: String,
}

impl RemovalForm {
    fn reason(&self) -> Result<&str, ApiError> {
        let reason = self.reason.trim();
        if reason.is_empty() || !validate::within(reason, REASON_MAX) {
            return Err(ApiError::field(
                "reason",
                "is required (at most 1000 characters)",
            ));
        }
        Ok(reason)
    }
}

pub async fn remove_article(
    State(state): State<AppState>,
    admin: ConsoleAdmin,
    Path(slug): Path<String>,
    Form(form): Form<RemovalForm>,
) -> Response {
    if !admin.csrf_matches(&form.csrf) {
        return csrf_refused();
    }
    let removed = match form.reason() {
        Ok(reason) => apply_article_removal(&state, admin.user_id, &slug, Some(reason)).await,
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => Redirect::to("/admin/articles").into_response(),
        Err(e) => failure(&e),
    }
}

pub async fn remove_comment(
    State(state): State<AppState>,
    admin: ConsoleAdmin,
    Path((slug, id)): Path<(String, i64)>,
    Form(form): Form<RemovalForm>,
) -> Response {
    if !admin.csrf_matches(&form.csrf) {
        return csrf_refused();
    }
    let removed = match form.reason() {
        Ok(reason) => apply_comment_removal(&state, admin.user_id, &slug, id, Some(reason)).await,
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => Redirect::to(&format!("/admin/articles/{}", urlencode(&slug))).into_response(),
        Err(e) => failure(&e),
    }
}
