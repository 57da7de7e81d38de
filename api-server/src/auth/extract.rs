//! `AuthUser` (required) and `MaybeAuthUser` (optional) extractors.
//!
//! Accepts `Authorization: Token <jwt>` (RealWorld) and `Authorization: Bearer <jwt>`.
//! On optional routes a missing header means anonymous, but a present and invalid one is
//! still a 401: a client with a stale token should learn about it.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use uuid::Uuid;

use crate::auth::Role;
use crate::auth::tokens::{Claims, TokenError};
use crate::error::ApiError;
use crate::metrics::SecurityEvent;
use crate::reads::Writer;
use crate::state::AppState;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub claims: Claims,
    /// The `Authorization` value the token came in (a reference-counted view of the
    /// request's bytes, not a copy).
    header: HeaderValue,
}

impl AuthUser {
    /// The access token the caller presented (verified).
    pub fn token(&self) -> &str {
        // Already parsed once by the extractor, so it cannot fail here.
        token_in(&self.header).unwrap_or_default()
    }
}

/// A signed-in caller whose token carries the admin role; anyone else signed in gets a
/// 403 (and a security event), an anonymous caller a 401.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

/// A caller who may be anonymous.
#[derive(Debug, Clone)]
pub struct MaybeAuthUser(pub Option<AuthUser>);

impl MaybeAuthUser {
    pub fn id(&self) -> Option<Uuid> {
        self.0.as_ref().map(|u| u.id)
    }
}

/// A request's token, verified by the rate-limit middleware, which has also charged its
/// user's budget in the same round trip as the address's when the replica's denylist
/// copy said the token is not revoked. The extractors take it from the request's
/// extensions (only the server can put it there) instead of doing that again.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Claims,
    /// False when the revocation check must come first: a revoked token (leaked, then
    /// logged out) never spends its user's budget.
    pub budget_charged: bool,
}

/// The token in `Authorization`, if any.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers.get(AUTHORIZATION).map(token_in).transpose()
}

fn token_in(value: &HeaderValue) -> Result<&str, ApiError> {
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("is malformed"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(ApiError::Unauthorized("is malformed"))?;
    if scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer") {
        let token = token.trim();
        if token.is_empty() {
            return Err(ApiError::Unauthorized("is missing"));
        }
        Ok(token)
    } else {
        Err(ApiError::Unauthorized(
            "must use the Token or Bearer scheme",
        ))
    }
}

/// Verifies the signature and claims (unless the middleware did), then the denylist, then
/// the caller's rate budget (unless the middleware charged it): the budget is charged only
/// for a token that is not revoked.
async fn authenticate(
    state: &AppState,
    verified: Option<Verified>,
    header: &HeaderValue,
) -> Result<AuthUser, ApiError> {
    let token = token_in(header)?;
    let (claims, budget_charged) = match verified {
        Some(Verified {
            claims,
            budget_charged,
        }) => (claims, budget_charged),
        None => (verify(state, token)?, false),
    };
    let revoked = state
        .revocations
        .is_revoked(&state.db(), claims.jti, claims.fam)
        .await?;
    if revoked {
        return Err(ApiError::Unauthorized("has been revoked"));
    }
    if !budget_charged {
        state
            .enforce_rate_limit(
                crate::metrics::Bucket::User,
                &claims.sub.to_string(),
                state.config.rate_limits.per_user,
            )
            .await?;
    }
    Ok(AuthUser {
        id: claims.sub,
        claims,
        header: header.clone(),
    })
}

fn verify(state: &AppState, token: &str) -> Result<Claims, ApiError> {
    state.tokens.verify(token).map_err(|e| {
        ApiError::Unauthorized(match e {
            TokenError::Expired => "has expired",
            TokenError::UnknownKey => "was signed by an unknown key",
            TokenError::Malformed | TokenError::Invalid => "is invalid",
        })
    })
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let verified = parts.extensions.remove::<Verified>();
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized("is missing"))?;
        let user = authenticate(state, verified, header).await?;
        Writer::note(&parts.extensions, user.id);
        Ok(user)
    }
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.claims.role != Role::Admin {
            state
                .security_log
                .record(SecurityEvent::AdminDenied, Some(user.id));
            tracing::warn!(target: "stoa::security", event = "admin_denied", user_id = %user.id,
                path = %parts.uri.path(), "admin route refused to a non-admin");
            return Err(ApiError::forbidden_field("role", "must be admin"));
        }
        Ok(AdminUser(user))
    }
}

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let verified = parts.extensions.remove::<Verified>();
        match parts.headers.get(AUTHORIZATION) {
            None => Ok(MaybeAuthUser(None)),
            Some(header) => {
                let user = authenticate(state, verified, header).await?;
                Writer::note(&parts.extensions, user.id);
                Ok(MaybeAuthUser(Some(user)))
            }
        }
    }
}
