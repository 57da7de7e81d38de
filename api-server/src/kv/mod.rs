//! Redis access with a circuit breaker.
//!
//! Redis is optional and never on the critical path: every operation has a short timeout,
//! a failure opens the breaker (callers fall back to PostgreSQL or in-process state at once
//! instead of waiting on a dead server), and a background probe closes it again when Redis
//! answers. Transitions are logged once and exported as `stoa_dependency_up{dependency="redis"}`.
//!
//! Redis is one server, a primary found through Sentinel, or a cluster ([`locator`]). With
//! Sentinel the probe also asks the server its role: when it is gone or has stepped down,
//! the sentinels are asked for the new primary, and the move is handled like a Redis that
//! lost its data (untrusted until resynced, subscriptions moved), because asynchronous
//! replication may have lost the last writes before the failover.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use redis::{AsyncCommands, RedisResult};

mod connection;
mod locator;

pub use connection::Connection;
use locator::{Located, Locator};

use crate::config::RedisTarget;
use crate::metrics::Metrics;

/// Runs when Redis (re)appears, before it is trusted again: restores what Redis mirrors
/// and drops what may have gone stale while writes could not reach it.
pub type ResyncHook =
    Box<dyn Fn(Connection) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// Runs on every probe while Redis is trusted: copies what changed in PostgreSQL since
/// the last round into Redis, so a write another replica could not mirror (it could not
/// reach Redis) reaches Redis within one probe interval.
pub type CatchUpHook =
    Box<dyn Fn(Connection) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// Present in Redis once a resync has run against this Redis instance; a Redis that lost
/// its data (restart without persistence, `FLUSHALL`) lacks it. Readers of mirrored state
/// fetch it in the same round trip and distrust Redis at once when it is gone. In a
/// cluster it shares the revocation keys' hash tag, so it lives on their node and that
/// node's data loss is what it reports.
pub const SYNCED_MARKER: &str = "stoa:{revoked}:synced";

/// The only eviction policy under which mirrored revocations cannot vanish before their
/// TTL: `volatile-*` policies evict exactly the keys with a TTL (revocations) and keep the
/// marker; `allkeys-*` may evict either.
const SAFE_EVICTION_POLICY: &str = "noeviction";

/// Keys whose nodes the probe watches for a change of server: the revocations' (with the
/// marker) and the cache's. Elsewhere than in a cluster they are on the same server.
const WATCHED: [&str; 2] = [SYNCED_MARKER, "stoa:{c}:"];

/// The marker's presence and the replication ID of the node that holds it (run as a
/// script so that a cluster routes it by the marker's key; `INFO` denied by an ACL gives
/// no ID rather than an error).
const MARKER_PROBE_LUA: &str = r"
local info = redis.pcall('INFO', 'replication')
local id = false
if type(info) == 'string' then id = string.match(info, 'master_replid:(%w+)') end
return {redis.call('EXISTS', KEYS[1]), id}
";

/// How long the sentinels get to name a primary (they may ask it its role first).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Kv {
    locator: Locator,
    /// The connection in use; replaced when Sentinel names a new primary. Empty until
    /// the first probe where the server must be looked up (Sentinel, cluster).
    current: ArcSwapOption<Located>,
    /// Bumped on every move to a new primary: subscriptions end and resubscribe there.
    moved: tokio::sync::watch::Sender<u64>,
    resync: std::sync::OnceLock<ResyncHook>,
    catch_up: std::sync::OnceLock<CatchUpHook>,
    up: AtomicBool,
    /// Logged once: `CONFIG GET` is not allowed on this Redis.
    policy_unknown_warned: AtomicBool,
    /// Reads the marker and, from the node that holds it, its replication ID.
    marker_probe: redis::Script,
    /// The replication ID last seen on each watched key's node: a new one means another
    /// server took over there.
    replication_ids: std::sync::Mutex<[Option<String>; WATCHED.len()]>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Kv {
    /// Creates the client without connecting (Redis may be down at start-up) and starts
    /// the probe that keeps the breaker's state current.
    pub fn start(
        target: &RedisTarget,
        ca_file: Option<&std::path::Path>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Kv>> {
        // The redis client's rustls takes the process's default crypto provider, which
        // is ambiguous when a build enables more than one (the workspace's kube enables
        // aws-lc-rs): name ring, as sqlx does. Already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let locator = Locator::new(target, ca_file, timeout)?;
        let current = locator.connect_lazily(timeout)?.map(Arc::new);
        let kv = Arc::new(Kv {
            locator,
            current: ArcSwapOption::new(current),
            moved: tokio::sync::watch::Sender::new(0),
            resync: std::sync::OnceLock::new(),
            catch_up: std::sync::OnceLock::new(),
            up: AtomicBool::new(false),
            policy_unknown_warned: AtomicBool::new(false),
            marker_probe: redis::Script::new(MARKER_PROBE_LUA),
            replication_ids: std::sync::Mutex::new([None, None]),
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

    /// Where a subscription to `channel` goes, and a receiver that changes when the
    /// primary moves, to end it.
    pub async fn subscription_target(
        &self,
        channel: &str,
    ) -> anyhow::Result<(redis::Client, tokio::sync::watch::Receiver<u64>)> {
        let moved = self.moved.subscribe();
        let current = self
            .current
            .load_full()
            .ok_or_else(|| anyhow::anyhow!("redis not located yet"))?;
        let server = match (&current.connection, &current.server) {
            (Connection::Server(_), Some(server)) => server.clone(),
            (Connection::Cluster(cluster), _) => {
                // A cluster routes `PUBLISH` to the primary of the channel's slot, which
                // relays it to every node. Subscribing on that same primary keeps the rule
                // the local copies rely on: when an announcement cannot be published, the
                // subscription that would have carried it is gone too, so no copy stays
                // live while missing it.
                let (host, port) =
                    tokio::time::timeout(self.timeout, channel_primary(cluster.clone(), channel))
                        .await
                        .map_err(|_| anyhow::anyhow!("timeout finding the channel's node"))??;
                self.locator
                    .cluster_node(&host, port)
                    .ok_or_else(|| anyhow::anyhow!("not a cluster"))?
                    .map_err(|e| anyhow::anyhow!("cannot reach {host}:{port}: {}", e.category()))?
            }
            (Connection::Server(_), None) => anyhow::bail!("no server to subscribe on"),
        };
        Ok((server, moved))
    }

    /// Changes whenever the primary moves.
    pub fn moves(&self) -> tokio::sync::watch::Receiver<u64> {
        self.moved.subscribe()
    }

    fn connection(&self) -> Option<Connection> {
        self.current.load().as_ref().map(|c| c.connection.clone())
    }

    /// A Redis Cluster: keys of one command must share a hash tag.
    pub fn is_cluster(&self) -> bool {
        self.locator.is_cluster()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    fn set_up(&self, up: bool, reason: &str) {
        if self.up.swap(up, Ordering::SeqCst) != up {
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
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        // The connection before the breaker: a move to a new primary opens the breaker
        // before it swaps the connection, so a trusted operation never reaches a primary
        // that has not been resynced.
        let connection = self.connection()?;
        if !self.is_up() {
            return None;
        }
        self.run_on(connection, op).await
    }

    /// Runs `op` whatever the breaker says, bounded by the same timeout. For rare writes
    /// whose delay costs more than the wait: an open breaker may mean only that one probe
    /// was slow, while every other replica still follows Redis and would hear of the write
    /// only a probe interval later through the catch-up.
    pub async fn run_despite_breaker<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run_on(self.connection()?, op).await
    }

    async fn run_on<T, F, Fut>(&self, connection: Connection, op: F) -> Option<T>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, op(connection)).await {
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
        let mut conn = self.connected().await?;
        // In a cluster the cache's node is watched too: a promoted replica there may
        // still hold entries whose invalidation never reached it.
        let watched = if self.is_cluster() {
            &WATCHED[..]
        } else {
            &WATCHED[..1]
        };
        let mut marker = false;
        for (i, key) in watched.iter().enumerate() {
            let (exists, replication_id) = tokio::time::timeout(
                self.timeout,
                self.marker_probe
                    .key(*key)
                    .invoke_async::<(bool, Option<String>)>(&mut conn),
            )
            .await
            .map_err(|_| "timeout".to_owned())?
            .map_err(|e| e.category().to_owned())?;
            if *key == SYNCED_MARKER {
                marker = exists;
            }
            let Some(id) = replication_id else { continue };
            let previous = self
                .replication_ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())[i]
                .replace(id.clone());
            if previous.is_some_and(|previous| previous != id) {
                // A replica was promoted (a cluster's own failover, or Sentinel's seen
                // before this replica moved): it may lack the old primary's last writes.
                self.set_up(
                    false,
                    "a redis primary changed; resyncing before trusting it",
                );
            }
        }
        self.check_eviction_policy(&mut conn).await?;
        if marker && self.is_up() {
            if let Some(hook) = self.catch_up.get() {
                tokio::time::timeout(Duration::from_secs(5), hook(conn.clone()))
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
            tokio::time::timeout(Duration::from_secs(30), hook(conn.clone()))
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

    /// The connection to probe: looked up first if there is none yet; with Sentinel,
    /// moved to the new primary when the current server is gone or has stepped down.
    async fn connected(&self) -> Result<Connection, String> {
        if let Some(current) = self.current.load_full()
            && (!self.locator.follows_a_primary() || self.is_primary(&current).await)
        {
            return Ok(current.connection.clone());
        }
        let located = tokio::time::timeout(LOOKUP_TIMEOUT, self.locator.locate(self.timeout))
            .await
            .map_err(|_| "timeout looking up redis".to_owned())?
            .map_err(|e| format!("{e:#}"))?;
        let previous = self.current.load_full();
        let unchanged = previous
            .as_ref()
            .is_some_and(|p| p.address().is_some() && p.address() == located.address());
        if unchanged {
            return Err(
                "redis primary does not answer; waiting for the sentinels to fail over".to_owned(),
            );
        }
        if let Some(address) = located.address() {
            // Asynchronous replication may have lost the last writes before the failover
            // (revocations among them): distrust first, then move, then resync.
            self.set_up(
                false,
                "redis primary moved; resyncing the new one before trusting it",
            );
            tracing::warn!(primary = %address, "following the new redis primary");
        }
        let connection = located.connection.clone();
        self.current.store(Some(Arc::new(located)));
        if previous.is_some() {
            self.moved.send_modify(|n| *n += 1);
        }
        Ok(connection)
    }

    async fn is_primary(&self, current: &Located) -> bool {
        let mut conn = current.connection.clone();
        let command = redis::cmd("ROLE");
        let role = command.query_async::<redis::Role>(&mut conn);
        matches!(
            tokio::time::timeout(self.timeout, role).await,
            Ok(Ok(redis::Role::Primary { .. }))
        )
    }

    /// Refuses to trust a Redis whose eviction policy could drop revocations while keeping
    /// the marker. A Redis that does not allow `CONFIG GET` (some managed services) is
    /// trusted with a warning: docs/running/redis.md says to configure `noeviction` there.
    async fn check_eviction_policy(&self, conn: &mut Connection) -> Result<(), String> {
        let answer = tokio::time::timeout(self.timeout, eviction_policies(conn))
            .await
            .map_err(|_| "timeout".to_owned())?;
        match answer {
            Ok(policies) => match policies.iter().find(|p| *p != SAFE_EVICTION_POLICY) {
                Some(policy) => Err(format!(
                    "maxmemory-policy is {policy}: Redis could evict revocations; set noeviction"
                )),
                None => Ok(()),
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

/// The address of the primary serving `channel`'s slot, from its own `CLUSTER NODES` line.
async fn channel_primary(
    mut cluster: redis::cluster_async::ClusterConnection,
    channel: &str,
) -> anyhow::Result<(String, u16)> {
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    let route = Route::with_key(channel, SlotAddr::Master);
    let answer = cluster
        .route_command(
            redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
        )
        .await
        .map_err(|e| anyhow::anyhow!("CLUSTER NODES failed: {}", e.category()))?;
    let nodes: String = redis::from_redis_value(answer)?;
    own_address(&nodes)
        .ok_or_else(|| anyhow::anyhow!("CLUSTER NODES names no address for the node itself"))
}

/// `host:port` of the `myself` line of a `CLUSTER NODES` answer
/// (`<id> <ip:port@cport[,hostname]> <flags> …`).
fn own_address(nodes: &str) -> Option<(String, u16)> {
    let line = nodes.lines().find(|line| {
        line.split(' ')
            .nth(2)
            .is_some_and(|flags| flags.contains("myself"))
    })?;
    let address = line.split(' ').nth(1)?.split('@').next()?;
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| Some((host.to_owned(), port.parse().ok()?)))?
}

/// `maxmemory-policy` of the server, or of every primary of a cluster: a cluster would
/// answer `CONFIG GET` from one node of its choosing, so that one node with `allkeys-*`
/// would be caught only now and then, and Redis trusted in between.
async fn eviction_policies(conn: &mut Connection) -> redis::RedisResult<Vec<String>> {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
    let command = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .clone();
    let answers = match conn {
        Connection::Server(_) => vec![command.query_async::<Vec<String>>(conn).await?],
        Connection::Cluster(cluster) => {
            // Without a response policy, one answer per node, keyed by its address.
            let by_node = cluster
                .route_command(
                    command,
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                )
                .await?;
            redis::from_redis_value::<Vec<(String, Vec<String>)>>(by_node)?
                .into_iter()
                .map(|(_, pair)| pair)
                .collect()
        }
    };
    Ok(answers
        .into_iter()
        .filter_map(|pair| pair.into_iter().nth(1))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_itself_is_found_in_cluster_nodes() {
        let nodes = "\
a0e0 127.0.0.1:17004@27004 slave d4c5 0 1796533398018 2 connected
0d9b 10.1.2.3:6379@16379,redis-0.redis myself,master - 0 1796533398000 1 connected 0-5460
";
        assert_eq!(own_address(nodes), Some(("10.1.2.3".to_owned(), 6379)));
        assert_eq!(
            own_address("0d9b :6379@16379 myself,master - 0 0 1 connected"),
            None
        );
        assert_eq!(
            own_address("0d9b 10.0.0.1:6379@16379 master - 0 0 1 connected"),
            None
        );
    }
}
