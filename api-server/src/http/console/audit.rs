//! The admin audit log: every admin action, newest first, filterable by action and by
//! admin, paged by cursor.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::html;
use serde::Deserialize;

use crate::state::AppState;

use super::pages::{PAGE, failure, next_page, one_page, page, respond};
use super::session::ConsoleAdmin;

/// The actions the log records, for the filter.
const ACTIONS: [&str; 10] = [
    "disable_user",
    "enable_user",
    "grant_admin",
    "revoke_admin",
    "reset_mfa",
    "end_sessions",
    "remove_article",
    "remove_comment",
    "retry_job",
    "discard_job",
];

#[derive(Deserialize, Default)]
pub struct LogQuery {
    #[serde(default)]
    action: Option<String>,
    /// The acting admin's username.
    #[serde(default)]
    admin: Option<String>,
    /// Entries older than this one (its id).
    #[serde(default)]
    before: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct Entry {
    id: i64,
    at: DateTime<Utc>,
    admin_name: Option<String>,
    action: String,
    subject: String,
    reason: Option<String>,
}

pub async fn log(
    State(state): State<AppState>,
    admin: ConsoleAdmin,
    Query(query): Query<LogQuery>,
) -> Response {
    let action = query.action.as_deref().filter(|a| ACTIONS.contains(a));
    let by = query
        .admin
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty());
    let entries: Result<Vec<Entry>, _> = sqlx::query_as(
        "SELECT id, at, admin_name, action, subject, reason FROM admin_audit
         WHERE ($1::text IS NULL OR action = $1) AND ($2::text IS NULL OR admin_name = $2)
           AND ($3::bigint IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(action)
    .bind(by)
    .bind(query.before)
    .bind(PAGE + 1)
    .fetch_all(&**state.db())
    .await;
    let mut entries = match entries {
        Ok(entries) => entries,
        Err(e) => return failure(&e.into()),
    };
    let more = one_page(&mut entries);
    let next = entries.last().filter(|_| more).map(|last| {
        next_page(
            "/admin/audit",
            &[("action", action), ("admin", by)],
            ("before", &last.id.to_string()),
        )
    });
    let body = html! {
        form.search method="get" action="/admin/audit" role="search" {
            label for="action" { "Action" }
            select #action name="action" {
                option value="" { "Any" }
                @for a in ACTIONS { option value=(a) selected[Some(a) == action] { (a) } }
            }
            label for="admin" { "Admin" }
            input #admin name="admin" value=(by.unwrap_or(""));
            button type="submit" { "Filter" }
        }
        @if entries.is_empty() { p { "No entry." } } @else {
            table {
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Admin" } th scope="col" { "Action" }
                    th scope="col" { "Subject" } th scope="col" { "Reason" }
                } }
                tbody { @for e in &entries { tr {
                    td { (e.at.format("%Y-%m-%d %H:%M:%S UTC")) }
                    td { (e.admin_name.as_deref().unwrap_or("command line")) }
                    td { (e.action) } td { (e.subject) }
                    td { (e.reason.as_deref().unwrap_or("")) }
                } } }
            }
        }
        @if let Some(next) = next { p { a href=(next) rel="next" { "Older entries" } } }
    };
    respond(
        StatusCode::OK,
        page("Audit log", Some(admin.header()), body),
    )
}
