//! Redis access with a circuit breaker.
//!
//! Redis is optional and never on the critical path: every operation has a short timeout,
//! a failure opens the breaker (callers fall back to PostgreSQL or in-process state at once
//! instead of waiting on a dead server), and a background probe closes it again when Redis
//! answers. Transitions are logged once and exported as `stoa_dependency_up{dependency="redis"}`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisResult};

use crate::config::Secret;
use crate::metrics::{DependencyLabels, Metrics};

/// Runs when Redis (re)appears, before it is trusted again: restores what Redis mirrors
/// and drops what may have gone stale while writes could not reach it.
pub type ResyncHook =
    Box<dyn Fn(ConnectionManager) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// Present in Redis once a resync has run against this Redis instance; a Redis that lost
/// its data (restart without persistence) lacks it, which triggers a resync.
const SYNCED_MARKER: &str = "stoa:synced";

pub struct Kv {
    manager: ConnectionManager,
    resync: std::sync::OnceLock<ResyncHook>,
    up: AtomicBool,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Kv {
    /// Creates the client without connecting (Redis may be down at start-up) and starts
    /// the probe that keeps the breaker's state current.
    pub fn start(
        url: &Secret,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Kv>> {
        let client = redis::Client::open(url.expose())
            .map_err(|e| anyhow::anyhow!("invalid STOA_REDIS_URL: {:?}", e.kind()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("cannot set up Redis: {:?}", e.kind()))?;
        let kv = Arc::new(Kv {
            manager,
            resync: std::sync::OnceLock::new(),
            up: AtomicBool::new(false),
            timeout,
            metrics,
        });
        kv.metrics
            .dependency_up
            .get_or_create(&DependencyLabels {
                dependency: "redis",
            })
            .set(0);
        tokio::spawn(probe(Arc::downgrade(&kv)));
        Ok(kv)
    }

    /// Installs the resync hook (once, before traffic).
    pub fn set_resync(&self, hook: ResyncHook) {
        let _ = self.resync.set(hook);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool, reason: &str) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            self.metrics
                .dependency_up
                .get_or_create(&DependencyLabels {
                    dependency: "redis",
                })
                .set(i64::from(up));
            if up {
                tracing::info!("redis is reachable again; leaving degraded mode");
            } else {
                tracing::warn!(
                    reason,
                    "redis unavailable; degraded mode (PostgreSQL and in-process fallbacks)"
                );
            }
        }
    }

    /// Runs `op` if the breaker is closed. `None` means "Redis did not answer": the caller
    /// uses its fallback.
    pub async fn run<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.is_up() {
            return None;
        }
        match tokio::time::timeout(self.timeout, op(self.manager.clone())).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.set_up(false, e.category());
                None
            }
            Err(_) => {
                self.set_up(false, "timeout");
                None
            }
        }
    }

    /// Whether Redis answers and holds our state; resyncs first when it does not.
    async fn check(&self) -> Result<(), String> {
        let mut conn = self.manager.clone();
        let marker = tokio::time::timeout(self.timeout, conn.exists::<_, bool>(SYNCED_MARKER))
            .await
            .map_err(|_| "timeout".to_owned())?
            .map_err(|e| e.category().to_owned())?;
        if marker && self.is_up() {
            return Ok(());
        }
        if let Some(hook) = self.resync.get() {
            tokio::time::timeout(Duration::from_secs(30), hook(self.manager.clone()))
                .await
                .map_err(|_| "resync timed out".to_owned())?
                .map_err(|e| format!("resync failed: {e:#}"))?;
        }
        let _: () = conn
            .set(SYNCED_MARKER, 1)
            .await
            .map_err(|e| e.category().to_owned())?;
        Ok(())
    }
}

/// Re-checks Redis every 500 ms until the `Kv` is dropped.
async fn probe(kv: std::sync::Weak<Kv>) {
    loop {
        let Some(kv) = kv.upgrade() else { return };
        match kv.check().await {
            Ok(()) => kv.set_up(true, ""),
            Err(reason) => kv.set_up(false, &reason),
        }
        drop(kv);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
