//! The local denylist's feed when there is no Redis: PostgreSQL `LISTEN`/`NOTIFY`.
//!
//! Triggers on `revoked_tokens` and `refresh_tokens` (migration
//! `20261126000001_revocation_notifications`) notify [`CHANNEL`] inside the revoking
//! transaction, so every replica hears of a revocation when it commits, whichever replica
//! or release made it. As with the Redis feed, the feed listens first and then loads every
//! revocation that can still matter, so nothing committed before the `LISTEN` is missed.
//!
//! The listening connection is the pod's one connection outside its pool (the operator
//! counts it when it bounds the replicas by `max_connections`). It is pinged every second
//! (a silent connection must not look live) and replaced when the pool's credentials are
//! swapped: a credential rotation waits for the old role's sessions to end.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPoolOptions};

use crate::auth::denylist::{self, Denied, LocalDenylist, MirrorWindow};
use crate::db::Db;
use crate::metrics::Metrics;
use crate::subscription::Followed;

pub const CHANNEL: &str = "stoa_revocations";

/// How often a quiet connection is pinged, stale entries pruned and the pool's credentials
/// compared with the listener's.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Keeps `list` current from PostgreSQL until the pool is closed (at shutdown). `timeout`
/// bounds connecting, loading and each ping (`STOA_DB_ACQUIRE_TIMEOUT`).
pub fn spawn(
    list: Arc<LocalDenylist>,
    database: Arc<Db>,
    window: MirrorWindow,
    timeout: Duration,
    metrics: Arc<Metrics>,
) {
    let closed = {
        let database = database.clone();
        move || database.pool().sqlx().is_closed()
    };
    crate::subscription::keep_following(list.clone(), metrics.clone(), closed, None, move || {
        let (list, database, metrics) = (list.clone(), database.clone(), metrics.clone());
        async move { follow(&list, &database, window, timeout, &metrics).await }
    });
}

async fn follow(
    list: &LocalDenylist,
    database: &Db,
    window: MirrorWindow,
    timeout: Duration,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let pool = database.pool().clone();
    // Its own one-connection pool with the same options (role, application_name): the
    // listener keeps its connection for good, and must not take one of the pool's.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(timeout)
        .connect_lazy_with(pool.session_options().clone());
    let mut listener = tokio::time::timeout(timeout, PgListener::connect_with(&own)).await??;
    // A lost connection ends this feed (and the list's liveness) instead of reconnecting
    // quietly: what was sent meanwhile is only recovered by a new load.
    listener.eager_reconnect(false);
    tokio::time::timeout(timeout, listener.listen(CHANNEL)).await??;
    // Listening: from here every revocation arrives as a notification; everything committed
    // before is in the tables.
    let loaded = tokio::time::timeout(timeout, denylist::load(&pool, window)).await??;
    list.replace(loaded);
    list.set_live(true, metrics);
    tracing::info!("revocation feed (PostgreSQL) live: revocations are checked locally");

    // The pool closes at shutdown: stop listening then, so the session ends with the rest.
    let closed = pool.sqlx().close_event();
    tokio::pin!(closed);
    let mut next_ping = tokio::time::Instant::now() + PING_EVERY;
    loop {
        // `try_recv` is cancel-safe (sqlx reads a message only once it is whole).
        let received = tokio::select! {
            () = &mut closed => return Ok(()),
            received = tokio::time::timeout_at(next_ping, listener.try_recv()) => received,
        };
        match received {
            Ok(Ok(Some(notification))) => match announced(notification.payload(), window) {
                Some((denied, until)) => list.add(denied, until),
                None => tracing::warn!("ignored a malformed revocation notification"),
            },
            Ok(Ok(None)) => anyhow::bail!("the listening connection was lost"),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&mut listener))
                    .await??;
                list.prune(Utc::now().timestamp());
                if !Arc::ptr_eq(&database.pool(), &pool) {
                    // New credentials: listen again as the new role.
                    return Ok(());
                }
                next_ping = tokio::time::Instant::now() + PING_EVERY;
            }
        }
    }
}

/// A notification (`j <jti> <expires_at>` or `f <family> <revoked_at>`, unix seconds) as
/// what it denies and until when.
fn announced(payload: &str, window: MirrorWindow) -> Option<(Denied, i64)> {
    let (denied, at) = denylist::parse(payload)?;
    let at = DateTime::<Utc>::from_timestamp(at, 0)?;
    let until = match denied {
        Denied::Token(_) => window.jti_until(at),
        Denied::Family(_) => window.family_until(at),
    };
    Some((denied, until))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_become_denials_that_last_as_long_as_the_tokens_they_deny() {
        let window = MirrorWindow {
            access_ttl: Duration::from_secs(900),
            leeway: Duration::from_secs(30),
        };
        let id = uuid::Uuid::new_v4();
        assert_eq!(
            announced(&format!("j {id} 1000"), window),
            Some((Denied::Token(id), 1030)),
            "exp plus the leeway"
        );
        assert_eq!(
            announced(&format!("f {id} 1000"), window),
            Some((Denied::Family(id), 1930)),
            "an access token issued just before lives its lifetime plus the leeway"
        );
        assert_eq!(announced("f nonsense 1000", window), None);
    }
}
