//! The connection limits of the servers behind this pod, read once a minute and reported
//! on the admin port (`stoa_contract::pod::ServerLimits`): the operator's autoscaler never
//! runs more pods than PostgreSQL and Redis can take.

use std::time::Duration;

use stoa_contract::pod::ServerLimits;

use crate::state::AppState;

const EVERY: Duration = Duration::from_secs(60);

/// Keeps `state.server_limits` current (the first read at once).
pub fn spawn_reader(state: AppState) {
    tokio::spawn(async move {
        loop {
            match read(&state).await {
                Ok(limits) => state.server_limits.store(Some(std::sync::Arc::new(limits))),
                Err(e) => tracing::debug!(
                    error = crate::db::describe_error(&e),
                    "cannot read the database's connection limits yet"
                ),
            }
            tokio::time::sleep(EVERY).await;
        }
    });
}

async fn read(state: &AppState) -> Result<ServerLimits, sqlx::Error> {
    // `reserved_connections` exists from PostgreSQL 16 on; `true` makes it NULL before.
    let (max, superuser, reserved): (i32, i32, Option<i32>) = sqlx::query_as(
        "SELECT current_setting('max_connections')::int,
                current_setting('superuser_reserved_connections')::int,
                current_setting('reserved_connections', true)::int",
    )
    .fetch_one(&**state.db())
    .await?;
    let redis_max_clients = match &state.kv {
        None => None,
        // Where CONFIG is not allowed (some managed Redis), the bound is unknown.
        Some(kv) => kv
            .run(|mut conn| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxclients")
                    .query_async::<Vec<String>>(&mut conn)
                    .await
            })
            .await
            .and_then(|pair| pair.get(1).and_then(|v| v.parse().ok())),
    };
    let non_negative = |n: i32| u32::try_from(n).unwrap_or(0);
    Ok(ServerLimits {
        postgres_max_connections: non_negative(max),
        postgres_reserved_connections: non_negative(superuser)
            + non_negative(reserved.unwrap_or(0)),
        redis_max_clients,
    })
}
