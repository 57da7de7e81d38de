//! Multi-factor authentication with TOTP (`crate::auth::totp`).
//!
//! Enrolment: `POST /api/user/mfa/totp` (current password) returns a secret and its
//! provisioning URI, pending until `POST /api/user/mfa/totp/confirm` with a first code,
//! which turns MFA on and returns ten single-use recovery codes, once. From then on a
//! login with the right password answers 202 with a challenge instead of a session;
//! `POST /api/users/login/mfa` with the challenge and a code (or a recovery code) starts
//! the session. `POST /api/user/mfa/totp/disable` needs the password and a code.
//!
//! Every code is checked against the account's budget (`STOA_RATE_LIMIT_MFA`); a
//! challenge also dies after `STOA_MFA_CHALLENGE_ATTEMPTS` codes or
//! `STOA_MFA_CHALLENGE_TTL`. A TOTP code is accepted only for a time step later than the
//! last one accepted (one atomic update), so a code cannot be replayed within its window.

use crate::api_routes;
use crate::http::routing::RouteTable;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::auth::refresh;
use crate::auth::sealing::StoredSecret;
use crate::auth::totp::{self, Authenticator};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
use crate::http::middleware::ClientIp;
use crate::http::session_cookie::Delivery;
use crate::http::sessions::{
    Credentials, SessionRow, credentials_of, deliver, limit_credentials, security_event,
    session_response, start_session, verify_current_password,
};
use crate::http::types::{Timestamp, UserResponse};
use crate::metrics::{Bucket, SecurityEvent};
use crate::state::AppState;

pub fn router<T: RouteTable>() -> T {
    T::empty()
        .routes(api_routes!(mfa_status))
        .routes(api_routes!(enroll_totp))
        .routes(api_routes!(confirm_totp))
        .routes(api_routes!(disable_totp))
        .routes(api_routes!(complete_login))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MfaStatus {
    /// `off`, `pending` (enrolled, not confirmed yet) or `on`.
    pub totp: &'static str,
    pub recovery_codes_left: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MfaStatusResponse {
    pub mfa: MfaStatus,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordConfirmation {
    /// Empty or absent for an account without a password (it needs a recent provider
    /// sign-in instead).
    #[serde(default)]
    pub current_password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TotpEnrolment {
    /// The secret in base32, to type into an authenticator app.
    pub secret: String,
    /// `otpauth://totp/…`, usually shown as a QR code.
    pub uri: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TotpEnrolmentResponse {
    pub totp: TotpEnrolment,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CodeRequest {
    /// The authenticator's current 6-digit code.
    pub code: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryCodesResponse {
    /// Shown once: each signs in once in place of a code.
    pub recovery_codes: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisableRequest {
    /// Empty or absent for an account without a password (as for enrolment).
    #[serde(default)]
    pub current_password: String,
    /// A current code or an unused recovery code.
    pub code: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Challenge {
    /// Opaque; send it to `POST /api/users/login/mfa` with a code.
    pub token: String,
    pub expires_at: Timestamp,
}

/// A login answered with this (202) needs its second factor.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChallengeResponse {
    pub challenge: Challenge,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChallengeAnswer {
    /// `challenge.token` from the login.
    pub challenge: String,
    /// The authenticator's current code, or an unused recovery code.
    pub code: String,
}

/// The second factor is due: a challenge for `user_id`, answered 202.
pub async fn challenge(state: &AppState, user_id: Uuid) -> ApiResult<Response> {
    let challenge = new_challenge(state, user_id).await?;
    let body = ChallengeResponse { challenge };
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// A second-factor challenge for `user_id`, who just proved the password (the API's
/// login and the admin console's).
pub async fn new_challenge(state: &AppState, user_id: Uuid) -> ApiResult<Challenge> {
    let token = refresh::generate();
    let expires_at = chrono::Utc::now() + state.config.auth.mfa_challenge_ttl;
    sqlx::query("INSERT INTO mfa_challenges (token_hash, user_id, expires_at) VALUES ($1, $2, $3)")
        .bind(&token.hash)
        .bind(user_id)
        .bind(expires_at)
        .execute(&**state.db())
        .await?;
    Ok(Challenge {
        token: token.token,
        expires_at: Timestamp(expires_at),
    })
}

/// Answers a challenge with a code (or a recovery code): the account, once the code is
/// right; the challenge is then spent. Each answer spends one of the challenge's
/// attempts, right or wrong (401 once none is left, or when it expired).
pub async fn answer_challenge(state: &AppState, challenge: &str, code: &str) -> ApiResult<Uuid> {
    if challenge.is_empty() || challenge.len() > 128 {
        return Err(ApiError::Unauthorized("challenge is invalid or expired"));
    }
    let challenge = refresh::hash(challenge);
    let user_id: Uuid = sqlx::query_scalar(
        "UPDATE mfa_challenges SET attempts = attempts + 1
         WHERE token_hash = $1 AND expires_at > now() AND attempts < $2
         RETURNING user_id",
    )
    .bind(&challenge)
    .bind(i32::try_from(state.config.auth.mfa_challenge_attempts).unwrap_or(i32::MAX))
    .fetch_optional(&**state.db())
    .await?
    .ok_or(ApiError::Unauthorized("challenge is invalid or expired"))?;
    second_factor(state, user_id, code).await?;
    sqlx::query("DELETE FROM mfa_challenges WHERE token_hash = $1")
        .bind(&challenge)
        .execute(&**state.db())
        .await?;
    Ok(user_id)
}

/// Whether MFA is on, and how many recovery codes are left.
#[utoipa::path(get, path = "/api/user/mfa", tag = "users",
    security(("token" = [])),
    responses((status = 200, body = MfaStatusResponse), (status = 401)))]
async fn mfa_status(
    State(state): State<AppState>,
    auth: AuthUser,
) -> ApiResult<axum::Json<MfaStatusResponse>> {
    let (confirmed, left): (Option<bool>, i64) = sqlx::query_as(
        "SELECT (SELECT confirmed_at IS NOT NULL FROM user_totp WHERE user_id = $1),
                (SELECT count(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL)",
    )
    .bind(auth.id)
    .fetch_one(&**state.db())
    .await?;
    let totp = match confirmed {
        None => "off",
        Some(false) => "pending",
        Some(true) => "on",
    };
    Ok(axum::Json(MfaStatusResponse {
        mfa: MfaStatus {
            totp,
            recovery_codes_left: left,
        },
    }))
}

/// Start enrolling an authenticator (needs the current password, so a stolen access
/// token cannot lock the owner out). Replaces an unconfirmed enrolment.
#[utoipa::path(post, path = "/api/user/mfa/totp", tag = "users",
    security(("token" = [])),
    request_body = PasswordConfirmation,
    responses((status = 200, body = TotpEnrolmentResponse), (status = 401), (status = 403, description = "currentPassword wrong"), (status = 409, description = "MFA is already on")))]
async fn enroll_totp(
    State(state): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    auth: AuthUser,
    ApiJson(body): ApiJson<PasswordConfirmation>,
) -> ApiResult<axum::Json<TotpEnrolmentResponse>> {
    let Credentials {
        email,
        username,
        password_hash: hash,
    } = credentials_of(&state, auth.id).await?;
    verify_current_password(
        &state,
        ip,
        &auth,
        &email,
        hash,
        Some(body.current_password),
        "is required to enrol an authenticator",
    )
    .await?;
    let secret = Authenticator::generate_secret();
    // Only the sealed form is stored (`auth::sealing`).
    let sealed = state.sealer.seal(auth.id, &secret);
    let authenticator =
        Authenticator::new(secret, &username).map_err(|e| ApiError::Internal(e.into()))?;
    // An enrolment in progress is replaced; one that is confirmed is not touched.
    let stored = sqlx::query(
        "INSERT INTO user_totp (user_id, sealed_secret, secret_key_id) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET secret = NULL, sealed_secret = EXCLUDED.sealed_secret,
             secret_key_id = EXCLUDED.secret_key_id, last_step = 0, created_at = now()
         WHERE user_totp.confirmed_at IS NULL",
    )
    .bind(auth.id)
    .bind(&sealed.bytes)
    .bind(&sealed.kid)
    .execute(&**state.db())
    .await?;
    if stored.rows_affected() == 0 {
        return Err(ApiError::conflict("mfa", "is already on"));
    }
    Ok(axum::Json(TotpEnrolmentResponse {
        totp: TotpEnrolment {
            secret: authenticator.secret_base32(),
            uri: authenticator.provisioning_uri(),
        },
    }))
}

/// Confirm the enrolment with a first code: MFA is on, and the recovery codes are
/// returned (once).
#[utoipa::path(post, path = "/api/user/mfa/totp/confirm", tag = "users",
    security(("token" = [])),
    request_body = CodeRequest,
    responses((status = 200, body = RecoveryCodesResponse), (status = 401, description = "wrong code, or not signed in"), (status = 409, description = "no enrolment in progress")))]
async fn confirm_totp(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<CodeRequest>,
) -> ApiResult<axum::Json<RecoveryCodesResponse>> {
    limit_codes(&state, auth.id).await?;
    let Some(pending) = authenticator(&state, auth.id, false).await? else {
        return Err(ApiError::conflict("mfa", "has no enrolment to confirm"));
    };
    let Some(step) = current_step(&pending, &body.code) else {
        security_event(&state, SecurityEvent::MfaFailed, Some(auth.id));
        return Err(ApiError::InvalidCode);
    };
    let codes = totp::generate_recovery_codes();
    let hashes: Vec<Vec<u8>> = codes.iter().map(|(_, hash)| hash.clone()).collect();
    // Confirmation and the recovery codes in one statement (the previous codes, if MFA
    // was on before, are replaced).
    let confirmed = sqlx::query(
        "WITH confirmed AS (
             UPDATE user_totp SET confirmed_at = now(), last_step = $2
             WHERE user_id = $1 AND confirmed_at IS NULL RETURNING user_id),
          cleared AS (
             DELETE FROM mfa_recovery_codes WHERE user_id IN (SELECT user_id FROM confirmed))
         INSERT INTO mfa_recovery_codes (user_id, code_hash)
         SELECT user_id, unnest($3::bytea[]) FROM confirmed",
    )
    .bind(auth.id)
    .bind(step_value(step))
    .bind(&hashes)
    .execute(&**state.db())
    .await?;
    if confirmed.rows_affected() == 0 {
        return Err(ApiError::conflict("mfa", "has no enrolment to confirm"));
    }
    tracing::info!(target: "stoa::security", event = "mfa_enabled", user_id = %auth.id, "TOTP turned on");
    Ok(axum::Json(RecoveryCodesResponse {
        recovery_codes: codes.into_iter().map(|(shown, _)| shown).collect(),
    }))
}

/// Turn MFA off: needs the current password and a code (or a recovery code).
#[utoipa::path(post, path = "/api/user/mfa/totp/disable", tag = "users",
    security(("token" = [])),
    request_body = DisableRequest,
    responses((status = 204), (status = 401, description = "wrong code, or not signed in"), (status = 403, description = "currentPassword wrong"), (status = 409, description = "MFA is not on")))]
async fn disable_totp(
    State(state): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    auth: AuthUser,
    ApiJson(body): ApiJson<DisableRequest>,
) -> ApiResult<StatusCode> {
    let Credentials {
        email,
        password_hash: hash,
        ..
    } = credentials_of(&state, auth.id).await?;
    verify_current_password(
        &state,
        ip,
        &auth,
        &email,
        hash,
        Some(body.current_password),
        "is required to turn MFA off",
    )
    .await?;
    if !second_factor(&state, auth.id, &body.code).await? {
        return Err(ApiError::conflict("mfa", "is not on"));
    }
    sqlx::query(
        "WITH codes AS (DELETE FROM mfa_recovery_codes WHERE user_id = $1),
              -- A sign-in waiting for a second factor no longer has one to give.
              challenges AS (DELETE FROM mfa_challenges WHERE user_id = $1)
         DELETE FROM user_totp WHERE user_id = $1",
    )
    .bind(auth.id)
    .execute(&**state.db())
    .await?;
    tracing::info!(target: "stoa::security", event = "mfa_disabled", user_id = %auth.id, "TOTP turned off");
    Ok(StatusCode::NO_CONTENT)
}

/// Complete a sign-in that answered 202: the challenge and a code (or a recovery code)
/// start the session, like a login (`X-Stoa-Session: cookie` works here too).
#[utoipa::path(post, path = "/api/users/login/mfa", tag = "users",
    request_body = ChallengeAnswer,
    responses(
        (status = 200, body = UserResponse),
        (status = 401, description = "unknown or expired challenge, or a wrong, replayed or late code"),
        (status = 403, description = "the account is disabled")))]
async fn complete_login(
    State(state): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ChallengeAnswer>,
) -> ApiResult<Response> {
    let delivery = Delivery::of(&headers)?;
    limit_credentials(&state, ip).await?;
    let user_id = answer_challenge(&state, &body.challenge, &body.code).await?;
    let session = start_session(&state, user_id).await?;
    let row: SessionRow =
        sqlx::query_as("SELECT id, email, username, bio, image, role FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&**state.db())
            .await?;
    let response = session_response(
        &state,
        row,
        Some(session.family),
        Some(session.refresh.token),
    )?;
    Ok(deliver(&state, delivery, StatusCode::OK, response))
}

/// Checks `code` as the account's second factor: a TOTP code for a step later than the
/// last one used, or an unused recovery code (spent). `Ok(false)` when MFA is not on;
/// a wrong code is the 401.
async fn second_factor(state: &AppState, user_id: Uuid, code: &str) -> ApiResult<bool> {
    limit_codes(state, user_id).await?;
    let Some(confirmed) = authenticator(state, user_id, true).await? else {
        return Ok(false);
    };
    let accepted = match current_step(&confirmed, code) {
        // Only a step after the last accepted one: a code works once.
        Some(step) => {
            sqlx::query("UPDATE user_totp SET last_step = $2 WHERE user_id = $1 AND last_step < $2")
                .bind(user_id)
                .bind(step_value(step))
                .execute(&**state.db())
                .await?
                .rows_affected()
                == 1
        }
        None => {
            let spent = sqlx::query(
                "UPDATE mfa_recovery_codes SET used_at = now()
                 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
            )
            .bind(user_id)
            .bind(totp::recovery_code_hash(code))
            .execute(&**state.db())
            .await?
            .rows_affected()
                == 1;
            if spent {
                security_event(state, SecurityEvent::RecoveryCodeUsed, Some(user_id));
                tracing::info!(target: "stoa::security", event = "recovery_code_used", user_id = %user_id,
                    "signed in with a recovery code");
            }
            spent
        }
    };
    if !accepted {
        security_event(state, SecurityEvent::MfaFailed, Some(user_id));
        tracing::warn!(target: "stoa::security", event = "mfa_failed", user_id = %user_id,
            "wrong, replayed or late second-factor code");
        return Err(ApiError::InvalidCode);
    }
    Ok(true)
}

/// The user's authenticator: the confirmed one, or the enrolment awaiting confirmation.
async fn authenticator(
    state: &AppState,
    user_id: Uuid,
    confirmed: bool,
) -> ApiResult<Option<Authenticator>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        username: String,
        #[sqlx(flatten)]
        stored: StoredSecret,
    }
    let found: Option<Row> = sqlx::query_as(
        "SELECT u.username, t.secret, t.sealed_secret, t.secret_key_id
         FROM user_totp t JOIN users u ON u.id = t.user_id
         WHERE t.user_id = $1 AND (t.confirmed_at IS NOT NULL) = $2",
    )
    .bind(user_id)
    .bind(confirmed)
    .fetch_optional(&**state.db())
    .await?;
    found
        .map(|Row { username, stored }| {
            // A secret that does not open is a deployment fault (a key dropped too early,
            // or the wrong key set mounted), never the user's: a 500 that names no secret.
            let secret = state
                .sealer
                .open_row(user_id, &stored)
                .map_err(|e| ApiError::Internal(e.into()))?;
            Authenticator::new(secret, &username).map_err(|e| ApiError::Internal(e.into()))
        })
        .transpose()
}

/// The time step `code` is valid for now, if any.
fn current_step(authenticator: &Authenticator, code: &str) -> Option<u64> {
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default();
    authenticator.matching_step(code, now)
}

/// Steps are seconds / 30: far inside `bigint`.
fn step_value(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}

/// Codes tried per account (`STOA_RATE_LIMIT_MFA`).
async fn limit_codes(state: &AppState, user_id: Uuid) -> ApiResult<()> {
    state
        .enforce_rate_limit(
            Bucket::Mfa,
            &user_id.to_string(),
            state.config.rate_limits.mfa_per_account,
        )
        .await
}
