//! The one error type of the HTTP layer and its mapping to responses.
//!
//! Every failure a client can see goes through [`ApiError::into_response`], which writes the
//! RealWorld shape `{"errors": {"<field>": ["<message>"]}}`. Internal errors are logged with
//! their cause and answered with a generic message, so nothing internal leaks.

use std::borrow::Cow;
use std::collections::BTreeMap;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error_tracking::ErrorDetail;
use crate::metrics::{Bucket, BucketLabels, Metrics};
use crate::ratelimit::{Decision, Quota};

/// Field name → messages, serialized in a stable order.
pub type FieldErrors = BTreeMap<Cow<'static, str>, Vec<Cow<'static, str>>>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: missing, malformed, expired or revoked credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// 401 from login: the same answer whether or not the account exists.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// 401 from a second-factor step: a wrong, replayed or late code.
    #[error("invalid second factor")]
    InvalidCode,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// 403 with a field error: the caller may not do this without proving something
    /// (`currentPassword`).
    #[error("forbidden")]
    ForbiddenField(FieldErrors),
    /// 409 with a field error: the request is valid but conflicts with stored state (a
    /// username or email already taken).
    #[error("conflict")]
    Conflict(FieldErrors),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("validation failed")]
    Validation(FieldErrors),
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("rate limited")]
    RateLimited { quota: Quota, decision: Decision },
    #[error("service unavailable: {0}")]
    Unavailable(&'static str),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The 429 for a denied rate-limit decision (counted by bucket).
pub fn rate_limited(
    metrics: &Metrics,
    bucket: Bucket,
    quota: Quota,
    decision: Decision,
) -> ApiError {
    metrics
        .rate_limited
        .get_or_create(&BucketLabels {
            bucket: bucket.as_str(),
        })
        .inc();
    ApiError::RateLimited { quota, decision }
}

/// The `RateLimit-*` response headers of one decision (IETF draft "RateLimit header
/// fields"), on allowed and refused responses alike.
pub fn apply_rate_limit_headers(
    headers: &mut axum::http::HeaderMap,
    quota: Quota,
    decision: Decision,
) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set("ratelimit-limit", decision.limit.to_string());
    set("ratelimit-remaining", decision.remaining.to_string());
    set(
        "ratelimit-reset",
        decision.reset.as_millis().div_ceil(1000).to_string(),
    );
    set("ratelimit-policy", quota.policy());
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    errors: &'a FieldErrors,
}

/// `{field: [message]}`.
fn one_error(field: &'static str, message: impl Into<Cow<'static, str>>) -> FieldErrors {
    FieldErrors::from([(Cow::Borrowed(field), vec![message.into()])])
}

impl ApiError {
    /// A 403 with a single field error.
    pub fn forbidden_field(field: &'static str, message: &'static str) -> Self {
        ApiError::ForbiddenField(one_error(field, message))
    }

    /// A 409 with a single field error.
    pub fn conflict(field: &'static str, message: &'static str) -> Self {
        ApiError::Conflict(one_error(field, message))
    }

    /// A 422 with a single field error.
    pub fn field(field: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::Validation(one_error(field, message))
    }

    /// Why the statement's database connection went away, if that is what failed
    /// (`db::connection_lost`).
    fn connection_lost(&self) -> Option<&'static str> {
        match self {
            ApiError::Database(e) => crate::db::connection_lost(e),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) | ApiError::InvalidCredentials | ApiError::InvalidCode => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) | ApiError::ForbiddenField(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(e) if is_pool_exhausted(e) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(_) if self.connection_lost().is_some() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Database(e) if is_unstorable_text(e) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Database(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the error says, field by field (the API answers it as `{"errors": …}`).
    pub fn body(&self) -> FieldErrors {
        let one = |field: &'static str, message: &'static str| one_error(field, message);
        match self {
            ApiError::Unauthorized(reason) => one("token", reason),
            ApiError::InvalidCredentials => one("email or password", "is invalid"),
            ApiError::InvalidCode => one("code", "is invalid, expired or already used"),
            ApiError::Forbidden(what) => one(what, "is not yours to change"),
            ApiError::NotFound(what) => one(what, "not found"),
            ApiError::Validation(errors)
            | ApiError::ForbiddenField(errors)
            | ApiError::Conflict(errors) => errors.clone(),
            ApiError::PayloadTooLarge => one("body", "is too large"),
            ApiError::RateLimited { .. } => one("request", "rate limit exceeded, retry later"),
            ApiError::Unavailable(what) => one(what, "is temporarily unavailable"),
            ApiError::Database(e) if is_pool_exhausted(e) => one("server", "is busy, retry later"),
            ApiError::Database(_) if self.connection_lost().is_some() => {
                one("server", "lost its database connection, retry later")
            }
            ApiError::Database(e) if is_unstorable_text(e) => {
                one("request", "must not contain NUL characters")
            }
            ApiError::Database(_) | ApiError::Internal(_) => one("server", "internal error"),
        }
    }
}

/// Text PostgreSQL cannot store (a NUL character): the client's input, not a server fault.
/// Inputs are checked first; this is the net under every path that binds client text.
fn is_unstorable_text(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("22021" | "22P05")))
}

fn is_pool_exhausted(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
}

impl From<crate::auth::accounts::AccountError> for ApiError {
    fn from(e: crate::auth::accounts::AccountError) -> Self {
        use crate::auth::accounts::AccountError;
        match e {
            AccountError::UnknownUser(_) => ApiError::NotFound("user"),
            AccountError::OwnAccount => ApiError::forbidden_field(
                "username",
                "is your own account: another admin must disable or demote it",
            ),
            AccountError::Database(e) => ApiError::Database(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Database(e) if is_unstorable_text(e) => {}
            ApiError::Database(e) if self.connection_lost().is_some() => {
                tracing::warn!(error = %e, "database connection lost during the request")
            }
            ApiError::Database(e) => tracing::error!(error = %e, "database error"),
            ApiError::Internal(e) => tracing::error!(error = format!("{e:#}"), "internal error"),
            _ => {}
        }
        let mut response = (
            status,
            Json(ErrorBody {
                errors: &self.body(),
            }),
        )
            .into_response();
        // The front door tries a read again, and counts either way.
        if let Some(reason) = self.connection_lost() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response.extensions_mut().insert(ConnectionLost(reason));
            return response;
        }
        match &self {
            ApiError::Unauthorized(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Token realm=\"stoa\", Bearer realm=\"stoa\""),
                );
            }
            ApiError::RateLimited { quota, decision } => {
                // Round up: retrying after the advertised time must succeed.
                let secs = decision.retry_after.as_millis().div_ceil(1000).max(1);
                if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                apply_rate_limit_headers(response.headers_mut(), *quota, *decision);
            }
            ApiError::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Database(e) if is_pool_exhausted(e) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
                    .extensions_mut()
                    .insert(crate::metrics::Refusal::DatabaseBusy);
            }
            // For error tracking (the front door reports every 5xx): what went wrong, in
            // the words logged above. Never part of the body.
            ApiError::Database(e) if !is_unstorable_text(e) => {
                response
                    .extensions_mut()
                    .insert(ErrorDetail(format!("database error: {e}").into()));
            }
            ApiError::Internal(e) => {
                response
                    .extensions_mut()
                    .insert(ErrorDetail(format!("{e:#}").into()));
            }
            _ => {}
        }
        response
    }
}

/// On a 503 whose statement lost its database connection: why (`db::connection_lost`).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLost(pub &'static str);

/// Maps unique-constraint violations to field errors at the call site:
/// `query.await.on_constraint("users_email_key", || ApiError::field("email", "has already been taken"))`.
pub trait ResultExt<T> {
    fn on_constraint(self, name: &str, map: impl FnOnce() -> ApiError) -> ApiResult<T>;
}

impl<T, E: Into<ApiError>> ResultExt<T> for Result<T, E> {
    fn on_constraint(self, name: &str, map: impl FnOnce() -> ApiError) -> ApiResult<T> {
        self.map_err(|e| match e.into() {
            ApiError::Database(sqlx::Error::Database(db)) if db.constraint() == Some(name) => map(),
            other => other,
        })
    }
}

/// Collects validation messages for several fields before failing once.
#[derive(Default)]
pub struct Validator {
    errors: FieldErrors,
}

impl Validator {
    pub fn check(&mut self, ok: bool, field: &'static str, message: &'static str) -> &mut Self {
        if !ok {
            self.errors
                .entry(Cow::Borrowed(field))
                .or_default()
                .push(Cow::Borrowed(message));
        }
        self
    }

    pub fn finish(&mut self) -> ApiResult<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(std::mem::take(&mut self.errors)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 503 says when to come back: a client that honours `Retry-After` backs off
    /// instead of sending again at once (found missing on a busy pool under 10,000
    /// connections, 2026-12-06).
    #[test]
    fn every_unavailable_answer_carries_retry_after() {
        for error in [
            ApiError::Unavailable("server (overloaded)"),
            ApiError::Database(sqlx::Error::PoolTimedOut),
            ApiError::Database(sqlx::Error::PoolClosed),
        ] {
            let what = format!("{error:?}");
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
            assert_eq!(
                response.headers().get(header::RETRY_AFTER),
                Some(&HeaderValue::from_static("1")),
                "{what}"
            );
        }
    }
}
