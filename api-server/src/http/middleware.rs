//! Cross-cutting middleware: access log, metrics, overload and panic handling.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::BoxError;

use crate::error::ApiError;
use crate::http::REQUEST_ID;
use crate::metrics::{HttpLabels, Refusal, RefusalLabels};
use crate::state::AppState;

/// Route templates are few and fixed; interning them keeps label lookups allocation-free.
static ROUTES: LazyLock<RwLock<HashMap<String, Arc<str>>>> = LazyLock::new(Default::default);
static UNMATCHED: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("unmatched"));

fn intern(route: Option<&str>) -> Arc<str> {
    let Some(route) = route else {
        return UNMATCHED.clone();
    };
    if let Some(found) = ROUTES.read().ok().and_then(|r| r.get(route).cloned()) {
        return found;
    }
    let mut routes = match ROUTES.write() {
        Ok(routes) => routes,
        Err(poisoned) => poisoned.into_inner(),
    };
    routes
        .entry(route.to_owned())
        .or_insert_with(|| Arc::from(route))
        .clone()
}

fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// Requests seen, for access-log sampling.
static SEEN: AtomicU64 = AtomicU64::new(0);

/// Counts and times every request, and logs it with its request id: every one by default,
/// one in `STOA_ACCESS_LOG_EVERY` under high traffic, every 5xx always.
pub async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = intern(
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    // Reference-counted clones of what the request arrived with: no copying.
    let request_id = request.headers().get(REQUEST_ID).cloned();
    let uri = request.uri().clone();

    state.metrics.http_in_flight.inc();
    let response = next.run(request).await;
    state.metrics.http_in_flight.dec();

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state.metrics.http_busy.inc_by(elapsed.as_secs_f64());
    if let Some(refusal) = response.extensions().get::<Refusal>() {
        state
            .metrics
            .refused
            .get_or_create(&RefusalLabels {
                reason: refusal.as_str(),
            })
            .inc();
    }
    let labels = HttpLabels {
        method,
        route,
        status,
    };
    state.metrics.http_requests.get_or_create(&labels).inc();
    state
        .metrics
        .http_duration
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());

    let every = state.config.http.access_log_every;
    let sampled = every == 1 || SEEN.fetch_add(1, Ordering::Relaxed).is_multiple_of(every);
    if status >= 500 || sampled {
        let request_id = request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let path = uri.path();
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::error!(target: "stoa::access", request_id, method, path, status, latency_ms, "request failed");
        } else {
            tracing::info!(target: "stoa::access", request_id, method, path, status, latency_ms, "request");
        }
    }
    response
}

/// Maps the load-shed and timeout layers' errors to API errors.
pub async fn handle_overload(error: BoxError) -> Response {
    let (refusal, what) = if error.is::<tower::timeout::error::Elapsed>() {
        (Refusal::TimedOut, "request (timed out)")
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        (Refusal::Overloaded, "server (overloaded)")
    } else {
        return ApiError::Internal(anyhow::anyhow!("middleware error: {error}")).into_response();
    };
    let mut response = ApiError::Unavailable(what).into_response();
    response.extensions_mut().insert(refusal);
    response
}

/// A panic becomes a 500 in the API's format; the panic message is logged, not returned.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    ApiError::Internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

/// The caller's address as the rate limiter sees it (see `STOA_TRUSTED_PROXY_HOPS`).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

/// The general per-IP budget. Health probes are exempt (kubelets must never be throttled).
pub async fn limit_per_ip(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let limits = &state.config.rate_limits;
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let forwarded = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    let ip = crate::ratelimit::client_ip(peer, forwarded, limits.trusted_proxy_hops);
    request.extensions_mut().insert(ClientIp(ip));

    let path = request.uri().path();
    if !limits.enabled || path == "/healthz" || path == "/readyz" {
        return next.run(request).await;
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
    let (decision, fetched) = state
        .limiter
        .check_and_fetch(
            "ip",
            &crate::ratelimit::bucket_key(ip),
            limits.per_ip,
            prefetch.clone(),
        )
        .await;
    if !decision.allowed {
        return crate::error::rate_limited(&state.metrics, "ip", limits.per_ip, decision)
            .into_response();
    }
    if let (Some(redis_key), Some(body)) = (prefetch, fetched) {
        request.extensions_mut().insert(crate::cache::Prefetched {
            redis_key,
            body: body.map(axum::body::Bytes::from),
        });
    }
    let mut response = next.run(request).await;
    crate::error::apply_rate_limit_headers(response.headers_mut(), limits.per_ip, decision);
    response
}

/// Refuses a NUL character anywhere in the path or query (percent-encoded as `%00`):
/// PostgreSQL text cannot hold it, so no slug, username or filter can contain one.
pub async fn refuse_nul(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let encoded_nul = |s: &str| s.as_bytes().windows(3).any(|w| w == b"%00");
    if encoded_nul(uri.path()) || uri.query().is_some_and(encoded_nul) {
        return ApiError::field("request", "must not contain NUL characters").into_response();
    }
    next.run(request).await
}

/// `ETag` on successful GETs and `304 Not Modified` when `If-None-Match` matches, with
/// `Vary: Authorization` (the same URL answers differently per caller).
pub async fn etag(request: Request, next: Next) -> Response {
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
