//! Tags in use, most used first.

use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiResult;
use crate::http::types::TagsResponse;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_tags))
}

/// Distinct tags in use, most used first.
#[utoipa::path(get, path = "/api/tags", tag = "tags",
    responses((status = 200, body = TagsResponse)))]
async fn list_tags(State(state): State<AppState>) -> ApiResult<axum::Json<TagsResponse>> {
    let tags: Vec<String> = sqlx::query_scalar(
        "SELECT tag FROM articles, unnest(tag_list) AS tag GROUP BY tag ORDER BY count(*) DESC, tag",
    )
    .fetch_all(&**state.db())
    .await?;
    Ok(axum::Json(TagsResponse { tags }))
}
