//! Sign-in with identity providers, over HTTP (`crate::oauth` has the protocol).
//!
//! 1. `GET /api/auth/oauth/{provider}/authorize?returnTo=…` stores the flow (its `state`,
//!    `nonce` and PKCE verifier, single use, `STOA_AUTH_FLOW_TTL`), binds it to the
//!    browser with an HttpOnly cookie, and redirects to the provider.
//! 2. The provider sends the browser to `…/callback?code&state`. The flow is taken (so a
//!    replay finds nothing), the cookie must match, the code is exchanged and the
//!    identity resolved (`oauth::accounts`). The browser goes back to `returnTo`, which
//!    must be one of `STOA_AUTH_RETURN_TO` exactly, with `stoa_code` (a one-time code,
//!    `STOA_AUTH_HANDOFF_TTL`), `stoa_linked` or `stoa_error`.
//! 3. The front end posts the code to `POST /api/auth/oauth/exchange` and gets what a
//!    password login answers: the user with tokens (body or cookie mode), or the 202
//!    second-factor challenge.

use crate::api_routes;
use crate::http::routing::RouteTable;
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cookie::SameSite;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::refresh;
use crate::error::{ApiError, ApiResult};
use crate::http::cookies;
use crate::http::extract::ApiJson;
use crate::http::middleware::ClientIp;
use crate::http::session_cookie::Delivery;
use crate::http::sessions::{
    SessionRow, deliver, limit_credentials, limit_login_attempts, security_event, session_response,
    start_session,
};
use crate::metrics::SecurityEvent;
use crate::oauth::accounts::{self, Resolution};
use crate::oauth::{FlowSecrets, ProviderIdentity};
use crate::state::AppState;

/// Binds a flow to the browser that started it. `SameSite=Lax`: the provider's redirect
/// back is a cross-site top-level GET, on which Lax cookies are sent (Strict ones are not).
pub const FLOW_COOKIE: &str = "__Secure-stoa-oauth";
const FLOW_COOKIE_PATH: &str = "/api/auth/oauth";

pub fn router<T: RouteTable>() -> T {
    T::empty()
        .routes(api_routes!(list_providers))
        .routes(api_routes!(authorize))
        .routes(api_routes!(callback))
        .routes(api_routes!(exchange))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderEntry {
    /// In URLs: `/api/auth/oauth/{name}/authorize`.
    pub name: String,
    pub display_name: String,
    /// Where a "Sign in with …" link points (add `?returnTo=` for another allowed page).
    pub authorize_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProvidersResponse {
    pub providers: Vec<ProviderEntry>,
}

/// The enabled identity providers, for a front end's "Sign in with …" buttons.
#[utoipa::path(get, path = "/api/auth/providers", tag = "auth",
    responses((status = 200, body = ProvidersResponse)))]
async fn list_providers(State(state): State<AppState>) -> axum::Json<ProvidersResponse> {
    let providers = state
        .config
        .sign_in
        .providers
        .iter()
        .map(|p| ProviderEntry {
            name: p.name.clone(),
            display_name: p.display_name.clone(),
            authorize_url: format!("/api/auth/oauth/{}/authorize", p.name),
        })
        .collect();
    axum::Json(ProvidersResponse { providers })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeParams {
    /// One of `STOA_AUTH_RETURN_TO`, exactly; the first one when absent.
    pub return_to: Option<String>,
    /// A link ticket from `POST /api/user/identities/{provider}`: link, not sign in.
    pub link: Option<String>,
}

/// Start signing in with a provider: a redirect to it.
#[utoipa::path(get, path = "/api/auth/oauth/{provider}/authorize", tag = "auth",
    params(("provider" = String, Path), AuthorizeParams),
    responses(
        (status = 303, description = "to the provider"),
        (status = 404, description = "no such provider"),
        (status = 422, description = "returnTo is not an allowed address"),
        (status = 503, description = "the provider cannot be reached")))]
async fn authorize(
    State(state): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    Path(name): Path<String>,
    Query(params): Query<AuthorizeParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let config = &state.config.sign_in;
    let provider = provider_named(&state, &name)?;
    // Each start stores a flow: the sign-in budget per address bounds them.
    limit_credentials(&state, ip).await?;
    let return_to = allowed_return_to(config, params.return_to.as_deref())?;
    let link_user = match params.link {
        None => None,
        Some(ticket) => match take_link_ticket(&state, &name, &ticket).await? {
            Some(user) => Some(user),
            None => return Ok(back(&return_to, &[("stoa_error", "invalid_link")])),
        },
    };
    // One binding per browser, shared by its flows (two tabs may sign in at once).
    let browser = flow_cookie(&headers)
        .filter(|v| v.len() == 43)
        .map_or_else(|| refresh::generate().token, str::to_owned);
    let state_token = refresh::generate();
    let nonce = refresh::generate().token;
    let authorization = provider
        .authorize(FlowSecrets {
            state: &state_token.token,
            nonce: &nonce,
        })
        .await
        .map_err(|e| {
            tracing::warn!(provider = %name, error = %e, "cannot start a provider sign-in");
            ApiError::Unavailable("provider")
        })?;
    sqlx::query(
        "INSERT INTO oauth_flows (state_hash, browser_hash, provider, nonce, pkce_verifier, return_to, link_user_id, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8))",
    )
    .bind(&state_token.hash)
    .bind(refresh::hash(&browser))
    .bind(&name)
    .bind(&nonce)
    .bind(&authorization.pkce_verifier)
    .bind(&return_to)
    .bind(link_user)
    .bind(config.flow_ttl.as_secs_f64())
    .execute(&**state.db())
    .await?;
    let mut response = redirect(authorization.url.as_str());
    let cookie = cookies::set(
        FLOW_COOKIE,
        &browser,
        FLOW_COOKIE_PATH,
        SameSite::Lax,
        Some(config.flow_ttl),
    );
    response.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(response)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    /// The provider's refusal (`access_denied` when the user declined).
    pub error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Flow {
    browser_hash: Vec<u8>,
    provider: String,
    nonce: String,
    pkce_verifier: String,
    return_to: String,
    link_user_id: Option<Uuid>,
    live: bool,
}

/// Where the provider sends the browser back. Always a redirect to the front end.
#[utoipa::path(get, path = "/api/auth/oauth/{provider}/callback", tag = "auth",
    params(("provider" = String, Path), CallbackParams),
    responses(
        (status = 303, description = "to `returnTo` with `stoa_code`, `stoa_linked` or `stoa_error`"),
        (status = 404, description = "no such provider")))]
async fn callback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<CallbackParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let config = &state.config.sign_in;
    let provider = provider_named(&state, &name)?;
    let fallback = config.return_to.first().cloned().unwrap_or_default();
    // `name` is a configured provider's from here on: a safe metrics label.
    let outcome = |outcome: &'static str| state.metrics.count_provider_outcome(&name, outcome);
    let fail = |return_to: &str, code: &'static str, why: &dyn std::fmt::Display| {
        outcome(code);
        security_event(&state, SecurityEvent::ProviderSignInFailed, None);
        tracing::info!(target: "stoa::security", event = "provider_sign_in_failed", provider = %name, reason = %why, "provider sign-in failed");
        back(return_to, &[("stoa_error", code)])
    };
    let Some(presented_state) = params.state.as_deref() else {
        return Ok(fail(&fallback, "invalid_state", &"no state"));
    };
    // Taken whatever follows: a state (and so its code) works once.
    let flow: Option<Flow> = sqlx::query_as(
        "DELETE FROM oauth_flows WHERE state_hash = $1
         RETURNING browser_hash, provider, nonce, pkce_verifier, return_to, link_user_id, expires_at > now() AS live",
    )
    .bind(refresh::hash(presented_state))
    .fetch_optional(&**state.db())
    .await?;
    let Some(flow) = flow.filter(|f| f.live && f.provider == name) else {
        return Ok(fail(
            &fallback,
            "invalid_state",
            &"unknown, used or expired state",
        ));
    };
    let same_browser = flow_cookie(&headers).is_some_and(|browser| {
        cookies::constant_time_eq(&refresh::hash(browser), &flow.browser_hash)
    });
    if !same_browser {
        return Ok(fail(
            &fallback,
            "invalid_state",
            &"the flow belongs to another browser",
        ));
    }
    if let Some(error) = params.error.as_deref() {
        let code = if error == "access_denied" {
            "access_denied"
        } else {
            "provider_error"
        };
        return Ok(fail(
            &flow.return_to,
            code,
            &format!("the provider answered {error:?}"),
        ));
    }
    let Some(code) = params.code else {
        return Ok(fail(&flow.return_to, "provider_error", &"no code"));
    };
    let identity = match provider
        .complete(code, flow.pkce_verifier, &flow.nonce)
        .await
    {
        Ok(identity) => identity,
        Err(e) => {
            let code = match e {
                crate::oauth::ProviderError::InvalidIdToken(_) => "invalid_token",
                _ => "provider_error",
            };
            return Ok(fail(&flow.return_to, code, &e));
        }
    };
    let resolution = accounts::resolve(&state.db(), &name, &identity, flow.link_user_id).await?;
    match resolution {
        Resolution::Refused(refusal) => Ok(fail(&flow.return_to, refusal.code(), &refusal.code())),
        Resolution::AlreadyLinked { .. } => {
            outcome("already_linked");
            Ok(back(&flow.return_to, &[("stoa_linked", &name)]))
        }
        // Linked only when the account that asked confirms with its own token
        // (`POST /api/user/identities/{provider}/confirm`): a link started by one account
        // and completed in someone else's browser links nothing.
        Resolution::ConfirmLink { user_id } => {
            let code = hand_off(&state, Purpose::Link, user_id, &name, Some(&identity)).await?;
            outcome("link_pending");
            Ok(back(
                &flow.return_to,
                &[("stoa_code", &code), ("stoa_link", &name)],
            ))
        }
        Resolution::SignIn { user_id, created } => {
            if created {
                tracing::info!(user_id = %user_id, provider = %name, "user registered with a provider");
            }
            let code = hand_off(&state, Purpose::SignIn, user_id, &name, None).await?;
            outcome("signed_in");
            Ok(back(&flow.return_to, &[("stoa_code", &code)]))
        }
        Resolution::NeedsPassword { user_id } => {
            let code = hand_off(&state, Purpose::SignIn, user_id, &name, Some(&identity)).await?;
            outcome("account_exists");
            Ok(back(
                &flow.return_to,
                &[("stoa_code", &code), ("stoa_error", "account_exists")],
            ))
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ExchangeRequest {
    /// `stoa_code` from the redirect.
    pub code: String,
    /// When the redirect also said `stoa_error=account_exists`: the password of the
    /// account whose email the provider vouched for; proving it links the provider.
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(sqlx::FromRow)]
struct HandedOff {
    #[sqlx(flatten)]
    user: SessionRow,
    password_hash: Option<String>,
    provider: String,
    pending_identity: Option<sqlx::types::Json<ProviderIdentity>>,
    mfa: bool,
}

/// Exchange the one-time code a provider sign-in came back with for Stoa's tokens.
#[utoipa::path(post, path = "/api/auth/oauth/exchange", tag = "auth",
    request_body = ExchangeRequest,
    responses(
        (status = 200, body = crate::http::types::UserResponse),
        (status = 202, body = crate::http::mfa::ChallengeResponse, description = "MFA is on: answer the challenge at `POST /api/users/login/mfa`"),
        (status = 401, description = "the code is invalid, expired or used; or the password is wrong"),
        (status = 403, description = "the account is disabled, or `password` is required"),
        (status = 422, description = "missing or malformed fields"),
        (status = 429)))]
async fn exchange(
    State(state): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ExchangeRequest>,
) -> ApiResult<Response> {
    let delivery = Delivery::of(&headers)?;
    limit_credentials(&state, ip).await?;
    let handed: Option<HandedOff> = sqlx::query_as(
        "WITH h AS (DELETE FROM oauth_handoffs WHERE code_hash = $1 AND purpose = 'sign_in' RETURNING *)
         SELECT u.id, u.email, u.username, u.bio, u.image, u.role,
                NULLIF(u.password_hash, '') AS password_hash, h.provider, h.pending_identity,
                EXISTS (SELECT 1 FROM user_totp t WHERE t.user_id = u.id AND t.confirmed_at IS NOT NULL) AS mfa
         FROM h JOIN users u ON u.id = h.user_id WHERE h.expires_at > now()",
    )
    .bind(refresh::hash(&body.code))
    .fetch_optional(&**state.db())
    .await?;
    let Some(handed) = handed else {
        security_event(&state, SecurityEvent::ProviderSignInFailed, None);
        return Err(ApiError::InvalidCode);
    };
    let user_id = handed.user.user.id;
    if let Some(identity) = handed.pending_identity {
        link_with_password(
            &state,
            ip,
            &handed.user.user.email,
            handed.password_hash,
            body.password,
            &handed.provider,
            &identity,
            user_id,
        )
        .await?;
    }
    let provider = handed.provider;
    let signed_in = || {
        security_event(&state, SecurityEvent::ProviderSignIn, Some(user_id));
        tracing::info!(target: "stoa::security", event = "provider_sign_in", provider = %provider, user_id = %user_id, "signed in with a provider");
    };
    if handed.mfa {
        let challenge = crate::http::mfa::challenge(&state, user_id).await?;
        signed_in();
        return Ok(challenge);
    }
    // 403 for a disabled account.
    let session = start_session(&state, user_id).await?;
    signed_in();
    let response = session_response(
        &state,
        handed.user,
        Some(session.family),
        Some(session.refresh.token),
    )?;
    Ok(deliver(&state, delivery, StatusCode::OK, response))
}

/// The provider vouched for the email of an account it is not linked to: the account's
/// password links it (the one-time code is spent either way, so each guess costs a
/// sign-in at the provider, on top of the account's login budget).
#[allow(clippy::too_many_arguments)]
async fn link_with_password(
    state: &AppState,
    ip: ClientIp,
    email: &str,
    hash: Option<String>,
    password: Option<String>,
    provider: &str,
    identity: &ProviderIdentity,
    user_id: Uuid,
) -> ApiResult<()> {
    let Some(password) = password.filter(|p| !p.is_empty()) else {
        return Err(ApiError::forbidden_field(
            "password",
            "is required: an account with this email exists; prove its password to link the provider",
        ));
    };
    limit_login_attempts(state, email, ip).await?;
    let within = crate::validate::within(&password, crate::validate::PASSWORD_MAX);
    if !within || !state.passwords.verify(password, hash).await? {
        security_event(state, SecurityEvent::LoginFailed, Some(user_id));
        return Err(ApiError::InvalidCredentials);
    }
    let mut tx = state.db().begin().await?;
    accounts::link(&mut tx, provider, identity, user_id).await?;
    tx.commit().await?;
    security_event(state, SecurityEvent::IdentityLinked, Some(user_id));
    tracing::info!(target: "stoa::security", event = "identity_linked", provider = %provider, user_id = %user_id, "identity linked after the account's password");
    Ok(())
}

/// What a one-time code is for.
#[derive(Clone, Copy)]
pub enum Purpose {
    /// Exchanged for tokens (`POST /api/auth/oauth/exchange`).
    SignIn,
    /// Confirmed by the account that asked (`POST /api/user/identities/{provider}/confirm`).
    Link,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::SignIn => "sign_in",
            Purpose::Link => "link",
        }
    }
}

/// A one-time code for the front end (only its hash is stored).
async fn hand_off(
    state: &AppState,
    purpose: Purpose,
    user_id: Uuid,
    provider: &str,
    pending: Option<&ProviderIdentity>,
) -> ApiResult<String> {
    let code = refresh::generate();
    sqlx::query(
        "INSERT INTO oauth_handoffs (code_hash, purpose, user_id, provider, pending_identity, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
    )
    .bind(&code.hash)
    .bind(purpose.as_str())
    .bind(user_id)
    .bind(provider)
    .bind(pending.map(sqlx::types::Json))
    .bind(state.config.sign_in.handoff_ttl.as_secs_f64())
    .execute(&**state.db())
    .await?;
    Ok(code.token)
}

async fn take_link_ticket(
    state: &AppState,
    provider: &str,
    ticket: &str,
) -> ApiResult<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "DELETE FROM oauth_link_tickets WHERE ticket_hash = $1 AND provider = $2 AND expires_at > now()
         RETURNING user_id",
    )
    .bind(refresh::hash(ticket))
    .bind(provider)
    .fetch_optional(&**state.db())
    .await?)
}

/// The configured provider `name` (404 for any other).
pub fn provider_named<'s>(
    state: &'s AppState,
    name: &str,
) -> ApiResult<&'s std::sync::Arc<crate::oauth::Provider>> {
    state
        .providers
        .get(name)
        .ok_or(ApiError::NotFound("provider"))
}

/// `returnTo` if it is one of the allowed addresses exactly (no prefix or pattern, so no
/// open redirect); the first allowed one when absent.
pub fn allowed_return_to(
    config: &crate::config::SignInConfig,
    requested: Option<&str>,
) -> ApiResult<String> {
    match requested {
        None => config
            .return_to
            .first()
            .cloned()
            .ok_or(ApiError::NotFound("provider")),
        Some(url) if config.return_to.iter().any(|allowed| allowed == url) => Ok(url.to_owned()),
        Some(_) => Err(ApiError::field(
            "returnTo",
            "is not an allowed address (STOA_AUTH_RETURN_TO)",
        )),
    }
}

/// A 303 to `return_to` with `params` added to its query.
fn back(return_to: &str, params: &[(&str, &str)]) -> Response {
    let mut url = match url::Url::parse(return_to) {
        Ok(url) => url,
        // Validated at start-up: cannot happen.
        Err(_) => return ApiError::NotFound("returnTo").into_response(),
    };
    url.query_pairs_mut().extend_pairs(params);
    redirect(url.as_str())
}

fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, location),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => ApiError::Internal(anyhow::anyhow!("a redirect URL is not a header value"))
            .into_response(),
    }
}

fn flow_cookie(headers: &HeaderMap) -> Option<&str> {
    cookies::value(headers, FLOW_COOKIE)
}
