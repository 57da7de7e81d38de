//! Registration, login and the current user.

use crate::api_routes;
use crate::http::routing::RouteTable;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::cache::Change;
use crate::error::{ApiError, ApiResult, ResultExt, Validator};
use crate::http::extract::ApiJson;
use crate::http::middleware::ClientIp;
use crate::http::session_cookie::Delivery;
use crate::http::sessions::{
    Credentials, NewSession, PasswordChecked, SessionRow, UserRow, check_password, credentials_of,
    deliver, limit_credentials, new_session, session_response, start_session, user_response,
    verify_current_password,
};
use crate::http::types::{
    LoginRequest, NewUserRequest, UpdateUser, UpdateUserRequest, UserResponse,
};
use crate::reads::{Reader, Writer};
use crate::state::AppState;
use crate::validate;

pub fn router<T: RouteTable>() -> T {
    T::empty()
        .routes(api_routes!(register))
        .routes(api_routes!(login))
        .routes(api_routes!(current_user, update_user))
}

fn taken(field: &'static str) -> impl FnOnce() -> ApiError {
    move || ApiError::conflict(field, "has already been taken")
}

/// Register a new user.
#[utoipa::path(post, path = "/api/users", tag = "users",
    request_body = NewUserRequest,
    responses(
        (status = 201, body = UserResponse),
        (status = 409, description = "username or email already taken"),
        (status = 422, description = "invalid fields"),
    ))]
async fn register(
    State(state): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    writer: Option<Extension<Writer>>,
    headers: HeaderMap,
    ApiJson(NewUserRequest { user }): ApiJson<NewUserRequest>,
) -> ApiResult<Response> {
    let delivery = Delivery::of(&headers)?;
    limit_credentials(&state, ip).await?;
    let username = user.username.trim();
    let email = user.email.trim();
    Validator::default()
        .check(
            validate::username(username),
            "username",
            validate::USERNAME_RULE,
        )
        .check(validate::email(email), "email", validate::EMAIL_RULE)
        .check(
            validate::password(&user.password),
            "password",
            validate::PASSWORD_RULE,
        )
        .finish()?;

    let password_hash = state.passwords.hash(user.password).await?;
    let session = new_session(&state);
    // One statement creates the user and the first session; the unique indexes decide
    // races between concurrent registrations.
    let row: SessionRow = sqlx::query_as(
        "WITH u AS (
             INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3)
             RETURNING id, email, username, bio, image, role),
          session AS (
             INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at, session_expires_at)
             SELECT $4, $5, id, $6, $7 FROM u)
         SELECT * FROM u",
    )
    .bind(username)
    .bind(email)
    .bind(password_hash)
    .bind(&session.refresh.hash)
    .bind(session.family)
    .bind(session.expires_at)
    .bind(session.session_expires_at)
    .fetch_one(&**state.db())
    .await
    .on_constraint("users_username_key", taken("username"))
    .on_constraint("users_username_lower_key", taken("username"))
    .on_constraint("users_email_key", taken("email"))?;
    tracing::info!(user_id = %row.user.id, "user registered");
    // Their first reads (their own user, say) must find them.
    if let Some(Extension(writer)) = writer {
        writer.set(row.user.id);
    }
    let response = session_response(
        &state,
        row,
        Some(session.family),
        Some(session.refresh.token),
    )?;
    Ok(deliver(&state, delivery, StatusCode::CREATED, response))
}

/// Log in with email and password.
#[utoipa::path(post, path = "/api/users/login", tag = "users",
    request_body = LoginRequest,
    responses(
        (status = 200, body = UserResponse),
        (status = 401, description = "wrong email or password (same answer for both)"),
        (status = 202, body = crate::http::mfa::ChallengeResponse, description = "MFA is on: answer the challenge at `POST /api/users/login/mfa`"),
        (status = 403, description = "the account is disabled (answered only to the right password)"),
        (status = 422, description = "missing fields"),
    ))]
async fn login(
    State(state): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    headers: HeaderMap,
    ApiJson(LoginRequest { user }): ApiJson<LoginRequest>,
) -> ApiResult<Response> {
    let delivery = Delivery::of(&headers)?;
    limit_credentials(&state, ip).await?;
    Validator::default()
        .check(!user.email.trim().is_empty(), "email", "can't be blank")
        .check(!user.password.is_empty(), "password", "can't be blank")
        .check(
            validate::within(&user.password, validate::PASSWORD_MAX),
            "password",
            "is too long",
        )
        .finish()?;
    let PasswordChecked { row, mfa } =
        check_password(&state, ip, &user.email, user.password).await?;
    if mfa {
        return crate::http::mfa::challenge(&state, row.user.id).await;
    }
    let session = start_session(&state, row.user.id).await?;
    let response = session_response(
        &state,
        row,
        Some(session.family),
        Some(session.refresh.token),
    )?;
    Ok(deliver(&state, delivery, StatusCode::OK, response))
}

/// The current user, with the token they presented.
#[utoipa::path(get, path = "/api/user", tag = "users",
    security(("token" = [])),
    responses((status = 200, body = UserResponse), (status = 401)))]
async fn current_user(
    State(state): State<AppState>,
    auth: AuthUser,
) -> ApiResult<axum::Json<UserResponse>> {
    let row: UserRow =
        sqlx::query_as("SELECT id, email, username, bio, image FROM users WHERE id = $1")
            .bind(auth.id)
            .fetch_optional(&**state.read_db(Reader::Caller(auth.id)))
            .await?
            // A valid token for a deleted account.
            .ok_or(ApiError::Unauthorized("belongs to no user"))?;
    Ok(axum::Json(user_response(
        row,
        auth.token().to_owned(),
        None,
    )))
}

/// Update the current user.
/// Changing the password or the email needs the current password (OWASP ASVS 6.2.3): an
/// access token alone, if stolen, must not take over the account. RealWorld clients send
/// the unchanged email with every settings update, so an email equal to the current one
/// needs nothing. Wrong guesses count against the account's login throttle.
async fn confirm_current_password(
    state: &AppState,
    client: ClientIp,
    auth: &AuthUser,
    new_email: Option<&str>,
    current_password: Option<String>,
) -> ApiResult<()> {
    let Credentials {
        email,
        password_hash: hash,
        ..
    } = credentials_of(state, auth.id).await?;
    let changes_credentials = new_email.is_none_or(|new| !new.eq_ignore_ascii_case(&email));
    if !changes_credentials {
        return Ok(());
    }
    verify_current_password(
        state,
        client,
        auth,
        &email,
        hash,
        current_password,
        "is required to change the password or the email",
    )
    .await
}

#[utoipa::path(put, path = "/api/user", tag = "users",
    security(("token" = [])),
    request_body = UpdateUserRequest,
    responses((status = 200, body = UserResponse), (status = 401), (status = 403, description = "currentPassword missing or wrong"), (status = 409, description = "username or email already taken"), (status = 422, description = "invalid fields"), (status = 429)))]
async fn update_user(
    State(state): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    auth: AuthUser,
    headers: HeaderMap,
    ApiJson(UpdateUserRequest { user }): ApiJson<UpdateUserRequest>,
) -> ApiResult<Response> {
    let delivery = Delivery::of(&headers)?;
    let username = user.username.as_deref().map(str::trim);
    let email = user.email.as_deref().map(str::trim);
    validate_update(&user, username, email)?;
    let UpdateUser {
        password,
        current_password,
        bio,
        image,
        ..
    } = user;
    if password.is_some() || email.is_some() {
        confirm_current_password(&state, ip, &auth, email, current_password).await?;
    }
    let password_hash = match password {
        Some(password) => Some(state.passwords.hash(password).await?),
        None => None,
    };
    // A password change ends every session of the user and starts a new one for the caller.
    let session = password_hash.as_ref().map(|_| new_session(&state));
    let write = UserWrite {
        id: auth.id,
        username,
        email,
        password_hash,
        // Empty strings clear bio/image, like null does.
        bio: cleared(bio),
        image: cleared(image),
        session: session.as_ref(),
    };
    let updated = write.store(&state).await?;

    if !updated.revoked_families.is_empty() {
        state
            .revocations
            .mirror(None, &updated.revoked_families)
            .await;
        tracing::info!(target: "stoa::security", event = "password_changed", user_id = %auth.id,
            sessions_revoked = updated.revoked_families.len(), "password changed; other sessions revoked");
    }
    if write.username.is_some() || write.bio.is_some() || write.image.is_some() {
        // The author's name and details are embedded in cached articles and lists.
        state.cache.invalidate(Change::Everything).await;
    }
    let response = match session {
        Some(session) => session_response(
            &state,
            updated.user,
            Some(session.family),
            Some(session.refresh.token),
        )?,
        None => user_response(updated.user.user, auth.token().to_owned(), None),
    };
    Ok(deliver(&state, delivery, StatusCode::OK, response))
}

fn validate_update(
    user: &UpdateUser,
    username: Option<&str>,
    email: Option<&str>,
) -> ApiResult<()> {
    let nothing = username.is_none()
        && email.is_none()
        && user.password.is_none()
        && user.bio.is_none()
        && user.image.is_none()
        // Only the current password: a valid request that changes nothing.
        && user.current_password.is_none();
    Validator::default()
        .check(!nothing, "user", "must change at least one field")
        .check(
            username.is_none_or(validate::username),
            "username",
            validate::USERNAME_RULE,
        )
        .check(
            email.is_none_or(validate::email),
            "email",
            validate::EMAIL_RULE,
        )
        .check(
            user.password.as_deref().is_none_or(validate::password),
            "password",
            validate::PASSWORD_RULE,
        )
        .check(
            user.bio.as_ref().is_none_or(|b| {
                b.as_ref()
                    .is_none_or(|b| validate::within(b, validate::BIO_MAX))
            }),
            "bio",
            "is too long (at most 4096 characters)",
        )
        .check(
            user.image
                .as_ref()
                .is_none_or(|i| i.as_deref().is_none_or(validate::image_url)),
            "image",
            validate::IMAGE_RULE,
        )
        .finish()
}

/// `Some(None)` (clear it) for an empty or blank value, as for `null`.
fn cleared(field: Option<Option<String>>) -> Option<Option<String>> {
    field.map(|value| value.filter(|v| !v.trim().is_empty()))
}

/// What an update writes: `None` leaves a field as it is; `Some(None)` clears bio or image.
struct UserWrite<'a> {
    id: Uuid,
    username: Option<&'a str>,
    email: Option<&'a str>,
    password_hash: Option<String>,
    bio: Option<Option<String>>,
    image: Option<Option<String>>,
    /// With a new password: the caller's new session.
    session: Option<&'a NewSession>,
}

#[derive(sqlx::FromRow)]
struct Updated {
    #[sqlx(flatten)]
    user: SessionRow,
    revoked_families: Vec<Uuid>,
}

impl UserWrite<'_> {
    /// One statement: the user's row, and with a new password the end of every other
    /// session and pending second-factor sign-in, and the caller's new session.
    async fn store(&self, state: &AppState) -> ApiResult<Updated> {
        let session = self.session;
        sqlx::query_as(
            "WITH u AS (
                 UPDATE users SET
                     username = COALESCE($2, username),
                     email = COALESCE($3, email),
                     password_hash = COALESCE($4, password_hash),
                     bio = CASE WHEN $5 THEN $6 ELSE bio END,
                     image = CASE WHEN $7 THEN $8 ELSE image END,
                     updated_at = now()
                 WHERE id = $1
                 RETURNING id, email, username, bio, image, role),
              revoked AS (
                 UPDATE refresh_tokens SET revoked_at = now()
                 WHERE user_id IN (SELECT id FROM u) AND $4::text IS NOT NULL AND revoked_at IS NULL
                 RETURNING family_id),
              -- A sign-in that proved the old password and waits for its second factor must
              -- not complete after the password changed.
              challenges AS (
                 DELETE FROM mfa_challenges
                 WHERE user_id IN (SELECT id FROM u) AND $4::text IS NOT NULL),
              session AS (
                 INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at, session_expires_at)
                 SELECT $9, $10, id, $11, $12 FROM u WHERE $4::text IS NOT NULL)
             SELECT u.*, ARRAY(SELECT DISTINCT family_id FROM revoked) AS revoked_families FROM u",
        )
        .bind(self.id)
        .bind(self.username)
        .bind(self.email)
        .bind(self.password_hash.as_deref())
        .bind(self.bio.is_some())
        .bind(self.bio.as_ref().and_then(Option::as_deref))
        .bind(self.image.is_some())
        .bind(self.image.as_ref().and_then(Option::as_deref))
        .bind(session.map(|s| s.refresh.hash.clone()))
        .bind(session.map(|s| s.family))
        .bind(session.map(|s| s.expires_at))
        .bind(session.map(|s| s.session_expires_at))
        .fetch_optional(&**state.db())
        .await
        .on_constraint("users_username_key", taken("username"))
        .on_constraint("users_username_lower_key", taken("username"))
        .on_constraint("users_email_key", taken("email"))?
        .ok_or(ApiError::Unauthorized("belongs to no user"))
    }
}
