//! PostgreSQL: the pool and the embedded migrations (their phases: `crate::schema`).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use stoa_contract::pod::{LoadedCredential, credential_fingerprint};

use crate::config::{DatabaseConfig, ReadReplicaConfig, Secret};

mod pool;
mod pooler;

pub use pool::Pool;
pub use pooler::Tx;

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

pub fn connect_options(
    url: &Secret,
    config: &DatabaseConfig,
) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.expose().parse()?;
    let timeout_ms = config.statement_timeout.as_millis().to_string();
    Ok(options
        .application_name(&config.application_name)
        .options([("statement_timeout", timeout_ms.as_str())])
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500)))
}

/// Options for `stoa-api migrate`: no statement timeout (building an index on a large table
/// takes as long as it takes; the migration Job's deadline bounds the run instead).
pub fn migration_connect_options(url: &Secret) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.expose().parse()?;
    Ok(options.application_name("stoa-api-migrate"))
}

/// The server's request pool, lazily connecting: the server starts (and reports not-ready)
/// even while the database is unreachable, and connects as soon as it can. Through the
/// pooler when one is configured (`STOA_DATABASE_POOLER_URL`), logged in as `url` says.
pub fn pool(url: &Secret, config: &DatabaseConfig) -> Result<Pool, sqlx::Error> {
    let direct = connect_options(url, config)?;
    match &config.pooler {
        None => Ok(Pool::new(lazy_pool(direct, config, config.max_connections))),
        Some(pooler) => pooled(
            &with_credentials_of(pooler, url),
            direct,
            config,
            config.max_connections,
        ),
    }
}

/// `direct` as the server's request pool (tests pass their own database's pool), or, with a
/// pooler configured, a pool through the pooler whose sessions go to `direct`'s database.
pub fn pool_over(direct: PgPool, config: &DatabaseConfig) -> Result<Pool, sqlx::Error> {
    match &config.pooler {
        None => Ok(Pool::new(direct)),
        Some(pooler) => pooled(
            &with_credentials_of(pooler, &config.url),
            direct.connect_options().as_ref().clone(),
            config,
            config.max_connections,
        ),
    }
}

/// A pool of at most `max_connections` through the transaction pooler at `url`
/// (`pooler`): no startup parameter PgBouncer refuses (`options`, `extra_float_digits`),
/// no statement cache, the statement timeout set in every transaction instead.
fn pooled(
    url: &Secret,
    sessions: PgConnectOptions,
    config: &DatabaseConfig,
    max_connections: u32,
) -> Result<Pool, sqlx::Error> {
    let options: PgConnectOptions = url.expose().parse()?;
    let options = options
        .application_name(&config.application_name)
        .extra_float_digits(None)
        .statement_cache_capacity(0)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
    Ok(Pool::behind_pooler(
        lazy_pool(options, config, max_connections),
        pooler::begin_statement(config.statement_timeout),
        sessions,
    ))
}

/// A lazily connecting pool of at most `max_connections` with `options`, with `config`'s
/// other settings.
fn lazy_pool(options: PgConnectOptions, config: &DatabaseConfig, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(config.min_connections.min(max_connections))
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .test_before_acquire(false)
        .connect_lazy_with(options)
}

/// Creates the database named in `url` if it does not exist (used by `serve --dev` only).
pub async fn create_database_if_missing(url: &Secret) -> anyhow::Result<()> {
    use sqlx::Executor;
    let options: PgConnectOptions = url.expose().parse()?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = options.database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .await?;
        tracing::info!(database = %name, "created database");
    }
    Ok(())
}

/// Why a statement failed because its connection went away (PostgreSQL restarted, failed
/// over, or the link broke), or `None` for any other error. Such a statement may or may
/// not have run: a read can be tried again on a fresh connection, a write cannot be known
/// to have failed. Errors of opening a connection are not here: the pool retries those
/// itself until `STOA_DB_ACQUIRE_TIMEOUT`.
pub fn connection_lost(e: &sqlx::Error) -> Option<&'static str> {
    match e {
        // admin_shutdown, crash_shutdown, cannot_connect_now (PostgreSQL's SQLSTATE class 57).
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("57P01") => Some("admin_shutdown"),
            Some("57P02") => Some("crash_shutdown"),
            Some("57P03") => Some("cannot_connect_now"),
            _ => None,
        },
        sqlx::Error::Io(io) => Some(match io.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => "reset",
            std::io::ErrorKind::BrokenPipe => "broken_pipe",
            _ => "io",
        }),
        _ => None,
    }
}

/// A database error in words safe to show an operator (no URLs, no passwords).
pub fn describe_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => format!("connection failed: {}", io.kind()),
        sqlx::Error::PoolTimedOut => "no connection available in time".into(),
        sqlx::Error::PoolClosed => "pool closed".into(),
        sqlx::Error::Database(db) => format!("database error {}", db.code().unwrap_or_default()),
        sqlx::Error::Tls(_) => "TLS error".into(),
        _ => "unavailable".into(),
    }
}

/// The pools in use, swappable at run time (credential rotation) without a restart, with
/// the credential they log in with (reported to the operator, never the password).
pub struct Db {
    pool: ArcSwap<Pool>,
    credential: ArcSwap<LoadedCredential>,
    replica: Option<Replica>,
}

/// The read replica's pool and what it is built from.
struct Replica {
    pool: ArcSwap<Pool>,
    config: ReadReplicaConfig,
    database: DatabaseConfig,
}

/// The pools a credential swap replaced, for the caller to drain and close.
pub struct Replaced {
    pub primary: Arc<Pool>,
    pub replica: Option<Arc<Pool>>,
}

impl Db {
    pub fn new(pool: Pool, url: &Secret) -> Self {
        Db {
            pool: ArcSwap::from_pointee(pool),
            credential: ArcSwap::from_pointee(credential_of(url)),
            replica: None,
        }
    }

    /// Adds the read replica's pool (lazily connecting, like the primary's), logged in as
    /// `primary_url` says unless the replica's URL names its own user.
    pub fn with_replica(
        mut self,
        config: &DatabaseConfig,
        primary_url: &Secret,
    ) -> Result<Self, sqlx::Error> {
        if let Some(read) = &config.read {
            let pool = replica_pool(read, config, primary_url)?;
            self.replica = Some(Replica {
                pool: ArcSwap::from_pointee(pool),
                config: read.clone(),
                database: config.clone(),
            });
        }
        Ok(self)
    }

    /// The current pool. Hold the guard only for the duration of a query.
    pub fn pool(&self) -> Guard<Arc<Pool>> {
        self.pool.load()
    }

    /// The read replica's current pool, if one is configured.
    pub fn replica(&self) -> Option<Guard<Arc<Pool>>> {
        self.replica.as_ref().map(|r| r.pool.load())
    }

    /// Installs a new pool for `url` (and, when the replica follows the primary's
    /// credentials, a new replica pool logged in the same way) and returns the previous
    /// ones for the caller to drain.
    pub fn replace(&self, pool: Pool, url: &Secret) -> Replaced {
        let primary = self.pool.swap(Arc::new(pool));
        self.credential.store(Arc::new(credential_of(url)));
        let replica = self
            .replica
            .as_ref()
            .filter(|r| !has_credentials(&r.config.url))
            .and_then(|r| match replica_pool(&r.config, &r.database, url) {
                Ok(pool) => Some(r.pool.swap(Arc::new(pool))),
                // Unreachable in practice: both URLs parsed before.
                Err(error) => {
                    tracing::error!(error = %error, "cannot build the read replica's pool with the new credentials; keeping the previous one");
                    None
                }
            });
        Replaced { primary, replica }
    }

    /// The credential of the pool in use.
    pub fn credential(&self) -> Arc<LoadedCredential> {
        self.credential.load_full()
    }

    /// Closes every pool (at shutdown).
    pub async fn close(&self) {
        self.pool().close().await;
        if let Some(replica) = self.replica() {
            replica.close().await;
        }
    }
}

/// The replica's pool; run for a pooler when the primary's is (the replica may well be
/// behind one too, and unnamed statements in transactions are correct on either).
fn replica_pool(
    read: &ReadReplicaConfig,
    config: &DatabaseConfig,
    primary_url: &Secret,
) -> Result<Pool, sqlx::Error> {
    let url = with_credentials_of(&read.url, primary_url);
    let direct = connect_options(&url, config)?;
    match config.pooler {
        None => Ok(Pool::new(lazy_pool(direct, config, read.max_connections))),
        Some(_) => pooled(&url, direct, config, read.max_connections),
    }
}

/// Whether a PostgreSQL URL names its user (`postgres://user[:password]@host/…`).
fn has_credentials(url: &Secret) -> bool {
    authority(url.expose()).is_some_and(|(userinfo, _)| userinfo.is_some())
}

/// `(user info, host part)` of a URL's authority.
fn authority(url: &str) -> Option<(Option<&str>, &str)> {
    let (_, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    Some(match authority.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host),
        None => (None, authority),
    })
}

/// The URL a replica or a pooler is logged into: its own, or, when it names no user, its
/// own with the primary's user and password (a physical standby has the primary's roles,
/// and a pooler authenticates against them, so a rotated credential works on all three).
fn with_credentials_of(url: &Secret, primary: &Secret) -> Secret {
    if has_credentials(url) {
        return url.clone();
    }
    let Some((Some(userinfo), _)) = authority(primary.expose()) else {
        return url.clone();
    };
    match url.expose().split_once("://") {
        Some((scheme, rest)) => Secret::new(format!("{scheme}://{userinfo}@{rest}")),
        None => url.clone(),
    }
}

/// The role a URL logs in as, and its fingerprint (see `stoa_contract::pod`).
fn credential_of(url: &Secret) -> LoadedCredential {
    LoadedCredential {
        user: url
            .expose()
            .parse::<PgConnectOptions>()
            .map(|o| o.get_username().to_owned())
            .unwrap_or_default(),
        fingerprint: credential_fingerprint(url.expose()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Secret {
        Secret::new(s)
    }

    #[test]
    fn a_replica_url_without_a_user_takes_the_primarys_credentials() {
        let primary = url("postgres://stoa_a:s3cret@primary:5432/stoa?sslmode=verify-full");
        assert_eq!(
            with_credentials_of(
                &url("postgres://standby:5432/stoa?sslmode=verify-full"),
                &primary
            )
            .expose(),
            "postgres://stoa_a:s3cret@standby:5432/stoa?sslmode=verify-full"
        );
        assert_eq!(
            with_credentials_of(&url("postgresql://standby"), &primary).expose(),
            "postgresql://stoa_a:s3cret@standby"
        );
    }

    #[test]
    fn a_replica_url_with_its_own_user_is_used_as_given() {
        let primary = url("postgres://stoa_a:s3cret@primary/stoa");
        let own = url("postgres://reader:pw@standby/stoa");
        assert_eq!(with_credentials_of(&own, &primary).expose(), own.expose());
        assert!(has_credentials(&own));
        // An `@` after the host (in a query value) is not user info.
        let odd = url("postgres://standby/stoa?options=a@b");
        assert!(!has_credentials(&odd));
        assert_eq!(
            with_credentials_of(&odd, &primary).expose(),
            "postgres://stoa_a:s3cret@standby/stoa?options=a@b"
        );
        // A primary without credentials (trust, or PGPASSWORD) gives none.
        assert_eq!(
            with_credentials_of(
                &url("postgres://standby/stoa"),
                &url("postgres://primary/stoa")
            )
            .expose(),
            "postgres://standby/stoa"
        );
    }
}
