//! Deleting what can no longer matter: refresh tokens long past their expiry,
//! revocations of access tokens that can no longer verify, and expired sign-in
//! challenges (second factor). Every replica runs the timer;
//! a transaction-scoped advisory lock makes one of them do each round (until a job
//! worker takes this over).

use std::time::Duration;

use sqlx::PgPool;

use crate::auth::revocation::MirrorWindow;

/// `pg_try_advisory_xact_lock` key of the purge ("stoapurg").
const PURGE_LOCK: i64 = 0x73746f6170757267;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub refresh_tokens: u64,
    pub revocations: u64,
    pub mfa_challenges: u64,
}

/// One purge round. `None` when another replica holds the lock.
pub async fn purge_expired(
    pool: &PgPool,
    window: MirrorWindow,
) -> Result<Option<Purged>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(PURGE_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        tx.rollback().await?;
        return Ok(None);
    }
    // A refresh row also records its family's revocation, which access tokens issued with
    // it rely on until they expire (plus the leeway): keep the row that long.
    let refresh_tokens = sqlx::query(
        "DELETE FROM refresh_tokens WHERE expires_at < now() - make_interval(secs => $1)",
    )
    .bind(window.family_window().as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let revocations = sqlx::query(
        "DELETE FROM revoked_tokens WHERE expires_at < now() - make_interval(secs => $1)",
    )
    .bind(window.leeway.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let mfa_challenges = sqlx::query("DELETE FROM mfa_challenges WHERE expires_at < now()")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Some(Purged {
        refresh_tokens,
        revocations,
        mfa_challenges,
    }))
}

/// Purges every `interval` until the process ends. Failures are logged and retried next
/// round (the rows only cost space meanwhile).
pub fn spawn_purger(db: std::sync::Arc<crate::db::Db>, window: MirrorWindow, interval: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let pool = db.pool().as_ref().clone();
            match purge_expired(&pool, window).await {
                Ok(Some(purged))
                    if purged.refresh_tokens + purged.revocations + purged.mfa_challenges > 0 =>
                {
                    tracing::info!(
                        refresh_tokens = purged.refresh_tokens,
                        revocations = purged.revocations,
                        mfa_challenges = purged.mfa_challenges,
                        "purged expired sessions and revocations"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "purging expired sessions failed; retrying next round")
                }
            }
        }
    });
}
