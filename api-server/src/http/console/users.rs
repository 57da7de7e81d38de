//! Users: search by name or email, filter (disabled, admins, MFA on), page by cursor; a
//! user's page with their sessions and linked identities; and the admin actions, each
//! through the same functions as `/api/admin/*` (`http::admin`).

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Role;
use crate::auth::accounts::Change;
use crate::error::ApiError;
use crate::http::admin::{apply_change, apply_end_sessions, apply_mfa_reset};
use crate::state::AppState;

use super::pages::{
    PAGE, contains_pattern, csrf_refused, failure, next_page, one_page, page, respond, search_term,
    urlencode,
};
use super::session::ConsoleAdmin;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    /// Part of a username or email.
    #[serde(default)]
    q: Option<String>,
    /// `disabled`, `admins` or `mfa`.
    #[serde(default)]
    only: Option<String>,
    /// The last user of the previous page (its id).
    #[serde(default)]
    after: Option<Uuid>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    username: String,
    email: String,
    role: String,
    disabled_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    mfa: bool,
}

pub async fn list(
    State(state): State<AppState>,
    admin: ConsoleAdmin,
    Query(query): Query<ListQuery>,
) -> Response {
    let q = search_term(query.q.as_deref(), 254);
    let only = query.only.as_deref().unwrap_or("");
    // Newest first; the next page starts after the last row (created_at, id), so pages
    // stay stable while users sign up.
    let rows: Result<Vec<Row>, _> = sqlx::query_as(
        "SELECT u.id, u.username, u.email, u.role, u.disabled_at, u.created_at,
                EXISTS (SELECT 1 FROM user_totp t WHERE t.user_id = u.id AND t.confirmed_at IS NOT NULL) AS mfa
         FROM users u
         WHERE ($1::text IS NULL OR u.username ILIKE $1 OR u.email ILIKE $1)
           AND ($2 <> 'disabled' OR u.disabled_at IS NOT NULL)
           AND ($2 <> 'admins' OR u.role = 'admin')
           AND ($2 <> 'mfa' OR EXISTS (SELECT 1 FROM user_totp t WHERE t.user_id = u.id AND t.confirmed_at IS NOT NULL))
           AND ($3::uuid IS NULL OR (u.created_at, u.id) < (SELECT created_at, id FROM users WHERE id = $3))
         ORDER BY u.created_at DESC, u.id DESC
         LIMIT $4",
    )
    .bind(q.map(contains_pattern))
    .bind(only)
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
            "/admin/users",
            &[("q", q), ("only", Some(only))],
            ("after", &last.id.to_string()),
        )
    });
    let body = list_markup(&rows, q, only, next.as_deref());
    respond(StatusCode::OK, page("Users", Some(admin.header()), body))
}

/// The users page's search form, its table and the link to the next page.
fn list_markup(rows: &[Row], q: Option<&str>, only: &str, next: Option<&str>) -> Markup {
    let filters = [
        ("", "All"),
        ("disabled", "Disabled"),
        ("admins", "Admins"),
        ("mfa", "MFA on"),
    ];
    html! {
        form.search method="get" action="/admin/users" role="search" {
            label for="q" { "Name or email contains" }
            input #q type="search" name="q" value=(q.unwrap_or(""));
            label for="only" { "Show" }
            select #only name="only" {
                @for (value, label) in filters {
                    option value=(value) selected[value == only] { (label) }
                }
            }
            button type="submit" { "Search" }
        }
        @if rows.is_empty() {
            p { "No user matches." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Username" } th scope="col" { "Email" } th scope="col" { "Role" }
                    th scope="col" { "MFA" } th scope="col" { "State" } th scope="col" { "Joined" }
                } }
                tbody {
                    @for row in rows {
                        tr {
                            th scope="row" { a href=(format!("/admin/users/{}", urlencode(&row.username))) { (row.username) } }
                            td { (row.email) }
                            td { (row.role) }
                            td { @if row.mfa { "on" } @else { "off" } }
                            td class=(if row.disabled_at.is_some() { "bad" } else { "" }) {
                                @if row.disabled_at.is_some() { "disabled" } @else { "enabled" }
                            }
                            td { (row.created_at.format("%Y-%m-%d %H:%M")) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next {
            p { a href=(next) rel="next" { "Next page" } }
        }
    }
}

#[derive(sqlx::FromRow)]
struct Detail {
    id: Uuid,
    username: String,
    email: String,
    role: String,
    disabled_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    mfa: bool,
    has_password: bool,
}

#[derive(sqlx::FromRow)]
struct Session {
    started: DateTime<Utc>,
    last_refresh: DateTime<Utc>,
    ends: Option<DateTime<Utc>>,
}

#[derive(Deserialize, Default)]
pub struct DetailQuery {
    /// The action just done, to confirm it.
    #[serde(default)]
    done: Option<String>,
}

pub async fn detail(
    State(state): State<AppState>,
    admin: ConsoleAdmin,
    Path(username): Path<String>,
    Query(query): Query<DetailQuery>,
) -> Response {
    let found: Result<Option<Detail>, _> = sqlx::query_as(
        "SELECT u.id, u.username, u.email, u.role, u.disabled_at, u.created_at,
                EXISTS (SELECT 1 FROM user_totp t WHERE t.user_id = u.id AND t.confirmed_at IS NOT NULL) AS mfa,
                u.password_hash <> '' AS has_password
         FROM users u WHERE u.username = $1",
    )
    .bind(&username)
    .fetch_optional(&**state.db())
    .await;
    let user = match found {
        Ok(Some(user)) => user,
        Ok(None) => return failure(&ApiError::NotFound("user")),
        Err(e) => return failure(&e.into()),
    };
    // Live sessions: refresh-token families not revoked and not expired.
    let sessions: Result<Vec<Session>, _> = sqlx::query_as(
        "SELECT min(created_at) AS started, max(created_at) AS last_refresh, max(session_expires_at) AS ends
         FROM refresh_tokens WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()
         GROUP BY family_id ORDER BY max(created_at) DESC LIMIT 50",
    )
    .bind(user.id)
    .fetch_all(&**state.db())
    .await;
    let identities: Result<Vec<(String, Option<String>)>, _> = sqlx::query_as(
        "SELECT provider, email FROM user_identities WHERE user_id = $1 ORDER BY linked_at",
    )
    .bind(user.id)
    .fetch_all(&**state.db())
    .await;
    let events = super::events::of_user(&state, user.id).await;
    let (sessions, identities, events) = match (sessions, identities, events) {
        (Ok(s), Ok(i), Ok(e)) => (s, i, e),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return failure(&e.into()),
    };
    let own = user.id == admin.user_id;
    let body = html! {
        @if let Some(done) = query.done.as_deref().and_then(confirmation) {
            p.done role="status" { (done) }
        }
        dl {
            dt { "Email" } dd { (user.email) }
            dt { "Role" } dd { (user.role) }
            dt { "State" } dd { @if let Some(at) = user.disabled_at { "disabled since " (time(&at)) } @else { "enabled" } }
            dt { "Second factor" } dd { @if user.mfa { "on" } @else { "off" } }
            dt { "Password" } dd { @if user.has_password { "set" } @else { "none (signs in with a provider)" } }
            dt { "Joined" } dd { (time(&user.created_at)) }
        }
        h2 { "Sessions (" (sessions.len()) ")" }
        (sessions_markup(&sessions))
        h2 { "Identity providers" }
        @if identities.is_empty() { p { "None linked." } } @else {
            ul { @for (provider, email) in &identities { li { (provider) @if let Some(email) = email { " (" (email) ")" } } } }
        }
        h2 { "Security events" }
        (super::events::table(&events))
        p { a href=(format!("/admin/events?user={}", urlencode(&user.username))) { "All of this account's events" } }
        (actions_markup(&user, own, !sessions.is_empty(), &admin.csrf))
    };
    respond(
        StatusCode::OK,
        page(&user.username, Some(admin.header()), body),
    )
}

fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A user's live sessions.
fn sessions_markup(sessions: &[Session]) -> Markup {
    html! {
        @if sessions.is_empty() { p { "No live session." } } @else {
            table {
                thead { tr { th scope="col" { "Signed in" } th scope="col" { "Last refresh" } th scope="col" { "Ends" } } }
                tbody { @for s in sessions { tr {
                    td { (time(&s.started)) } td { (time(&s.last_refresh)) }
                    td { (s.ends.as_ref().map(time).unwrap_or_default()) }
                } } }
            }
        }
    }
}

/// The actions that apply to `user` now, each a form with the session's CSRF token.
fn actions_markup(user: &Detail, own: bool, has_sessions: bool, csrf: &str) -> Markup {
    let path = format!("/admin/users/{}", urlencode(&user.username));
    html! {
        h2 { "Actions" }
        @if own {
            p { "This is your own account: another admin disables or demotes it." }
        }
        div.actions {
            @let forms: Vec<(&str, &str, bool)> = vec![
                ("disable", "Disable the account", user.disabled_at.is_none() && !own),
                ("enable", "Enable the account", user.disabled_at.is_some()),
                ("grant-admin", "Make admin", user.role != "admin"),
                ("revoke-admin", "Withdraw admin", user.role == "admin" && !own),
                ("reset-mfa", "Reset the second factor", user.mfa),
                ("end-sessions", "End all sessions", has_sessions),
            ];
            @for (name, label, shown) in forms {
                @if shown {
                    form method="post" action=(format!("{path}/{name}")) {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { (label) }
                    }
                }
            }
        }
    }
}

/// What the page says after `action` (only the known ones: the address is not trusted).
fn confirmation(action: &str) -> Option<&'static str> {
    Some(match action {
        "disable" => "The account is disabled and its sessions ended.",
        "enable" => "The account is enabled.",
        "grant-admin" => "The account is an admin now (from its next sign-in or refresh).",
        "revoke-admin" => "The account is no longer an admin; its sessions ended.",
        "reset-mfa" => "The second factor is off and the sessions ended.",
        "end-sessions" => "Every session of the account ended.",
        _ => return None,
    })
}

#[derive(Deserialize)]
pub struct ActionForm {
    csrf: String,
}

/// One of the user page's actions; back to the page, which confirms it.
pub async fn act(
    State(state): State<AppState>,
    admin: ConsoleAdmin,
    Path((username, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !admin.csrf_matches(&form.csrf) {
        return csrf_refused();
    }
    let who = admin.user_id;
    let result = match action.as_str() {
        "disable" => apply_change(&state, who, &username, Change::Disable)
            .await
            .map(drop),
        "enable" => apply_change(&state, who, &username, Change::Enable)
            .await
            .map(drop),
        "grant-admin" => apply_change(&state, who, &username, Change::SetRole(Role::Admin))
            .await
            .map(drop),
        "revoke-admin" => apply_change(&state, who, &username, Change::SetRole(Role::User))
            .await
            .map(drop),
        "reset-mfa" => apply_mfa_reset(&state, who, &username).await,
        "end-sessions" => apply_end_sessions(&state, who, &username).await.map(drop),
        _ => Err(ApiError::NotFound("action")),
    };
    match result {
        Ok(()) => Redirect::to(&format!(
            "/admin/users/{}?done={action}",
            urlencode(&username)
        ))
        .into_response(),
        Err(e) => failure(&e),
    }
}
