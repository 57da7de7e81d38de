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
use crate::metrics::Metrics;

/// Runs when Redis (re)appears, before it is trusted again: restores what Redis mirrors
/// and drops what may have gone stale while writes could not reach it.
pub type ResyncHook =
    Box<dyn Fn(ConnectionManager) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// Runs on every probe while Redis is trusted: copies what changed in PostgreSQL since
/// the last round into Redis, so a write another replica could not mirror (it could not
/// reach Redis) reaches Redis within one probe interval.
pub type CatchUpHook =
    Box<dyn Fn(ConnectionManager) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// Present in Redis once a resync has run against this Redis instance; a Redis that lost
/// its data (restart without persistence, `FLUSHALL`) lacks it. Readers of mirrored state
/// fetch it in the same round trip and distrust Redis at once when it is gone.
pub const SYNCED_MARKER: &str = "stoa:synced";

/// The only eviction policy under which mirrored revocations cannot vanish before their
/// TTL: `volatile-*` policies evict exactly the keys with a TTL (revocations) and keep the
/// marker; `allkeys-*` may evict either.
const SAFE_EVICTION_POLICY: &str = "noeviction";

pub struct Kv {
    /// For connections of their own (the revocation feed's subscription).
    client: redis::Client,
    manager: ConnectionManager,
    resync: std::sync::OnceLock<ResyncHook>,
    catch_up: std::sync::OnceLock<CatchUpHook>,
    up: AtomicBool,
    /// Logged once: `CONFIG GET` is not allowed on this Redis.
    policy_unknown_warned: AtomicBool,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Kv {
    /// Creates the client without connecting (Redis may be down at start-up) and starts
    /// the probe that keeps the breaker's state current.
    pub fn start(
        url: &Secret,
        ca_file: Option<&std::path::Path>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Kv>> {
        // The redis client's rustls takes the process's default crypto provider, which
        // is ambiguous when a build enables more than one (the workspace's kube enables
        // aws-lc-rs): name ring, as sqlx does. Already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // `rediss://` verifies the server's certificate and host name: against the CA
        // in STOA_REDIS_CA_FILE if set, else the system's roots.
        let client = match ca_file {
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("cannot read STOA_REDIS_CA_FILE {}: {e}", path.display())
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(url.expose(), certificates)
            }
            None => redis::Client::open(url.expose()),
        }
        .map_err(|e| anyhow::anyhow!("invalid STOA_REDIS_URL or CA: {:?}", e.kind()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| anyhow::anyhow!("cannot set up Redis: {:?}", e.kind()))?;
        let kv = Arc::new(Kv {
            client,
            manager,
            resync: std::sync::OnceLock::new(),
            catch_up: std::sync::OnceLock::new(),
            up: AtomicBool::new(false),
            policy_unknown_warned: AtomicBool::new(false),
            timeout,
            metrics,
        });
        kv.metrics.set_dependency_up("redis", false);
        tokio::spawn(probe(Arc::downgrade(&kv)));
        Ok(kv)
    }

    /// Installs the resync hook (once, before traffic).
    pub fn set_resync(&self, hook: ResyncHook) {
        let _ = self.resync.set(hook);
    }

    /// Installs the catch-up hook (once, before traffic).
    pub fn set_catch_up(&self, hook: CatchUpHook) {
        let _ = self.catch_up.set(hook);
    }

    /// A reader found Redis without the marker: stop trusting it until the probe has
    /// resynced it.
    pub fn distrust(&self, reason: &str) {
        self.set_up(false, reason);
    }

    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool, reason: &str) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            self.metrics.set_dependency_up("redis", up);
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
        self.run_despite_breaker(op).await
    }

    /// Runs `op` whatever the breaker says, bounded by the same timeout. For rare writes
    /// whose delay costs more than the wait: an open breaker may mean only that one probe
    /// was slow, while every other replica still follows Redis and would hear of the write
    /// only a probe interval later through the catch-up.
    pub async fn run_despite_breaker<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
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

    /// Whether Redis answers, cannot silently evict mirrored state, and holds our state;
    /// resyncs first when it does not (untrusted meanwhile, so nothing reads an empty
    /// mirror as "not revoked").
    async fn check(&self) -> Result<(), String> {
        let mut conn = self.manager.clone();
        let marker = tokio::time::timeout(self.timeout, conn.exists::<_, bool>(SYNCED_MARKER))
            .await
            .map_err(|_| "timeout".to_owned())?
            .map_err(|e| e.category().to_owned())?;
        self.check_eviction_policy(&mut conn).await?;
        if marker && self.is_up() {
            if let Some(hook) = self.catch_up.get() {
                tokio::time::timeout(Duration::from_secs(5), hook(self.manager.clone()))
                    .await
                    .map_err(|_| "catch-up timed out".to_owned())?
                    .map_err(|e| format!("catch-up failed: {e:#}"))?;
            }
            return Ok(());
        }
        if !marker {
            self.set_up(false, "redis lost its data; resyncing before trusting it");
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

    /// Refuses to trust a Redis whose eviction policy could drop revocations while keeping
    /// the marker. A Redis that does not allow `CONFIG GET` (some managed services) is
    /// trusted with a warning: docs/running/redis.md says to configure `noeviction` there.
    async fn check_eviction_policy(&self, conn: &mut ConnectionManager) -> Result<(), String> {
        let answer = tokio::time::timeout(
            self.timeout,
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async::<Vec<String>>(conn),
        )
        .await
        .map_err(|_| "timeout".to_owned())?;
        match answer {
            Ok(pair) => match pair.get(1) {
                Some(policy) if policy != SAFE_EVICTION_POLICY => Err(format!(
                    "maxmemory-policy is {policy}: Redis could evict revocations; set noeviction"
                )),
                _ => Ok(()),
            },
            Err(e) => {
                if !self.policy_unknown_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e.category(), "cannot read Redis maxmemory-policy; it must be noeviction");
                }
                Ok(())
            }
        }
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
