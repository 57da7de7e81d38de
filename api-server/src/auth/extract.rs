//! `AuthUser` (required) and `MaybeAuthUser` (optional) extractors.
//!
//! Accepts `Authorization: Token <jwt>` (RealWorld) and `Authorization: Bearer <jwt>`.
//! On optional routes a missing header means anonymous, but a present and invalid one is
//! still a 401: a client with a stale token should learn about it.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::auth::tokens::{Claims, TokenError};
use crate::error::ApiError;
use crate::state::AppState;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub claims: Claims,
}

/// A caller who may be anonymous.
#[derive(Debug, Clone)]
pub struct MaybeAuthUser(pub Option<AuthUser>);

impl MaybeAuthUser {
    pub fn id(&self) -> Option<Uuid> {
        self.0.as_ref().map(|u| u.id)
    }
}

fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
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
        Ok(Some(token))
    } else {
        Err(ApiError::Unauthorized(
            "must use the Token or Bearer scheme",
        ))
    }
}

/// Verifies the signature and claims, then the denylist, then the caller's rate budget.
async fn authenticate(state: &AppState, token: &str) -> Result<AuthUser, ApiError> {
    let claims = state.tokens.verify(token).map_err(|e| {
        ApiError::Unauthorized(match e {
            TokenError::Expired => "has expired",
            TokenError::UnknownKey => "was signed by an unknown key",
            TokenError::Malformed | TokenError::Invalid => "is invalid",
        })
    })?;
    let revoked = state
        .revocations
        .is_revoked(&state.db(), claims.jti, claims.fam)
        .await?;
    if revoked {
        return Err(ApiError::Unauthorized("has been revoked"));
    }
    state
        .enforce_rate_limit(
            "user",
            &claims.sub.to_string(),
            state.config.rate_limits.per_user,
        )
        .await?;
    Ok(AuthUser {
        id: claims.sub,
        claims,
    })
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?.ok_or(ApiError::Unauthorized("is missing"))?;
        authenticate(state, token).await
    }
}

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match bearer(parts)? {
            None => Ok(MaybeAuthUser(None)),
            Some(token) => authenticate(state, token)
                .await
                .map(|user| MaybeAuthUser(Some(user))),
        }
    }
}
