//! Profiles and following.

use crate::api_routes;
use crate::http::routing::RouteTable;
use axum::extract::{Path, State};
use uuid::Uuid;

use crate::auth::{AuthUser, MaybeAuthUser};
use crate::cache::Change;
use crate::error::{ApiError, ApiResult};
use crate::http::types::{Profile, ProfileResponse};
use crate::reads::Reader;
use crate::state::AppState;

pub fn router<T: RouteTable>() -> T {
    T::empty()
        .routes(api_routes!(get_profile))
        .routes(api_routes!(follow, unfollow))
}

/// A user's public profile.
#[utoipa::path(get, path = "/api/profiles/{username}", tag = "profiles",
    params(("username" = String, Path)),
    responses((status = 200, body = ProfileResponse), (status = 404)))]
async fn get_profile(
    State(state): State<AppState>,
    viewer: MaybeAuthUser,
    Path(username): Path<String>,
) -> ApiResult<axum::Json<ProfileResponse>> {
    let profile: Profile = sqlx::query_as(
        "SELECT u.username, u.bio, u.image,
                EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = $2 AND f.followed_id = u.id) AS following
         FROM users u WHERE u.username = $1",
    )
    .bind(&username)
    .bind(viewer.id())
    .fetch_optional(&**state.read_db(Reader::of(viewer.id(), false)))
    .await?
    .ok_or(ApiError::NotFound("profile"))?;
    Ok(axum::Json(ProfileResponse { profile }))
}

#[derive(sqlx::FromRow)]
struct Target {
    id: Uuid,
    #[sqlx(flatten)]
    profile: Profile,
}

/// Follow a user (idempotent).
#[utoipa::path(post, path = "/api/profiles/{username}/follow", tag = "profiles",
    security(("token" = [])),
    params(("username" = String, Path)),
    responses((status = 200, body = ProfileResponse), (status = 401), (status = 404),
        (status = 403, description = "following yourself")))]
async fn follow(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(username): Path<String>,
) -> ApiResult<axum::Json<ProfileResponse>> {
    // One statement: look up the target and insert the edge unless it is the caller.
    let target: Target = sqlx::query_as(
        "WITH target AS (SELECT id, username, bio, image FROM users WHERE username = $2),
              edge AS (
                  INSERT INTO follows (follower_id, followed_id)
                  SELECT $1, id FROM target WHERE id <> $1
                  ON CONFLICT DO NOTHING)
         SELECT id, username, bio, image, id <> $1 AS following FROM target",
    )
    .bind(auth.id)
    .bind(&username)
    .fetch_optional(&**state.db())
    .await?
    .ok_or(ApiError::NotFound("profile"))?;
    if target.id == auth.id {
        // Well formed, but not allowed: a 403, like any action on what is not the caller's.
        return Err(ApiError::forbidden_field(
            "username",
            "you cannot follow yourself",
        ));
    }
    state.cache.invalidate(Change::Follows(auth.id)).await;
    Ok(axum::Json(ProfileResponse {
        profile: target.profile,
    }))
}

/// Stop following a user (idempotent).
#[utoipa::path(delete, path = "/api/profiles/{username}/follow", tag = "profiles",
    security(("token" = [])),
    params(("username" = String, Path)),
    responses((status = 200, body = ProfileResponse), (status = 401), (status = 404)))]
async fn unfollow(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(username): Path<String>,
) -> ApiResult<axum::Json<ProfileResponse>> {
    let target: Target = sqlx::query_as(
        "WITH target AS (SELECT id, username, bio, image FROM users WHERE username = $2),
              edge AS (
                  DELETE FROM follows f USING target
                  WHERE f.follower_id = $1 AND f.followed_id = target.id)
         SELECT id, username, bio, image, false AS following FROM target",
    )
    .bind(auth.id)
    .bind(&username)
    .fetch_optional(&**state.db())
    .await?
    .ok_or(ApiError::NotFound("profile"))?;
    state.cache.invalidate(Change::Follows(auth.id)).await;
    Ok(axum::Json(ProfileResponse {
        profile: target.profile,
    }))
}
