//! Account export (a copy of everything the API keeps about the caller): requested with
//! `POST /api/user/export`, built by the worker (job `export_account`), read with
//! `GET /api/user/export`. The request and its job are written by one statement, so a
//! request is never lost and no job exists without its request.

use crate::api_routes;
use crate::http::routing::RouteTable;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::http::types::Timestamp;
use crate::state::AppState;

pub fn router<T: RouteTable>() -> T {
    T::empty().routes(api_routes!(request_export, read_export))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountExport {
    /// `pending` until the worker has built a document after the latest request, then
    /// `ready`.
    pub status: &'static str,
    pub requested_at: Timestamp,
    pub ready_at: Option<Timestamp>,
    /// The document (profile, articles, comments, favorites, follows), once ready.
    #[schema(value_type = Option<Object>)]
    pub document: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountExportResponse {
    pub export: AccountExport,
}

type Row = (
    chrono::DateTime<chrono::Utc>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<serde_json::Value>,
);

fn response(row: Row, with_document: bool) -> AccountExportResponse {
    let (requested_at, ready_at, document) = row;
    let ready = ready_at.is_some_and(|at| at >= requested_at);
    AccountExportResponse {
        export: AccountExport {
            status: if ready { "ready" } else { "pending" },
            requested_at: Timestamp(requested_at),
            ready_at: ready_at.map(Timestamp),
            document: document.filter(|_| ready && with_document),
        },
    }
}

/// Request a fresh export of the caller's account. Requests made while one waits for the
/// worker share its job.
#[utoipa::path(post, path = "/api/user/export", tag = "users",
    security(("token" = [])),
    responses((status = 202, body = AccountExportResponse), (status = 401)))]
async fn request_export(
    State(state): State<AppState>,
    auth: AuthUser,
) -> ApiResult<(StatusCode, axum::Json<AccountExportResponse>)> {
    let row: Row = sqlx::query_as(concat!(
        "WITH request AS (
             INSERT INTO account_exports (user_id, requested_at) VALUES ($1, now())
             ON CONFLICT (user_id) DO UPDATE SET requested_at = now()
             RETURNING user_id, requested_at, ready_at),
         job AS (
             INSERT INTO jobs (kind, payload, idempotency_key, max_attempts)
             SELECT 'export_account', jsonb_build_object('userId', user_id),
                    'user:' || user_id, $2
               FROM request ",
        crate::jobs_on_conflict!(),
        ")
         SELECT requested_at, ready_at, NULL::jsonb FROM request"
    ))
    .bind(auth.id)
    .bind(i32::try_from(state.config.worker.max_attempts).unwrap_or(i32::MAX))
    .fetch_one(&**state.db())
    .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(response(row, false))))
}

/// The caller's latest export: pending, or ready with its document.
#[utoipa::path(get, path = "/api/user/export", tag = "users",
    security(("token" = [])),
    responses((status = 200, body = AccountExportResponse), (status = 401),
        (status = 404, description = "no export was requested")))]
async fn read_export(
    State(state): State<AppState>,
    auth: AuthUser,
) -> ApiResult<axum::Json<AccountExportResponse>> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT requested_at, ready_at, document FROM account_exports WHERE user_id = $1",
    )
    .bind(auth.id)
    .fetch_optional(&**state.db())
    .await?;
    let row = row.ok_or(ApiError::NotFound("export"))?;
    Ok(axum::Json(response(row, true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_is_ready_only_when_built_after_the_latest_request() {
        let t = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap();
        let doc = Some(serde_json::json!({"user": {}}));
        assert_eq!(response((t(10), None, None), true).export.status, "pending");
        let stale = response((t(10), Some(t(5)), doc.clone()), true).export;
        assert_eq!((stale.status, stale.document), ("pending", None));
        let ready = response((t(10), Some(t(10)), doc.clone()), true).export;
        assert_eq!((ready.status, ready.document), ("ready", doc));
    }
}
