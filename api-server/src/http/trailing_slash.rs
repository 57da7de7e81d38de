//! One trailing slash is accepted on every API path: `POST /api/articles/` is
//! `POST /api/articles`.
//!
//! RealWorld clients differ here (the official Angular client posts to `/api/articles/`,
//! DRF's APPEND_SLASH and the reference backend accept both), so the path is rewritten to
//! its canonical form before routing rather than answered with a redirect: a redirected
//! POST loses its body or its method in some clients. Everything after the rewrite (the
//! matched route in metrics, the access log, the cache key, ETags, CORS) sees the
//! canonical path only, so both forms share one cache entry and add no label value.
//!
//! This must wrap the `Router` from outside (`tower::Layer::layer`): a middleware added
//! with `Router::layer` runs after the route was chosen.

use axum::extract::Request;
use axum::http::Uri;
use axum::http::uri::PathAndQuery;

/// The Swagger UI lives at `/api/docs/` (with the slash; `/api/docs` redirects there), so
/// its paths are left alone.
const DOCS_PREFIX: &str = "/api/docs/";

/// The request with one trailing slash removed from its path, where there is one to
/// remove. No allocation unless the path ends in `/`.
pub fn canonical(mut request: Request) -> Request {
    if let Some(uri) = without_trailing_slash(request.uri()) {
        *request.uri_mut() = uri;
    }
    request
}

/// `None` when the path is already canonical (or is `/`, or belongs to the docs UI).
fn without_trailing_slash(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    if path.len() < 2 || !path.ends_with('/') || path.starts_with(DOCS_PREFIX) {
        return None;
    }
    let trimmed = &path[..path.len() - 1];
    let path_and_query = match uri.query() {
        Some(query) => PathAndQuery::try_from(format!("{trimmed}?{query}")),
        None => PathAndQuery::try_from(trimmed),
    }
    .ok()?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(uri: &str) -> String {
        let request = Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        canonical(request).uri().to_string()
    }

    #[test]
    fn one_trailing_slash_is_removed_and_the_query_kept() {
        assert_eq!(rewritten("/api/articles/"), "/api/articles");
        assert_eq!(
            rewritten("/api/articles/?tag=rust&limit=5"),
            "/api/articles?tag=rust&limit=5"
        );
        assert_eq!(rewritten("/api/users/login/"), "/api/users/login");
        assert_eq!(
            rewritten("http://example.com/api/tags/?x=1"),
            "http://example.com/api/tags?x=1"
        );
    }

    #[test]
    fn canonical_paths_the_root_and_the_docs_ui_are_left_alone() {
        assert_eq!(rewritten("/api/articles"), "/api/articles");
        assert_eq!(rewritten("/api/articles?x=/"), "/api/articles?x=/");
        assert_eq!(rewritten("/"), "/");
        assert_eq!(rewritten("/api/docs/"), "/api/docs/");
        assert_eq!(
            rewritten("/api/docs/swagger-ui.css/"),
            "/api/docs/swagger-ui.css/"
        );
    }

    #[test]
    fn only_one_slash_is_accepted() {
        // `/api/articles//` stays a path no route matches (a 404), as it should.
        assert_eq!(rewritten("/api/articles//"), "/api/articles/");
    }
}
