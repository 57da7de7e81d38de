//! `stoa-api credentials`: the database roles of credential rotation, run by the operator
//! as Jobs with the admin credential (see `stoa_contract::credential_rotation` for the protocol).
//!
//! The group role holds the application's privileges rather than owning the tables: the
//! migrations run as the admin role and must own what they alter, so the admin role keeps
//! ownership and grants the group everything on what exists and, by default privileges,
//! on what it creates later.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use stoa_contract::credential_rotation::{login_roles, valid_password, valid_role};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{0:?} is not a valid role name ([a-z_][a-z0-9_]*, at most 48 bytes)")]
    InvalidRole(String),
    #[error("the password must be 16-128 ASCII letters and digits")]
    InvalidPassword,
    #[error("{role} still has {} session(s) after {waited:?}: {}", remaining.len(), remaining.join(", "))]
    SessionsRemain {
        role: String,
        waited: Duration,
        remaining: Vec<String>,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

fn role(name: &str) -> Result<String, CredentialError> {
    if valid_role(name) {
        // Validated above: safe to quote into SQL.
        Ok(format!("\"{name}\""))
    } else {
        Err(CredentialError::InvalidRole(name.to_owned()))
    }
}

/// Serializes credential Jobs of all Stoas on this server (roles are server-wide).
const LOCK: i64 = 0x5354_4f41_4352_4544; // "STOACRED"

async fn run(conn: &mut PgConnection, sql: String) -> Result<(), CredentialError> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Creates the group and both login roles if missing, grants the group the application's
/// privileges, and sets `login`'s password (one transaction: all or nothing).
pub async fn publish(
    conn: &mut PgConnection,
    group: &str,
    login: &str,
    password: &str,
) -> Result<(), CredentialError> {
    let group_q = role(group)?;
    if !login_roles(group).iter().any(|r| r == login) {
        return Err(CredentialError::InvalidRole(login.to_owned()));
    }
    if !valid_password(password) {
        return Err(CredentialError::InvalidPassword);
    }
    let mut sql = format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{group}') THEN
             CREATE ROLE {group_q} NOLOGIN;
           END IF;"
    );
    for member in login_roles(group) {
        let member_q = role(&member)?;
        sql.push_str(&format!(
            "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{member}') THEN
               CREATE ROLE {member_q} LOGIN IN ROLE {group_q};
             END IF;"
        ));
    }
    sql.push_str(&format!(
        "END $$;
         GRANT USAGE ON SCHEMA public TO {group_q};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {group_q};
         GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {group_q};
         ALTER DEFAULT PRIVILEGES IN SCHEMA public
           GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {group_q};
         ALTER DEFAULT PRIVILEGES IN SCHEMA public
           GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {group_q};
         ALTER ROLE {login_q} WITH LOGIN PASSWORD '{password}' VALID UNTIL 'infinity';",
        login_q = role(login)?
    ));
    run(conn, sql).await
}

/// The `application_name` of each session of `login`.
async fn sessions(conn: &mut PgConnection, login: &str) -> Result<Vec<String>, CredentialError> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(nullif(application_name, ''), 'pid ' || pid)
         FROM pg_stat_activity WHERE usename = $1 ORDER BY 1",
    )
    .bind(login)
    .fetch_all(conn)
    .await?)
}

/// What [`expire`] does with the old role's idle sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleSessions {
    /// Wait for them to end like the others (clients connect directly: an idle session is
    /// a pod's pool connection, which goes when the pod's old pool is drained).
    Wait,
    /// End them (`pg_terminate_backend`): behind a transaction pooler, once every pod uses
    /// the new role, an idle session of the old one is the pooler's server connection, which
    /// no client holds between transactions; the pooler opens another when it needs one.
    End,
}

/// Waits until no session of `login` remains, then removes its password and its right to
/// log in (nothing connected is cut off; `publish` gives both back at the next rotation).
/// `NOLOGIN` holds even where `pg_hba.conf` trusts the network, which a password does not.
pub async fn expire(
    conn: &mut PgConnection,
    login: &str,
    wait: Duration,
    idle: IdleSessions,
) -> Result<(), CredentialError> {
    let login_q = role(login)?;
    let started = Instant::now();
    loop {
        if idle == IdleSessions::End {
            end_idle_sessions(conn, login).await?;
        }
        let remaining = sessions(conn, login).await?;
        if remaining.is_empty() {
            break;
        }
        if started.elapsed() >= wait {
            return Err(CredentialError::SessionsRemain {
                role: login.to_owned(),
                waited: wait,
                remaining,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    run(
        conn,
        format!("ALTER ROLE {login_q} WITH NOLOGIN PASSWORD NULL;"),
    )
    .await
}

/// Ends the sessions of `login` that are idle between transactions.
async fn end_idle_sessions(conn: &mut PgConnection, login: &str) -> Result<(), CredentialError> {
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE usename = $1 AND state = 'idle'",
    )
    .bind(login)
    .fetch_all(&mut *conn)
    .await?;
    if !ended.is_empty() {
        tracing::info!(
            role = login,
            sessions = ended.len(),
            "ended idle sessions of the old role"
        );
    }
    Ok(())
}

/// Drops both login roles and the group, with the privileges granted to them.
pub async fn drop_roles(conn: &mut PgConnection, group: &str) -> Result<(), CredentialError> {
    let mut sql = String::new();
    for name in login_roles(group).iter().map(String::as_str).chain([group]) {
        let quoted = role(name)?;
        sql.push_str(&format!(
            "DO $$ BEGIN
               IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
                 DROP OWNED BY {quoted};
                 DROP ROLE {quoted};
               END IF;
             END $$;"
        ));
    }
    run(conn, sql).await
}
