#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Through a real PgBouncer in transaction mode (`STOA_DATABASE_POOLER_URL`): the RealWorld
//! flows, sign-in and revocation, jobs, migrations and a credential rotation, each with
//! fewer server connections than clients so that clients share servers between
//! transactions. See `stoa_api::db::pooler` for what makes each statement safe there.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pgbouncer::{Auth, PgBouncer};
use common::{TestApp, eventually, login, shared_keys, url_of, wait_for_live_feeds};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

fn database_of(pool: &PgPool) -> String {
    pool.connect_options().get_database().unwrap().to_owned()
}

/// The app with requests through `bouncer`, as the test database's user.
async fn behind(bouncer: &PgBouncer, pool: &PgPool, extra: &[(&str, &str)]) -> TestApp {
    let pooler = bouncer.url(Some("postgres"), &database_of(pool));
    let mut env = vec![("STOA_DATABASE_POOLER_URL", pooler.as_str())];
    env.extend_from_slice(extra);
    TestApp::spawn_with(pool.clone(), &env).await
}

/// One user's RealWorld session, every endpoint once; `i` keeps names apart.
async fn realworld_session(app: &TestApp, i: usize) {
    let me = format!("user{i}");
    let token = app.register(&me).await;
    let (token_again, _) = login(app, &me).await;
    assert_eq!(
        app.get("/api/user", Some(&token_again)).await.status,
        StatusCode::OK
    );
    let updated = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"bio": format!("bio {i}")}}),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    assert_eq!(updated.body["user"]["bio"], format!("bio {i}"));

    let slug = app
        .article(
            &token,
            &format!("Pooled {i}"),
            &["pooled", &format!("t{}", i % 3)],
        )
        .await;
    let other = format!("user{}", (i + 1) % 8);
    let followed = app
        .post(
            &format!("/api/profiles/{other}/follow"),
            Some(&token),
            json!({}),
        )
        .await;
    // The other user may not have registered yet.
    assert!(
        [StatusCode::OK, StatusCode::NOT_FOUND].contains(&followed.status),
        "{}",
        followed.text
    );
    let favorited = app
        .post(
            &format!("/api/articles/{slug}/favorite"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(favorited.status, StatusCode::OK, "{}", favorited.text);
    assert_eq!(favorited.body["article"]["favoritesCount"], 1);
    let comment = app
        .post(
            &format!("/api/articles/{slug}/comments"),
            Some(&token),
            json!({"comment": {"body": "through the pooler"}}),
        )
        .await;
    assert_eq!(comment.status, StatusCode::OK, "{}", comment.text);
    let comments = app
        .get(&format!("/api/articles/{slug}/comments"), None)
        .await;
    assert_eq!(comments.body["comments"].as_array().unwrap().len(), 1);
    for path in [
        "/api/articles?tag=pooled",
        &format!("/api/articles?author={me}"),
        &format!("/api/articles?favorited={me}"),
        "/api/articles/feed",
        "/api/tags",
        &format!("/api/profiles/{me}"),
        &format!("/api/articles/{slug}"),
    ] {
        let res = app.get(path, Some(&token)).await;
        assert_eq!(res.status, StatusCode::OK, "{path}: {}", res.text);
    }
    let mine = app.get(&format!("/api/articles?author={me}"), None).await;
    assert_eq!(mine.body["articlesCount"], 1, "{}", mine.text);
    // A failing statement (a duplicate) rolls its transaction back and leaves the
    // connection usable.
    let duplicate = app
        .post(
            "/api/users",
            None,
            json!({"user": {"username": me, "email": format!("{me}@example.com"), "password": "password-xx"}}),
        )
        .await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT, "{}", duplicate.text);
    let deleted = app
        .delete(&format!("/api/articles/{slug}"), Some(&token))
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_realworld_flows_run_through_pgbouncer_in_transaction_mode(pool: PgPool) {
    // Two server connections for eight concurrent users on a pool of eight.
    let Some(bouncer) = PgBouncer::start(Auth::Trust, 2) else {
        return;
    };
    let app = Arc::new(behind(&bouncer, &pool, &[("STOA_DB_MAX_CONNECTIONS", "8")]).await);
    let sessions: Vec<_> = (0..8)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { realworld_session(&app, i).await })
        })
        .collect();
    for session in sessions {
        session.await.unwrap();
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, 8);
    let served = bouncer.transactions(&database_of(&pool));
    assert!(served > 200, "PgBouncer served {served} transactions");
    // No transaction left open on a server connection (the wrapping always ends its own).
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
           AND backend_type = 'client backend' AND state = 'idle in transaction'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        open, 0,
        "a transaction was left open on a server connection"
    );
    assert_eq!(app.admin_get("/readyz").await.status, StatusCode::OK);
}

/// Why the setting exists: connected to PgBouncer as to PostgreSQL, every connection is
/// refused for the statement timeout in its startup packet.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn pgbouncer_refuses_a_direct_connection_with_startup_options(pool: PgPool) {
    let Some(bouncer) = PgBouncer::start(Auth::Trust, 2) else {
        return;
    };
    let config = stoa_api::config::DatabaseConfig {
        url: stoa_api::config::Secret::new(bouncer.url(Some("postgres"), &database_of(&pool))),
        ..test_database_config()
    };
    let direct = stoa_api::db::pool(&config.url, &config).unwrap();
    let err = sqlx::query("SELECT 1").execute(&direct).await.unwrap_err();
    assert!(
        err.to_string().contains("unsupported startup parameter"),
        "{err}"
    );
    let pooled = stoa_api::db::pool(
        &config.url,
        &stoa_api::config::DatabaseConfig {
            pooler: Some(config.url.clone()),
            ..config.clone()
        },
    )
    .unwrap();
    sqlx::query("SELECT 1").execute(&pooled).await.unwrap();
}

fn test_database_config() -> stoa_api::config::DatabaseConfig {
    let env = common::test_env(&[]);
    stoa_api::config::Config::from_env(
        &stoa_api::config::Env::new(move |k| env.get(k).cloned()),
        true,
    )
    .unwrap()
    .database
}

/// The statement timeout holds through the pooler (set per transaction, not at start-up).
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_statement_timeout_holds_behind_the_pooler(pool: PgPool) {
    let Some(bouncer) = PgBouncer::start(Auth::Trust, 2) else {
        return;
    };
    let url = stoa_api::config::Secret::new(bouncer.url(Some("postgres"), &database_of(&pool)));
    let config = stoa_api::config::DatabaseConfig {
        url: url.clone(),
        pooler: Some(url.clone()),
        statement_timeout: Duration::from_millis(300),
        ..test_database_config()
    };
    let pooled = stoa_api::db::pool(&url, &config).unwrap();
    let shown: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&pooled)
        .await
        .unwrap();
    assert_eq!(shown, "300ms");
    let err = sqlx::query("SELECT pg_sleep(2)")
        .execute(&pooled)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    let mut tx = pooled.begin().await.unwrap();
    let shown: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(shown, "300ms");
}

/// Sign-in, refresh, logout through the pooler; the revocation feed keeps its direct
/// `LISTEN` session, so a logout on one replica is refused by the other without Redis.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn auth_and_the_revocation_feed_work_behind_the_pooler(pool: PgPool) {
    let Some(bouncer) = PgBouncer::start(Auth::Trust, 2) else {
        return;
    };
    let keys = shared_keys();
    let keys_dir = keys.path().to_str().unwrap().to_owned();
    let env = [("STOA_JWT_KEYS_DIR", keys_dir.as_str())];
    let a = behind(&bouncer, &pool, &env).await;
    let b = behind(&bouncer, &pool, &env).await;
    wait_for_live_feeds([&a, &b]).await;
    a.register("jake").await;
    let (token, refresh) = login(&a, "jake").await;
    let refreshed = b
        .post("/api/auth/refresh", None, json!({"refreshToken": refresh}))
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text);
    assert_eq!(
        b.get("/api/user", Some(&token)).await.status,
        StatusCode::OK
    );
    let out = a.post("/api/auth/logout", Some(&token), json!({})).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.text);
    eventually("B refuses the revoked token", || async {
        b.get("/api/user", Some(&token)).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    // The feeds' sessions are direct ones: no server connection of PgBouncer's.
    let listening: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
           AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(listening.len(), 2, "one LISTEN session per replica");
    let servers = bouncer.show("SERVERS");
    let pooled_pids = bouncer.column(&servers, "remote_pid");
    assert!(!pooled_pids.is_empty(), "{servers}");
    for pid in listening {
        assert!(
            !pooled_pids.contains(&pid.to_string()),
            "LISTEN went through PgBouncer"
        );
    }
    assert!(bouncer.transactions(&database_of(&pool)) > 0);
}

/// `stoa-api migrate` goes to `STOA_DATABASE_URL` (its advisory lock is a session lock),
/// and a worker process claims and runs jobs (SKIP LOCKED) through the pooler.
#[sqlx::test(migrations = false)]
async fn migrations_go_direct_and_jobs_run_through_the_pooler(pool: PgPool) {
    let Some(bouncer) = PgBouncer::start(Auth::Trust, 1) else {
        return;
    };
    let database = database_of(&pool);
    let pooler = bouncer.url(Some("postgres"), &database);
    let migrated = common::stoa_api()
        .arg("migrate")
        .env("STOA_DATABASE_URL", url_of(&pool))
        .env("STOA_DATABASE_POOLER_URL", &pooler)
        .env("STOA_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert_eq!(
        bouncer.transactions(&database),
        0,
        "migrate went through the pooler"
    );

    let app = behind(&bouncer, &pool, &[]).await;
    let token = app.register("jake").await;
    for i in 0..3 {
        sqlx::query(
            "INSERT INTO jobs (kind, payload, idempotency_key, max_attempts)
             VALUES ('recount_counters', '{}', $1, 3)",
        )
        .bind(format!("k{i}"))
        .execute(&pool)
        .await
        .unwrap();
    }
    let export = app.post("/api/user/export", Some(&token), json!({})).await;
    assert!(export.status.is_success(), "{}", export.text);
    let _workers: Vec<_> = (0..2)
        .map(|_| {
            common::stoa_api()
                .arg("worker")
                .env("STOA_DATABASE_URL", url_of(&pool))
                .env("STOA_DATABASE_POOLER_URL", &pooler)
                .env(
                    "STOA_ADMIN_ADDR",
                    format!("127.0.0.1:{}", common::free_port()),
                )
                .env("STOA_WORKER_POLL_INTERVAL", "100ms")
                .env("STOA_LOG", "error")
                .stdout(std::process::Stdio::null())
                .spawn()
                .map(KilledOnDrop)
                .unwrap()
        })
        .collect();
    eventually("every job done", || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state <> 'done'")
            .fetch_one(&pool)
            .await
            .unwrap();
        pending == 0
    })
    .await;
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT attempts FROM jobs ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    // Ours, and the ones the workers' schedules added.
    assert!(attempts.len() >= 4, "{attempts:?}");
    assert!(
        attempts.iter().all(|a| *a == 1),
        "a job ran twice or failed: {attempts:?}"
    );
}

struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Signs in through the pooler as `user_info` (`user:password`) and runs one statement:
/// "ok", or the error. Without `extra_float_digits`, which PgBouncer would refuse before
/// it even looks at the password.
async fn through(bouncer: &PgBouncer, user_info: &str, database: &str) -> String {
    let options: sqlx::postgres::PgConnectOptions =
        bouncer.url(Some(user_info), database).parse().unwrap();
    let connected = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.extra_float_digits(None))
        .await;
    match connected {
        Ok(pool) => match sqlx::query("SELECT 1").execute(&pool).await {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

/// `stoa-api credentials` as the operator's Jobs run it, with the admin URL.
fn credentials(admin_url: &str, args: &[&str]) -> std::process::Output {
    common::stoa_api()
        .arg("credentials")
        .args(args)
        .env("STOA_DATABASE_URL", admin_url)
        .env("STOA_LOG", "warn")
        .output()
        .unwrap()
}

/// A credential rotation with requests through PgBouncer, which authenticates clients
/// against PostgreSQL's own role secrets (`auth_query`): the new role logs in through the
/// pooler as soon as it is published, the old one stops working once expired, and the
/// pooler's idle server connections of the old role do not hold the expiry up.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_credential_rotation_follows_through_pgbouncer_with_auth_query(pool: PgPool) {
    let Some(bouncer) = PgBouncer::start(Auth::AuthQuery, 2) else {
        return;
    };
    let admin = url_of(&pool);
    let database = database_of(&pool);
    let group = format!("stoa_p{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let [role_a, role_b] = stoa_contract::credential_rotation::login_roles(&group);
    let secrets = tempfile::tempdir().unwrap();
    let publish = |role: &str| {
        let password = stoa_contract::credential_rotation::generate_password();
        let file = secrets.path().join(format!("{role}.password"));
        std::fs::write(&file, &password).unwrap();
        let out = credentials(
            &admin,
            &[
                "publish",
                "--group",
                &group,
                "--role",
                role,
                "--password-file",
                file.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        password
    };
    let direct_url = |role: &str, password: &str| {
        format!("postgres://{role}:{password}@127.0.0.1:5432/{database}")
    };

    let password_a = publish(&role_a);
    let url_file = secrets.path().join("url");
    std::fs::write(&url_file, direct_url(&role_a, &password_a)).unwrap();
    let app = Arc::new(
        TestApp::spawn_with(
            pool.clone(),
            &[
                ("STOA_DATABASE_URL_FILE", url_file.to_str().unwrap()),
                // No user: the pooler is logged into with the direct URL's credentials.
                ("STOA_DATABASE_POOLER_URL", &bouncer.url(None, &database)),
                ("STOA_DB_DRAIN_GRACE", "300ms"),
            ],
        )
        .await,
    );
    let token = app.register("jake").await;
    let slug = app.article(&token, "Rotated", &[]).await;
    // A wrong password is refused by the pooler itself (it checks the role's secret).
    let wrong = through(&bouncer, &format!("{role_a}:wrong-password"), &database).await;
    assert!(
        wrong.contains("authentication failed"),
        "PgBouncer: {wrong}"
    );
    assert_eq!(
        through(&bouncer, &format!("{role_a}:{password_a}"), &database).await,
        "ok"
    );

    let load = {
        let (app, token, slug) = (app.clone(), token.clone(), slug.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            for i in 0..400 {
                let res = if i % 2 == 0 {
                    app.get("/api/articles", None).await
                } else {
                    app.post(
                        &format!("/api/articles/{slug}/comments"),
                        Some(&token),
                        json!({"comment": {"body": "hi"}}),
                    )
                    .await
                };
                if res.status.is_success() {
                    ok += 1;
                } else {
                    failed.push(res.text);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let password_b = publish(&role_b);
    std::fs::write(&url_file, direct_url(&role_b, &password_b)).unwrap();
    let label = format!(r#"stoa_db_credentials_info{{user="{role_b}"}} 1"#);
    eventually("pool swapped to role b", || async {
        app.metrics().await.contains(&label)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // PgBouncer still holds role a's server connections (idle for up to
    // `server_idle_timeout`, 10 min): waiting for them alone would fail; ending them works.
    let waited = credentials(
        &admin,
        &["expire", "--role", &role_a, "--wait-seconds", "1"],
    );
    assert!(
        !waited.status.success(),
        "role a had no session left to wait for"
    );
    let expired = credentials(
        &admin,
        &[
            "expire",
            "--role",
            &role_a,
            "--wait-seconds",
            "10",
            "--end-idle-sessions",
        ],
    );
    assert!(
        expired.status.success(),
        "{}",
        String::from_utf8_lossy(&expired.stderr)
    );
    let (ok, failed) = load.await.unwrap();
    eprintln!(
        "rotation through PgBouncer: {ok} requests succeeded, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );

    // Role a no longer logs in through the pooler; role b does, and serves requests.
    let old = through(&bouncer, &format!("{role_a}:{password_a}"), &database).await;
    assert_ne!(
        old, "ok",
        "the expired role still logs in through PgBouncer"
    );
    assert_eq!(
        through(&bouncer, &format!("{role_b}:{password_b}"), &database).await,
        "ok"
    );
    assert_eq!(app.get("/api/articles", None).await.status, StatusCode::OK);
    let pools = bouncer.show("POOLS");
    assert!(bouncer.column(&pools, "user").contains(&role_b), "{pools}");

    drop(app);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dropped = credentials(&admin, &["drop", "--group", &group]);
    assert!(
        dropped.status.success(),
        "{}",
        String::from_utf8_lossy(&dropped.stderr)
    );
}
