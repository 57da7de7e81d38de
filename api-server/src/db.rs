//! PostgreSQL: the pool and the embedded migrations (their phases: `crate::schema`).

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use stoa_contract::pod::{LoadedCredential, credential_fingerprint};

use crate::config::{DatabaseConfig, Secret};

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

/// A lazily connecting pool: the server starts (and reports not-ready) even while the
/// database is unreachable, and connects as soon as it can.
pub fn pool(url: &Secret, config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .test_before_acquire(false)
        .connect_lazy_with(connect_options(url, config)?))
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

/// The pool in use, swappable at run time (credential rotation) without a restart, with
/// the credential it logs in with (reported to the operator, never the password).
pub struct Db {
    pool: arc_swap::ArcSwap<PgPool>,
    credential: arc_swap::ArcSwap<LoadedCredential>,
}

impl Db {
    pub fn new(pool: PgPool, url: &Secret) -> Self {
        Db {
            pool: arc_swap::ArcSwap::from_pointee(pool),
            credential: arc_swap::ArcSwap::from_pointee(credential_of(url)),
        }
    }

    /// The current pool. Hold the guard only for the duration of a query.
    pub fn pool(&self) -> arc_swap::Guard<std::sync::Arc<PgPool>> {
        self.pool.load()
    }

    /// Installs a new pool for `url` and returns the previous one (for the caller to drain).
    pub fn replace(&self, pool: PgPool, url: &Secret) -> std::sync::Arc<PgPool> {
        let old = self.pool.swap(std::sync::Arc::new(pool));
        self.credential
            .store(std::sync::Arc::new(credential_of(url)));
        old
    }

    /// The credential of the pool in use.
    pub fn credential(&self) -> std::sync::Arc<LoadedCredential> {
        self.credential.load_full()
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
