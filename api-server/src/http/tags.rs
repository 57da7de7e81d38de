//! Tags in use, most used first.

use crate::api_routes;
use crate::http::routing::RouteTable;
use axum::extract::State;

use crate::cache::Key;
use crate::error::ApiResult;
use crate::http::types::TagsResponse;
use crate::http::{json_bytes, to_json_bytes};
use crate::reads::Reader;
use crate::state::AppState;

pub fn router<T: RouteTable>() -> T {
    T::empty().routes(api_routes!(list_tags))
}

/// Distinct tags in use, most used first.
#[utoipa::path(get, path = "/api/tags", tag = "tags",
    responses((status = 200, body = TagsResponse)))]
async fn list_tags(
    State(state): State<AppState>,
    prefetched: Option<axum::Extension<crate::cache::Prefetched>>,
) -> ApiResult<axum::response::Response> {
    if let Some(body) = state
        .cache
        .lookup(&Key::Tags, prefetched.as_ref().map(|p| &p.0))
        .await
    {
        return Ok(json_bytes(body));
    }
    // Counts kept by a trigger on `articles` (migration `20261126000002_tag_counts`).
    let tags: Vec<String> = sqlx::query_scalar(
        "SELECT tag FROM tag_counts WHERE articles > 0 ORDER BY articles DESC, tag",
    )
    // A fill reads the primary (a stale answer cached would outlive the replica's lag);
    // without a cache there is nothing to fill.
    .fetch_all(&**state.read_db(Reader::of(None, state.cache.enabled())))
    .await?;
    let body = to_json_bytes(&TagsResponse { tags })?;
    state.cache.put(&Key::Tags, &body).await;
    Ok(json_bytes(body))
}
