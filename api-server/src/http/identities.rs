//! The signed-in user's provider identities: list, link, unlink. An account keeps at
//! least one way to sign in: its last identity cannot be unlinked while it has no password.

use crate::api_routes;
use crate::http::routing::RouteTable;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::AuthUser;
use crate::auth::refresh;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
use crate::http::oauth::{allowed_return_to, provider_named};
use crate::http::sessions::security_event;
use crate::http::types::Timestamp;
use crate::metrics::SecurityEvent;
use crate::oauth::accounts;
use crate::state::AppState;

pub fn router<T: RouteTable>() -> T {
    T::empty()
        .routes(api_routes!(list_identities))
        .routes(api_routes!(start_link, unlink))
        .routes(api_routes!(confirm_link))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub provider: String,
    /// What the provider last said (for display).
    pub email: Option<String>,
    pub linked_at: Timestamp,
    pub last_used_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentitiesResponse {
    pub identities: Vec<Identity>,
    /// Whether the account also signs in with a password.
    pub has_password: bool,
}

#[derive(sqlx::FromRow)]
struct IdentityRow {
    provider: String,
    email: Option<String>,
    linked_at: chrono::DateTime<chrono::Utc>,
    last_used_at: chrono::DateTime<chrono::Utc>,
}

/// The identity providers linked to the current user.
#[utoipa::path(get, path = "/api/user/identities", tag = "users",
    security(("token" = [])),
    responses((status = 200, body = IdentitiesResponse), (status = 401)))]
async fn list_identities(
    State(state): State<AppState>,
    auth: AuthUser,
) -> ApiResult<axum::Json<IdentitiesResponse>> {
    let rows: Vec<IdentityRow> = sqlx::query_as(
        "SELECT provider, email, linked_at, last_used_at FROM user_identities
         WHERE user_id = $1 ORDER BY linked_at",
    )
    .bind(auth.id)
    .fetch_all(&**state.db())
    .await?;
    let has_password: bool =
        sqlx::query_scalar("SELECT password_hash <> '' FROM users WHERE id = $1")
            .bind(auth.id)
            .fetch_optional(&**state.db())
            .await?
            .ok_or(ApiError::Unauthorized("belongs to no user"))?;
    Ok(axum::Json(IdentitiesResponse {
        identities: rows
            .into_iter()
            .map(|r| Identity {
                provider: r.provider,
                email: r.email,
                linked_at: Timestamp(r.linked_at),
                last_used_at: Timestamp(r.last_used_at),
            })
            .collect(),
        has_password,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkRequest {
    /// One of `STOA_AUTH_RETURN_TO`; the first when absent.
    #[serde(default)]
    pub return_to: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkStart {
    /// Navigate the browser here (single use, valid `STOA_AUTH_FLOW_TTL`); it comes
    /// back to `returnTo` with `stoa_linked` or `stoa_error`.
    pub authorize_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LinkResponse {
    pub link: LinkStart,
}

/// Start linking a provider to the current user. A browser navigation carries no bearer
/// token, so this returns a single-use address that does.
#[utoipa::path(post, path = "/api/user/identities/{provider}", tag = "users",
    security(("token" = [])),
    params(("provider" = String, Path)),
    request_body = LinkRequest,
    responses((status = 200, body = LinkResponse), (status = 401), (status = 404, description = "no such provider"), (status = 422)))]
async fn start_link(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(provider): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<axum::Json<LinkResponse>> {
    let config = &state.config.sign_in;
    provider_named(&state, &provider)?;
    // The body is optional: no body means the default return address.
    let LinkRequest { return_to } = if body.is_empty() {
        LinkRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|_| ApiError::field("body", "is not a valid link request"))?
    };
    let return_to = allowed_return_to(config, return_to.as_deref())?;
    let ticket = refresh::generate();
    sqlx::query(
        "INSERT INTO oauth_link_tickets (ticket_hash, user_id, provider, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(&ticket.hash)
    .bind(auth.id)
    .bind(&provider)
    .bind(config.flow_ttl.as_secs_f64())
    .execute(&**state.db())
    .await?;
    let origin = config
        .public_origin
        .as_ref()
        .map(|o| o.origin.as_str())
        .unwrap_or_default();
    let mut url = url::Url::parse(&format!("{origin}/api/auth/oauth/{provider}/authorize"))
        .map_err(|e| ApiError::Internal(e.into()))?;
    url.query_pairs_mut()
        .append_pair("link", &ticket.token)
        .append_pair("returnTo", &return_to);
    Ok(axum::Json(LinkResponse {
        link: LinkStart {
            authorize_url: url.into(),
        },
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ConfirmLinkRequest {
    /// `stoa_code` from the redirect that also said `stoa_link`.
    pub code: String,
}

#[derive(sqlx::FromRow)]
struct PendingLink {
    user_id: uuid::Uuid,
    pending_identity: sqlx::types::Json<crate::oauth::ProviderIdentity>,
    live: bool,
}

/// Finish linking a provider: the one-time code the link flow came back with, confirmed
/// by the account that started it (anyone else's token is refused, so a link cannot be
/// completed in another person's browser).
#[utoipa::path(post, path = "/api/user/identities/{provider}/confirm", tag = "users",
    security(("token" = [])),
    params(("provider" = String, Path)),
    request_body = ConfirmLinkRequest,
    responses(
        (status = 204, description = "linked"),
        (status = 401, description = "the code is invalid, expired or used, or not signed in"),
        (status = 403, description = "another account started this link"),
        (status = 409, description = "the identity is another account's, or this account has one of the provider's")))]
async fn confirm_link(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(provider): Path<String>,
    ApiJson(body): ApiJson<ConfirmLinkRequest>,
) -> ApiResult<StatusCode> {
    let pending: Option<PendingLink> = sqlx::query_as(
        "DELETE FROM oauth_handoffs WHERE code_hash = $1 AND purpose = 'link' AND provider = $2
         RETURNING user_id, pending_identity, expires_at > now() AS live",
    )
    .bind(refresh::hash(&body.code))
    .bind(&provider)
    .fetch_optional(&**state.db())
    .await?;
    let Some(pending) = pending.filter(|p| p.live) else {
        security_event(&state, SecurityEvent::ProviderSignInFailed, Some(auth.id));
        return Err(ApiError::InvalidCode);
    };
    if pending.user_id != auth.id {
        security_event(&state, SecurityEvent::ProviderSignInFailed, Some(auth.id));
        tracing::warn!(target: "stoa::security", event = "provider_sign_in_failed", provider = %provider, user_id = %auth.id, "a link started by another account was presented");
        return Err(ApiError::forbidden_field(
            "code",
            "belongs to a link another account started",
        ));
    }
    let identity = pending.pending_identity.0;
    let mut tx = state.db().begin().await?;
    accounts::link(&mut tx, &provider, &identity, auth.id).await?;
    tx.commit().await?;
    security_event(&state, SecurityEvent::IdentityLinked, Some(auth.id));
    tracing::info!(target: "stoa::security", event = "identity_linked", provider = %provider, user_id = %auth.id, "identity linked");
    Ok(StatusCode::NO_CONTENT)
}

/// Unlink a provider from the current user; refused (409) when it is the account's
/// last way to sign in.
#[utoipa::path(delete, path = "/api/user/identities/{provider}", tag = "users",
    security(("token" = [])),
    params(("provider" = String, Path)),
    responses((status = 204), (status = 401), (status = 404, description = "not linked"), (status = 409, description = "the last way to sign in: set a password first")))]
async fn unlink(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(provider): Path<String>,
) -> ApiResult<StatusCode> {
    let mut tx = state.db().begin().await?;
    // The account's row, locked: two unlinks at once must not both see the other's
    // identity as the way that remains.
    let has_password: bool =
        sqlx::query_scalar("SELECT password_hash <> '' FROM users WHERE id = $1 FOR UPDATE")
            .bind(auth.id)
            .fetch_optional(&mut tx)
            .await?
            .ok_or(ApiError::Unauthorized("belongs to no user"))?;
    let linked: Vec<String> =
        sqlx::query_scalar("SELECT provider FROM user_identities WHERE user_id = $1")
            .bind(auth.id)
            .fetch_all(&mut tx)
            .await?;
    if !linked.contains(&provider) {
        return Err(ApiError::NotFound("identity"));
    }
    if !has_password && linked.len() == 1 {
        return Err(ApiError::conflict(
            "identity",
            "is your only way to sign in: set a password or link another provider first",
        ));
    }
    sqlx::query("DELETE FROM user_identities WHERE user_id = $1 AND provider = $2")
        .bind(auth.id)
        .bind(&provider)
        .execute(&mut tx)
        .await?;
    tx.commit().await?;
    security_event(&state, SecurityEvent::IdentityUnlinked, Some(auth.id));
    tracing::info!(target: "stoa::security", event = "identity_unlinked", provider = %provider, user_id = %auth.id, "identity unlinked");
    Ok(StatusCode::NO_CONTENT)
}
