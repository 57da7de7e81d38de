//! Registration, login and the current user.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, ResultExt, Validator};
use crate::http::extract::ApiJson;
use crate::http::types::{LoginRequest, NewUserRequest, UpdateUserRequest, User, UserResponse};
use crate::http::validate;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(current_user, update_user))
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    username: String,
    bio: Option<String>,
    image: Option<String>,
}

fn taken(field: &'static str) -> impl FnOnce() -> ApiError {
    move || ApiError::field(field, "has already been taken")
}

fn user_response(state: &AppState, row: UserRow) -> ApiResult<UserResponse> {
    let issued = state.tokens.issue(row.id)?;
    Ok(UserResponse {
        user: User {
            email: row.email,
            token: issued.token,
            username: row.username,
            bio: row.bio,
            image: row.image,
        },
    })
}

/// Register a new user.
#[utoipa::path(post, path = "/api/users", tag = "users",
    request_body = NewUserRequest,
    responses(
        (status = 201, body = UserResponse),
        (status = 422, description = "invalid fields, or username/email already taken"),
    ))]
async fn register(
    State(state): State<AppState>,
    ApiJson(NewUserRequest { user }): ApiJson<NewUserRequest>,
) -> ApiResult<(StatusCode, axum::Json<UserResponse>)> {
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
    // The unique indexes decide races between concurrent registrations.
    let row: UserRow = sqlx::query_as(
        "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3)
         RETURNING id, email, username, bio, image",
    )
    .bind(username)
    .bind(email)
    .bind(password_hash)
    .fetch_one(&**state.db())
    .await
    .on_constraint("users_username_key", taken("username"))
    .on_constraint("users_email_key", taken("email"))?;
    tracing::info!(user_id = %row.id, "user registered");
    Ok((StatusCode::CREATED, axum::Json(user_response(&state, row)?)))
}

/// Log in with email and password.
#[utoipa::path(post, path = "/api/users/login", tag = "users",
    request_body = LoginRequest,
    responses(
        (status = 200, body = UserResponse),
        (status = 401, description = "wrong email or password (same answer for both)"),
        (status = 422, description = "missing fields"),
    ))]
async fn login(
    State(state): State<AppState>,
    ApiJson(LoginRequest { user }): ApiJson<LoginRequest>,
) -> ApiResult<axum::Json<UserResponse>> {
    Validator::default()
        .check(!user.email.trim().is_empty(), "email", "can't be blank")
        .check(!user.password.is_empty(), "password", "can't be blank")
        .check(
            user.password.len() <= validate::PASSWORD_MAX,
            "password",
            "is too long",
        )
        .finish()?;

    #[derive(sqlx::FromRow)]
    struct Credentials {
        #[sqlx(flatten)]
        user: UserRow,
        password_hash: String,
    }
    let found: Option<Credentials> = sqlx::query_as(
        "SELECT id, email, username, bio, image, password_hash FROM users WHERE lower(email) = lower($1)",
    )
    .bind(user.email.trim())
    .fetch_optional(&**state.db())
    .await?;

    let (row, hash) = match found {
        Some(c) => (Some(c.user), Some(c.password_hash)),
        None => (None, None),
    };
    let matched = state.passwords.verify(user.password, hash).await?;
    match row {
        Some(row) if matched => Ok(axum::Json(user_response(&state, row)?)),
        _ => {
            state
                .metrics
                .security_events
                .get_or_create(&crate::metrics::EventLabels {
                    event: "login_failed",
                })
                .inc();
            Err(ApiError::InvalidCredentials)
        }
    }
}

/// The current user, with a fresh token.
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
            .fetch_optional(&**state.db())
            .await?
            // A valid token for a deleted account.
            .ok_or(ApiError::Unauthorized("belongs to no user"))?;
    Ok(axum::Json(user_response(&state, row)?))
}

/// Update the current user.
#[utoipa::path(put, path = "/api/user", tag = "users",
    security(("token" = [])),
    request_body = UpdateUserRequest,
    responses((status = 200, body = UserResponse), (status = 401), (status = 422)))]
async fn update_user(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(UpdateUserRequest { user }): ApiJson<UpdateUserRequest>,
) -> ApiResult<axum::Json<UserResponse>> {
    let username = user.username.as_deref().map(str::trim);
    let email = user.email.as_deref().map(str::trim);
    let nothing = username.is_none()
        && email.is_none()
        && user.password.is_none()
        && user.bio.is_none()
        && user.image.is_none();
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
            user.bio
                .as_ref()
                .is_none_or(|b| b.as_ref().is_none_or(|b| b.len() <= validate::BIO_MAX)),
            "bio",
            "is too long (at most 4096 bytes)",
        )
        .check(
            user.image
                .as_ref()
                .is_none_or(|i| i.as_deref().is_none_or(validate::image_url)),
            "image",
            validate::IMAGE_RULE,
        )
        .finish()?;

    let password_hash = match user.password {
        Some(password) => Some(state.passwords.hash(password).await?),
        None => None,
    };
    // Empty strings clear bio/image, like null does.
    let (set_bio, bio) = match user.bio {
        Some(bio) => (true, bio.filter(|b| !b.trim().is_empty())),
        None => (false, None),
    };
    let (set_image, image) = match user.image {
        Some(image) => (true, image.filter(|i| !i.trim().is_empty())),
        None => (false, None),
    };
    let row: UserRow = sqlx::query_as(
        "UPDATE users SET
             username = COALESCE($2, username),
             email = COALESCE($3, email),
             password_hash = COALESCE($4, password_hash),
             bio = CASE WHEN $5 THEN $6 ELSE bio END,
             image = CASE WHEN $7 THEN $8 ELSE image END,
             updated_at = now()
         WHERE id = $1
         RETURNING id, email, username, bio, image",
    )
    .bind(auth.id)
    .bind(username)
    .bind(email)
    .bind(password_hash)
    .bind(set_bio)
    .bind(bio)
    .bind(set_image)
    .bind(image)
    .fetch_optional(&**state.db())
    .await
    .on_constraint("users_username_key", taken("username"))
    .on_constraint("users_email_key", taken("email"))?
    .ok_or(ApiError::Unauthorized("belongs to no user"))?;
    Ok(axum::Json(user_response(&state, row)?))
}
