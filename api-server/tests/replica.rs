#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Reads from a streaming replica (`STOA_DATABASE_READ_URL`), against a real primary and
//! hot standby started by the test. Pausing the standby's replay (`pg_wal_replay_pause`)
//! makes its lag as long as the test wants: what the replica cannot know shows which pool
//! answered, and the metrics say why.
mod common;

use std::time::Duration;

use common::replica::ReplicatedPostgres;
use common::{RedisServer, TestApp, eventually};
use reqwest::StatusCode;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

/// A primary and a standby with a migrated `stoa` database on both, or `None` (SKIP) where
/// PostgreSQL's server programs are missing.
async fn replicated() -> Option<(ReplicatedPostgres, PgPool, PgPool)> {
    let Some(bin) = common::tls::postgres_bin() else {
        assert!(
            std::env::var("STOA_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "the read replica tests are required: initdb is missing (Debian package postgresql)"
        );
        eprintln!("SKIP: initdb is missing (Debian package postgresql)");
        return None;
    };
    let cluster = ReplicatedPostgres::start(&bin);
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.primary_url("postgres", "postgres"))
        .await
        .unwrap();
    admin.execute("CREATE DATABASE stoa").await.unwrap();
    let primary = PgPoolOptions::new()
        .max_connections(4)
        .connect(&cluster.primary_url("postgres", "stoa"))
        .await
        .unwrap();
    stoa_api::db::MIGRATOR.run(&primary).await.unwrap();
    let standby_url = format!("{}?user=postgres", cluster.standby_url("stoa"));
    let mut standby = None;
    for _ in 0..100 {
        if let Ok(pool) = PgPoolOptions::new()
            .max_connections(2)
            .connect(&standby_url)
            .await
        {
            standby = Some(pool);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let standby = standby.expect("the standby accepts connections to the new database");
    Some((cluster, primary, standby))
}

/// The signing keys every pod of a test shares (each `--dev` pod would make its own).
fn shared_keys() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(stoa_api::keys::KEYSET_FILE),
        serde_json::to_vec(&stoa_api::keys::generate_keyset()).unwrap(),
    )
    .unwrap();
    dir
}

/// A pod reading from the standby, named `name` in `pg_stat_activity`.
async fn pod(
    cluster: &ReplicatedPostgres,
    primary: &PgPool,
    (redis, keys): (&RedisServer, &tempfile::TempDir),
    name: &str,
    extra: &[(&str, &str)],
) -> TestApp {
    let keys_dir = keys.path().to_str().unwrap();
    let primary_url = cluster.primary_url("postgres", "stoa");
    let standby_url = cluster.standby_url("stoa");
    let redis_url = redis.url();
    let mut env = vec![
        ("STOA_DATABASE_URL", primary_url.as_str()),
        ("STOA_DATABASE_READ_URL", standby_url.as_str()),
        ("STOA_REDIS_URL", redis_url.as_str()),
        ("STOA_DB_APPLICATION_NAME", name),
        ("STOA_DB_READ_LAG_CHECK_INTERVAL", "20ms"),
        ("STOA_JWT_KEYS_DIR", keys_dir),
    ];
    env.extend_from_slice(extra);
    TestApp::spawn_with(primary.clone(), &env).await
}

/// The value of one series in a metrics page (0 when absent).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// `stoa_dependency_up` of `dependency` (1 up, 0 down).
fn dependency_up(metrics: &str, dependency: &str) -> f64 {
    sample(
        metrics,
        &format!("stoa_dependency_up{{dependency=\"{dependency}\"}}"),
    )
}

fn reads(metrics: &str, pool: &str, reason: &str) -> f64 {
    sample(
        metrics,
        &format!("stoa_db_reads_total{{pool=\"{pool}\",reason=\"{reason}\"}}"),
    )
}

/// Whether a signed-in GET of `path` succeeded from the replica.
async fn served_by_replica(app: &TestApp, path: &str, token: &str) -> bool {
    let before = reads(&app.metrics().await, "replica", "current");
    let res = app.get(path, Some(token)).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    reads(&app.metrics().await, "replica", "current") - before == 1.0
}

async fn wait_until_current(app: &TestApp) {
    common::eventually_within(
        std::time::Duration::from_secs(60),
        "the replica is followed and the writes feed live",
        || async {
            let metrics = app.metrics().await;
            dependency_up(&metrics, "read_replica") == 1.0
                && dependency_up(&metrics, "writes_feed") == 1.0
        },
    )
    .await;
}

async fn pause_replay(standby: &PgPool) {
    standby
        .execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    eventually("replay paused", || async {
        sqlx::query_scalar::<_, String>("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(standby)
            .await
            .unwrap()
            == "paused"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_use_the_replica_and_a_writer_reads_their_writes_on_every_pod() {
    let Some((cluster, primary, standby)) = replicated().await else {
        return;
    };
    let redis = RedisServer::start().await;
    let keys = shared_keys();
    // A long lag bound: the paused replica stays in use, so what it lacks shows.
    let lenient = [("STOA_DB_READ_MAX_LAG", "60s")];
    let a = pod(&cluster, &primary, (&redis, &keys), "pod-a", &lenient).await;
    let b = pod(&cluster, &primary, (&redis, &keys), "pod-b", &lenient).await;
    wait_until_current(&a).await;
    wait_until_current(&b).await;

    let carol = a.register("carol").await;
    // Her registration is a write: her reads go to the replica once it has replayed it,
    // as pod B's watermark tells.
    eventually("carol reads the replica on pod B", || async {
        served_by_replica(&b, "/api/user", &carol).await
    })
    .await;

    pause_replay(&standby).await;
    let alice = a.register("alice").await;

    // Alice reads her own user on the other pod at once: the primary answers.
    let before = b.metrics().await;
    let me = b.get("/api/user", Some(&alice)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["user"]["username"], "alice");
    let after = b.metrics().await;
    assert_eq!(
        reads(&after, "primary", "own_write") - reads(&before, "primary", "own_write"),
        1.0,
        "routed to the primary because alice wrote"
    );

    // Everyone else reads the replica, which has not replayed her registration.
    assert_eq!(
        a.get("/api/profiles/alice", None).await.status,
        StatusCode::NOT_FOUND,
        "anonymous reads come from the (paused) replica"
    );
    assert_eq!(
        b.get("/api/profiles/alice", Some(&carol)).await.status,
        StatusCode::NOT_FOUND,
        "a signed-in caller who wrote nothing reads the replica"
    );
    assert_eq!(
        b.get("/api/profiles/carol", Some(&alice)).await.status,
        StatusCode::OK
    );

    // A write on one pod, read back on the other: her article, with her flags.
    let slug = b.article(&alice, "Replicas", &["db"]).await;
    let mine = a.get(&format!("/api/articles/{slug}"), Some(&alice)).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text);
    assert_eq!(mine.body["article"]["author"]["username"], "alice");
    let feed = a.get("/api/articles?author=alice", Some(&alice)).await;
    assert_eq!(feed.body["articlesCount"], 1, "{}", feed.text);
    // An anonymous read that fills the shared cache comes from the primary: a stale
    // value cached now would be served to everyone until the TTL.
    let filled = a.get(&format!("/api/articles/{slug}"), None).await;
    assert_eq!(filled.status, StatusCode::OK, "{}", filled.text);
    assert!(reads(&a.metrics().await, "primary", "cache_fill") >= 1.0);
    let cached = b.get(&format!("/api/articles/{slug}"), None).await;
    assert_eq!(cached.body, filled.body, "the cache holds the real article");

    // Replay resumes: once the replica has her writes, alice reads it again.
    standby
        .execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    eventually("the replica has alice", || async {
        a.get("/api/profiles/alice", None).await.status == StatusCode::OK
    })
    .await;
    eventually("alice's reads go back to the replica", || async {
        served_by_replica(&b, "/api/user", &alice).await
    })
    .await;

    // The replica's sessions are the pods' own (the URL named no user: the primary's).
    let sessions: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT application_name, usename FROM pg_stat_activity
         WHERE application_name LIKE 'pod-%' ORDER BY 1",
    )
    .fetch_all(&standby)
    .await
    .unwrap();
    assert_eq!(
        sessions,
        [
            ("pod-a".to_owned(), "postgres".to_owned()),
            ("pod-b".to_owned(), "postgres".to_owned())
        ]
    );

    // Without the writes feed a pod cannot know who wrote elsewhere: signed-in reads go
    // to the primary there, anonymous ones still to the replica.
    let mut redis = redis;
    redis.stop();
    eventually("the writes feed is down", || async {
        dependency_up(&b.metrics().await, "writes_feed") == 0.0
    })
    .await;
    let before = b.metrics().await;
    assert_eq!(
        b.get("/api/profiles/alice", Some(&carol)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        b.get("/api/profiles/alice", None).await.status,
        StatusCode::OK
    );
    let after = b.metrics().await;
    assert_eq!(
        reads(&after, "primary", "writes_unknown") - reads(&before, "primary", "writes_unknown"),
        1.0
    );
    assert_eq!(
        reads(&after, "replica", "current") - reads(&before, "replica", "current"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_too_far_behind_or_gone_serves_nothing() {
    let Some((mut cluster, primary, standby)) = replicated().await else {
        return;
    };
    let redis = RedisServer::start().await;
    let keys = shared_keys();
    let app = pod(
        &cluster,
        &primary,
        (&redis, &keys),
        "pod-lag",
        &[("STOA_DB_READ_MAX_LAG", "500ms")],
    )
    .await;
    wait_until_current(&app).await;
    let detail = app.admin_get("/readyz").await;
    assert_eq!(
        detail.body["checks"]["readReplica"]["status"], "current",
        "{}",
        detail.text
    );

    pause_replay(&standby).await;
    app.register("dave").await;
    eventually("the paused replica is reported behind", || async {
        let metrics = app.metrics().await;
        dependency_up(&metrics, "read_replica") == 0.0
            && sample(&metrics, "stoa_db_replica_staleness_seconds") > 0.5
    })
    .await;
    let detail = app.admin_get("/readyz").await;
    assert_eq!(
        detail.status,
        StatusCode::OK,
        "a lagging replica does not fail readiness"
    );
    assert_eq!(
        detail.body["checks"]["readReplica"]["status"], "behind",
        "{}",
        detail.text
    );
    // Behind by more than the bound: even anonymous reads come from the primary.
    let before = app.metrics().await;
    assert_eq!(
        app.get("/api/profiles/dave", None).await.status,
        StatusCode::OK
    );
    let after = app.metrics().await;
    assert_eq!(
        reads(&after, "primary", "replica_behind") - reads(&before, "primary", "replica_behind"),
        1.0
    );

    // Caught up again: back on the replica.
    standby
        .execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    wait_until_current(&app).await;
    // An idle primary (nothing written for longer than the bound) does not make the
    // replica look behind: its position is reached at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = app.metrics().await;
    assert!(
        sample(&metrics, "stoa_db_replica_staleness_seconds") < 0.5,
        "{metrics}"
    );

    // The standby goes away: reads carry on from the primary.
    drop(standby);
    cluster.stop_standby();
    eventually("the lost replica is reported behind", || async {
        dependency_up(&app.metrics().await, "read_replica") == 0.0
    })
    .await;
    assert_eq!(
        app.get("/api/profiles/dave", None).await.status,
        StatusCode::OK
    );
    let ready = app.get("/readyz", None).await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "the replica is not needed to be ready"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_is_logged_into_with_the_rotated_credential() {
    let Some((cluster, primary, standby)) = replicated().await else {
        return;
    };
    // The role the operator's rotation would publish (a physical standby has the
    // primary's roles as soon as it replays them).
    primary
        .execute(
            "CREATE ROLE stoa_rotated LOGIN;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO stoa_rotated;
             GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO stoa_rotated;",
        )
        .await
        .unwrap();
    let secret = tempfile::tempdir().unwrap();
    let url_file = secret.path().join("url");
    std::fs::write(&url_file, cluster.primary_url("postgres", "stoa")).unwrap();
    let keys = shared_keys();
    let standby_url = cluster.standby_url("stoa");
    let app = TestApp::spawn_with(
        primary.clone(),
        &[
            ("STOA_DATABASE_URL_FILE", url_file.to_str().unwrap()),
            ("STOA_DATABASE_READ_URL", &standby_url),
            ("STOA_DB_APPLICATION_NAME", "pod-rotating"),
            ("STOA_DB_READ_LAG_CHECK_INTERVAL", "20ms"),
            ("STOA_DB_DRAIN_GRACE", "100ms"),
            ("STOA_JWT_KEYS_DIR", keys.path().to_str().unwrap()),
        ],
    )
    .await;
    let replica_users = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT DISTINCT usename FROM pg_stat_activity
             WHERE application_name = 'pod-rotating' ORDER BY 1",
        )
        .fetch_all(&standby)
        .await
        .unwrap()
    };
    eventually("the replica is followed as postgres", || async {
        replica_users().await == ["postgres"]
    })
    .await;

    std::fs::write(&url_file, cluster.primary_url("stoa_rotated", "stoa")).unwrap();
    eventually("the pod switched credentials", || async {
        app.metrics()
            .await
            .contains("stoa_db_credentials_info{user=\"stoa_rotated\"} 1")
    })
    .await;
    eventually(
        "the replica's old sessions are gone and new ones use the new role",
        || async {
            app.get("/api/profiles/nobody", None).await;
            replica_users().await == ["stoa_rotated"]
        },
    )
    .await;
    // This pod has no cache, so an anonymous tags read fills nothing and may use the
    // replica like any other anonymous read.
    eventually("the replica is current", || async {
        dependency_up(&app.metrics().await, "read_replica") == 1.0
    })
    .await;
    let before = app.metrics().await;
    assert_eq!(
        app.get("/api/tags", None).await.status,
        StatusCode::OK,
        "the rotated role reads"
    );
    let after = app.metrics().await;
    assert_eq!(
        reads(&after, "replica", "current") - reads(&before, "replica", "current"),
        1.0
    );
}
