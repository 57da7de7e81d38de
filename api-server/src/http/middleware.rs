//! Middleware that needs the application state or the response body: the per-IP rate
//! limit and ETags. What every request goes through is in `front_door`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::extract::Verified;
use crate::error::ApiError;
use crate::ratelimit::{Bucket, Charge};
use crate::state::AppState;

/// The caller's address as the rate limiter sees it (see `STOA_TRUSTED_PROXY_HOPS`).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

/// The per-IP rate limit, then ETags: one layer, because axum clones a route's whole
/// layered stack for every request and each layer costs its share of that.
pub async fn limit_then_tag(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    limit_per_ip(&state, request, |request| etag(request, next)).await
}

/// The general per-IP budget (with a signed-in caller's per-user budget, in the same round
/// trip), then `inner`. Health probes are exempt (kubelets must never be throttled).
async fn limit_per_ip<Inner>(
    state: &AppState,
    mut request: Request,
    inner: impl FnOnce(Request) -> Inner,
) -> Response
where
    Inner: Future<Output = Response>,
{
    let limits = &state.config.rate_limits;
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::http::connections::Peer>>()
        .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |c| c.0.0.ip());
    let forwarded = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    let ip = crate::ratelimit::client_ip(peer, forwarded, limits.trusted_proxy_hops);
    request.extensions_mut().insert(ClientIp(ip));

    let path = request.uri().path();
    if !limits.enabled || path == "/healthz" || path == "/readyz" {
        return inner(request).await;
    }
    // An anonymous read of a cached route: fetch the entry in the limiter's round trip.
    let prefetch = (state.cache.enabled()
        && request.method() == axum::http::Method::GET
        && !request
            .headers()
            .contains_key(axum::http::header::AUTHORIZATION))
    .then(|| crate::cache::key_for_request(path, request.uri().query()))
    .flatten()
    .map(|key| key.redis_key());
    let ip_key = crate::ratelimit::bucket_key(ip);
    let ip_charge = Charge {
        bucket: Bucket::Ip,
        key: &ip_key,
        quota: limits.per_ip,
    };
    // An entry in the replica's own copy needs no fetch at all.
    let near_hit = prefetch
        .as_deref()
        .and_then(|key| state.cache.near_get(key));
    let fetch = prefetch.clone().filter(|_| near_hit.is_none());
    let generation = state.cache.near_generation();
    // A signed-in request: its user's budget is charged in the same round trip, and the
    // verified claims are handed to the auth extractors. A token that does not verify is
    // left to them (a route that needs it answers 401 there).
    let verified = crate::auth::extract::bearer(request.headers())
        .ok()
        .flatten()
        .and_then(|token| state.tokens.verify(token).ok());
    // The user's budget is charged here, with the address's in one all-or-nothing call,
    // only for a token known not to be revoked: a leaked but revoked token must not
    // exhaust its victim's budget. This replica's denylist copy answers; while it cannot
    // (its feed is not live yet, or lost), the shared stores do. A revoked token, or a
    // check that failed, is left to the extractor, which refuses or checks again first.
    let (verified, unrevoked) = match verified {
        Some(claims) => {
            let revoked = match state.revocations.check_local(claims.jti, claims.fam) {
                Some(answer) => Ok(answer),
                None => {
                    state
                        .revocations
                        .is_revoked(&state.db(), claims.jti, claims.fam)
                        .await
                }
            };
            match revoked {
                Ok(false) => (None, Some(claims)),
                _ => (Some(claims), None),
            }
        }
        None => (None, None),
    };
    if let Some(claims) = verified {
        request.extensions_mut().insert(Verified {
            claims,
            budget_charged: false,
        });
    }
    let (decision, fetched) = match unrevoked {
        None => {
            let ([decision], fetched) = state.limiter.take([ip_charge], fetch).await;
            (decision, fetched)
        }
        Some(claims) => {
            let user_key = claims.sub.to_string();
            let user_charge = Charge {
                bucket: Bucket::User,
                key: &user_key,
                quota: limits.per_user,
            };
            let ([decision, user], fetched) =
                state.limiter.take([ip_charge, user_charge], fetch).await;
            if decision.allowed && !user.allowed {
                return crate::error::rate_limited(
                    &state.metrics,
                    Bucket::User,
                    limits.per_user,
                    user,
                )
                .into_response();
            }
            request.extensions_mut().insert(Verified {
                claims,
                budget_charged: true,
            });
            (decision, fetched)
        }
    };
    if !decision.allowed {
        return crate::error::rate_limited(&state.metrics, Bucket::Ip, limits.per_ip, decision)
            .into_response();
    }
    if let Some(redis_key) = prefetch
        && let Some(entry) = prefetched(state, redis_key, near_hit, fetched, generation)
    {
        request.extensions_mut().insert(entry);
    }
    let mut response = inner(request).await;
    // A budget charged later (the user's, after the revocation check) that refused the
    // request has set its own headers: those are the ones the client must follow.
    if !response.headers().contains_key("ratelimit-limit") {
        crate::error::apply_rate_limit_headers(response.headers_mut(), limits.per_ip, decision);
    }
    response
}

/// The cache entry of an anonymous read as the limiter's round trip left it: from the
/// replica's own copy, or fetched from Redis in that round trip (and then kept in the
/// copy), or `None` when the decision came from leases and the handler must look it up.
fn prefetched(
    state: &AppState,
    redis_key: String,
    near_hit: Option<axum::body::Bytes>,
    fetched: Option<Option<Vec<u8>>>,
    generation: u64,
) -> Option<crate::cache::Prefetched> {
    let body = match (near_hit, fetched) {
        (Some(body), _) => Some(body),
        (None, Some(body)) => {
            let body = body.map(axum::body::Bytes::from);
            if let Some(body) = &body {
                state.cache.near_fill(&redis_key, body, generation);
            }
            body
        }
        (None, None) => return None,
    };
    Some(crate::cache::Prefetched { redis_key, body })
}

/// `ETag` on successful GETs and `304 Not Modified` when `If-None-Match` matches, with
/// `Vary: Authorization` (the same URL answers differently per caller).
async fn etag(request: Request, next: Next) -> Response {
    use axum::http::{HeaderValue, Method, StatusCode, header};
    if request.method() != Method::GET {
        return next.run(request).await;
    }
    let if_none_match = request.headers().get(header::IF_NONE_MATCH).cloned();
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() != StatusCode::OK || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // API responses are small and already in memory; the limit only guards against surprises.
    let Ok(bytes) = axum::body::to_bytes(body, 16 * 1024 * 1024).await else {
        return ApiError::Internal(anyhow::anyhow!("response body unreadable")).into_response();
    };
    let tag = format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(&bytes));
    let matches = if_none_match
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|candidate| {
                candidate.trim().trim_start_matches("W/") == tag || candidate.trim() == "*"
            })
        });
    if let Ok(value) = HeaderValue::from_str(&tag) {
        parts.headers.insert(header::ETAG, value);
    }
    // The body (and so the tag) may depend on who asks: following, favorited, the user.
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("authorization"));
    if matches {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_TYPE);
        return Response::from_parts(parts, Body::empty());
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// With a read replica: a writing request's writer (noted by the extractor that
/// authenticated them, or by the handler that created them) is recorded and announced to
/// every pod before the response leaves, so their next read sees the write (`crate::reads`).
/// Marked whatever the outcome: a failed write costs a few reads on the primary.
pub async fn record_writes(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.method().is_safe() {
        return next.run(request).await;
    }
    let writer = crate::reads::Writer::default();
    request.extensions_mut().insert(writer.clone());
    let response = next.run(request).await;
    if let Some(user) = writer.get() {
        state.reads.wrote(user).await;
    }
    response
}
