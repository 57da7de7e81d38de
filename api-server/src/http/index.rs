//! `GET /`: where to go from the API's root. A browser, a curl user or a scanner (Mozilla's
//! HTTP Observatory grades what `/` answers) gets a small JSON index instead of a 404.
//! Not in the OpenAPI document: it describes the document's own address.

use axum::Json;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

pub async fn index() -> impl IntoResponse {
    (
        // Fixed for a release: shared caches may keep it.
        [(header::CACHE_CONTROL, "public, max-age=3600")],
        Json(json!({
            "service": "stoa-api",
            "version": env!("CARGO_PKG_VERSION"),
            "api": "/api",
            "docs": "/api/docs/",
            "openapi": "/api/openapi.json",
            "jwks": "/.well-known/jwks.json",
            "health": "/healthz",
        })),
    )
}
