#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! `stoa-api seed`: the demo data set a front end can be developed against.
mod common;

use common::{TestApp, stoa_api, url_of};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use stoa_api::seed::DEMO_PASSWORD;

fn seed(pool: &PgPool, args: &[&str]) -> std::process::Output {
    stoa_api()
        .arg("seed")
        .args(args)
        .env("STOA_DATABASE_URL", url_of(pool))
        .env("STOA_ARGON2_MEMORY_KIB", "1024")
        .env("STOA_ARGON2_ITERATIONS", "1")
        .output()
        .unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn seed_loads_users_articles_follows_favorites_and_comments_a_client_can_use(pool: PgPool) {
    let out = seed(&pool, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out)
            .contains("demo data loaded: 4 users, 8 articles, 6 follows, 7 favorites, 5 comments"),
        "{}",
        stdout(&out)
    );

    let app = TestApp::spawn(pool).await;
    let login = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "alice@example.com", "password": DEMO_PASSWORD}}),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    assert_eq!(
        login.body["user"]["bio"], "Writes about Rust and the web.",
        "profiles are filled in"
    );
    let alice = login.body["user"]["token"].as_str().unwrap().to_owned();

    let articles = app.get("/api/articles", None).await.body;
    assert_eq!(articles["articlesCount"], 8);
    let tags = app.get("/api/tags", None).await.body;
    for tag in ["rust", "kubernetes", "postgres", "web"] {
        assert!(
            tags["tags"].as_array().unwrap().contains(&json!(tag)),
            "{tags}"
        );
    }
    // Alice follows bob (2 articles) and carol (3): her feed has their 5.
    let feed = app.get("/api/articles/feed", Some(&alice)).await.body;
    assert_eq!(feed["articlesCount"], 5, "{feed}");
    let article = app
        .get("/api/articles/getting-started-with-axum", Some(&alice))
        .await
        .body;
    assert_eq!(article["article"]["favoritesCount"], 3);
    assert_eq!(article["article"]["author"]["username"], "alice");
    let comments = app
        .get("/api/articles/getting-started-with-axum/comments", None)
        .await
        .body;
    assert_eq!(comments["comments"].as_array().unwrap().len(), 3);
    let carol = app.get("/api/profiles/carol", Some(&alice)).await.body;
    assert_eq!(carol["profile"]["following"], true);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn seed_refuses_a_database_with_users_unless_told_otherwise(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.register("someone").await;

    let refused = seed(&pool, &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("already has 1 user(s)") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(count(&pool, "users").await, 1, "nothing was written");
    assert_eq!(count(&pool, "articles").await, 0);

    let skipped = seed(&pool, &["--if-empty"]);
    assert!(skipped.status.success(), "{skipped:?}");
    assert!(stdout(&skipped).contains("demo data not loaded"));
    assert_eq!(count(&pool, "users").await, 1);

    let forced = seed(&pool, &["--force"]);
    assert!(forced.status.success(), "{forced:?}");
    assert_eq!(count(&pool, "users").await, 5);
    assert_eq!(count(&pool, "articles").await, 8);

    // A second forced run finds the demo users and their articles and adds nothing.
    let again = seed(&pool, &["--force"]);
    assert!(again.status.success(), "{again:?}");
    assert!(
        stdout(&again).contains("0 users, 0 articles, 0 follows, 0 favorites, 0 comments"),
        "{}",
        stdout(&again)
    );
    assert_eq!(count(&pool, "articles").await, 8);
    assert_eq!(count(&pool, "comments").await, 5);
    assert_eq!(count(&pool, "follows").await, 6);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn seed_will_not_act_as_an_existing_user_it_cannot_sign_in_as(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    // `alice` exists with a password of her own.
    let res = app
        .post(
            "/api/users",
            None,
            json!({"user": {"username": "alice", "email": "alice@example.com", "password": "her-own-password"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    let out = seed(&pool, &["--force"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("user alice exists"),
        "{out:?}"
    );
    assert_eq!(count(&pool, "articles").await, 0);
}
