//! Sessions as the credential endpoints share them: the user row they answer with, a new
//! session (refresh-token family), the response that carries the tokens, and the stricter
//! budgets and security counters of register, login, refresh and credential changes.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::{AuthUser, Role};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ApiResult};
use crate::http::middleware::ClientIp;
use crate::http::session_cookie::{self, Delivery};
use crate::http::types::{User, UserResponse};
use crate::metrics::{Bucket, SecurityEvent};
use crate::state::AppState;
use crate::validate;

#[derive(sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub username: String,
    pub bio: Option<String>,
    pub image: Option<String>,
}

/// A user as the endpoints that issue tokens read it: what the answer shows, and the
/// role the new access token carries.
#[derive(sqlx::FromRow)]
pub struct SessionRow {
    #[sqlx(flatten)]
    pub user: UserRow,
    pub role: String,
}

/// The user with a new access token in session `family`, and the session's new refresh
/// token when one was just issued: for sign-in, refresh and password change.
pub fn session_response(
    state: &AppState,
    row: SessionRow,
    family: Option<Uuid>,
    refresh_token: Option<String>,
) -> ApiResult<UserResponse> {
    let issued = state
        .tokens
        .issue(row.user.id, Role::from_db(&row.role), family)?;
    Ok(user_response(row.user, issued.token, refresh_token))
}

/// The user with `token`: a new one, or on reads and profile edits the caller's own. An
/// access token is never renewed by itself (only a refresh renews it), or it could
/// outlive its session (`STOA_SESSION_MAX_LIFETIME`) and its refresh token's revocation.
pub fn user_response(row: UserRow, token: String, refresh_token: Option<String>) -> UserResponse {
    UserResponse {
        user: User {
            email: row.email,
            token,
            username: row.username,
            bio: row.bio,
            image: row.image,
            refresh_token,
        },
    }
}

/// The answer of an endpoint that issues a refresh token: in the body, or in the session
/// cookie for a browser that asked for it (`X-Stoa-Session: cookie`).
pub fn deliver(
    state: &AppState,
    delivery: Delivery,
    status: StatusCode,
    mut response: UserResponse,
) -> Response {
    let cookie = match delivery {
        Delivery::Body => None,
        Delivery::Cookie => response
            .user
            .refresh_token
            .take()
            .map(|token| session_cookie::set(&token, state.config.auth.refresh_token_ttl)),
    };
    let mut answer = (status, axum::Json(response)).into_response();
    if let Some(cookie) = cookie {
        answer.headers_mut().append(header::SET_COOKIE, cookie);
    }
    answer
}

/// A new session: a refresh-token family, its first token, that token's expiry and the
/// session's absolute end (`STOA_SESSION_MAX_LIFETIME`).
pub struct NewSession {
    pub family: Uuid,
    pub refresh: crate::auth::refresh::NewRefreshToken,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub session_expires_at: chrono::DateTime<chrono::Utc>,
}

pub fn new_session(state: &AppState) -> NewSession {
    let now = chrono::Utc::now();
    let auth = &state.config.auth;
    let session_expires_at = now + auth.session_max_lifetime;
    NewSession {
        family: Uuid::new_v4(),
        refresh: crate::auth::refresh::generate(),
        expires_at: (now + auth.refresh_token_ttl).min(session_expires_at),
        session_expires_at,
    }
}

/// Starts a session for a signed-in account (login, or its second factor), only if the
/// account is still enabled (403 otherwise). `FOR SHARE` waits for a disable in progress
/// (it holds the row's update lock) and then sees its result; a disable that starts
/// later finds this session and revokes it.
pub async fn start_session(state: &AppState, user_id: Uuid) -> ApiResult<NewSession> {
    let session = new_session(state);
    let started = sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at, session_expires_at)
         SELECT $1, $2, id, $4, $5 FROM users WHERE id = $3 AND disabled_at IS NULL FOR SHARE",
    )
    .bind(&session.refresh.hash)
    .bind(session.family)
    .bind(user_id)
    .bind(session.expires_at)
    .bind(session.session_expires_at)
    .execute(&**state.db())
    .await?;
    if started.rows_affected() == 0 {
        return Err(ApiError::forbidden_field("account", "is disabled"));
    }
    Ok(session)
}

/// What a password check needs of the signed-in account.
pub struct Credentials {
    pub email: String,
    pub username: String,
    /// `None` for an account that signs in only with identity providers.
    pub password_hash: Option<String>,
}

/// The signed-in account's email, username and password hash (401 when the account is
/// gone: its token outlived it).
pub async fn credentials_of(state: &AppState, user_id: uuid::Uuid) -> ApiResult<Credentials> {
    let (email, username, password_hash): (String, String, Option<String>) = sqlx::query_as(
        "SELECT email, username, NULLIF(password_hash, '') FROM users WHERE id = $1",
    )
    .bind(user_id)
    .fetch_optional(&**state.db())
    .await?
    .ok_or(ApiError::Unauthorized("belongs to no user"))?;
    Ok(Credentials {
        email,
        username,
        password_hash,
    })
}

/// The account's current password, for a change a stolen access token alone must not
/// make (OWASP ASVS 6.2.3): a 403 on `currentPassword` when missing (`missing` says what
/// for) or wrong; wrong guesses count against the account's login throttle. An account
/// without a password (it signs in with identity providers only) proves itself instead
/// with a session started by a provider sign-in within `STOA_AUTH_RECENT_SIGN_IN`.
pub async fn verify_current_password(
    state: &AppState,
    client: ClientIp,
    auth: &AuthUser,
    email: &str,
    hash: Option<String>,
    current: Option<String>,
    missing: &'static str,
) -> ApiResult<()> {
    let Some(hash) = hash else {
        return require_recent_sign_in(state, auth).await;
    };
    let Some(current) = current.filter(|p| !p.is_empty()) else {
        return Err(ApiError::forbidden_field("currentPassword", missing));
    };
    limit_login_attempts(state, email, client).await?;
    if !validate::within(&current, validate::PASSWORD_MAX)
        || !state.passwords.verify(current, Some(hash)).await?
    {
        security_event(state, SecurityEvent::CurrentPasswordRejected, Some(auth.id));
        return Err(ApiError::forbidden_field("currentPassword", "is incorrect"));
    }
    Ok(())
}

/// For an account without a password: the caller's session must have started within
/// `STOA_AUTH_RECENT_SIGN_IN` (such an account's sessions all start with a provider).
async fn require_recent_sign_in(state: &AppState, auth: &AuthUser) -> ApiResult<()> {
    let recent: bool = match auth.claims.fam {
        None => false,
        Some(family) => {
            sqlx::query_scalar(
                "SELECT coalesce(min(created_at) > now() - make_interval(secs => $3), false)
             FROM refresh_tokens WHERE family_id = $1 AND user_id = $2 AND revoked_at IS NULL",
            )
            .bind(family)
            .bind(auth.id)
            .bind(state.config.sign_in.recent_sign_in.as_secs_f64())
            .fetch_one(&**state.db())
            .await?
        }
    };
    if recent {
        Ok(())
    } else {
        security_event(state, SecurityEvent::CurrentPasswordRejected, Some(auth.id));
        Err(ApiError::forbidden_field(
            "currentPassword",
            "cannot be checked: this account has no password. Sign in again with your identity provider, then retry",
        ))
    }
}

/// An account whose password was just proven.
pub struct PasswordChecked {
    pub row: SessionRow,
    /// A second factor is on: the sign-in continues with a challenge.
    pub mfa: bool,
}

/// The password sign-in shared by the API's login and the admin console: the account's
/// login budget, then the password (the same answer, and the same work, whether or not
/// the account exists: 401), then (only for the right password, so a guesser learns
/// nothing) a disabled account's 403. A hash made with older parameters is replaced in
/// the background.
pub async fn check_password(
    state: &AppState,
    client: ClientIp,
    email: &str,
    password: String,
) -> ApiResult<PasswordChecked> {
    limit_login_attempts(state, email, client).await?;
    #[derive(sqlx::FromRow)]
    struct Found {
        #[sqlx(flatten)]
        user: SessionRow,
        /// `None`: the account signs in with identity providers only.
        password_hash: Option<String>,
        disabled: bool,
        mfa: bool,
    }
    let found: Option<Found> = sqlx::query_as(
        "SELECT id, email, username, bio, image, role, NULLIF(password_hash, '') AS password_hash, disabled_at IS NOT NULL AS disabled,
                EXISTS (SELECT 1 FROM user_totp t WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL) AS mfa
         FROM users WHERE lower(email) = lower($1)",
    )
    .bind(email.trim())
    .fetch_optional(&**state.db())
    .await?;
    let (row, hash, disabled, mfa) = match found {
        Some(f) => (Some(f.user), f.password_hash, f.disabled, f.mfa),
        None => (None, None, false, false),
    };
    let stale = hash
        .as_deref()
        .is_some_and(|h| state.passwords.needs_rehash(h))
        .then(|| (hash.clone(), password.clone()));
    let matched = state.passwords.verify(password, hash).await?;
    let row = match row {
        Some(row) if matched => row,
        // The account, when there is one: a run of failures on it shows on its page.
        other => {
            security_event(state, SecurityEvent::LoginFailed, other.map(|r| r.user.id));
            return Err(ApiError::InvalidCredentials);
        }
    };
    if disabled {
        security_event(
            state,
            SecurityEvent::DisabledAccountLogin,
            Some(row.user.id),
        );
        return Err(ApiError::forbidden_field("account", "is disabled"));
    }
    if let Some((Some(old_hash), password)) = stale {
        upgrade_hash(state, row.user.id, old_hash, password);
    }
    Ok(PasswordChecked { row, mfa })
}

/// Replaces a hash made with older parameters, after a successful login, in the
/// background (the login does not wait for a second hash). Only if the stored hash is
/// still the one verified: a password change meanwhile wins.
fn upgrade_hash(state: &AppState, user_id: Uuid, old_hash: String, password: String) {
    let state = state.clone();
    tokio::spawn(async move {
        let result = async {
            let new_hash = state.passwords.hash(password).await?;
            sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2 AND password_hash = $3")
                .bind(new_hash)
                .bind(user_id)
                .bind(old_hash)
                .execute(&**state.db())
                .await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(user_id = %user_id, error = %e, "could not upgrade a password hash; retried at the next login");
        }
    });
}

/// The strict per-IP budget shared by login, register and refresh.
pub async fn limit_credentials(state: &AppState, ip: ClientIp) -> ApiResult<()> {
    state
        .enforce_rate_limit(
            Bucket::Auth,
            &crate::ratelimit::bucket_key(ip.0),
            state.config.rate_limits.auth,
        )
        .await
}

/// Login attempts (and current-password checks) against one account, as OWASP's
/// authentication guidance has it: a budget per (account, client address), so guessing
/// from one place cannot lock the owner out elsewhere, under a higher ceiling per account
/// that bounds guessing spread over many addresses. The ceiling is charged only when the
/// client's own budget allowed the attempt (a client past its budget spends nobody
/// else's). Keyed by a hash of the normalised email whether or not the account exists, so
/// the answer reveals nothing about existence.
pub async fn limit_login_attempts(
    state: &AppState,
    email: &str,
    client: ClientIp,
) -> ApiResult<()> {
    let digest = Sha256::digest(email.trim().to_lowercase().as_bytes());
    let account: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let limits = &state.config.rate_limits;
    state
        .enforce_rate_limit(
            Bucket::Login,
            &format!("{account}:{}", crate::ratelimit::bucket_key(client.0)),
            limits.login_per_account,
        )
        .await?;
    state
        .enforce_rate_limit(Bucket::LoginAccount, &account, limits.login_account_ceiling)
        .await
}

/// Counts `event` and keeps it for the admin console, with the account it concerns.
pub fn security_event(state: &AppState, event: SecurityEvent, user: Option<Uuid>) {
    state.security_log.record(event, user);
}
