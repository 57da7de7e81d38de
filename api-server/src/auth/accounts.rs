//! Account administration shared by `/api/admin/*` and `stoa-api admin`: disabling and
//! re-enabling accounts, granting and withdrawing the admin role, listing users.
//!
//! Disabling an account and changing its role both end every session of the user in the
//! same transaction (their refresh-token families are revoked), so the caller can mirror
//! the revoked families into every replica's denylist at once: no access token outlives
//! the state it was issued for. The users row is updated first, which takes its row
//! lock: a login that is starting a session for the user (`FOR SHARE` on the row) either
//! finishes first and has its new session revoked by the next statement, or waits and
//! then sees the account disabled.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::Role;
use crate::db::Pool;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("no user named {0:?}")]
    UnknownUser(String),
    /// An admin may not disable their own account or withdraw their own role (the last
    /// admin would lock everyone out); another admin or `stoa-api admin` can.
    #[error("an admin cannot disable or demote their own account")]
    OwnAccount,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A user as an admin sees them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Account {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub bio: Option<String>,
    pub image: Option<String>,
    pub role: String,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// `$before` + the columns of [`Account`] + `$after`, as one literal (statements are
/// static strings).
macro_rules! with_account_columns {
    ($before:literal, $after:literal) => {
        concat!(
            $before,
            " id, username, email, bio, image, role, disabled_at, created_at ",
            $after
        )
    };
}

/// An account after a change, and the sessions the change ended.
#[derive(Debug)]
pub struct Changed {
    pub account: Account,
    /// Whether anything changed (disabling a disabled account changes nothing).
    pub changed: bool,
    pub revoked_families: Vec<Uuid>,
}

/// The change an admin makes to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Disable,
    Enable,
    SetRole(Role),
}

impl Change {
    /// The `action` field of its security event.
    pub fn action(self) -> &'static str {
        match self {
            Change::Disable => "disable_user",
            Change::Enable => "enable_user",
            Change::SetRole(Role::Admin) => "grant_admin",
            Change::SetRole(Role::User) => "revoke_admin",
        }
    }
}

/// Applies `change` to `username`'s account in one transaction; `actor` is the admin
/// making it (`None` from the command line, which may change any account). Disabling
/// and withdrawing the admin role end the account's sessions.
pub async fn change(
    pool: &Pool,
    username: &str,
    change: Change,
    actor: Option<Uuid>,
) -> Result<Changed, AccountError> {
    let mut tx = pool.begin().await?;
    let before: Account = sqlx::query_as(with_account_columns!(
        "SELECT",
        "FROM users WHERE username = $1 FOR UPDATE"
    ))
    .bind(username)
    .fetch_optional(&mut tx)
    .await?
    .ok_or_else(|| AccountError::UnknownUser(username.to_owned()))?;
    // Only a change that takes something away ends sessions: a new admin gets the role
    // in the token of their next refresh or sign-in.
    let takes_away = matches!(change, Change::Disable | Change::SetRole(Role::User));
    if takes_away && actor == Some(before.id) {
        return Err(AccountError::OwnAccount);
    }
    let (disabled, role) = match change {
        Change::Disable => (true, Role::from_db(&before.role)),
        Change::Enable => (false, Role::from_db(&before.role)),
        Change::SetRole(role) => (before.disabled_at.is_some(), role),
    };
    let changed = disabled != before.disabled_at.is_some() || role.as_str() != before.role;
    if !changed {
        tx.commit().await?;
        return Ok(Changed {
            account: before,
            changed: false,
            revoked_families: Vec::new(),
        });
    }
    let account: Account = sqlx::query_as(with_account_columns!(
        "UPDATE users SET
             disabled_at = CASE WHEN $2 THEN COALESCE(disabled_at, now()) END,
             role = $3, updated_at = now()
         WHERE id = $1 RETURNING",
        ""
    ))
    .bind(before.id)
    .bind(disabled)
    .bind(role.as_str())
    .fetch_one(&mut tx)
    .await?;
    let revoked_families = if takes_away {
        end_sessions(&mut tx, before.id).await?
    } else {
        Vec::new()
    };
    super::audit::record(&mut tx, actor, change.action(), username, None).await?;
    tx.commit().await?;
    Ok(Changed {
        account,
        changed: true,
        revoked_families,
    })
}

/// Turns off `username`'s second factor (a lost authenticator and lost recovery codes):
/// the authenticator, its recovery codes and pending sign-in challenges go, and so do the
/// account's sessions, so whoever asked for the reset must sign in again with the
/// password. Returns the account's id and the sessions ended; `None` in the second place
/// when MFA was not on.
pub async fn reset_mfa(
    pool: &Pool,
    username: &str,
    actor: Option<Uuid>,
) -> Result<(Uuid, Option<Vec<Uuid>>), AccountError> {
    let mut tx = pool.begin().await?;
    let id: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE username = $1 FOR UPDATE")
        .bind(username)
        .fetch_optional(&mut tx)
        .await?
        .ok_or_else(|| AccountError::UnknownUser(username.to_owned()))?;
    let removed = sqlx::query(
        "WITH codes AS (DELETE FROM mfa_recovery_codes WHERE user_id = $1),
              challenges AS (DELETE FROM mfa_challenges WHERE user_id = $1)
         DELETE FROM user_totp WHERE user_id = $1",
    )
    .bind(id)
    .execute(&mut tx)
    .await?
    .rows_affected();
    if removed == 0 {
        tx.commit().await?;
        return Ok((id, None));
    }
    let families = end_sessions(&mut tx, id).await?;
    super::audit::record(&mut tx, actor, "reset_mfa", username, None).await?;
    tx.commit().await?;
    Ok((id, Some(families)))
}

/// Ends every session of `username` (a lost or stolen device): the account's id and the
/// sessions ended, for the caller to mirror.
pub async fn end_all_sessions(
    pool: &Pool,
    username: &str,
    actor: Option<Uuid>,
) -> Result<(Uuid, Vec<Uuid>), AccountError> {
    let mut tx = pool.begin().await?;
    let id: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE username = $1 FOR UPDATE")
        .bind(username)
        .fetch_optional(&mut tx)
        .await?
        .ok_or_else(|| AccountError::UnknownUser(username.to_owned()))?;
    let families = end_sessions(&mut tx, id).await?;
    super::audit::record(&mut tx, actor, "end_sessions", username, None).await?;
    tx.commit().await?;
    Ok((id, families))
}

/// Revokes every live session (refresh-token family) of `user_id` in `tx`; the families,
/// each once, for the caller to mirror once committed.
async fn end_sessions(tx: &mut crate::db::Tx, user_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut families: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE refresh_tokens SET revoked_at = now()
         WHERE user_id = $1 AND revoked_at IS NULL RETURNING family_id",
    )
    .bind(user_id)
    .fetch_all(&mut *tx)
    .await?;
    families.sort_unstable();
    families.dedup();
    Ok(families)
}

/// A page of users, newest first, and how many there are.
pub async fn list(
    pool: &Pool,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Account>, i64), AccountError> {
    let page = sqlx::query_as(with_account_columns!(
        "SELECT",
        "FROM users ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(pool)
        .await?;
    Ok((page, total))
}
