//! Shared application state handed to every handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::Guard;

use crate::auth::password::PasswordHashing;
use crate::auth::revocation::Revocations;
use crate::auth::sealing::SecretSealer;
use crate::auth::security_log::SecurityLog;
use crate::auth::tokens::TokenService;
use crate::cache::Cache;
use crate::config::Config;
use crate::db::{Db, Pool};
use crate::error::ApiError;
use crate::kv::Kv;
use crate::metrics::{Bucket, Metrics};
use crate::oauth::Providers;
use crate::ratelimit::{Quota, RateLimiter};
use crate::reads::{Reader, Reads};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub database: Arc<Db>,
    pub tokens: TokenService,
    /// Seals and opens second-factor secrets.
    pub sealer: SecretSealer,
    pub passwords: PasswordHashing,
    pub metrics: Arc<Metrics>,
    pub kv: Option<Arc<Kv>>,
    /// Identity providers for sign-in (`crate::oauth`).
    pub providers: Providers,
    /// Security events, counted and kept for the console.
    pub security_log: SecurityLog,
    pub revocations: Revocations,
    pub limiter: RateLimiter,
    pub cache: Cache,
    pub reads: Reads,
    /// PostgreSQL's and Redis's connection limits, once read (`crate::limits`).
    pub server_limits: arc_swap::ArcSwapOption<stoa_contract::pod::ServerLimits>,
    shutting_down: AtomicBool,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Parts {
    pub config: Config,
    pub database: Arc<Db>,
    pub tokens: TokenService,
    pub sealer: SecretSealer,
    pub passwords: PasswordHashing,
    pub metrics: Arc<Metrics>,
    pub kv: Option<Arc<Kv>>,
    pub providers: Providers,
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        let Parts {
            config,
            database,
            tokens,
            sealer,
            passwords,
            metrics,
            kv,
            providers,
        } = parts;
        AppState(Arc::new(Inner {
            reads: Reads::new(config.database.read.as_ref(), kv.clone(), metrics.clone()),
            revocations: Revocations::new(
                kv.clone(),
                crate::auth::revocation::MirrorWindow::of(&config.auth),
                metrics.clone(),
            ),
            limiter: RateLimiter::new(kv.clone(), config.rate_limits.lease_max),
            security_log: SecurityLog::new(metrics.clone()),
            cache: Cache::new(
                kv.clone(),
                config.cache_ttl,
                config.cache_local_bytes,
                metrics.clone(),
            ),
            config,
            database,
            tokens,
            sealer,
            passwords,
            metrics,
            kv,
            providers,
            server_limits: arc_swap::ArcSwapOption::empty(),
            shutting_down: AtomicBool::new(false),
        }))
    }
}

impl Inner {
    /// The current pool. Hold the guard only for the duration of a query.
    pub fn db(&self) -> Guard<Arc<Pool>> {
        self.database.pool()
    }

    /// The pool for a content read by `reader` (the replica when it has what they must
    /// see; see `crate::reads`). Hold the guard only for the duration of a query.
    pub fn read_db(&self, reader: Reader) -> Guard<Arc<Pool>> {
        self.reads.pool(&self.database, reader)
    }

    /// Takes one request from `bucket:key` unless rate limiting is disabled; a denial is
    /// the 429 (counted by bucket).
    pub async fn enforce_rate_limit(
        &self,
        bucket: Bucket,
        key: &str,
        quota: Quota,
    ) -> Result<(), ApiError> {
        if !self.config.rate_limits.enabled {
            return Ok(());
        }
        let decision = self.limiter.check(bucket, key, quota).await;
        if decision.allowed {
            Ok(())
        } else {
            Err(crate::error::rate_limited(
                &self.metrics,
                bucket,
                quota,
                decision,
            ))
        }
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
