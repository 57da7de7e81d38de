#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! TLS to PostgreSQL (`sslmode=verify-full` with a CA file) and to Redis (`rediss://`
//! with an ACL user and STOA_REDIS_CA_FILE), each against a real server started by the
//! test with a certificate from a throw-away CA. The servers accept TLS only, so every
//! success below went over TLS; a client that trusts another CA is refused.
mod common;

use std::time::Duration;

use common::tls::{REDIS_PASSWORD, REDIS_USER, ThrowawayCa, TlsPostgres, TlsRedis};
use common::{TestApp, eventually};
use reqwest::StatusCode;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[tokio::test]
async fn postgres_is_reached_over_verified_tls(/* its own server */) {
    let Some(bin) = common::tls::postgres_bin() else {
        assert!(
            std::env::var("STOA_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "the TLS PostgreSQL test is required: initdb is missing (Debian package postgresql)"
        );
        eprintln!("SKIP: initdb is missing (Debian package postgresql)");
        return;
    };
    let ca = ThrowawayCa::new();
    let server = TlsPostgres::start(&bin, &ca);
    let url = |mode: &str, ca_file: &std::path::Path| {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode={mode}&sslrootcert={}",
            server.port,
            ca_file.display()
        )
    };
    let verified = url("verify-full", &ca.ca);

    // The migrator (the operator's Job) over TLS.
    let migrate = common::stoa_api()
        .arg("migrate")
        .env("STOA_DATABASE_URL", &verified)
        .env("STOA_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    // On Kubernetes the CA is a mounted file named by PGSSLROOTCERT (`database.caSecretRef`)
    // and the URL only asks for verification: the same, without the CA the URL is refused.
    let bare = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full",
        server.port
    );
    let migrate_with = |root: Option<&std::path::Path>| {
        let mut command = common::stoa_api();
        command
            .arg("migrate")
            .env("STOA_DATABASE_URL", &bare)
            .env("STOA_DB_ACQUIRE_TIMEOUT", "5s")
            .env("STOA_LOG", "warn")
            .env_remove("PGSSLROOTCERT");
        if let Some(root) = root {
            command.env("PGSSLROOTCERT", root);
        }
        command.output().unwrap()
    };
    let mounted = migrate_with(Some(&ca.ca));
    assert!(
        mounted.status.success(),
        "{}",
        String::from_utf8_lossy(&mounted.stderr)
    );
    assert!(!migrate_with(None).status.success());

    // The server's pool over TLS: the session says so, and the API works on it.
    let options: PgConnectOptions = verified.parse().unwrap();
    let pool = PgPoolOptions::new().connect_with(options).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(ssl);
    let app = TestApp::spawn(pool).await;
    app.register("over-tls").await;
    assert_eq!(app.get("/api/articles", None).await.status, StatusCode::OK);

    // A certificate from a CA the client does not trust, or no TLS at all: refused.
    let stranger = ThrowawayCa::new();
    for refused in [url("verify-full", &stranger.ca), url("disable", &ca.ca)] {
        let options: PgConnectOptions = refused.parse().unwrap();
        let attempt = PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await;
        assert!(attempt.is_err(), "connected with {refused}");
    }
}

fn redis_up(metrics: &str) -> bool {
    metrics.contains(r#"stoa_dependency_up{dependency="redis"} 1"#)
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn redis_is_reached_over_verified_tls_as_an_acl_user(pool: PgPool) {
    let ca = ThrowawayCa::new();
    let server = TlsRedis::start(&ca);
    let url =
        |password: &str| format!("rediss://{REDIS_USER}:{password}@localhost:{}", server.port);
    let good = url(REDIS_PASSWORD);
    let ca_file = ca.ca.to_str().unwrap().to_owned();
    let app = TestApp::spawn_with(
        pool.clone(),
        &[
            ("STOA_REDIS_URL", good.as_str()),
            ("STOA_REDIS_CA_FILE", ca_file.as_str()),
        ],
    )
    .await;
    eventually("Redis is up over TLS", || async {
        redis_up(&app.metrics().await)
    })
    .await;
    // The cache lives there: the second read is a hit.
    for _ in 0..2 {
        assert_eq!(app.get("/api/tags", None).await.status, StatusCode::OK);
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"stoa_cache_requests_total{kind="tags",outcome="hit"} 1"#),
        "{metrics}"
    );

    drop(app);

    // Another CA, or the wrong password: Redis stays down (the server keeps serving).
    let stranger = ThrowawayCa::new();
    let stranger_file = stranger.ca.to_str().unwrap().to_owned();
    let wrong = url("not-the-password");
    for (redis_url, ca_file) in [
        (good.as_str(), stranger_file.as_str()),
        (wrong.as_str(), ca_file.as_str()),
    ] {
        // A pool of its own: the test database's pool is small.
        let own_pool = PgPoolOptions::new()
            .connect_with((*pool.connect_options()).clone())
            .await
            .unwrap();
        let app = TestApp::spawn_with(
            own_pool,
            &[
                ("STOA_REDIS_URL", redis_url),
                ("STOA_REDIS_CA_FILE", ca_file),
            ],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!redis_up(&app.metrics().await), "{ca_file}");
        let tags = app.get("/api/tags", None).await;
        assert_eq!(tags.status, StatusCode::OK, "{}", tags.text);
    }
}
