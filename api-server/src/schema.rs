//! The database schema as this binary sees it: which embedded migrations are expand or
//! contract steps (see `migrations/README.md`), what the database has applied, whether
//! this binary can serve it, and the phased run behind `stoa-api migrate`.
//!
//! A binary serves a database that has every expand step it embeds, whatever else the
//! database holds: newer expand steps are additive, and its own contract steps only remove
//! what it no longer uses. It refuses to *migrate* a database that holds a contract step it
//! does not know, because that schema has dropped something this (older) binary may need.

use std::collections::BTreeMap;

use sqlx::migrate::{Migrate, MigrateError, Migration};
use sqlx::{PgConnection, PgExecutor};
use stoa_contract::migration::{Phase, is_contract};

use crate::db::{MIGRATOR, Pool};

/// sqlx's bookkeeping table (its default name; `MIGRATOR` does not change it).
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// The up migrations this binary embeds, oldest first.
fn embedded() -> impl Iterator<Item = &'static Migration> {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
}

/// The newest expand step this binary embeds: the schema version its pods need.
pub fn required_version() -> i64 {
    embedded()
        .filter(|m| !is_contract(&m.description))
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// A row of `_sqlx_migrations`.
#[derive(Debug, Clone)]
pub struct AppliedMigration {
    pub version: i64,
    pub description: String,
    pub success: bool,
    checksum: Vec<u8>,
}

/// What the database has applied, as read in one round trip.
#[derive(Debug, Clone, Default)]
pub struct SchemaState {
    applied: BTreeMap<i64, AppliedMigration>,
}

/// Whether this binary can serve the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaStatus {
    /// Every expand step this binary embeds is applied.
    Current {
        version: i64,
        required: i64,
        /// Newer steps this binary does not know (the next release's expand phase).
        newer: usize,
        /// This binary's own contract steps not applied yet (they run after the rollout).
        pending_contract: usize,
    },
    /// Expand steps this binary needs are missing: run `stoa-api migrate`.
    Behind {
        version: Option<i64>,
        required: i64,
        missing: usize,
    },
    /// A migration failed half-way; nothing serves reliably until someone repairs it.
    Dirty { version: i64 },
}

impl SchemaState {
    /// Reads `_sqlx_migrations` (an empty state when nothing was ever migrated).
    pub async fn read(executor: impl PgExecutor<'_>) -> Result<SchemaState, sqlx::Error> {
        let rows: Vec<(i64, String, bool, Vec<u8>)> = match sqlx::query_as(
            "SELECT version, description, success, checksum FROM _sqlx_migrations",
        )
        .fetch_all(executor)
        .await
        {
            Ok(rows) => rows,
            // 42P01 undefined_table: nothing was ever migrated here.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(SchemaState {
            applied: rows
                .into_iter()
                .map(|(version, description, success, checksum)| {
                    let row = AppliedMigration {
                        version,
                        description,
                        success,
                        checksum,
                    };
                    (version, row)
                })
                .collect(),
        })
    }

    /// The newest successfully applied version.
    pub fn version(&self) -> Option<i64> {
        self.applied
            .values()
            .rev()
            .find(|m| m.success)
            .map(|m| m.version)
    }

    fn dirty(&self) -> Option<i64> {
        self.applied
            .values()
            .find(|m| !m.success)
            .map(|m| m.version)
    }

    fn has(&self, version: i64) -> bool {
        self.applied.get(&version).is_some_and(|m| m.success)
    }

    /// Applied steps this binary does not embed, split into (contract, expand).
    pub fn unknown(&self) -> (Vec<i64>, Vec<i64>) {
        self.applied
            .values()
            .filter(|m| m.success && !MIGRATOR.version_exists(m.version))
            .map(|m| (m.version, is_contract(&m.description)))
            .fold((Vec::new(), Vec::new()), |(mut c, mut e), (v, contract)| {
                if contract {
                    c.push(v)
                } else {
                    e.push(v)
                }
                (c, e)
            })
    }

    /// This binary's contract steps that are not applied yet.
    pub fn pending_contract(&self) -> Vec<i64> {
        embedded()
            .filter(|m| is_contract(&m.description) && !self.has(m.version))
            .map(|m| m.version)
            .collect()
    }

    pub fn status(&self) -> SchemaStatus {
        if let Some(version) = self.dirty() {
            return SchemaStatus::Dirty { version };
        }
        let required = required_version();
        let missing = embedded()
            .filter(|m| !is_contract(&m.description) && !self.has(m.version))
            .count();
        match self.version() {
            Some(version) if missing == 0 => {
                let (contract, expand) = self.unknown();
                SchemaStatus::Current {
                    version,
                    required,
                    newer: contract.len() + expand.len(),
                    pending_contract: self.pending_contract().len(),
                }
            }
            // A binary without migrations serves any database.
            None if missing == 0 => SchemaStatus::Current {
                version: 0,
                required,
                newer: 0,
                pending_contract: 0,
            },
            version => SchemaStatus::Behind {
                version,
                required,
                missing,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "the database holds contract migration(s) {versions:?} that this binary does not know: \
         it is older than the schema's last contraction and may fail on it. Roll forward to a \
         newer image, or approve this rollback explicitly (`--allow-newer-contract`; on \
         Kubernetes, `spec.migrations.allowRollbackTo`)"
    )]
    NewerContract { versions: Vec<i64> },
    #[error(
        "migration {0} failed earlier and left the schema dirty: repair the schema by hand, \
         then delete its row from _sqlx_migrations"
    )]
    Dirty(i64),
    #[error("migration {0} was changed after it was applied (its checksum differs)")]
    Changed(i64),
    #[error("migration {version} ({description}) failed: {source}")]
    Apply {
        version: i64,
        description: String,
        source: MigrateError,
    },
    #[error("cannot read the migration state: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// What a successful run did.
#[derive(Debug)]
pub struct MigrationRun {
    pub applied: Vec<i64>,
    pub after: SchemaState,
}

/// sqlx's migration lock id for `database` (as `sqlx-postgres` computes it), so this
/// migrator and sqlx's own (`sqlx migrate run`) serialise.
fn lock_id(database: &str) -> i64 {
    const CRC_IEEE: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC_IEEE.checksum(database.as_bytes()))
}

/// Takes the migration lock, polling rather than waiting in `pg_advisory_lock`: a session
/// waiting in a statement holds a snapshot, and `CREATE INDEX CONCURRENTLY` run by the
/// lock's holder waits for every transaction with an older snapshot to end (PostgreSQL
/// docs, CREATE INDEX, "Building Indexes Concurrently") — two migrators would deadlock.
async fn lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *conn)
        .await?;
    let id = lock_id(&database);
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        if locked {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Applies the pending migrations of `phase` under sqlx's advisory lock (the same lock its
/// own migrator takes, so any two migrators serialise).
pub async fn migrate(
    pool: &Pool,
    phase: Phase,
    allow_newer_contract: bool,
) -> Result<MigrationRun, MigrationError> {
    let mut conn = pool.acquire().await?;
    lock(&mut conn).await?;
    let result = migrate_locked(&mut conn, phase, allow_newer_contract).await;
    // Release the lock after a failure too (closing the session would, eventually).
    let unlocked = conn.unlock().await;
    let run = result?;
    unlocked?;
    Ok(run)
}

async fn migrate_locked(
    conn: &mut PgConnection,
    phase: Phase,
    allow_newer_contract: bool,
) -> Result<MigrationRun, MigrationError> {
    conn.ensure_migrations_table(MIGRATIONS_TABLE).await?;
    let before = SchemaState::read(&mut *conn).await?;
    if let Some(version) = before.dirty() {
        return Err(MigrationError::Dirty(version));
    }
    let (unknown_contract, unknown_expand) = before.unknown();
    if !unknown_contract.is_empty() {
        if !allow_newer_contract {
            return Err(MigrationError::NewerContract {
                versions: unknown_contract,
            });
        }
        tracing::warn!(
            versions = ?unknown_contract,
            "the database holds contract migrations this binary does not know; continuing as approved"
        );
    }
    if !unknown_expand.is_empty() {
        tracing::info!(versions = ?unknown_expand, "the database is ahead of this binary by expand steps (tolerated)");
    }
    let mut applied = Vec::new();
    for migration in embedded() {
        if let Some(row) = before.applied.get(&migration.version) {
            if row.checksum != *migration.checksum {
                return Err(MigrationError::Changed(migration.version));
            }
            continue;
        }
        if phase == Phase::Expand && is_contract(&migration.description) {
            continue;
        }
        conn.apply(MIGRATIONS_TABLE, migration)
            .await
            .map_err(|source| MigrationError::Apply {
                version: migration.version,
                description: migration.description.to_string(),
                source,
            })?;
        tracing::info!(version = migration.version, description = %migration.description, "applied migration");
        applied.push(migration.version);
    }
    let after = SchemaState::read(&mut *conn).await?;
    Ok(MigrationRun { applied, after })
}
