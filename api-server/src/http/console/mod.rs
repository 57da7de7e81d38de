//! The admin console under `/admin`: pages rendered by the server for the people who run
//! Stoa (assets in the binary, nothing from another origin). Sign-in is for admins only,
//! with the API's own password check and second factor; a console session lives in its
//! own cookie (`session`). Every action goes through the code the API and the command
//! line use.

mod audit;
mod content;
mod events;
mod jobs;
mod overview;
mod pages;
pub mod session;
mod sign_in;
mod users;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::{get, post};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::state::AppState;

pub use pages::CSP;

pub fn router() -> Router<AppState> {
    // Pages show accounts and carry CSRF tokens: never stored by a browser or a cache.
    let pages = Router::new()
        .route("/admin", get(overview::overview))
        .route("/admin/login", get(sign_in::form).post(sign_in::password))
        .route("/admin/login/mfa", post(sign_in::code))
        .route("/admin/logout", post(sign_in::sign_out))
        .route("/admin/users", get(users::list))
        .route("/admin/users/{username}", get(users::detail))
        .route("/admin/users/{username}/{action}", post(users::act))
        .route("/admin/articles", get(content::list))
        .route("/admin/articles/{slug}", get(content::view))
        .route(
            "/admin/articles/{slug}/remove",
            post(content::remove_article),
        )
        .route(
            "/admin/articles/{slug}/comments/{id}/remove",
            post(content::remove_comment),
        )
        .route("/admin/jobs", get(jobs::list))
        .route("/admin/jobs/{id}/{action}", post(jobs::act))
        .route("/admin/audit", get(audit::log))
        .route("/admin/events", get(events::list))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    Router::new()
        .merge(pages)
        .route("/admin/assets/console.css", get(stylesheet))
        .route("/admin/assets/icon.svg", get(icon))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
}

/// The tab icon (embedded; without one, browsers ask for `/favicon.ico` and log its 404).
async fn icon() -> impl axum::response::IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#2f6f4f"/><path d="M4 4h8v2H4zm0 3h8v2H4zm0 3h8v2H4z" fill="#fff"/></svg>"##,
    )
}

/// The stylesheet (embedded in the binary).
async fn stylesheet() -> impl axum::response::IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        include_str!("console.css"),
    )
}
