#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Multi-factor sign-in with TOTP: enrolment through the provisioning URI an
//! authenticator app reads, the login challenge, no replay of a code within its window,
//! single-use recovery codes, throttling, and turning it off. (The RFC 6238 test vectors
//! are unit tests of `auth::totp`.)
mod common;

use common::{TestApp, db, errors};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use totp_rs::TOTP;

/// What an authenticator app shows at `unix` for the URI it scanned.
fn code_at(uri: &str, unix: u64) -> String {
    TOTP::from_url(uri).unwrap().generate(unix)
}

fn now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap()
}

const PASSWORD: &str = "password-jake";

async fn sign_in(app: &TestApp) -> common::Response {
    app.post(
        "/api/users/login",
        None,
        json!({"user": {"email": "jake@example.com", "password": PASSWORD}}),
    )
    .await
}

async fn answer(app: &TestApp, challenge: &str, code: &str) -> common::Response {
    app.post(
        "/api/users/login/mfa",
        None,
        json!({"challenge": challenge, "code": code}),
    )
    .await
}

/// Registers jake and turns TOTP on; returns (access token, provisioning URI, recovery
/// codes, the unix time whose code confirmed the enrolment).
async fn enrolled(app: &TestApp) -> (String, String, Vec<String>, u64) {
    let token = app.register("jake").await;
    let enrol = app
        .post(
            "/api/user/mfa/totp",
            Some(&token),
            json!({"currentPassword": PASSWORD}),
        )
        .await;
    assert_eq!(enrol.status, StatusCode::OK, "{}", enrol.text);
    let uri = enrol.body["totp"]["uri"].as_str().unwrap().to_owned();
    let at = now();
    let confirm = app
        .post(
            "/api/user/mfa/totp/confirm",
            Some(&token),
            json!({"code": code_at(&uri, at)}),
        )
        .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
    let codes = confirm.body["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (token, uri, codes, at)
}

fn challenge_of(res: &common::Response) -> String {
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    assert!(
        res.body["user"].is_null(),
        "a session before the second factor"
    );
    res.body["challenge"]["token"].as_str().unwrap().to_owned()
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn enrolment_needs_the_password_and_a_first_code(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.register("jake").await;
    let status = |token: String| {
        let app = &app;
        async move { app.get("/api/user/mfa", Some(&token)).await.body["mfa"].clone() }
    };
    assert_eq!(status(token.clone()).await["totp"], "off");

    // A stolen access token alone cannot enrol the thief's authenticator.
    let stolen = app
        .post(
            "/api/user/mfa/totp",
            Some(&token),
            json!({"currentPassword": "not-the-password"}),
        )
        .await;
    assert_eq!(stolen.status, StatusCode::FORBIDDEN);
    assert_eq!(errors(&stolen, "currentPassword"), ["is incorrect"]);

    let enrol = app
        .post(
            "/api/user/mfa/totp",
            Some(&token),
            json!({"currentPassword": PASSWORD}),
        )
        .await;
    let uri = enrol.body["totp"]["uri"].as_str().unwrap().to_owned();
    assert!(uri.starts_with("otpauth://totp/Stoa:jake?"), "{uri}");
    assert_eq!(status(token.clone()).await["totp"], "pending");
    // Pending: sign-in still needs only the password.
    assert_eq!(sign_in(&app).await.status, StatusCode::OK);

    let wrong = app
        .post(
            "/api/user/mfa/totp/confirm",
            Some(&token),
            json!({"code": "000000"}),
        )
        .await;
    // (1 in 10^6 × 3 that 000000 is right: the assertion names the code if so.)
    assert_eq!(
        wrong.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        code_at(&uri, now())
    );
    assert_eq!(
        errors(&wrong, "code"),
        ["is invalid, expired or already used"]
    );
    let confirm = app
        .post(
            "/api/user/mfa/totp/confirm",
            Some(&token),
            json!({"code": code_at(&uri, now())}),
        )
        .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
    assert_eq!(confirm.body["recoveryCodes"].as_array().unwrap().len(), 10);
    let on = status(token.clone()).await;
    assert_eq!(on, json!({"totp": "on", "recoveryCodesLeft": 10}));
    // Enrolling again while on is refused; the secret is not replaced.
    let again = app
        .post(
            "/api/user/mfa/totp",
            Some(&token),
            json!({"currentPassword": PASSWORD}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
}

/// Login answers a challenge; the code completes it once. The code that confirmed the
/// enrolment, and any code once used, is refused for the rest of its window.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn sign_in_needs_the_code_and_a_code_works_only_once(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (_, uri, _, confirmed_at) = enrolled(&app).await;

    let challenge = challenge_of(&sign_in(&app).await);
    let replayed = answer(&app, &challenge, &code_at(&uri, confirmed_at)).await;
    assert_eq!(
        replayed.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        replayed.text
    );

    // The next step's code (one step of clock drift is accepted).
    let next = code_at(&uri, confirmed_at + 30);
    let done = answer(&app, &challenge, &next).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    let access = done.body["user"]["token"].as_str().unwrap();
    assert!(done.body["user"]["refreshToken"].is_string());
    assert_eq!(
        app.get("/api/user", Some(access)).await.status,
        StatusCode::OK
    );
    // The challenge is spent, and the same code on a new challenge is a replay.
    assert_eq!(
        answer(&app, &challenge, &next).await.status,
        StatusCode::UNAUTHORIZED
    );
    let fresh = challenge_of(&sign_in(&app).await);
    let again = answer(&app, &fresh, &next).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        errors(&again, "code"),
        ["is invalid, expired or already used"]
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"stoa_security_events_total{event="mfa_failed"} 2"#),
        "{metrics}"
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn recovery_codes_sign_in_once_each(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (token, _, codes, _) = enrolled(&app).await;

    let challenge = challenge_of(&sign_in(&app).await);
    // Typed loosely: lower case, spaces for dashes.
    let typed = codes[3].to_lowercase().replace('-', " ");
    assert_eq!(
        answer(&app, &challenge, &typed).await.status,
        StatusCode::OK
    );
    let challenge = challenge_of(&sign_in(&app).await);
    assert_eq!(
        answer(&app, &challenge, &codes[3]).await.status,
        StatusCode::UNAUTHORIZED,
        "a recovery code worked twice"
    );
    let left = app.get("/api/user/mfa", Some(&token)).await;
    assert_eq!(left.body["mfa"]["recoveryCodesLeft"], 9);
    assert!(
        app.metrics()
            .await
            .contains(r#"stoa_security_events_total{event="recovery_code_used"} 1"#)
    );
}

/// A challenge dies after its attempts or its lifetime; codes are throttled per account.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn challenges_and_codes_are_limited(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), &[("STOA_MFA_CHALLENGE_ATTEMPTS", "3")]).await;
    let (_, uri, _, _) = enrolled(&app).await;

    let challenge = challenge_of(&sign_in(&app).await);
    for _ in 0..3 {
        assert_eq!(
            answer(&app, &challenge, "not-a-code").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let spent = answer(&app, &challenge, &code_at(&uri, now() + 30)).await;
    assert_eq!(spent.status, StatusCode::UNAUTHORIZED);
    assert_eq!(errors(&spent, "token"), ["challenge is invalid or expired"]);

    let challenge = challenge_of(&sign_in(&app).await);
    sqlx::query("UPDATE mfa_challenges SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        answer(&app, &challenge, &code_at(&uri, now() + 30))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // The per-account budget: the fourth code in a minute is a 429, right or not.
    let throttled = TestApp::spawn_with(pool, &[("STOA_RATE_LIMIT_MFA", "3/1m")]).await;
    let challenge = challenge_of(&sign_in(&throttled).await);
    for _ in 0..3 {
        answer(&throttled, &challenge, "not-a-code").await;
    }
    let challenge = challenge_of(&sign_in(&throttled).await);
    assert_eq!(
        answer(&throttled, &challenge, &code_at(&uri, now() + 30))
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn turning_mfa_off_needs_the_password_and_a_code(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (token, uri, codes, _) = enrolled(&app).await;
    let off = |password: &str, code: String| {
        app.post(
            "/api/user/mfa/totp/disable",
            Some(&token),
            json!({"currentPassword": password, "code": code}),
        )
    };
    assert_eq!(
        off("wrong-password", code_at(&uri, now() + 30))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        off(PASSWORD, "123".into()).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        off(PASSWORD, codes[0].clone()).await.status,
        StatusCode::NO_CONTENT
    );
    let status: Value = app.get("/api/user/mfa", Some(&token)).await.body;
    assert_eq!(
        status["mfa"],
        json!({"totp": "off", "recoveryCodesLeft": 0})
    );
    assert_eq!(sign_in(&app).await.status, StatusCode::OK);
}

/// A user who lost the authenticator and the recovery codes: an admin turns MFA off,
/// which also ends the user's sessions (whoever asked must sign in with the password).
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn an_admin_resets_a_lost_second_factor(pool: PgPool) {
    use stoa_api::auth::Role;
    use stoa_api::auth::accounts::{self, Change};
    let app = TestApp::spawn(pool.clone()).await;
    let (token, _, _, _) = enrolled(&app).await;
    app.register("root").await;
    accounts::change(&db(&pool), "root", Change::SetRole(Role::Admin), None)
        .await
        .unwrap();
    let root = common::login(&app, "root").await.0;

    let path = "/api/admin/users/jake/mfa/reset";
    assert_eq!(
        app.post(path, Some(&token), json!({})).await.status,
        StatusCode::FORBIDDEN,
        "only an admin resets"
    );
    assert_eq!(
        app.post(path, Some(&root), json!({})).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get("/api/user", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED,
        "the reset ends the user's sessions"
    );
    assert_eq!(sign_in(&app).await.status, StatusCode::OK);
    assert_eq!(
        app.post(path, Some(&root), json!({})).await.status,
        StatusCode::CONFLICT
    );
}

/// A sign-in waiting for its second factor proved the password of its time: after a
/// password change, or once the second factor is turned off, it cannot be completed.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn pending_challenges_end_with_a_password_change_or_mfa_disable(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let (token, uri, recovery, confirmed_at) = enrolled(&app).await;
    let pending = challenge_of(&sign_in(&app).await);
    let changed = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"password": "a-new-password", "currentPassword": PASSWORD}}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    let late = answer(&app, &pending, &recovery[0]).await;
    assert_eq!(late.status, StatusCode::UNAUTHORIZED, "{}", late.text);
    assert_eq!(errors(&late, "token"), ["challenge is invalid or expired"]);

    // Signed in again (new password, a fresh code), a new challenge is pending when the
    // second factor is turned off.
    let login = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "jake@example.com", "password": "a-new-password"}}),
        )
        .await;
    let challenge = challenge_of(&login);
    let done = answer(&app, &challenge, &code_at(&uri, confirmed_at + 30)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    let token = done.body["user"]["token"].as_str().unwrap().to_owned();
    challenge_of(
        &app.post(
            "/api/users/login",
            None,
            json!({"user": {"email": "jake@example.com", "password": "a-new-password"}}),
        )
        .await,
    );
    let disabled = app
        .post(
            "/api/user/mfa/totp/disable",
            Some(&token),
            json!({"currentPassword": "a-new-password", "code": recovery[1]}),
        )
        .await;
    assert_eq!(disabled.status, StatusCode::NO_CONTENT, "{}", disabled.text);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM mfa_challenges")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "no challenge outlives the second factor");
}
