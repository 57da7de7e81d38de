//! `/api/admin/*`: for callers whose token carries the admin role ([`AdminUser`]; 403 for
//! everyone else signed in). List, disable and re-enable users; remove any article or
//! comment. Every action is a `stoa::security` log event and counts in
//! `stoa_security_events_total{event="admin_action"}`. Admins are made with
//! `stoa-api admin grant`, never through the API.

use crate::api_routes;
use crate::http::routing::RouteTable;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AdminUser;
use crate::auth::accounts::{self, Account, Change};
use crate::cache;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiQuery, Pagination};
use crate::http::sessions::security_event;
use crate::http::types::Timestamp;
use crate::metrics::SecurityEvent;
use crate::state::AppState;

pub fn router<T: RouteTable>() -> T {
    T::empty()
        .routes(api_routes!(list_users))
        .routes(api_routes!(disable_user))
        .routes(api_routes!(enable_user))
        .routes(api_routes!(reset_mfa))
        .routes(api_routes!(end_sessions))
        .routes(api_routes!(remove_article))
        .routes(api_routes!(remove_comment))
}

/// A user as an admin sees them.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminUserView {
    pub username: String,
    pub email: String,
    pub bio: Option<String>,
    pub image: Option<String>,
    /// `user` or `admin`.
    pub role: String,
    pub disabled: bool,
    /// When the account was disabled; absent while it is enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

impl From<Account> for AdminUserView {
    fn from(account: Account) -> Self {
        AdminUserView {
            username: account.username,
            email: account.email,
            bio: account.bio,
            image: account.image,
            role: account.role,
            disabled: account.disabled_at.is_some(),
            disabled_at: account.disabled_at.map(Timestamp),
            created_at: Timestamp(account.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminUsersResponse {
    /// One page, newest first.
    pub users: Vec<AdminUserView>,
    pub users_count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminUserResponse {
    pub user: AdminUserView,
}

/// Every user, newest first, one page at a time (default 20, at most 100).
#[utoipa::path(get, path = "/api/admin/users", tag = "admin",
    security(("token" = [])),
    params(Pagination),
    responses((status = 200, body = AdminUsersResponse), (status = 401), (status = 403, description = "not an admin"), (status = 422)))]
async fn list_users(
    State(state): State<AppState>,
    _admin: AdminUser,
    ApiQuery(page): ApiQuery<Pagination>,
) -> ApiResult<axum::Json<AdminUsersResponse>> {
    let (limit, offset) = page.resolve()?;
    let (users, users_count) = accounts::list(&state.db(), limit, offset).await?;
    Ok(axum::Json(AdminUsersResponse {
        users: users.into_iter().map(AdminUserView::from).collect(),
        users_count,
    }))
}

/// Disable an account: its sessions end at once (every access and refresh token is
/// refused, on every replica) and it can no longer sign in. Its articles and comments
/// stay. Disabling a disabled account changes nothing.
#[utoipa::path(post, path = "/api/admin/users/{username}/disable", tag = "admin",
    security(("token" = [])),
    params(("username" = String, Path)),
    responses((status = 200, body = AdminUserResponse), (status = 401), (status = 403, description = "not an admin, or the admin's own account"), (status = 404)))]
async fn disable_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(username): Path<String>,
) -> ApiResult<axum::Json<AdminUserResponse>> {
    change_account(&state, admin.id, &username, Change::Disable).await
}

/// Re-enable a disabled account: its user can sign in again (their old sessions stay
/// ended).
#[utoipa::path(post, path = "/api/admin/users/{username}/enable", tag = "admin",
    security(("token" = [])),
    params(("username" = String, Path)),
    responses((status = 200, body = AdminUserResponse), (status = 401), (status = 403, description = "not an admin"), (status = 404)))]
async fn enable_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(username): Path<String>,
) -> ApiResult<axum::Json<AdminUserResponse>> {
    change_account(&state, admin.id, &username, Change::Enable).await
}

async fn change_account(
    state: &AppState,
    admin: Uuid,
    username: &str,
    change: Change,
) -> ApiResult<axum::Json<AdminUserResponse>> {
    let changed = apply_change(state, admin, username, change).await?;
    Ok(axum::Json(AdminUserResponse {
        user: changed.account.into(),
    }))
}

/// An admin's change to an account, as the API and the console make it: the change
/// (`accounts::change`), the ended sessions refused on every replica at once, and the
/// security event with the acting admin.
pub async fn apply_change(
    state: &AppState,
    admin: Uuid,
    username: &str,
    change: Change,
) -> ApiResult<accounts::Changed> {
    let changed = accounts::change(&state.db(), username, change, Some(admin)).await?;
    state
        .revocations
        .mirror(None, &changed.revoked_families)
        .await;
    if changed.changed {
        let action = change.action();
        security_event(state, SecurityEvent::AdminAction, Some(admin));
        tracing::info!(target: "stoa::security", event = "admin_action", action, admin_id = %admin,
            user_id = %changed.account.id, sessions_revoked = changed.revoked_families.len(),
            "account changed by an admin");
    }
    Ok(changed)
}

/// Turn off a user's second factor (lost authenticator and recovery codes) and end their
/// sessions: they sign in again with the password alone, then may enrol again.
#[utoipa::path(post, path = "/api/admin/users/{username}/mfa/reset", tag = "admin",
    security(("token" = [])),
    params(("username" = String, Path)),
    responses((status = 204, description = "MFA is off for the user"), (status = 401), (status = 403, description = "not an admin"), (status = 404, description = "no such user"), (status = 409, description = "MFA was not on")))]
async fn reset_mfa(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(username): Path<String>,
) -> ApiResult<StatusCode> {
    apply_mfa_reset(&state, admin.id, &username).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionsEnded {
    pub sessions_ended: usize,
}

/// End every session of a user (a lost or stolen device): each access and refresh token
/// is refused on every replica at once; the account stays enabled.
#[utoipa::path(post, path = "/api/admin/users/{username}/sessions/end", tag = "admin",
    security(("token" = [])),
    params(("username" = String, Path)),
    responses((status = 200, body = SessionsEnded), (status = 401), (status = 403, description = "not an admin"), (status = 404, description = "no such user")))]
async fn end_sessions(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(username): Path<String>,
) -> ApiResult<axum::Json<SessionsEnded>> {
    let sessions_ended = apply_end_sessions(&state, admin.id, &username).await?;
    Ok(axum::Json(SessionsEnded { sessions_ended }))
}

/// An admin ending an account's sessions, as the API and the console do it.
pub async fn apply_end_sessions(state: &AppState, admin: Uuid, username: &str) -> ApiResult<usize> {
    let (user_id, families) =
        accounts::end_all_sessions(&state.db(), username, Some(admin)).await?;
    state.revocations.mirror(None, &families).await;
    security_event(state, SecurityEvent::AdminAction, Some(admin));
    tracing::info!(target: "stoa::security", event = "admin_action", action = "end_sessions",
        admin_id = %admin, user_id = %user_id, sessions_revoked = families.len(),
        "sessions ended by an admin");
    Ok(families.len())
}

/// An admin's reset of an account's second factor, as the API and the console make it
/// (409 when MFA was not on).
pub async fn apply_mfa_reset(state: &AppState, admin: Uuid, username: &str) -> ApiResult<()> {
    let (user_id, ended) = accounts::reset_mfa(&state.db(), username, Some(admin)).await?;
    let Some(families) = ended else {
        return Err(ApiError::conflict("mfa", "is not on for this user"));
    };
    state.revocations.mirror(None, &families).await;
    security_event(state, SecurityEvent::AdminAction, Some(admin));
    tracing::info!(target: "stoa::security", event = "admin_action", action = "reset_mfa",
        admin_id = %admin, user_id = %user_id, sessions_revoked = families.len(),
        "second factor reset by an admin");
    Ok(())
}

/// Why an admin removes something, kept in the admin audit log.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemovalReason {
    /// Why (kept in the admin audit log); at most 1000 characters.
    #[param(max_length = 1000)]
    pub reason: Option<String>,
}

impl RemovalReason {
    /// The reason, blank as none; 422 when too long.
    pub fn checked(&self) -> ApiResult<Option<&str>> {
        let reason = self
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty());
        if reason.is_some_and(|r| !crate::validate::within(r, crate::auth::audit::REASON_MAX)) {
            return Err(ApiError::field(
                "reason",
                "is too long (at most 1000 characters)",
            ));
        }
        Ok(reason)
    }
}

/// Remove any article, with its comments and favorites.
#[utoipa::path(delete, path = "/api/admin/articles/{slug}", tag = "admin",
    security(("token" = [])),
    params(("slug" = String, Path), RemovalReason),
    responses((status = 204), (status = 401), (status = 403, description = "not an admin"), (status = 404)))]
async fn remove_article(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(slug): Path<String>,
    ApiQuery(reason): ApiQuery<RemovalReason>,
) -> ApiResult<StatusCode> {
    apply_article_removal(&state, admin.id, &slug, reason.checked()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An admin removing an article, as the API and the console do it: the removal and its
/// audit row, the caches, the security event.
pub async fn apply_article_removal(
    state: &AppState,
    admin: Uuid,
    slug: &str,
    reason: Option<&str>,
) -> ApiResult<()> {
    let author = crate::moderation::remove_article(&state.db(), slug, Some(admin), reason)
        .await?
        .ok_or(ApiError::NotFound("article"))?;
    state
        .cache
        .invalidate(cache::Change::Articles {
            slugs: &[slug],
            tags: true,
        })
        .await;
    security_event(state, SecurityEvent::AdminAction, Some(admin));
    tracing::info!(target: "stoa::security", event = "admin_action", action = "remove_article",
        admin_id = %admin, author_id = %author, slug = %slug, "article removed by an admin");
    Ok(())
}

/// Remove any comment.
#[utoipa::path(delete, path = "/api/admin/articles/{slug}/comments/{id}", tag = "admin",
    security(("token" = [])),
    params(("slug" = String, Path), ("id" = i64, Path), RemovalReason),
    responses((status = 204), (status = 401), (status = 403, description = "not an admin"), (status = 404)))]
async fn remove_comment(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path((slug, id)): Path<(String, String)>,
    ApiQuery(reason): ApiQuery<RemovalReason>,
) -> ApiResult<StatusCode> {
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound("comment"))?;
    apply_comment_removal(&state, admin.id, &slug, id, reason.checked()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An admin removing a comment, as the API and the console do it.
pub async fn apply_comment_removal(
    state: &AppState,
    admin: Uuid,
    slug: &str,
    id: i64,
    reason: Option<&str>,
) -> ApiResult<()> {
    let author = crate::moderation::remove_comment(&state.db(), slug, id, Some(admin), reason)
        .await?
        .ok_or(ApiError::NotFound("comment"))?;
    security_event(state, SecurityEvent::AdminAction, Some(admin));
    tracing::info!(target: "stoa::security", event = "admin_action", action = "remove_comment",
        admin_id = %admin, author_id = %author, slug = %slug, comment_id = id,
        "comment removed by an admin");
    Ok(())
}
