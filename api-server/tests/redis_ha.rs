#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Highly available Redis: two replicas of stoa-api behind real sentinels (and a real
//! cluster), the primary killed under signed-in load. Nothing may fail, no revoked token
//! may pass, and the time until both replicas trust Redis again is printed.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::redis_ha::{RedisCluster, SENTINEL_PASSWORD, SentinelSet};
use common::tls::ThrowawayCa;
use common::{FEED_LIVE, TestApp, eventually, shared_keys};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

const REDIS_UP: &str = r#"stoa_dependency_up{dependency="redis"} 1"#;

async fn trusts_redis(app: &TestApp) -> bool {
    let metrics = app.metrics().await;
    metrics.contains(REDIS_UP) && metrics.contains(FEED_LIVE)
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    failed: AtomicU64,
    revoked_checks: AtomicU64,
    revoked_accepted: AtomicU64,
}

/// Signed-in load on two replicas around a failover: readers as fast as the replicas
/// answer (each must get 200), and checks on both replicas of every token revoked so far
/// (each must get 401). One user is logged out just before the kill, one during it.
struct Drill {
    a: Arc<TestApp>,
    b: Arc<TestApp>,
    before: String,
    during: String,
    revoked: Arc<std::sync::Mutex<Vec<String>>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drill {
    /// Registers six readers and the two users to log out, and runs the load for 500 ms.
    async fn start(a: &Arc<TestApp>, b: &Arc<TestApp>) -> Drill {
        let mut valid = Vec::new();
        for i in 0..6 {
            valid.push(a.register(&format!("reader{i}")).await);
        }
        let mut drill = Drill {
            a: a.clone(),
            b: b.clone(),
            before: a.register("before").await,
            during: b.register("during").await,
            revoked: Arc::default(),
            tally: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        for (i, token) in valid.into_iter().enumerate() {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (tally, stop) = (drill.tally.clone(), drill.stop.clone());
            drill.tasks.push(tokio::spawn(async move {
                let paths = ["/api/user", "/api/articles/feed"];
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let res = app.get(paths[n % 2], Some(&token)).await;
                    n += 1;
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    if res.status != StatusCode::OK {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed: {} {}", res.status, res.text);
                    }
                }
            }));
        }
        for app in [a.clone(), b.clone()] {
            let (revoked, tally, stop) = (
                drill.revoked.clone(),
                drill.tally.clone(),
                drill.stop.clone(),
            );
            drill.tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let tokens = revoked.lock().unwrap().clone();
                    for token in tokens {
                        let res = app.get("/api/user", Some(&token)).await;
                        tally.revoked_checks.fetch_add(1, Ordering::Relaxed);
                        if res.status != StatusCode::UNAUTHORIZED {
                            tally.revoked_accepted.fetch_add(1, Ordering::Relaxed);
                            eprintln!("revoked token answered {}", res.status);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        drill
    }

    /// Logs `before` out on the first replica; checked from then on.
    async fn revoke_before(&self) {
        logout(&self.a, &self.before).await;
        self.revoked.lock().unwrap().push(self.before.clone());
    }

    /// 300 ms after the kill (no primary yet): logs `during` out on the second replica.
    async fn revoke_during(&self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        logout(&self.b, &self.during).await;
        self.revoked.lock().unwrap().push(self.during.clone());
    }

    /// Until both replicas trust Redis again (20 s at most).
    async fn wait_for_trust(&self, what: &str) {
        for app in [&self.a, &self.b] {
            common::eventually_within(Duration::from_secs(20), what, || trusts_redis(app)).await;
        }
    }

    /// Runs 500 ms more on the recovered tier, stops, prints what the load saw after
    /// `label`, and asserts that nothing failed and no revoked token passed.
    async fn finish(self, label: &str) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let tally = &self.tally;
        eprintln!(
            "{label}; {} requests, {} failed, {} checks of revoked tokens, {} accepted",
            tally.requests.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
            tally.revoked_checks.load(Ordering::Relaxed),
            tally.revoked_accepted.load(Ordering::Relaxed),
        );
        assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "failed requests");
        assert_eq!(
            tally.revoked_accepted.load(Ordering::Relaxed),
            0,
            "revoked tokens accepted"
        );
        assert!(tally.requests.load(Ordering::Relaxed) > 100);
        assert!(tally.revoked_checks.load(Ordering::Relaxed) > 10);
    }
}

async fn logout(app: &TestApp, token: &str) {
    let res = app.post("/api/auth/logout", Some(token), json!({})).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{}", res.text);
}

/// The primary dies under load: the sentinels promote the replica, both stoa-api
/// replicas follow it, resync it and resubscribe. Tokens revoked just before the kill
/// (perhaps never replicated) and while no primary exists are refused throughout.
#[sqlx::test(migrations = "../migrations")]
async fn sentinel_failover_under_load_loses_no_request_and_no_revocation(pool: PgPool) {
    let mut set = SentinelSet::start().await;
    let keys = shared_keys();
    let setting = set.stoa_setting();
    let env = [
        ("STOA_REDIS_SENTINELS", setting.as_str()),
        ("STOA_REDIS_SENTINEL_PASSWORD", SENTINEL_PASSWORD),
        ("STOA_JWT_KEYS_DIR", keys.path().to_str().unwrap()),
    ];
    let a = Arc::new(TestApp::spawn_with(pool.clone(), &env).await);
    let b = Arc::new(TestApp::spawn_with(pool, &env).await);
    for app in [&a, &b] {
        eventually("redis trusted through the sentinels", || trusts_redis(app)).await;
    }
    let drill = Drill::start(&a, &b).await;

    // Revoked on one replica, then the primary dies at once: the mirror key may never
    // have reached the replica that will be promoted.
    drill.revoke_before().await;
    eventually("the revocation reaches the replica", || async {
        let mut everywhere = true;
        for port in set.data_ports() {
            everywhere &= set.count_on(port, "stoa:{revoked}:jti:*").await == 1;
        }
        everywhere
    })
    .await;
    let old_primary = set.kill_primary().await;
    let killed = Instant::now();
    // What asynchronous replication can lose when a primary dies.
    assert_eq!(set.lose_unreplicated("stoa:{revoked}:jti:*").await, 1);

    // Revoked while there is no primary at all (the sentinels wait 1 s to agree).
    drill.revoke_during().await;

    eventually("the sentinels promote the replica", || async {
        set.primary_port().await.is_some_and(|p| p != old_primary)
    })
    .await;
    let promoted = killed.elapsed();
    drill
        .wait_for_trust("both replicas trust the new primary")
        .await;
    let recovered = killed.elapsed();
    drill
        .finish(&format!(
            "sentinel failover: promoted after {promoted:?}, both replicas trusting the new primary after {recovered:?}"
        ))
        .await;

    let new_primary = set.primary_port().await.unwrap();
    // The resync restored what replication lost, and what was revoked without a primary.
    assert!(set.exists_on(new_primary, "stoa:{revoked}:synced").await);
    assert!(
        set.count_on(new_primary, "stoa:{revoked}:jti:*").await >= 2,
        "the revocations made before and during the failover are on the new primary"
    );
    // And the replicas write there: a logout now lands on it.
    let after = a.register("after").await;
    let jtis = set.count_on(new_primary, "stoa:{revoked}:jti:*").await;
    logout(&a, &after).await;
    assert_eq!(
        set.count_on(new_primary, "stoa:{revoked}:jti:*").await,
        jtis + 1
    );
    assert_eq!(
        b.get("/api/user", Some(&after)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// `rediss://` to the sentinels and the data nodes, verified against the CA in
/// `STOA_REDIS_CA_FILE`, with an ACL user on the data nodes: the pods find the primary,
/// use it, and follow a failover. Without the CA they trust none of it.
#[sqlx::test(migrations = "../migrations")]
async fn sentinels_over_tls_with_an_acl_user_are_followed_across_a_failover(pool: PgPool) {
    let ca = ThrowawayCa::new();
    let mut set = SentinelSet::start_with(Some(&ca)).await;
    let setting = set.stoa_setting();
    assert!(setting.starts_with("rediss://stoa:"), "{setting}");
    let ca_file = ca.ca.to_str().unwrap().to_owned();
    let app = TestApp::spawn_with(
        pool.clone(),
        &[
            ("STOA_REDIS_SENTINELS", setting.as_str()),
            ("STOA_REDIS_SENTINEL_PASSWORD", SENTINEL_PASSWORD),
            ("STOA_REDIS_CA_FILE", ca_file.as_str()),
        ],
    )
    .await;
    eventually("redis trusted over TLS", || trusts_redis(&app)).await;
    let token = app.register("tls").await;
    logout(&app, &token).await;
    let primary = set.primary_port().await.unwrap();
    assert_eq!(set.count_on(primary, "stoa:{revoked}:jti:*").await, 1);

    let old_primary = set.kill_primary().await;
    common::eventually_within(Duration::from_secs(20), "a new primary", || async {
        set.primary_port().await.is_some_and(|p| p != old_primary)
    })
    .await;
    common::eventually_within(Duration::from_secs(20), "the new primary trusted", || {
        trusts_redis(&app)
    })
    .await;
    let new_primary = set.primary_port().await.unwrap();
    assert!(set.exists_on(new_primary, "stoa:{revoked}:synced").await);
    assert_eq!(
        app.get("/api/user", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );

    // The system's roots do not know the throw-away CA: nothing is trusted, and the
    // server still serves.
    drop(app);
    // A pool of its own: the test database's pool is small.
    let own_pool = sqlx::postgres::PgPoolOptions::new()
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let stranger = TestApp::spawn_with(
        own_pool,
        &[
            ("STOA_REDIS_SENTINELS", setting.as_str()),
            ("STOA_REDIS_SENTINEL_PASSWORD", SENTINEL_PASSWORD),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !stranger.metrics().await.contains(REDIS_UP),
        "a certificate from an unknown CA was accepted"
    );
    assert_eq!(stranger.get("/api/tags", None).await.status, StatusCode::OK);
}

async fn cluster_replicas(
    cluster: &RedisCluster,
    pool: PgPool,
    extra: &[(&str, &str)],
) -> (Arc<TestApp>, Arc<TestApp>, tempfile::TempDir) {
    let keys = shared_keys();
    let setting = cluster.stoa_setting();
    let mut env = vec![
        ("STOA_REDIS_CLUSTER", setting.as_str()),
        ("STOA_JWT_KEYS_DIR", keys.path().to_str().unwrap()),
    ];
    env.extend_from_slice(extra);
    let a = Arc::new(TestApp::spawn_with(pool.clone(), &env).await);
    let b = Arc::new(TestApp::spawn_with(pool, &env).await);
    for app in [&a, &b] {
        eventually("redis cluster trusted", || trusts_redis(app)).await;
    }
    (a, b, keys)
}

/// Each kind of key lives where its hash tag puts it, and everything that spans keys
/// works: the budgets charged together, the cache entry and its tracking set, the
/// revocation check's marker and keys, and pub/sub between replicas on different nodes.
#[sqlx::test(migrations = "../migrations")]
async fn a_cluster_serves_limits_cache_and_revocations_across_replicas(pool: PgPool) {
    let cluster = RedisCluster::start().await;
    let (a, b, _keys) =
        cluster_replicas(&cluster, pool, &[("STOA_RATE_LIMIT_PER_USER", "5/1m")]).await;

    // One budget across both replicas, charged with the per-IP budget in one script.
    let token = a.register("spender").await;
    let mut allowed = 0;
    let mut refused = 0;
    for i in 0..10 {
        let app = if i % 2 == 0 { &a } else { &b };
        match app.get("/api/user", Some(&token)).await.status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        (1..=5).contains(&allowed),
        "allowed {allowed} of a budget of 5"
    );
    assert_eq!(allowed + refused, 10);
    let budgets = cluster.primary_for("stoa:{rl}:").await.unwrap();
    assert_eq!(
        cluster.count_on(budgets, "stoa:{rl}:user:*").await,
        1,
        "the user's budget is on the node its hash tag names"
    );

    // A cached read, and its invalidation by a write on the other replica.
    let writer = b.register("writer").await;
    b.article(&writer, "First", &["one"]).await;
    let tags = a.get("/api/tags", None).await;
    assert_eq!(tags.body["tags"], json!(["one"]));
    let entries = cluster.primary_for("stoa:{c}:").await.unwrap();
    eventually("the tags are cached in the cluster", || async {
        cluster.count_on(entries, "stoa:{c}:tags").await == 1
    })
    .await;
    b.article(&writer, "Second", &["two"]).await;
    eventually(
        "the write on one replica invalidates the other's cache",
        || async {
            let tags = a.get("/api/tags", None).await;
            tags.body["tags"].as_array().is_some_and(|t| t.len() == 2)
        },
    )
    .await;

    // A logout on one replica is refused by the other.
    let leaving = a.register("leaving").await;
    logout(&a, &leaving).await;
    assert!(
        a.metrics()
            .await
            .contains("stoa_revocation_mirror_failures_total 0"),
        "mirrored and announced"
    );
    assert_eq!(
        b.get("/api/user", Some(&leaving)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let revocations = cluster.primary_for("stoa:{revoked}:").await.unwrap();
    assert_eq!(
        cluster.count_on(revocations, "stoa:{revoked}:jti:*").await,
        1
    );

    an_evicting_primary_keeps_the_cluster_untrusted(&cluster, revocations, [&a, &b]).await;
}

/// One primary that may evict (not `revocations`, the revocations' node) is enough for
/// Redis not to be trusted: every primary is asked, on every probe. Trusted again once it
/// is `noeviction`.
async fn an_evicting_primary_keeps_the_cluster_untrusted(
    cluster: &RedisCluster,
    revocations: u16,
    apps: [&TestApp; 2],
) {
    let other = cluster
        .primaries()
        .await
        .into_iter()
        .find(|p| *p != revocations)
        .unwrap();
    cluster
        .config_set(other, "maxmemory-policy", "allkeys-lru")
        .await;
    for app in apps {
        eventually("an evicting primary is distrusted", || async {
            !app.metrics().await.contains(REDIS_UP)
        })
        .await;
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !apps[0].metrics().await.contains(REDIS_UP),
            "trusted again while a primary may evict"
        );
    }
    cluster
        .config_set(other, "maxmemory-policy", "noeviction")
        .await;
    for app in apps {
        eventually("trusted again", || trusts_redis(app)).await;
    }
}

/// The cluster fails over the primary that holds the revocations, under load: nothing
/// fails, no revoked token passes, and both replicas resync the promoted replica.
#[sqlx::test(migrations = "../migrations")]
async fn cluster_failover_of_the_revocations_node_loses_no_request_and_no_revocation(pool: PgPool) {
    cluster_failover_under_load(pool, "stoa:{revoked}:").await;
}

/// The same with the primary that carries the revocation channel (where the replicas'
/// copies subscribe): their feeds drop with it, so none stays live while missing an
/// announcement.
#[sqlx::test(migrations = "../migrations")]
async fn cluster_failover_of_the_revocation_channels_node_loses_no_revocation(pool: PgPool) {
    cluster_failover_under_load(pool, "stoa:revocations").await;
}

/// Kills the primary serving `victim`'s slot under signed-in load, with a logout just
/// before and one during the failover.
async fn cluster_failover_under_load(pool: PgPool, victim: &str) {
    let mut cluster = RedisCluster::start().await;
    let (a, b, _keys) = cluster_replicas(&cluster, pool, &[]).await;
    let drill = Drill::start(&a, &b).await;

    drill.revoke_before().await;
    let old_primary = cluster.kill_primary_for(victim).await;
    let killed = Instant::now();
    drill.revoke_during().await;

    let promotion = Instant::now() + Duration::from_secs(20);
    while cluster
        .primary_for(victim)
        .await
        .is_none_or(|p| p == old_primary)
    {
        assert!(
            Instant::now() < promotion,
            "no replica promoted in place of {old_primary}:\n{}",
            cluster.describe().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = killed.elapsed();
    drill
        .wait_for_trust("both replicas trust the cluster again")
        .await;
    let recovered = killed.elapsed();
    drill
        .finish(&format!(
            "cluster failover of the node serving {victim}: promoted after {promoted:?}, both replicas trusting the cluster after {recovered:?}"
        ))
        .await;
    let new_primary = cluster.primary_for("stoa:{revoked}:").await.unwrap();
    assert!(
        cluster.count_on(new_primary, "stoa:{revoked}:jti:*").await >= 2,
        "the revocations made before and during the failover are on the promoted replica"
    );
}
