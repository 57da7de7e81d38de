//! Signing in to the console: the password (the API's own check, its budgets and its
//! answers), then the TOTP challenge when the account has one, for admins only; and
//! signing out everywhere.

use axum::Extension;
use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::refresh;
use crate::error::ApiError;
use crate::http::cookies::{constant_time_eq, value as cookie_value};
use crate::http::mfa::{answer_challenge, new_challenge};
use crate::http::middleware::ClientIp;
use crate::http::sessions::{PasswordChecked, check_password, limit_credentials, security_event};
use crate::metrics::SecurityEvent;
use crate::state::AppState;
use crate::validate;

use super::pages::{csrf_refused, failure, page, respond};
use super::session::{self, ConsoleAdmin, SIGN_IN_COOKIE};

/// How long the sign-in form (and its second step) stays valid.
const SIGN_IN_FORM_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 60);

#[derive(Deserialize)]
pub struct PasswordForm {
    email: String,
    password: String,
    csrf: String,
}

#[derive(Deserialize)]
pub struct CodeForm {
    challenge: String,
    code: String,
    csrf: String,
}

#[derive(Deserialize)]
pub struct SignOutForm {
    csrf: String,
}

/// The sign-in form, with a fresh double-submit token in the form and in a cookie.
pub async fn form() -> Response {
    sign_in_page(StatusCode::OK, None)
}

fn sign_in_page(status: StatusCode, message: Option<&str>) -> Response {
    let token = refresh::generate().token;
    let body = html! {
        @if let Some(message) = message { p.error role="alert" { (message) } }
        form method="post" action="/admin/login" {
            input type="hidden" name="csrf" value=(token);
            label for="email" { "Email" }
            input #email type="email" name="email" autocomplete="username" required autofocus;
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="current-password" required;
            button type="submit" { "Sign in" }
        }
    };
    with_sign_in_cookie(respond(status, page("Sign in", None, body)), &token)
}

fn with_sign_in_cookie(mut response: Response, token: &str) -> Response {
    response.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(SIGN_IN_COOKIE, token, Some(SIGN_IN_FORM_TTL)),
    );
    response
}

/// The double-submit check of the sign-in forms: the form's token is the cookie's.
fn same_browser(headers: &HeaderMap, presented: &str) -> bool {
    cookie_value(headers, SIGN_IN_COOKIE)
        .is_some_and(|cookie| constant_time_eq(cookie.as_bytes(), presented.as_bytes()))
}

/// The password step.
pub async fn password(
    State(state): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    if !same_browser(&headers, &form.csrf) {
        return csrf_refused();
    }
    if form.email.trim().is_empty()
        || form.password.is_empty()
        || !validate::within(&form.password, validate::PASSWORD_MAX)
    {
        return sign_in_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("Enter your email and password."),
        );
    }
    let checked = match limit_credentials(&state, ip).await {
        Ok(()) => check_password(&state, ip, &form.email, form.password).await,
        Err(e) => Err(e),
    };
    let PasswordChecked { row, mfa } = match checked {
        Ok(checked) => checked,
        Err(ApiError::InvalidCredentials) => {
            return sign_in_page(StatusCode::UNAUTHORIZED, Some("Wrong email or password."));
        }
        Err(e) => return failure(&e),
    };
    let user_id = row.user.id;
    if row.role != "admin" {
        return not_an_admin(&state, user_id);
    }
    if !mfa {
        return signed_in(&state, user_id).await;
    }
    match new_challenge(&state, user_id).await {
        Ok(challenge) => code_page(StatusCode::OK, &challenge.token, &form.csrf, None),
        Err(e) => failure(&e),
    }
}

fn code_page(status: StatusCode, challenge: &str, csrf: &str, message: Option<&str>) -> Response {
    let body: Markup = html! {
        @if let Some(message) = message { p.error role="alert" { (message) } }
        form method="post" action="/admin/login/mfa" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="challenge" value=(challenge);
            label for="code" { "Code from your authenticator app (or a recovery code)" }
            input #code name="code" inputmode="numeric" autocomplete="one-time-code" required autofocus;
            button type="submit" { "Verify" }
        }
    };
    respond(status, page("Second factor", None, body))
}

/// The second-factor step.
pub async fn code(
    State(state): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    if !same_browser(&headers, &form.csrf) {
        return csrf_refused();
    }
    if let Err(e) = limit_credentials(&state, ip).await {
        return failure(&e);
    }
    match answer_challenge(&state, &form.challenge, form.code.trim()).await {
        // The challenge proves the password; the role is read again (it may have changed).
        Ok(user_id) => match is_admin(&state, user_id).await {
            Ok(true) => signed_in(&state, user_id).await,
            Ok(false) => not_an_admin(&state, user_id),
            Err(e) => failure(&e),
        },
        // A wrong code leaves the challenge's other attempts.
        Err(ApiError::InvalidCode) => code_page(
            StatusCode::UNAUTHORIZED,
            &form.challenge,
            &form.csrf,
            Some("That code is wrong, expired or already used."),
        ),
        Err(e) => failure(&e),
    }
}

async fn is_admin(state: &AppState, user_id: Uuid) -> Result<bool, ApiError> {
    Ok(
        sqlx::query_scalar(
            "SELECT role = 'admin' AND disabled_at IS NULL FROM users WHERE id = $1",
        )
        .bind(user_id)
        .fetch_optional(&**state.db())
        .await?
        .unwrap_or(false),
    )
}

/// The session starts: to the overview, with the session cookie, the sign-in cookie gone.
async fn signed_in(state: &AppState, user_id: Uuid) -> Response {
    match session::start(state, user_id).await {
        Ok(cookie) => {
            tracing::info!(target: "stoa::security", event = "console_sign_in", user_id = %user_id, "signed in to the admin console");
            let mut response = Redirect::to("/admin").into_response();
            let headers = response.headers_mut();
            headers.append(header::SET_COOKIE, cookie);
            headers.append(
                header::SET_COOKIE,
                session::set_cookie(SIGN_IN_COOKIE, "", None),
            );
            response
        }
        Err(e) => failure(&e),
    }
}

/// The right password (and code) of an account that is not an admin: refused, counted
/// as the API counts its admin routes' refusals.
fn not_an_admin(state: &AppState, user_id: Uuid) -> Response {
    security_event(state, SecurityEvent::AdminDenied, Some(user_id));
    tracing::warn!(target: "stoa::security", event = "admin_denied", user_id = %user_id, "a non-admin tried to sign in to the admin console");
    let body = html! {
        p role="alert" { "This account is not an admin. The console is for admins only; ask one to grant you the role." }
        p { a href="/admin/login" { "Sign in with another account" } }
    };
    respond(StatusCode::FORBIDDEN, page("Not an admin", None, body))
}

/// Ends every console session of the admin, on every device.
pub async fn sign_out(
    State(state): State<AppState>,
    admin: ConsoleAdmin,
    Form(form): Form<SignOutForm>,
) -> Response {
    if !admin.csrf_matches(&form.csrf) {
        return csrf_refused();
    }
    match session::end_all(&state, admin.user_id).await {
        Ok(ended) => {
            tracing::info!(target: "stoa::security", event = "console_sign_out", user_id = %admin.user_id, sessions = ended, "signed out of the admin console everywhere");
            let mut response = Redirect::to("/admin/login").into_response();
            response.headers_mut().append(
                header::SET_COOKIE,
                session::set_cookie(session::SESSION_COOKIE, "", None),
            );
            response
        }
        Err(e) => failure(&e),
    }
}
