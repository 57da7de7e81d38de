//! What the API's and the worker's admin ports both serve.

use crate::db::Pool;
use crate::metrics::Metrics;

/// The metrics in OpenMetrics text, with the pool's gauges and the dropped log lines
/// brought up to date (the API's and the worker's admin ports).
pub fn metrics_response(metrics: &Metrics, pool: &Pool) -> axum::response::Response {
    use axum::response::IntoResponse;
    let pool = pool.sqlx();
    metrics.db_pool_size.set(i64::from(pool.size()));
    metrics
        .db_pool_idle
        .set(i64::try_from(pool.num_idle()).unwrap_or(i64::MAX));
    metrics
        .db_pool_max
        .set(i64::from(pool.options().get_max_connections()));
    let dropped = crate::telemetry::dropped_lines();
    let counted = metrics.log_lines_dropped.get();
    if dropped > counted {
        metrics.log_lines_dropped.inc_by(dropped - counted);
    }
    match metrics.encode() {
        Ok(body) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
