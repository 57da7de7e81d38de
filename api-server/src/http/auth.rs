//! Token refresh and logout (Stoa extensions).

use crate::api_routes;
use crate::http::routing::RouteTable;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::auth::refresh;
use crate::auth::tokens::KeyRing;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
use crate::http::middleware::ClientIp;
use crate::http::session_cookie::{self, Delivery};
use crate::http::sessions::{
    SessionRow, deliver, limit_credentials, security_event, session_response,
};
use crate::http::types::UserResponse;
use crate::metrics::SecurityEvent;
use crate::state::AppState;

pub fn router<T: RouteTable>() -> T {
    T::empty()
        .routes(api_routes!(refresh_session))
        .routes(api_routes!(logout))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    /// Absent in cookie mode (`X-Stoa-Session: cookie`): the session cookie carries it.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Rotated {
    #[sqlx(flatten)]
    user: SessionRow,
    family_id: Uuid,
}

/// Exchange a refresh token for a new access token and a new refresh token. The presented
/// token is spent; presenting it again revokes its whole family.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, body = UserResponse, description = "the user with a new `token` and `refreshToken`"),
        (status = 401, description = "unknown, expired, revoked or reused refresh token"),
        (status = 429, description = "too many attempts")))]
async fn refresh_session(
    State(state): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<Response> {
    let delivery = Delivery::of(&headers)?;
    let token = match (body.refresh_token, delivery) {
        (Some(token), _) => token,
        (None, Delivery::Cookie) => {
            session_cookie::presented(&headers, &state.config.http)?.unwrap_or_default()
        }
        // Missing, like a wrong token: 401 (a cookie without the header is not used).
        (None, Delivery::Body) => return Err(ApiError::Unauthorized("refresh token is missing")),
    };
    let client = refresh::client_fingerprint(&headers);
    match rotate(&state, ip, &client, &token).await {
        Ok(response) => Ok(deliver(&state, delivery, StatusCode::OK, response)),
        // A refused cookie is of no further use: the browser drops it.
        Err(refused @ ApiError::Unauthorized(_)) if delivery == Delivery::Cookie => {
            let mut answer = refused.into_response();
            answer
                .headers_mut()
                .append(header::SET_COOKIE, session_cookie::clear());
            Ok(answer)
        }
        Err(e) => Err(e),
    }
}

/// Spends `token` for the next one of its session (or, within the grace period, hands
/// out the successor it already has).
async fn rotate(
    state: &AppState,
    ip: ClientIp,
    client: &[u8],
    token: &str,
) -> ApiResult<UserResponse> {
    limit_credentials(state, ip).await?;
    if token.is_empty() || token.len() > 128 {
        return Err(ApiError::Unauthorized("refresh token is invalid"));
    }
    let presented = refresh::hash(token);
    let ring = state.tokens.ring();
    let Some(active_secret) = ring.successor_secrets().first() else {
        return Err(ApiError::Unavailable("no signing key loaded"));
    };
    let next = refresh::successor(active_secret, token);
    if let Some(rotated) = spend(state, &presented, &next, client).await? {
        return session_response(
            state,
            rotated.user,
            Some(rotated.family_id),
            Some(next.token),
        );
    }
    let Some(mut replayed) = replayed(state, &presented, client).await? else {
        security_event(state, SecurityEvent::RefreshTokenInvalid, None);
        return Err(ApiError::Unauthorized(
            "refresh token is invalid or expired",
        ));
    };
    match replayed.grace_successor.take() {
        Some(successor_hash) => hand_out_again(state, ip, token, &ring, &successor_hash, replayed),
        None => {
            tracing::warn!(
                target: "stoa::security",
                event = "refresh_token_reuse",
                user_id = %replayed.user_id,
                family_id = %replayed.family_id,
                client_ip = %ip.0,
                "spent refresh token presented again: family revoked"
            );
            security_event(
                state,
                SecurityEvent::RefreshTokenReuse,
                Some(replayed.user_id),
            );
            state.revocations.mirror(None, &[replayed.family_id]).await;
            Err(ApiError::Unauthorized(
                "refresh token was already used; the session is revoked",
            ))
        }
    }
}

/// Spends the presented token and stores its successor, in one statement: two concurrent
/// uses of one token cannot both win. The successor never outlives the session's absolute
/// end. `None`: the token is not spendable.
async fn spend(
    state: &AppState,
    presented: &[u8],
    next: &refresh::NewRefreshToken,
    client: &[u8],
) -> ApiResult<Option<Rotated>> {
    let expires_at = Utc::now() + state.config.auth.refresh_token_ttl;
    let rotated = sqlx::query_as(
        "WITH spent AS (
             UPDATE refresh_tokens SET spent_at = now(), successor_hash = $2, spent_by = $4
             WHERE token_hash = $1 AND spent_at IS NULL AND revoked_at IS NULL AND expires_at > now()
               -- No end recorded (a row from before sessions had one) is past its end.
               AND session_expires_at > now()
               -- A disabled account's sessions were revoked; this closes the race with it.
               AND user_id IN (SELECT id FROM users WHERE disabled_at IS NULL)
             RETURNING family_id, user_id, session_expires_at),
          next AS (
             INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at, session_expires_at)
             SELECT $2, family_id, user_id, LEAST($3, COALESCE(session_expires_at, $3)), session_expires_at
             FROM spent
             RETURNING family_id, user_id)
         SELECT u.id, u.email, u.username, u.bio, u.image, u.role, next.family_id
         FROM next JOIN users u ON u.id = next.user_id",
    )
    .bind(presented)
    .bind(&next.hash)
    .bind(expires_at)
    .bind(client)
    .fetch_optional(&**state.db())
    .await?;
    Ok(rotated)
}

/// A spent token presented again.
#[derive(sqlx::FromRow)]
struct Replayed {
    family_id: Uuid,
    user_id: Uuid,
    /// Its successor, when the reuse falls within the grace (below).
    grace_successor: Option<Vec<u8>>,
    #[sqlx(flatten)]
    user: SessionRow,
}

/// A token that was not spendable. Spent moments ago by the same client (User-Agent) and
/// its successor still unused: a second tab lost the race, and gets the same successor.
/// Spent earlier, by another client, or its successor already used: someone is replaying
/// it, so the whole family is revoked, in this statement. `None`: never issued.
async fn replayed(
    state: &AppState,
    presented: &[u8],
    client: &[u8],
) -> ApiResult<Option<Replayed>> {
    let replayed = sqlx::query_as(
        "WITH presented AS (
             SELECT family_id, user_id, spent_at, revoked_at, successor_hash, spent_by
             FROM refresh_tokens WHERE token_hash = $1 AND spent_at IS NOT NULL),
          grace AS (
             SELECT p.successor_hash FROM presented p
             JOIN refresh_tokens s ON s.token_hash = p.successor_hash
             WHERE p.revoked_at IS NULL AND p.spent_at > now() - make_interval(secs => $2)
               -- Rows spent by the previous release recorded no client.
               AND (p.spent_by IS NULL OR p.spent_by = $3)
               AND s.spent_at IS NULL AND s.revoked_at IS NULL AND s.expires_at > now()),
          revoked AS (
             UPDATE refresh_tokens SET revoked_at = now()
             WHERE family_id IN (SELECT family_id FROM presented)
               AND NOT EXISTS (SELECT 1 FROM grace) AND revoked_at IS NULL)
         SELECT p.family_id, p.user_id, (SELECT successor_hash FROM grace) AS grace_successor,
                u.id, u.email, u.username, u.bio, u.image, u.role
         FROM presented p JOIN users u ON u.id = p.user_id",
    )
    .bind(presented)
    .bind(state.config.auth.refresh_reuse_grace.as_secs_f64())
    .bind(client)
    .fetch_optional(&**state.db())
    .await?;
    Ok(replayed)
}

/// Within the grace: the same successor again, derived under one of the loaded keys (the
/// active one when it was first handed out).
fn hand_out_again(
    state: &AppState,
    ip: ClientIp,
    token: &str,
    ring: &KeyRing,
    successor_hash: &[u8],
    replayed: Replayed,
) -> ApiResult<UserResponse> {
    let same = ring
        .successor_secrets()
        .iter()
        .map(|secret| refresh::successor(secret, token))
        .find(|candidate| candidate.hash == successor_hash);
    let Some(successor) = same else {
        return Err(ApiError::Unauthorized("refresh token was already used"));
    };
    // Not an attack by itself (two tabs), but whoever held the spent token now holds the
    // session too: recorded, so a pattern of it can be seen.
    tracing::info!(
        target: "stoa::security",
        event = "refresh_grace_used",
        user_id = %replayed.user_id,
        family_id = %replayed.family_id,
        client_ip = %ip.0,
        "spent refresh token presented again within the grace by the same client: same successor handed out"
    );
    security_event(
        state,
        SecurityEvent::RefreshGraceUsed,
        Some(replayed.user_id),
    );
    session_response(
        state,
        replayed.user,
        Some(replayed.family_id),
        Some(successor.token),
    )
}

/// Revoke the presented access token and its refresh-token family.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    security(("token" = [])),
    responses((status = 204, description = "logged out"), (status = 401)))]
async fn logout(
    State(state): State<AppState>,
    auth: AuthUser,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let delivery = Delivery::of(&headers)?;
    let expires_at = DateTime::<Utc>::from_timestamp(auth.claims.exp, 0).unwrap_or_else(Utc::now);
    sqlx::query(
        "WITH denied AS (
             INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING)
         UPDATE refresh_tokens SET revoked_at = now()
         WHERE family_id = $3 AND user_id = $4 AND revoked_at IS NULL",
    )
    .bind(auth.claims.jti)
    .bind(expires_at)
    .bind(auth.claims.fam)
    .bind(auth.id)
    .execute(&**state.db())
    .await?;
    let families: Vec<Uuid> = auth.claims.fam.into_iter().collect();
    state
        .revocations
        .mirror(Some((auth.claims.jti, expires_at)), &families)
        .await;
    tracing::info!(target: "stoa::security", event = "logout", user_id = %auth.id, "session revoked");
    let mut answer = StatusCode::NO_CONTENT.into_response();
    if delivery == Delivery::Cookie {
        answer
            .headers_mut()
            .append(header::SET_COOKIE, session_cookie::clear());
    }
    Ok(answer)
}
