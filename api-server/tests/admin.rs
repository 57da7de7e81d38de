#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! `/api/admin/*`: who may use it, disabling accounts (every token stops at once, on
//! every replica), removing content, and the security events each action leaves.
mod common;

use std::time::{Duration, Instant};

use common::{Replicas, TestApp, db, errors, login};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use stoa_api::auth::Role;
use stoa_api::auth::accounts::{self, Change};

/// Registers `name` and makes them an admin the way an operator does (`stoa-api admin
/// grant` runs this function); returns a token that carries the role.
async fn admin(app: &TestApp, name: &str) -> String {
    app.register(name).await;
    accounts::change(&db(&app.pool), name, Change::SetRole(Role::Admin), None)
        .await
        .unwrap();
    login(app, name).await.0
}

fn security_events(metrics: &str, event: &str) -> u64 {
    let series = format!("stoa_security_events_total{{event=\"{event}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{metrics}"))
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn admin_routes_answer_admins_only(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let root = admin(&app, "root").await;
    let jake = app.register("jake").await;
    app.register("anna").await;

    for (method, path) in [
        (reqwest::Method::GET, "/api/admin/users"),
        (reqwest::Method::POST, "/api/admin/users/anna/disable"),
        (reqwest::Method::POST, "/api/admin/users/anna/enable"),
        (reqwest::Method::DELETE, "/api/admin/articles/any"),
        (
            reqwest::Method::DELETE,
            "/api/admin/articles/any/comments/1",
        ),
    ] {
        let anonymous = app.request(method.clone(), path, None, None).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{path}");
        let user = app.request(method, path, Some(&jake), None).await;
        assert_eq!(user.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(errors(&user, "role"), ["must be admin"]);
    }
    assert_eq!(security_events(&app.metrics().await, "admin_denied"), 5);

    // Newest first, paged, with each account's role and state.
    let page = app.get("/api/admin/users?limit=2", Some(&root)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_eq!(page.body["usersCount"], 3);
    let names: Vec<&str> = page.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["anna", "jake"]);
    let last = app
        .get("/api/admin/users?limit=2&offset=2", Some(&root))
        .await;
    assert_eq!(last.body["users"][0]["username"], "root");
    assert_eq!(last.body["users"][0]["role"], "admin");
    assert_eq!(last.body["users"][0]["disabled"], false);
    assert_eq!(
        app.get("/api/admin/users?limit=0", Some(&root))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.post("/api/admin/users/nobody/disable", Some(&root), json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // An admin cannot lock themselves out.
    let own = app
        .post("/api/admin/users/root/disable", Some(&root), json!({}))
        .await;
    assert_eq!(own.status, StatusCode::FORBIDDEN);
    assert!(errors(&own, "username")[0].contains("your own account"));
}

/// Disabling an account ends every one of its sessions on every replica within the
/// revocation bound (one Redis publish; the test allows 250 ms), refuses its refresh
/// tokens and its password; re-enabling lets it sign in again without reviving anything.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_disabled_account_is_locked_out_at_once_on_every_replica(pool: PgPool) {
    // Held to the end: dropping them stops Redis and deletes the key set.
    let Replicas {
        redis: _redis,
        keys: _keys,
        a,
        b,
    } = Replicas::start(pool).await;
    let root = admin(&a, "root").await;
    a.register("jake").await;
    let (first, first_refresh) = login(&a, "jake").await;
    let (second, _) = login(&b, "jake").await;
    for token in [&first, &second] {
        assert_eq!(b.get("/api/user", Some(token)).await.status, StatusCode::OK);
    }

    let disabled = a
        .post("/api/admin/users/jake/disable", Some(&root), json!({}))
        .await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.text);
    assert_eq!(disabled.body["user"]["disabled"], true);
    assert!(disabled.body["user"]["disabledAt"].is_string());
    let at = Instant::now();
    for token in [&first, &second] {
        while b.get("/api/user", Some(token)).await.status != StatusCode::UNAUTHORIZED {
            assert!(
                at.elapsed() < Duration::from_millis(250),
                "B still accepts a disabled account's token"
            );
        }
        assert_eq!(
            a.get("/api/user", Some(token)).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    eprintln!("B refused both tokens {:?} after the disable", at.elapsed());
    let refreshed = a
        .post(
            "/api/auth/refresh",
            None,
            json!({"refreshToken": first_refresh}),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::UNAUTHORIZED);
    let signin = a
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "jake@example.com", "password": "password-jake"}}),
        )
        .await;
    assert_eq!(signin.status, StatusCode::FORBIDDEN);
    assert_eq!(errors(&signin, "account"), ["is disabled"]);
    // A wrong password learns nothing about the account's state.
    let guess = a
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "jake@example.com", "password": "wrong-password"}}),
        )
        .await;
    assert_eq!(guess.status, StatusCode::UNAUTHORIZED);

    // Disabling again changes nothing (and logs no second action).
    let again = a
        .post("/api/admin/users/jake/disable", Some(&root), json!({}))
        .await;
    assert_eq!(
        again.body["user"]["disabledAt"],
        disabled.body["user"]["disabledAt"]
    );
    let enabled = b
        .post("/api/admin/users/jake/enable", Some(&root), json!({}))
        .await;
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.text);
    assert_eq!(enabled.body["user"]["disabled"], false);
    assert!(enabled.body["user"].get("disabledAt").is_none());
    let (fresh, _) = login(&a, "jake").await;
    assert_eq!(
        b.get("/api/user", Some(&fresh)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        a.get("/api/user", Some(&first)).await.status,
        StatusCode::UNAUTHORIZED,
        "re-enabling revived an ended session"
    );
    let actions = security_events(&a.metrics().await, "admin_action")
        + security_events(&b.metrics().await, "admin_action");
    assert_eq!(actions, 2, "one disable and one enable");
    assert_eq!(
        security_events(&a.metrics().await, "disabled_account_login"),
        1
    );
}

/// A sign-in racing a disable cannot leave a session behind: the login waits for the
/// disable's row lock, then sees the account disabled.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_sign_in_racing_a_disable_starts_no_session(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.register("jake").await;
    let mut disabling = pool.begin().await.unwrap();
    sqlx::query("UPDATE users SET disabled_at = now() WHERE username = 'jake'")
        .execute(&mut *disabling)
        .await
        .unwrap();
    let signin = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/api/users/login");
        async move {
            client
                .post(url)
                .json(&json!({"user": {"email": "jake@example.com", "password": "password-jake"}}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !signin.is_finished(),
        "the sign-in did not wait for the disable"
    );
    disabling.commit().await.unwrap();
    assert_eq!(signin.await.unwrap(), StatusCode::FORBIDDEN);
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM refresh_tokens t JOIN users u ON u.id = t.user_id
         WHERE u.username = 'jake' AND t.revoked_at IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(sessions, 1, "only the registration's session, from before");
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn admins_remove_any_article_or_comment(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let root = admin(&app, "root").await;
    let jake = app.register("jake").await;
    let anna = app.register("anna").await;
    let slug = app.article(&jake, "Spam", &["ads"]).await;
    let comment = app
        .post(
            &format!("/api/articles/{slug}/comments"),
            Some(&anna),
            json!({"comment": {"body": "more spam"}}),
        )
        .await;
    let id = comment.body["comment"]["id"].as_i64().unwrap();

    // The author's own route still refuses other users; the admin route does not.
    assert_eq!(
        app.delete(&format!("/api/articles/{slug}/comments/{id}"), Some(&jake))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let path = format!("/api/admin/articles/{slug}/comments/{id}");
    assert_eq!(
        app.delete(&path, Some(&root)).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete(&path, Some(&root)).await.status,
        StatusCode::NOT_FOUND
    );
    let comments = app
        .get(&format!("/api/articles/{slug}/comments"), None)
        .await;
    assert_eq!(comments.body["commentsCount"], 0);

    let path = format!("/api/admin/articles/{slug}");
    assert_eq!(
        app.delete(&path, Some(&root)).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&format!("/api/articles/{slug}"), None).await.status,
        StatusCode::NOT_FOUND
    );
    let tags = app.get("/api/tags", None).await;
    assert_eq!(tags.body["tags"], json!([]));
    assert_eq!(
        app.delete(&path, Some(&root)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(security_events(&app.metrics().await, "admin_action"), 2);
}
