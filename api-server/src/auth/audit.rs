//! The admin audit log (`admin_audit`): one row per admin action, written in the
//! action's own transaction, so a change and its record exist together or not at all.

use uuid::Uuid;

use crate::db::Tx;

/// The longest reason kept (characters).
pub const REASON_MAX: usize = 1000;

/// Records that `actor` (`None`: the command line) did `action` to `subject`.
pub async fn record(
    tx: &mut Tx,
    actor: Option<Uuid>,
    action: &str,
    subject: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO admin_audit (admin_id, admin_name, action, subject, reason)
         VALUES ($1, (SELECT username FROM users WHERE id = $1), $2, $3, $4)",
    )
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
