//! The console's sessions: a token in an HttpOnly, `SameSite=Strict` cookie scoped to
//! `/admin` (only its hash is stored), ended when idle (`STOA_CONSOLE_SESSION_IDLE`), at
//! its absolute end (`STOA_CONSOLE_SESSION_LIFETIME`), by "sign out everywhere", or as
//! soon as the account is disabled or no longer an admin. Each session has a CSRF token
//! that every form carries (OWASP CSRF cheat sheet, "synchronizer token pattern"); the
//! sign-in form, before any session, uses a double-submit cookie instead.

use axum::extract::FromRequestParts;
use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use cookie::SameSite;
use uuid::Uuid;

use crate::auth::refresh;
use crate::error::ApiResult;
use crate::http::cookies::{constant_time_eq, value as cookie_value};
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "__Secure-stoa-console";
/// The sign-in form's double-submit token, before there is a session.
pub const SIGN_IN_COOKIE: &str = "__Secure-stoa-console-sign-in";
const PATH: &str = "/admin";

/// A signed-in admin, as every console page after sign-in requires.
#[derive(Debug, Clone)]
pub struct ConsoleAdmin {
    pub user_id: Uuid,
    pub username: String,
    /// What this session's forms must carry.
    pub csrf: String,
}

impl ConsoleAdmin {
    /// The bar at the top of each page.
    pub fn header(&self) -> super::pages::Header<'_> {
        super::pages::Header {
            username: &self.username,
            csrf: &self.csrf,
        }
    }

    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        constant_time_eq(self.csrf.as_bytes(), presented.as_bytes())
    }
}

/// Where a page without a live admin session sends the browser.
pub struct SignInFirst;

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        Redirect::to("/admin/login").into_response()
    }
}

impl FromRequestParts<AppState> for ConsoleAdmin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(token) = cookie_value(&parts.headers, SESSION_COOKIE) else {
            return Err(SignInFirst.into_response());
        };
        let console = &state.config.console;
        // Live only while idle less than the idle limit, before its absolute end, and
        // while the account is an enabled admin; each use slides the idle limit.
        let found: Option<(Uuid, String, String)> = sqlx::query_as(
            "UPDATE console_sessions s SET last_seen_at = now()
             FROM users u
             WHERE s.token_hash = $1 AND u.id = s.user_id
               AND s.last_seen_at > now() - make_interval(secs => $2) AND s.expires_at > now()
               AND u.role = 'admin' AND u.disabled_at IS NULL
             RETURNING s.user_id, u.username, s.csrf_token",
        )
        .bind(refresh::hash(token))
        .bind(console.session_idle.as_secs_f64())
        .fetch_optional(&**state.db())
        .await
        .map_err(|e| super::pages::failure(&e.into()))?;
        match found {
            Some((user_id, username, csrf)) => Ok(ConsoleAdmin {
                user_id,
                username,
                csrf,
            }),
            None => Err(SignInFirst.into_response()),
        }
    }
}

/// Starts a console session for `user_id`; the `Set-Cookie` that carries it.
pub async fn start(state: &AppState, user_id: Uuid) -> ApiResult<HeaderValue> {
    let token = refresh::generate();
    let csrf = refresh::generate().token;
    let lifetime = state.config.console.session_lifetime;
    sqlx::query(
        "INSERT INTO console_sessions (token_hash, user_id, csrf_token, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(&token.hash)
    .bind(user_id)
    .bind(&csrf)
    .bind(lifetime.as_secs_f64())
    .execute(&**state.db())
    .await?;
    Ok(set_cookie(SESSION_COOKIE, &token.token, Some(lifetime)))
}

/// Ends every console session of `user_id` ("sign out everywhere").
pub async fn end_all(state: &AppState, user_id: Uuid) -> ApiResult<u64> {
    Ok(
        sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&**state.db())
            .await?
            .rows_affected(),
    )
}

/// `Set-Cookie` for `name` on the console's path: HttpOnly, Secure, `SameSite=Strict`;
/// `None` deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: Option<std::time::Duration>) -> HeaderValue {
    crate::http::cookies::set(name, value, PATH, SameSite::Strict, max_age)
}
