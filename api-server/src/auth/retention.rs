//! Deleting what can no longer matter: refresh tokens long past their expiry,
//! revocations of access tokens that can no longer verify, expired sign-in challenges
//! (second factor) and provider sign-ins never finished. The worker runs it as the
//! `purge_expired` job, on the schedule `STOA_PURGE_INTERVAL` (`crate::jobs::schedule`).

use crate::db::Tx;

use crate::auth::revocation::MirrorWindow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub refresh_tokens: u64,
    pub revocations: u64,
    pub mfa_challenges: u64,
    /// Provider sign-ins never finished: flows, one-time codes and link tickets.
    pub sign_in_flows: u64,
    /// Admin console sessions past their absolute end.
    pub console_sessions: u64,
}

/// One purge, in the caller's transaction.
pub async fn purge_expired(conn: &mut Tx, window: MirrorWindow) -> Result<Purged, sqlx::Error> {
    // A refresh row also records its family's revocation, which access tokens issued with
    // it rely on until they expire (plus the leeway): keep the row that long.
    let refresh_tokens = sqlx::query(
        "DELETE FROM refresh_tokens WHERE expires_at < now() - make_interval(secs => $1)",
    )
    .bind(window.family_window().as_secs_f64())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let revocations = sqlx::query(
        "DELETE FROM revoked_tokens WHERE expires_at < now() - make_interval(secs => $1)",
    )
    .bind(window.leeway.as_secs_f64())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let mfa_challenges = sqlx::query("DELETE FROM mfa_challenges WHERE expires_at < now()")
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let mut sign_in_flows = 0;
    for statement in [
        "DELETE FROM oauth_flows WHERE expires_at < now()",
        "DELETE FROM oauth_handoffs WHERE expires_at < now()",
        "DELETE FROM oauth_link_tickets WHERE expires_at < now()",
    ] {
        sign_in_flows += sqlx::query(statement)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    let console_sessions = sqlx::query("DELETE FROM console_sessions WHERE expires_at < now()")
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(Purged {
        refresh_tokens,
        revocations,
        mfa_challenges,
        sign_in_flows,
        console_sessions,
    })
}
