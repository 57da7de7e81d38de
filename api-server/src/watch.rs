//! Live reload of mounted files: the signing key set, the MFA key set and the database
//! credentials.
//!
//! Kubernetes updates a mounted Secret by writing a new directory and swapping the `..data`
//! symlink, so a reader sees either the old or the new contents, never a mix. We poll the
//! file (reading through the symlink) every `STOA_RELOAD_INTERVAL` and compare contents:
//! polling needs no inotify subtleties around symlink swaps and costs one small read.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::sealing::reseal_all;
use crate::auth::tokens::KeyRing;
use crate::config::{Config, DatabaseConfig, Secret, read_secret_file};
use crate::db::{Db, Pool};
use crate::keys::{KEYSET_FILE, KeySetFile};
use crate::metrics::{CredentialLabels, Metrics, OutcomeLabels};
use crate::state::AppState;
use stoa_contract::mfa_keys::{MFA_KEYS_FILE, MfaKeySetFile};

/// Reloads the key set whenever `dir/keyset.json` changes. A bad update is logged and
/// counted, and the last good key set stays in use.
/// `loaded` is what start-up parsed, so a change made since then is picked up.
pub fn spawn_keyset_watcher(state: AppState, dir: PathBuf, loaded: Vec<u8>) {
    tokio::spawn(async move {
        let path = dir.join(KEYSET_FILE);
        let mut last = Some(loaded);
        loop {
            tokio::time::sleep(state.config.reload_interval).await;
            let Ok(current) = tokio::fs::read(&path).await else {
                // A missing file mid-swap is transient; keep the loaded set.
                continue;
            };
            if last.as_deref() == Some(current.as_slice()) {
                continue;
            }
            last = Some(current.clone());
            let ring = serde_json::from_slice::<KeySetFile>(&current)
                .map_err(|e| format!("not a valid key set: {e}"))
                .and_then(|file| KeyRing::from_file(&file).map_err(|e| e.to_string()));
            match ring {
                Ok(ring) => {
                    let kids: Vec<String> = ring
                        .kids()
                        .iter()
                        .map(|(kid, s)| format!("{kid}:{}", s.as_str()))
                        .collect();
                    state.metrics.publish_keys(ring.kids());
                    state.tokens.replace_ring(ring);
                    tracing::info!(keys = ?kids, "signing key set reloaded");
                }
                Err(error) => {
                    state.metrics.keyset_reload_errors.inc();
                    tracing::error!(error, path = %path.display(), "rejected key set update; keeping the previous key set");
                }
            }
        }
    });
}

/// Names the role of the pool in use in `stoa_db_credentials`.
pub fn publish_credentials(database: &Db, metrics: &Metrics) {
    metrics.db_credentials.clear();
    metrics
        .db_credentials
        .get_or_create(&CredentialLabels {
            user: database.credential().user.clone(),
        })
        .set(1);
}

/// Swaps the pool when the database URL file changes: the new pool must connect first; the
/// old one keeps serving the requests that already hold it for `drain_grace`, then closes
/// (waiting for connections still checked out).
pub fn spawn_credentials_watcher(
    database: Arc<Db>,
    metrics: Arc<Metrics>,
    config: &Config,
    path: PathBuf,
    initial: Secret,
) {
    let (db_config, reload_interval) = (config.database.clone(), config.reload_interval);
    tokio::spawn(async move {
        let mut current = initial;
        let mut rejected: Option<(Secret, Instant)> = None;
        loop {
            tokio::time::sleep(reload_interval).await;
            let Ok(candidate) = read_secret_file(&path.to_string_lossy()) else {
                continue;
            };
            if candidate == current {
                continue;
            }
            // Retry a rejected URL every 10 s (its password may not be set yet).
            if let Some((url, at)) = &rejected
                && *url == candidate
                && at.elapsed() < Duration::from_secs(10)
            {
                continue;
            }
            match connect_checked(&db_config, &candidate).await {
                Ok(pool) => {
                    let old = database.replace(pool, &candidate);
                    publish_credentials(&database, &metrics);
                    metrics
                        .db_credential_reloads
                        .get_or_create(&OutcomeLabels { outcome: "swapped" })
                        .inc();
                    tracing::info!(
                        role = database.credential().user,
                        "database credentials changed: new pool in use, draining the old one"
                    );
                    let grace = db_config.drain_grace;
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        old.primary.close().await;
                        if let Some(replica) = old.replica {
                            replica.close().await;
                        }
                        tracing::info!("old database pool drained and closed");
                    });
                    current = candidate;
                    rejected = None;
                }
                Err(error) => {
                    metrics
                        .db_credential_reloads
                        .get_or_create(&OutcomeLabels {
                            outcome: "rejected",
                        })
                        .inc();
                    tracing::error!(
                        error = crate::db::describe_error(&error),
                        "new database credentials do not work yet; still using the previous ones"
                    );
                    rejected = Some((candidate, Instant::now()));
                }
            }
        }
    });
}

async fn connect_checked(config: &DatabaseConfig, url: &Secret) -> Result<Pool, sqlx::Error> {
    let pool = crate::db::pool(url, config)?;
    sqlx::query("SELECT 1").execute(&pool).await?;
    Ok(pool)
}

/// Reloads the MFA key set whenever `dir/mfa-keys.json` changes, then seals every
/// second-factor secret again under the (possibly new) active key. A bad update is logged
/// and counted with the signing-key reload errors; the loaded set stays in use.
pub fn spawn_mfa_keys_watcher(state: AppState, dir: PathBuf, loaded: Vec<u8>) {
    tokio::spawn(async move {
        let path = dir.join(MFA_KEYS_FILE);
        let mut last = loaded;
        loop {
            tokio::time::sleep(state.config.reload_interval).await;
            let Ok(current) = tokio::fs::read(&path).await else {
                continue;
            };
            if current == last {
                continue;
            }
            let replaced = MfaKeySetFile::from_slice(&current)
                .map_err(|e| format!("not a valid MFA key set: {e}"))
                .and_then(|file| state.sealer.replace(&file).map_err(|e| e.to_string()));
            last = current;
            match replaced {
                Ok(()) => {
                    tracing::info!(keys = ?state.sealer.kids(), "MFA key set reloaded");
                    spawn_reseal(state.clone());
                }
                Err(error) => {
                    state.metrics.keyset_reload_errors.inc();
                    tracing::error!(error, path = %path.display(), "rejected MFA key set update; keeping the previous key set");
                }
            }
        }
    });
}

/// One pass of [`reseal_all`] in the background, retried every 30 s while the database
/// cannot be reached.
pub fn spawn_reseal(state: AppState) {
    tokio::spawn(async move {
        loop {
            let pool = state.db().clone();
            match reseal_all(&pool, &state.sealer).await {
                Ok(report) => {
                    if report.resealed > 0 || report.unreadable > 0 {
                        tracing::info!(target: "stoa::security", resealed = report.resealed,
                            unreadable = report.unreadable, active_key = state.sealer.active_kid(),
                            "second-factor secrets sealed under the active MFA key");
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(
                        error = crate::db::describe_error(&error),
                        "cannot seal second-factor secrets yet; retrying in 30 s"
                    );
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        }
    });
}
