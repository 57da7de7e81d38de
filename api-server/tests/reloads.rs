#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Live reloads under load: signing keys, database credentials, and a Redis outage.
//! Each test counts failed requests while the change happens; the contract is zero.
mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{RedisServer, TestApp, eventually};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use stoa_api::keys::{KeySetFile, KeyState, generate_key, generate_keyset};

/// Writes `files` the way the kubelet updates a mounted Secret: a new timestamped
/// directory, then an atomic swap of the `..data` symlink.
fn kubelet_write(dir: &Path, files: &[(&str, &[u8])]) {
    static GENERATION: AtomicU64 = AtomicU64::new(0);
    let generation = dir.join(format!(
        "..gen_{}",
        GENERATION.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&generation).unwrap();
    for (name, bytes) in files {
        std::fs::write(generation.join(name), bytes).unwrap();
        let link = dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(generation.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

fn write_keys(dir: &Path, set: &KeySetFile) {
    kubelet_write(dir, &[("keyset.json", &serde_json::to_vec(set).unwrap())]);
}

/// Runs `workers` loops of `request` until stopped; returns (ok, failed) counters.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start<F, Fut>(workers: usize, request: F) -> Load
    where
        F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..workers)
            .map(|worker| {
                let (stop, ok, failed, request) =
                    (stop.clone(), ok.clone(), failed.clone(), request.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if request(worker).await {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn key_rotation_under_load_fails_no_request(pool: PgPool) {
    let keys = tempfile::tempdir().unwrap();
    let mut set = generate_keyset();
    write_keys(keys.path(), &set);
    let dir = keys.path().to_str().unwrap().to_owned();
    let app = Arc::new(TestApp::spawn_with(pool, &[("STOA_JWT_KEYS_DIR", &dir)]).await);
    app.register("jake").await;
    let login = || async {
        app.post(
            "/api/users/login",
            None,
            json!({"user": {"email": "jake@example.com", "password": "password-jake"}}),
        )
        .await
    };
    let old_token = login().await.body["user"]["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Load: every worker logs in (signs with the active key) and uses the fresh token.
    let load = {
        let app = app.clone();
        Load::start(8, move |_| {
            let app = app.clone();
            async move {
                let res = app
                    .post(
                        "/api/users/login",
                        None,
                        json!({"user": {"email": "jake@example.com", "password": "password-jake"}}),
                    )
                    .await;
                if res.status != StatusCode::OK {
                    return false;
                }
                let token = res.body["user"]["token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                app.get("/api/user", Some(&token)).await.status == StatusCode::OK
            }
        })
    };

    // 1. Publish the next key; 2. promote it, the old one retires.
    let old_kid = set.keys[0].kid.clone();
    set.keys.push(generate_key(KeyState::Next));
    let new_kid = set.keys[1].kid.clone();
    write_keys(keys.path(), &set);
    eventually("next key loaded", || async {
        app.metrics()
            .await
            .contains(&format!(r#"kid="{new_kid}",state="next""#))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    set.keys[0].state = KeyState::Retiring;
    set.keys[1].state = KeyState::Active;
    write_keys(keys.path(), &set);
    eventually("promotion loaded", || async {
        app.metrics()
            .await
            .contains(&format!(r#"kid="{new_kid}",state="active""#))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.finish().await;
    eprintln!("key rotation under load: {ok} requests succeeded, {failed} failed");
    assert!(ok > 20, "load ran ({ok} requests)");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the rotation",
        ok + failed
    );

    // Tokens signed before the rotation keep working; new ones use the new kid.
    assert_eq!(
        app.get("/api/user", Some(&old_token)).await.status,
        StatusCode::OK
    );
    let fresh = login().await.body["user"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        jsonwebtoken::decode_header(&fresh).unwrap().kid.unwrap(),
        new_kid
    );
    let jwks = app.get("/.well-known/jwks.json", None).await;
    let kids: Vec<&str> = jwks.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [old_kid.as_str(), new_kid.as_str()]);

    // 3. The retiring key is removed after the token lifetime: its tokens stop verifying.
    set.keys.remove(0);
    write_keys(keys.path(), &set);
    eventually("retired key removed", || async {
        !app.metrics().await.contains(&old_kid)
    })
    .await;
    assert_eq!(
        app.get("/api/user", Some(&old_token)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/user", Some(&fresh)).await.status,
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_bad_key_set_update_is_ignored_and_counted(pool: PgPool) {
    let keys = tempfile::tempdir().unwrap();
    let set = generate_keyset();
    write_keys(keys.path(), &set);
    let dir = keys.path().to_str().unwrap().to_owned();
    let app = TestApp::spawn_with(pool, &[("STOA_JWT_KEYS_DIR", &dir)]).await;
    let token = app.register("jake").await;

    kubelet_write(keys.path(), &[("keyset.json", b"{ not json")]);
    eventually("error counted", || async {
        app.metrics()
            .await
            .contains("stoa_keyset_reload_errors_total 1")
    })
    .await;
    let mut two_active = set.clone();
    two_active.keys.push(generate_key(KeyState::Active));
    write_keys(keys.path(), &two_active);
    eventually("second error counted", || async {
        app.metrics()
            .await
            .contains("stoa_keyset_reload_errors_total 2")
    })
    .await;

    // Still serving with the last good set.
    assert_eq!(
        app.get("/api/user", Some(&token)).await.status,
        StatusCode::OK
    );
    assert!(
        !app.register("jane").await.is_empty(),
        "new tokens are still signed"
    );
    assert_eq!(app.admin_get("/readyz").await.status, StatusCode::OK);
}

/// A login role with its own password, allowed to use the test database's tables.
async fn create_role(admin: &PgPool, name: &str, password: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {name} LOGIN PASSWORD '{password}';
         GRANT USAGE ON SCHEMA public TO {name};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name};
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {name};"
    )))
    .execute(admin)
    .await
    .unwrap();
}

async fn drop_role(admin: &PgPool, name: &str) {
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}';
         DROP OWNED BY {name}; DROP ROLE IF EXISTS {name};"
    )))
    .execute(admin)
    .await;
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn database_credential_swap_under_load_fails_no_request(pool: PgPool) {
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (role_a, role_b) = (format!("stoa_a_{suffix}"), format!("stoa_b_{suffix}"));
    create_role(&pool, &role_a, "secret-a").await;
    create_role(&pool, &role_b, "secret-b").await;
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let url = |role: &str, password: &str| {
        format!("postgres://{role}:{password}@127.0.0.1:5432/{database}")
    };

    let secret_dir = tempfile::tempdir().unwrap();
    kubelet_write(
        secret_dir.path(),
        &[("url", url(&role_a, "secret-a").as_bytes())],
    );
    let url_file = secret_dir.path().join("url").to_str().unwrap().to_owned();
    let pool_a = sqlx::postgres::PgPoolOptions::new()
        .connect(&url(&role_a, "secret-a"))
        .await
        .unwrap();
    let app = Arc::new(
        TestApp::spawn_with(
            pool_a,
            &[
                ("STOA_DATABASE_URL_FILE", &url_file),
                ("STOA_DB_DRAIN_GRACE", "300ms"),
            ],
        )
        .await,
    );
    let token = app.register("jake").await;
    app.article(&token, "Before", &[]).await;

    let load = {
        let app = app.clone();
        let token = token.clone();
        Load::start(8, move |worker| {
            let (app, token) = (app.clone(), token.clone());
            async move {
                let res = if worker % 2 == 0 {
                    app.get("/api/articles", None).await
                } else {
                    app.post(
                        "/api/articles/before/comments",
                        Some(&token),
                        json!({"comment": {"body": "hi"}}),
                    )
                    .await
                };
                res.status.is_success()
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    kubelet_write(
        secret_dir.path(),
        &[("url", url(&role_b, "secret-b").as_bytes())],
    );
    let label = format!(r#"stoa_db_credentials_info{{user="{role_b}"}} 1"#);
    eventually("pool swapped to role b", || async {
        app.metrics().await.contains(&label)
    })
    .await;
    // What the operator reads to confirm the swap: the role and the URL's fingerprint.
    let reported = app.admin_get(stoa_contract::pod::STATE_PATH).await;
    assert_eq!(reported.body["database"]["user"], role_b.as_str());
    assert_eq!(
        reported.body["database"]["fingerprint"],
        stoa_contract::pod::credential_fingerprint(&url(&role_b, "secret-b"))
    );
    assert!(!reported.text.contains("secret-b"), "{}", reported.text);
    // Once the old pool has drained, role a holds no connection and can lose its login.
    eventually("role a drained", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = $1")
            .bind(&role_a)
            .fetch_one(&pool)
            .await
            .unwrap();
        n == 0
    })
    .await;
    // (The local server trusts 127.0.0.1, so disable the login rather than the password.)
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER ROLE {role_a} NOLOGIN")))
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.finish().await;
    eprintln!("credential swap under load: {ok} requests succeeded, {failed} failed");
    assert!(ok > 20, "load ran ({ok} requests)");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the credential swap",
        ok + failed
    );
    assert!(
        app.metrics()
            .await
            .contains(r#"stoa_db_credential_reloads_total{outcome="swapped"} 1"#)
    );

    // A URL that does not work yet is not swapped in; the working pool stays.
    kubelet_write(
        secret_dir.path(),
        &[("url", url(&role_a, "secret-a").as_bytes())],
    );
    eventually("rejection counted", || async {
        app.metrics()
            .await
            .contains(r#"stoa_db_credential_reloads_total{outcome="rejected"} 1"#)
    })
    .await;
    assert_eq!(app.get("/api/articles", None).await.status, StatusCode::OK);

    drop(app);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop_role(&pool, &role_a).await;
    drop_role(&pool, &role_b).await;
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn redis_killed_mid_load_then_restarted_fails_no_request(pool: PgPool) {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let app = Arc::new(
        TestApp::spawn_with(
            pool,
            &[("STOA_REDIS_URL", &url), ("STOA_REDIS_TIMEOUT", "100ms")],
        )
        .await,
    );
    eventually("redis up", || async {
        app.admin_get("/readyz").await.body["checks"]["redis"]["status"] == "up"
    })
    .await;
    let token = app.register("jake").await;
    let slug = app.article(&token, "Hot", &["x"]).await;

    let load = {
        let (app, token, slug) = (app.clone(), token.clone(), slug.clone());
        Load::start(8, move |worker| {
            let (app, token, slug) = (app.clone(), token.clone(), slug.clone());
            async move {
                let res = match worker % 4 {
                    0 => app.get(&format!("/api/articles/{slug}"), None).await,
                    1 => app.get("/api/articles", None).await,
                    2 => app.get("/api/user", Some(&token)).await,
                    _ => {
                        app.post(
                            &format!("/api/articles/{slug}/comments"),
                            Some(&token),
                            json!({"comment": {"body": "c"}}),
                        )
                        .await
                    }
                };
                res.status.is_success()
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.stop();
    eventually("degraded", || async {
        app.admin_get("/readyz").await.body["checks"]["redis"]["status"] == "degraded"
    })
    .await;
    assert_eq!(app.admin_get("/readyz").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.restart().await;
    eventually("recovered", || async {
        app.admin_get("/readyz").await.body["checks"]["redis"]["status"] == "up"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (ok, failed) = load.finish().await;
    eprintln!("redis outage under load: {ok} requests succeeded, {failed} failed");
    assert!(ok > 50, "load ran ({ok} requests)");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed while Redis went away and came back",
        ok + failed
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"stoa_cache_requests_total{kind="article",outcome="hit"}"#),
        "the cache was in use"
    );
    assert!(metrics.contains(r#"stoa_dependency_up{dependency="redis"} 1"#));
}
