#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod common;

use common::{TestApp, errors};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn register_returns_the_user_with_a_working_token(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app
        .post("/api/users", None, json!({"user": {"username": "jake", "email": "jake@jake.jake", "password": "jakejake"}}))
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    let user = &res.body["user"];
    assert_eq!(user["username"], "jake");
    assert_eq!(user["email"], "jake@jake.jake");
    assert_eq!(user["bio"], json!(null));
    assert_eq!(user["image"], json!(null));
    let token = user["token"].as_str().unwrap();

    let me = app.get("/api/user", Some(token)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["user"]["username"], "jake");

    // Bearer works too.
    let bearer = app
        .client
        .get(app.url("/api/user"))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn passwords_are_stored_as_argon2id_hashes(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.register("alice").await;
    let hash: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE username = 'alice'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("password-alice"));
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn registration_validates_every_field(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app
        .post(
            "/api/users",
            None,
            json!({"user": {"username": "", "email": "not-an-email", "password": "short"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!errors(&res, "username").is_empty());
    assert_eq!(errors(&res, "email"), ["is invalid"]);
    assert!(!errors(&res, "password").is_empty());

    let missing = app
        .post("/api/users", None, json!({"user": {"username": "x"}}))
        .await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        errors(&missing, "body")[0].contains("missing field"),
        "{}",
        missing.text
    );

    let garbage = app
        .client
        .post(app.url("/api/users"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = garbage.json().await.unwrap();
    assert_eq!(body["errors"]["body"][0], "is not valid JSON");
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn usernames_and_emails_are_unique_and_emails_ignore_case(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("jake").await;
    let dup_name = app
        .post("/api/users", None, json!({"user": {"username": "jake", "email": "other@example.com", "password": "password1"}}))
        .await;
    assert_eq!(dup_name.status, StatusCode::CONFLICT);
    assert_eq!(errors(&dup_name, "username"), ["has already been taken"]);

    let dup_email = app
        .post("/api/users", None, json!({"user": {"username": "other", "email": "JAKE@Example.com", "password": "password1"}}))
        .await;
    assert_eq!(dup_email.status, StatusCode::CONFLICT);
    assert_eq!(errors(&dup_email, "email"), ["has already been taken"]);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn concurrent_duplicate_registrations_create_exactly_one_user(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let attempts = (0..12).map(|i| {
        app.post(
            "/api/users",
            None,
            json!({"user": {"username": format!("racer{i}"), "email": "race@example.com", "password": "password1"}}),
        )
    });
    let results = futures::future::join_all(attempts).await;
    let created = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let rejected = results
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, rejected), (1, 11));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn login_accepts_the_right_password_and_hides_which_part_was_wrong(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("jake").await;
    let ok = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "Jake@example.com", "password": "password-jake"}}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert!(ok.body["user"]["token"].as_str().unwrap().len() > 20);

    let wrong_password = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "jake@example.com", "password": "nope-nope"}}),
        )
        .await;
    let unknown_email = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "ghost@example.com", "password": "nope-nope"}}),
        )
        .await;
    assert_eq!(wrong_password.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown_email.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_password.text, unknown_email.text);

    let blank = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "", "password": ""}}),
        )
        .await;
    assert_eq!(blank.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn protected_routes_reject_missing_malformed_and_foreign_tokens(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let missing = app.get("/api/user", None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert!(missing.headers.contains_key("www-authenticate"));
    assert_eq!(
        app.get("/api/user", Some("garbage")).await.status,
        StatusCode::UNAUTHORIZED
    );

    // A token signed by another key set (another server) is refused.
    let other = TestApp::spawn(app.pool.clone()).await;
    let foreign = other.register("mallory").await;
    assert_eq!(
        app.get("/api/user", Some(&foreign)).await.status,
        StatusCode::UNAUTHORIZED
    );

    let basic = app
        .client
        .get(app.url("/api/user"))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn update_user_changes_fields_and_clears_with_null(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.register("jake").await;
    let res = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"bio": "I like to skateboard", "image": "https://i.stack.imgur.com/xHWG8.jpg",
                "email": "new@example.com", "currentPassword": "password-jake"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["user"]["bio"], "I like to skateboard");
    assert_eq!(res.body["user"]["email"], "new@example.com");

    let cleared = app
        .put("/api/user", Some(&token), json!({"user": {"bio": null}}))
        .await;
    assert_eq!(cleared.body["user"]["bio"], json!(null));
    assert_eq!(
        cleared.body["user"]["image"],
        "https://i.stack.imgur.com/xHWG8.jpg"
    );

    // The new password works, the old one does not.
    let pw = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"password": "brand-new-pass", "currentPassword": "password-jake"}}),
        )
        .await;
    assert_eq!(pw.status, StatusCode::OK, "{}", pw.text);
    let login = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "new@example.com", "password": "brand-new-pass"}}),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK);
    let old = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "new@example.com", "password": "password-jake"}}),
        )
        .await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn changing_the_password_or_email_needs_the_current_password(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // A stolen access token alone cannot take over the account.
    let stolen = app.register("jake").await;
    for change in [
        json!({"password": "attacker-password"}),
        json!({"email": "attacker@example.com"}),
        json!({"email": "attacker@example.com", "currentPassword": ""}),
    ] {
        let res = app
            .put("/api/user", Some(&stolen), json!({"user": change}))
            .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.text);
        assert_eq!(
            errors(&res, "currentPassword"),
            ["is required to change the password or the email"]
        );
    }
    let wrong = app
        .put(
            "/api/user",
            Some(&stolen),
            json!({"user": {"password": "attacker-password", "currentPassword": "guess-guess"}}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(errors(&wrong, "currentPassword"), ["is incorrect"]);
    // Nothing changed: the owner still signs in with the old credentials.
    let login = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "jake@example.com", "password": "password-jake"}}),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK);

    // RealWorld clients resend the unchanged email with every settings update.
    let settings = app
        .put(
            "/api/user",
            Some(&stolen),
            json!({"user": {"email": "JAKE@example.com", "bio": "hi", "username": "jake"}}),
        )
        .await;
    assert_eq!(settings.status, StatusCode::OK, "{}", settings.text);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn update_user_rejects_empty_invalid_and_taken_values(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.register("jake").await;
    app.register("jane").await;
    let empty = app
        .put("/api/user", Some(&token), json!({"user": {}}))
        .await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    let taken = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"username": "jane"}}),
        )
        .await;
    assert_eq!(errors(&taken, "username"), ["has already been taken"]);
    let bad_image = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"image": "javascript:alert(1)"}}),
        )
        .await;
    assert_eq!(bad_image.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.put("/api/user", None, json!({"user": {"bio": "x"}}))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn usernames_are_unique_ignoring_case(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("jake").await;
    let res = app
        .post(
            "/api/users",
            None,
            json!({"user": {"username": "Jake", "email": "other@example.com", "password": "password1"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{}", res.text);
    assert_eq!(errors(&res, "username"), ["has already been taken"]);
    let jane = app.register("jane").await;
    let rename = app
        .put(
            "/api/user",
            Some(&jane),
            json!({"user": {"username": "JAKE"}}),
        )
        .await;
    assert_eq!(errors(&rename, "username"), ["has already been taken"]);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn hashes_made_with_older_parameters_are_upgraded_at_login(pool: PgPool) {
    use argon2::PasswordHasher;
    let app = TestApp::spawn(pool.clone()).await;
    app.register("jake").await;
    // A hash from a release with other argon2 parameters (the test server uses m=1024, t=1).
    let old = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(2048, 2, 1, None).unwrap(),
    )
    .hash_password(b"password-jake")
    .unwrap()
    .to_string();
    sqlx::query("UPDATE users SET password_hash = $1 WHERE username = 'jake'")
        .bind(&old)
        .execute(&pool)
        .await
        .unwrap();
    let login = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "jake@example.com", "password": "password-jake"}}),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK);
    common::eventually("the hash is upgraded", || async {
        let stored: String =
            sqlx::query_scalar("SELECT password_hash FROM users WHERE username = 'jake'")
                .fetch_one(&pool)
                .await
                .unwrap();
        stored.contains("m=1024,t=1")
    })
    .await;
    // And the password still works.
    let again = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "jake@example.com", "password": "password-jake"}}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn update_fields_are_either_absent_or_valued(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.register("jake").await;
    // `null` is not "absent" for these fields: the document says string, the server agrees.
    let null = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"username": null}}),
        )
        .await;
    assert_eq!(
        null.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        null.text
    );
    // Only the current password: a valid request that changes nothing.
    let noop = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"currentPassword": "password-jake"}}),
        )
        .await;
    assert_eq!(noop.status, StatusCode::OK, "{}", noop.text);
    assert_eq!(noop.body["user"]["username"], "jake");
    // Following yourself is well formed but not allowed.
    let own = app
        .post("/api/profiles/jake/follow", Some(&token), json!({}))
        .await;
    assert_eq!(own.status, StatusCode::FORBIDDEN, "{}", own.text);
}
