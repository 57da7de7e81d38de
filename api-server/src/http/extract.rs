//! Extractors whose rejections use the API's error format instead of axum's plain text.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `Json<T>` whose failures answer 422 (or 413) in the `{"errors": …}` format.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::field("body", "must be JSON (Content-Type: application/json)")
        }
        JsonRejection::JsonSyntaxError(_) => ApiError::field("body", "is not valid JSON"),
        JsonRejection::JsonDataError(e) => {
            // serde's message names the offending field and type, never internals.
            ApiError::field(
                "body",
                e.body_text().replace(
                    "Failed to deserialize the JSON body into the target type: ",
                    "",
                ),
            )
        }
        JsonRejection::BytesRejection(e)
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::PayloadTooLarge
        }
        _ => ApiError::field("body", "could not be read"),
    }
}

/// `Query<T>` with errors in the API's format.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::field(
                "query",
                e.body_text()
                    .replace("Failed to deserialize query string: ", ""),
            )),
            Err(_) => Err(ApiError::field("query", "is invalid")),
        }
    }
}

pub use crate::paging::{DEFAULT_LIMIT, MAX_LIMIT};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Pagination {
    /// Page size: default 20, at most 100.
    #[param(minimum = 1)]
    pub limit: Option<i64>,
    /// Items to skip: default 0.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// `limit`, `offset` and `cursor` (see `crate::http::cursor`), for the feed and comments.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CursorPagination {
    /// Page size: default 20, at most 100.
    #[param(minimum = 1)]
    pub limit: Option<i64>,
    /// Items to skip: default 0.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// The items after this one: `nextCursor` of the previous page (stable under
    /// concurrent inserts). Not with `offset`.
    #[param(max_length = 128)]
    pub cursor: Option<String>,
}

impl CursorPagination {
    pub fn pagination(&self) -> Pagination {
        Pagination {
            limit: self.limit,
            offset: self.offset,
        }
    }
}

impl Pagination {
    /// Validated `(limit, offset)`: `limit` is clamped to 1..=100, a negative offset is a 422.
    pub fn resolve(&self) -> Result<(i64, i64), ApiError> {
        crate::paging::resolve(self.limit, self.offset).map_err(|e| match e {
            crate::paging::PageError::Limit => ApiError::field("limit", "must be at least 1"),
            crate::paging::PageError::Offset => ApiError::field("offset", "must not be negative"),
        })
    }
}
