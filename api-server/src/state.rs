//! Shared application state handed to every handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::{ArcSwap, Guard};
use sqlx::PgPool;

use crate::auth::password::PasswordHashing;
use crate::auth::tokens::TokenService;
use crate::config::Config;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    /// Swappable so a credential rotation can replace the pool without a restart.
    db: ArcSwap<PgPool>,
    pub tokens: TokenService,
    pub passwords: PasswordHashing,
    pub metrics: Metrics,
    shutting_down: AtomicBool,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: Config,
        db: PgPool,
        tokens: TokenService,
        passwords: PasswordHashing,
        metrics: Metrics,
    ) -> Self {
        AppState(Arc::new(Inner {
            config,
            db: ArcSwap::from_pointee(db),
            tokens,
            passwords,
            metrics,
            shutting_down: AtomicBool::new(false),
        }))
    }
}

impl Inner {
    /// The current pool. Hold the guard only for the duration of a query.
    pub fn db(&self) -> Guard<Arc<PgPool>> {
        self.db.load()
    }

    /// Installs a new pool and returns the previous one (for the caller to drain).
    pub fn replace_db(&self, pool: PgPool) -> Arc<PgPool> {
        self.db.swap(Arc::new(pool))
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
