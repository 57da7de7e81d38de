//! Security events as stored (`auth::security_log`): newest first, filterable by event
//! and by account, paged by cursor.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use crate::metrics::SecurityEvent;
use crate::state::AppState;

use super::pages::{PAGE, failure, next_page, one_page, page, respond, urlencode};
use super::session::ConsoleAdmin;

#[derive(Deserialize, Default)]
pub struct EventQuery {
    #[serde(default)]
    event: Option<String>,
    /// An account's username.
    #[serde(default)]
    user: Option<String>,
    /// Events older than this one (its id).
    #[serde(default)]
    before: Option<i64>,
}

#[derive(sqlx::FromRow)]
pub struct Event {
    id: i64,
    at: DateTime<Utc>,
    event: String,
    username: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    admin: ConsoleAdmin,
    Query(query): Query<EventQuery>,
) -> Response {
    let event = query
        .event
        .as_deref()
        .filter(|e| SecurityEvent::ALL.iter().any(|known| known.as_str() == *e));
    let user = query
        .user
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let events: Result<Vec<Event>, _> = sqlx::query_as(
        "SELECT e.id, e.at, e.event, u.username FROM security_events e
         LEFT JOIN users u ON u.id = e.user_id
         WHERE ($1::text IS NULL OR e.event = $1) AND ($2::text IS NULL OR u.username = $2)
           AND ($3::bigint IS NULL OR e.id < $3)
         ORDER BY e.id DESC LIMIT $4",
    )
    .bind(event)
    .bind(user)
    .bind(query.before)
    .bind(PAGE + 1)
    .fetch_all(&**state.db())
    .await;
    let mut events = match events {
        Ok(events) => events,
        Err(e) => return failure(&e.into()),
    };
    let more = one_page(&mut events);
    let next = events.last().filter(|_| more).map(|last| {
        next_page(
            "/admin/events",
            &[("event", event), ("user", user)],
            ("before", &last.id.to_string()),
        )
    });
    let body = html! {
        form.search method="get" action="/admin/events" role="search" {
            label for="event" { "Event" }
            select #event name="event" {
                option value="" { "Any" }
                @for known in SecurityEvent::ALL {
                    option value=(known.as_str()) selected[Some(known.as_str()) == event] { (known.as_str()) }
                }
            }
            label for="user" { "Account" }
            input #user name="user" value=(user.unwrap_or(""));
            button type="submit" { "Filter" }
        }
        (table(&events))
        @if let Some(next) = next { p { a href=(next) rel="next" { "Older events" } } }
    };
    respond(
        StatusCode::OK,
        page("Security events", Some(admin.header()), body),
    )
}

/// Events as a table (also on a user's page).
pub fn table(events: &[Event]) -> Markup {
    html! {
        @if events.is_empty() { p { "No event." } } @else {
            table {
                thead { tr { th scope="col" { "When" } th scope="col" { "Event" } th scope="col" { "Account" } } }
                tbody { @for e in events { tr {
                    td { (e.at.format("%Y-%m-%d %H:%M:%S UTC")) }
                    td { (e.event) }
                    td { @if let Some(name) = &e.username {
                        a href=(format!("/admin/users/{}", urlencode(name))) { (name) }
                    } }
                } } }
            }
        }
    }
}

/// The newest events of one account.
pub async fn of_user(state: &AppState, user_id: uuid::Uuid) -> Result<Vec<Event>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.id, e.at, e.event, u.username FROM security_events e
         JOIN users u ON u.id = e.user_id
         WHERE e.user_id = $1 ORDER BY e.id DESC LIMIT 20",
    )
    .bind(user_id)
    .fetch_all(&**state.db())
    .await
}
