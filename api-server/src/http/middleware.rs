//! Cross-cutting middleware: access log, metrics, overload and panic handling.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::BoxError;

use crate::error::ApiError;
use crate::http::REQUEST_ID;
use crate::metrics::HttpLabels;
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

/// Counts, times and logs every request, with its request id.
pub async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = intern(
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let path = request.uri().path().to_owned();

    state.metrics.http_in_flight.inc();
    let response = next.run(request).await;
    state.metrics.http_in_flight.dec();

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
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

    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::error!(target: "stoa::access", request_id, method, path, status, latency_ms, "request failed");
    } else {
        tracing::info!(target: "stoa::access", request_id, method, path, status, latency_ms, "request");
    }
    response
}

/// Maps the load-shed and timeout layers' errors to API errors.
pub async fn handle_overload(error: BoxError) -> Response {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::Unavailable("request (timed out)").into_response()
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Unavailable("server (overloaded)").into_response()
    } else {
        ApiError::Internal(anyhow::anyhow!("middleware error: {error}")).into_response()
    }
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
