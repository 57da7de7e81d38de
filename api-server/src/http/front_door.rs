//! The front door: everything every request goes through, in one middleware.
//!
//! Request id, panic containment, load shedding, the request timeout, NUL refusal,
//! hardening headers, metrics and the access log used to be a dozen tower layers. axum
//! clones a route's whole layered service for every request and drops it afterwards, so
//! each layer cost an allocation or two per request whether it had work to do or not (a
//! `perf` profile of `/healthz` showed the clones, drops and moves of that stack as the
//! largest user-space cost). Here they are plain code in one async function.

use std::any::Any;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Semaphore;

use crate::config::HttpConfig;
use crate::error::{ApiError, ConnectionLost};
use crate::http::REQUEST_ID;
use crate::metrics::{ConnectionLostLabels, HttpLabels, Metrics, Refusal, RefusalLabels};

/// What the front door needs: the limits it enforces and where it reports. Shared:
/// `from_fn_with_state` clones its state for every request, so that clone is one
/// reference count (a profile of `/healthz` showed the field-by-field clone and drop at
/// 1.35% of the server's time).
#[derive(Clone)]
pub struct FrontDoor(Arc<Door>);

pub struct Door {
    metrics: Arc<Metrics>,
    /// At most `STOA_MAX_CONCURRENT_REQUESTS` requests inside at once; the rest are shed.
    admission: Arc<Semaphore>,
    timeout: Duration,
    access_log_every: u64,
    /// Each route's series in `metrics` (per front door, not per process: the series
    /// belong to this server's registry, and tests run several servers in one process).
    routes: Arc<Routes>,
    /// `Strict-Transport-Security`, when the public URL is https (browsers ignore it on
    /// plain http answers, RFC 6797 §8.1, so behind a TLS-terminating proxy it is sent on
    /// every answer).
    hsts: Option<HeaderValue>,
}

impl std::ops::Deref for FrontDoor {
    type Target = Door;
    fn deref(&self) -> &Door {
        &self.0
    }
}

impl FrontDoor {
    pub fn new(http: &HttpConfig, metrics: Arc<Metrics>) -> Self {
        FrontDoor(Arc::new(Door {
            metrics,
            admission: Arc::new(Semaphore::new(http.max_concurrent_requests)),
            timeout: http.request_timeout,
            access_log_every: http.access_log_every,
            routes: Arc::default(),
            hsts: http
                .public_origin
                .as_ref()
                .filter(|origin| origin.https && !http.hsts_max_age.is_zero())
                .and_then(|_| {
                    HeaderValue::from_str(&format!("max-age={}", http.hsts_max_age.as_secs())).ok()
                }),
        }))
    }
}

/// Serves one request through the front door (see the module comment).
pub async fn front_door(
    State(door): State<FrontDoor>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request_id(request.headers_mut());
    let method = request.method().clone();
    let route = door.routes.of(request.extensions().get::<MatchedPath>());
    // Reference-counted: the path is logged from the same bytes the request arrived with.
    let uri = request.uri().clone();

    door.metrics.http_in_flight.inc();
    let mut response = admit(&door, request, next).await;
    door.metrics.http_in_flight.dec();

    let headers = response.headers_mut();
    headers.entry(REQUEST_ID).or_insert(request_id.clone());
    for (name, value) in HARDENING_HEADERS {
        headers
            .entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    }
    if let Some(hsts) = &door.hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }

    if response.status().is_server_error() && crate::error_tracking::enabled() {
        crate::error_tracking::report_failed_request(
            request_id.to_str().unwrap_or_default(),
            method.as_str(),
            &route.route,
            response.status().as_u16(),
            response
                .extensions()
                .get::<crate::error_tracking::ErrorDetail>(),
        );
    }

    let elapsed = started.elapsed();
    observe(
        &door,
        &route,
        &method,
        &uri,
        &request_id,
        &response,
        elapsed,
    );
    response
}

/// Inside the door: refused early, shed when full, cut off at the timeout, a panic
/// answered as a 500 (and so counted and logged like any other answer).
async fn admit(door: &FrontDoor, request: Request, next: Next) -> Response {
    if has_encoded_nul(request.uri()) {
        // PostgreSQL text cannot hold NUL, so no slug, username or filter can contain one.
        return ApiError::field("request", "must not contain NUL characters").into_response();
    }
    let Ok(_permit) = door.admission.try_acquire() else {
        return refused(Refusal::Overloaded, "server (overloaded)");
    };
    let served = AssertUnwindSafe(serve_retrying_reads(door, request, next)).catch_unwind();
    match tokio::time::timeout(door.timeout, served).await {
        Ok(Ok(response)) => response,
        Ok(Err(panic)) => panic_response(panic),
        Err(_) => refused(Refusal::TimedOut, "request (timed out)"),
    }
}

/// Runs the request; a read whose statement lost its database connection (PostgreSQL
/// restarted or failed over: `db::connection_lost`) runs again on a fresh connection, up
/// to [`READ_RETRIES`] times with a growing pause (a restarting server refuses new sessions
/// for a moment: 57P03). A read changed nothing, so running it again is safe; a write may
/// or may not have committed, so it answers the 503 with `Retry-After`.
async fn serve_retrying_reads(door: &FrontDoor, request: Request, next: Next) -> Response {
    let Some(copy) = replayable(&request) else {
        let response = next.run(request).await;
        if let Some(ConnectionLost(reason)) = response.extensions().get::<ConnectionLost>() {
            door.count_lost(reason, "unavailable");
        }
        return response;
    };
    let mut response = next.clone().run(request).await;
    let mut pause = Duration::from_millis(50);
    for _ in 0..READ_RETRIES {
        let Some(ConnectionLost(reason)) = response.extensions().get::<ConnectionLost>().copied()
        else {
            return response;
        };
        door.count_lost(reason, "retried");
        response = next.clone().run(copy_of(&copy)).await;
        if response.extensions().get::<ConnectionLost>().is_some() {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    if let Some(ConnectionLost(reason)) = response.extensions().get::<ConnectionLost>() {
        door.count_lost(reason, "unavailable");
    }
    response
}

/// Tries of a read after the first that lost its connection: with pauses of 50 ms doubling,
/// about 1.5 s in all, the time a PostgreSQL restart takes (a longer outage answers 503).
const READ_RETRIES: usize = 5;

/// A copy of a read to run again (GET or HEAD without a body, other than the probes,
/// which touch no database), or `None`.
fn replayable(request: &Request) -> Option<Request> {
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    let path = request.uri().path();
    let bodyless = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_none_or(|length| length == "0");
    if !read || !bodyless || path == "/healthz" || path == "/readyz" {
        return None;
    }
    Some(copy_of(request))
}

/// The request's head with an empty body. Every extension is copied: routing put the
/// path parameters there (a private type), and the layers inside read the peer address.
fn copy_of(request: &Request) -> Request {
    let mut copy = Request::new(Body::empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}

impl FrontDoor {
    fn count_lost(&self, reason: &'static str, outcome: &'static str) {
        self.metrics
            .db_connection_lost
            .get_or_create(&ConnectionLostLabels { reason, outcome })
            .inc();
    }
}

/// The caller's `X-Request-Id`, or a new UUID set on the request for the handlers to see.
fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(REQUEST_ID) {
        return given.clone();
    }
    let mut buffer = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    let value = HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("unknown"));
    headers.insert(REQUEST_ID, value.clone());
    value
}

/// On every response unless a route set its own (the docs page has its own CSP). An API
/// answers JSON, which needs nothing a policy could allow: no sources, no framing, no
/// base or form targets; its responses are not for other sites' pages to embed (CORP
/// does not apply to CORS requests, so browser apps on allowed origins are unaffected).
const HARDENING_HEADERS: [(header::HeaderName, &str); 5] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    ),
];

fn has_encoded_nul(uri: &Uri) -> bool {
    let encoded_nul = |s: &str| s.as_bytes().windows(3).any(|w| w == b"%00");
    encoded_nul(uri.path()) || uri.query().is_some_and(encoded_nul)
}

fn refused(refusal: Refusal, what: &'static str) -> Response {
    let mut response = ApiError::Unavailable(what).into_response();
    response.extensions_mut().insert(refusal);
    response
}

/// The panic message is logged, never returned.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    ApiError::Internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

/// One route's metric series, resolved once per (method, status) and then reused, so a
/// request costs no label hashing beyond finding its route.
struct RouteMetrics {
    route: Arc<str>,
    series: RwLock<Vec<Series>>,
}

struct Series {
    method: Method,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

/// Route templates are few and fixed (and `unmatched` stands for every other path).
#[derive(Default)]
struct Routes(RwLock<HashMap<Arc<str>, Arc<RouteMetrics>>>);

impl Routes {
    fn of(&self, matched: Option<&MatchedPath>) -> Arc<RouteMetrics> {
        let route = matched.map_or("unmatched", MatchedPath::as_str);
        if let Some(found) = read(&self.0).get(route) {
            return found.clone();
        }
        let route: Arc<str> = Arc::from(route);
        let mut routes = self.0.write().unwrap_or_else(|p| p.into_inner());
        routes
            .entry(route.clone())
            .or_insert_with(|| {
                Arc::new(RouteMetrics {
                    route,
                    series: RwLock::default(),
                })
            })
            .clone()
    }
}

impl RouteMetrics {
    fn record(&self, metrics: &Metrics, method: &Method, status: u16, seconds: f64) {
        let found = read(&self.series)
            .iter()
            .find(|s| s.status == status && s.method == method)
            .map(|s| (s.requests.clone(), s.duration.clone()));
        let (requests, duration) = found.unwrap_or_else(|| {
            let labels = HttpLabels {
                method: method_label(method),
                route: self.route.clone(),
                status,
            };
            let series = Series {
                method: method.clone(),
                status,
                requests: metrics.http_requests.get_or_create(&labels).clone(),
                duration: metrics.http_duration.get_or_create(&labels).clone(),
            };
            let handles = (series.requests.clone(), series.duration.clone());
            self.series
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(series);
            handles
        });
        requests.inc();
        duration.observe(seconds);
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn method_label(method: &Method) -> &'static str {
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

/// Counts and times the request, and logs it with its request id: every one by default,
/// one in `STOA_ACCESS_LOG_EVERY` under high traffic, every 5xx always.
fn observe(
    door: &FrontDoor,
    route: &RouteMetrics,
    method: &Method,
    uri: &Uri,
    request_id: &HeaderValue,
    response: &Response,
    elapsed: Duration,
) {
    let status = response.status().as_u16();
    let seconds = elapsed.as_secs_f64();
    let metrics = &door.metrics;
    metrics.http_busy.inc_by(seconds);
    if let Some(refusal) = response.extensions().get::<Refusal>() {
        metrics
            .refused
            .get_or_create(&RefusalLabels {
                reason: refusal.as_str(),
            })
            .inc();
    }
    route.record(metrics, method, status, seconds);

    let every = door.access_log_every;
    let sampled = every == 1 || SEEN.fetch_add(1, Ordering::Relaxed).is_multiple_of(every);
    if status >= 500 || sampled {
        crate::telemetry::access(&crate::telemetry::AccessEntry {
            request_id: request_id.to_str().unwrap_or(""),
            method: method_label(method),
            path: uri.path(),
            status,
            latency_ms: seconds * 1000.0,
        });
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn door(max_concurrent: usize, timeout: Duration) -> (FrontDoor, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(1));
        let door = FrontDoor(Arc::new(Door {
            metrics: metrics.clone(),
            admission: Arc::new(Semaphore::new(max_concurrent)),
            timeout,
            access_log_every: 1,
            routes: Arc::default(),
            hsts: None,
        }));
        (door, metrics)
    }

    fn app(door: FrontDoor) -> Router {
        Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/panics",
                get(|| async {
                    if true {
                        panic!("secret detail");
                    }
                    "never"
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(door, front_door))
    }

    async fn call(app: &Router, uri: &str) -> Response {
        let request = Request::get(uri).body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap()
    }

    async fn text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_without_its_message_and_is_counted() {
        let (door, metrics) = door(8, Duration::from_secs(5));
        let app = app(door);
        let response = call(&app, "/panics").await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(response.headers().contains_key("x-request-id"));
        let body = text(response).await;
        assert!(body.contains("errors"), "{body}");
        assert!(!body.contains("secret detail"), "{body}");
        let exposed = metrics.encode().unwrap();
        assert!(
            exposed.contains(
                r#"stoa_http_requests_total{method="GET",route="/panics",status="500"} 1"#
            ),
            "{exposed}"
        );
        assert!(
            exposed.contains("stoa_http_requests_in_flight 0"),
            "{exposed}"
        );
    }

    #[tokio::test]
    async fn a_request_past_the_timeout_is_refused_with_503_and_counted() {
        let (door, metrics) = door(8, Duration::from_millis(200));
        let response = call(&app(door), "/slow").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        let exposed = metrics.encode().unwrap();
        assert!(
            exposed.contains(r#"stoa_refused_requests_total{reason="timeout"} 1"#),
            "{exposed}"
        );
    }

    #[tokio::test]
    async fn requests_beyond_the_concurrency_limit_are_shed_not_queued() {
        let (door, metrics) = door(1, Duration::from_secs(120));
        let app = app(door);
        let held = tokio::spawn({
            let app = app.clone();
            async move { call(&app, "/slow").await }
        });
        // Until the slow request holds the only permit.
        while !metrics
            .encode()
            .unwrap()
            .contains("stoa_http_requests_in_flight 1")
        {
            tokio::task::yield_now().await;
        }
        let shed = call(&app, "/ok").await;
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        held.abort();
        let exposed = metrics.encode().unwrap();
        assert!(
            exposed.contains(r#"stoa_refused_requests_total{reason="overloaded"} 1"#),
            "{exposed}"
        );
    }

    /// HSTS only when the configured public URL is https, with the configured max-age.
    #[tokio::test]
    async fn hsts_follows_the_public_url() {
        let http = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let env = crate::config::Env::new(move |k| {
                vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
            });
            crate::config::Config::from_env(&env, true).unwrap().http
        };
        let hsts_of = |config: &HttpConfig| {
            FrontDoor::new(config, Arc::new(Metrics::new(1)))
                .hsts
                .as_ref()
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(hsts_of(&http(&[])), None);
        assert_eq!(
            hsts_of(&http(&[("STOA_PUBLIC_URL", "http://api.example.com")])),
            None
        );
        assert_eq!(
            hsts_of(&http(&[("STOA_PUBLIC_URL", "https://api.example.com")])).as_deref(),
            Some("max-age=63072000")
        );
        let config = http(&[
            ("STOA_PUBLIC_URL", "https://api.example.com"),
            ("STOA_HSTS_MAX_AGE", "180d"),
        ]);
        assert_eq!(hsts_of(&config).as_deref(), Some("max-age=15552000"));
        let served = call(
            &app(FrontDoor::new(&config, Arc::new(Metrics::new(1)))),
            "/ok",
        )
        .await;
        assert_eq!(
            served.headers()["strict-transport-security"],
            "max-age=15552000"
        );
    }

    #[tokio::test]
    async fn request_ids_are_kept_or_made_and_nul_is_refused() {
        let (door, _) = door(8, Duration::from_secs(5));
        let app = app(door);
        let given = Request::get("/ok")
            .header("x-request-id", "abc-123")
            .body(Body::empty())
            .unwrap();
        let kept = app.clone().oneshot(given).await.unwrap();
        assert_eq!(kept.headers()["x-request-id"], "abc-123");
        let made = call(&app, "/ok").await;
        let id = made.headers()["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        assert_eq!(made.headers()["x-frame-options"], "DENY");
        assert_eq!(made.headers()["referrer-policy"], "no-referrer");
        assert_eq!(
            made.headers()["content-security-policy"],
            "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        );
        assert_eq!(
            made.headers()["cross-origin-resource-policy"],
            "same-origin"
        );
        assert!(!made.headers().contains_key("strict-transport-security"));

        let nul = call(&app, "/ok?x=%00").await;
        assert_eq!(nul.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(text(nul).await.contains("NUL"));
    }
}
