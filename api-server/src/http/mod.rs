//! The HTTP layer: one module per resource, assembled here with the cross-cutting
//! middleware (request ids, access logs, metrics, limits, timeouts, CORS).

pub mod admin;
pub mod articles;
pub mod auth;
pub mod comments;
pub mod connections;
pub mod console;
pub mod cookies;
pub mod cursor;
pub mod export;
pub mod extract;
pub mod front_door;
pub mod health;
pub mod identities;
pub mod index;
pub mod mfa;
pub mod middleware;
pub mod oauth;
pub mod openapi;
pub mod profiles;
pub mod routing;
pub mod session_cookie;
pub mod sessions;
pub mod slug;
pub mod tags;
pub mod trailing_slash;
pub mod types;
pub mod users;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::IntoResponse;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ApiError;
use crate::http::routing::RouteTable;
use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every API route, for either reader of the table (`routing`): the served router or the
/// documented one.
fn route_table<T: RouteTable>() -> T {
    T::empty()
        .merge(users::router::<T>().no_store())
        .merge(auth::router::<T>().no_store())
        .merge(admin::router::<T>().no_store())
        .merge(mfa::router::<T>().no_store())
        .merge(oauth::router::<T>().no_store())
        .merge(identities::router::<T>().no_store())
        .merge(export::router::<T>().no_store())
        .merge(profiles::router())
        .merge(articles::router())
        .merge(comments::router())
        .merge(tags::router())
        .merge(health::router())
}

/// All API routes with their OpenAPI description (no middleware, no state).
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base()).merge(route_table())
}

/// The OpenAPI document, as served at `/api/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut document = api_routes().into_openapi();
    openapi::finish(&mut document);
    document
}

/// `/api/openapi.json`: the document is made on its first request, not at start-up (see
/// `routing`), then kept; it is the same for every server of the process.
async fn serve_openapi_document() -> Result<axum::response::Response, ApiError> {
    static JSON: std::sync::OnceLock<axum::body::Bytes> = std::sync::OnceLock::new();
    let json = match JSON.get() {
        Some(json) => json.clone(),
        None => {
            let made = serde_json::to_vec(&openapi_document())
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("the OpenAPI document: {e}")))?;
            JSON.get_or_init(|| made.into()).clone()
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// The public port's service: [`router`] behind the rewrite that accepts one trailing
/// slash on every path (`trailing_slash`), which must run before routing.
pub type Service =
    tower::util::MapRequest<Router, fn(axum::extract::Request) -> axum::extract::Request>;

/// What the public port serves.
pub fn service(state: AppState) -> Service {
    use tower::Layer;
    let canonical: fn(axum::extract::Request) -> axum::extract::Request = trailing_slash::canonical;
    tower::util::MapRequestLayer::new(canonical).layer(router(state))
}

/// The Content-Security-Policy of the documentation page (every other response gets the
/// front door's `default-src 'none'`).
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The public router: API, docs and middleware.
pub fn router(state: AppState) -> Router {
    let api: Router<AppState> = route_table();
    let config = &state.config.http;

    let docs: Router = SwaggerUi::new("/api/docs")
        .config(utoipa_swagger_ui::Config::from("/api/openapi.json"))
        .into();
    // The docs page's scripts are its own files (no inline script); Swagger UI sets
    // inline styles, and shows its logo and schema icons as data: images.
    let docs = docs.layer(SetResponseHeaderLayer::overriding(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    ));

    // Layers run outside-in from the last one added: the front door sees every request
    // first (and every answer last), then CORS, then the per-IP limit and ETags.
    Router::new()
        .route("/", axum::routing::get(index::index))
        .route(
            "/api/openapi.json",
            axum::routing::get(serve_openapi_document),
        )
        .merge(api.with_state(state.clone()))
        .merge(console::router().with_state(state.clone()))
        .merge(docs)
        .fallback(|| async { ApiError::NotFound("route").into_response() })
        .method_not_allowed_fallback(|| async {
            (
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                ApiError::field("method", "is not allowed for this route"),
            )
                .into_response()
        })
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(tower::util::option_layer(state.reads.enabled().then(
            || axum::middleware::from_fn_with_state(state.clone(), middleware::record_writes),
        )))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::limit_then_tag,
        ))
        .layer(tower::util::option_layer(cors(
            &config.cors_allowed_origins,
        )))
        .layer(axum::middleware::from_fn_with_state(
            front_door::FrontDoor::new(config, state.metrics.clone()),
            front_door::front_door,
        ))
        // With error tracking on: each request gets its own Sentry hub (scope), so what
        // one request records never lands on another's events.
        .layer(tower::util::option_layer(
            crate::error_tracking::enabled().then(
                sentry::integrations::tower::NewSentryLayer::<axum::extract::Request>::new_from_top,
            ),
        ))
}

/// No layer at all without allowed origins: no cross-origin caller, nothing to answer.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let layer = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            REQUEST_ID,
            session_cookie::MODE_HEADER,
        ])
        .expose_headers([
            REQUEST_ID,
            header::RETRY_AFTER,
            header::ETAG,
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
        ])
        .max_age(Duration::from_secs(600));
    // Credentials (the session cookie) only for listed origins: the CORS rules forbid
    // them with `*`, and a wildcard must never let any page spend a browser's session.
    let layer = if origins.iter().any(|o| o == "*") {
        layer
    } else {
        layer.allow_credentials(true)
    };
    Some(layer)
}

/// A JSON body that is already serialized (cached or about to be cached), answered exactly
/// like `axum::Json` would, so cached and fresh answers are byte-identical.
pub fn json_bytes(body: axum::body::Bytes) -> axum::response::Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Serializes `value` for a response that may also be cached.
pub fn to_json_bytes<T: serde::Serialize>(value: &T) -> Result<axum::body::Bytes, ApiError> {
    serde_json::to_vec(value)
        .map(axum::body::Bytes::from)
        .map_err(|e| ApiError::Internal(e.into()))
}
