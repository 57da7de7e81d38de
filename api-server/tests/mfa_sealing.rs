#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Second-factor secrets at rest: stored only sealed (XChaCha20-Poly1305, bound to the
//! user), rows from before encryption sealed by the server, and key rotation: a new key
//! set is picked up, every secret is sealed again under it, and the retired key can then
//! be dropped while sign-in keeps working.
mod common;

use common::{TestApp, eventually, stoa_api, url_of};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use stoa_api::auth::sealing::{SecretSealer, StoredSecret};
use stoa_contract::mfa_keys::{MfaKeySetFile, generate_mfa_keyset};
use totp_rs::TOTP;
use uuid::Uuid;

const PASSWORD: &str = "password-jake";

fn now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap()
}

/// A keys directory holding a fresh MFA key set.
fn keys_dir() -> (tempfile::TempDir, MfaKeySetFile) {
    let dir = tempfile::tempdir().unwrap();
    let set = generate_mfa_keyset();
    set.write_dir(dir.path()).unwrap();
    (dir, set)
}

async fn spawn(pool: &PgPool, dir: &tempfile::TempDir) -> TestApp {
    TestApp::spawn_with(
        pool.clone(),
        &[("STOA_MFA_KEYS_DIR", dir.path().to_str().unwrap())],
    )
    .await
}

/// Turns TOTP on for the user registered as `name`; returns the authenticator (built
/// from the provisioning URI, as an app would) and the unix time whose code confirmed it.
async fn enrol(app: &TestApp, name: &str, token: &str) -> (TOTP, u64) {
    let enrol = app
        .post(
            "/api/user/mfa/totp",
            Some(token),
            json!({"currentPassword": format!("password-{name}")}),
        )
        .await;
    assert_eq!(enrol.status, StatusCode::OK, "{}", enrol.text);
    let totp = TOTP::from_url(enrol.body["totp"]["uri"].as_str().unwrap()).unwrap();
    let at = now() - 30;
    let confirm = app
        .post(
            "/api/user/mfa/totp/confirm",
            Some(token),
            json!({"code": totp.generate(at)}),
        )
        .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
    (totp, at)
}

/// A full sign-in with password and the code for `unix`.
async fn sign_in(app: &TestApp, code: &str) -> common::Response {
    let first = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "jake@example.com", "password": PASSWORD}}),
        )
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    let challenge = first.body["challenge"]["token"].as_str().unwrap();
    app.post(
        "/api/users/login/mfa",
        None,
        json!({"challenge": challenge, "code": code}),
    )
    .await
}

async fn stored(pool: &PgPool, user: Uuid) -> StoredSecret {
    sqlx::query_as("SELECT secret, sealed_secret, secret_key_id FROM user_totp WHERE user_id = $1")
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn user_id(pool: &PgPool, name: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn secrets_are_stored_sealed_under_the_mounted_key_and_bound_to_their_user(pool: PgPool) {
    let (dir, set) = keys_dir();
    let app = spawn(&pool, &dir).await;
    let jake = app.register("jake").await;
    let (totp, _) = enrol(&app, "jake", &jake).await;
    let jake_id = user_id(&pool, "jake").await;
    let row = stored(&pool, jake_id).await;
    assert!(row.clear.is_none(), "no secret in the clear");
    let sealed = row.sealed.clone().unwrap();
    assert!(
        !sealed.windows(totp.secret.len()).any(|w| w == totp.secret),
        "the raw secret does not appear in the sealed bytes"
    );
    assert_eq!(row.kid.as_deref(), Some(set.keys[0].kid.as_str()));
    // Whoever holds the mounted key (and only they) can open it, for jake only.
    let sealer = SecretSealer::from_file(&set).unwrap();
    assert_eq!(sealer.open_row(jake_id, &row).unwrap(), totp.secret);
    assert!(sealer.open_row(Uuid::new_v4(), &row).is_err());
    assert!(
        SecretSealer::from_file(&generate_mfa_keyset())
            .unwrap()
            .open_row(jake_id, &row)
            .is_err()
    );

    // A sealed secret copied onto another account's row does not sign that account in
    // with jake's codes (the user id is part of the sealing).
    let bob = app.register("bob").await;
    enrol(&app, "bob", &bob).await;
    let bob_id = user_id(&pool, "bob").await;
    sqlx::query("UPDATE user_totp SET sealed_secret = $2, last_step = 0 WHERE user_id = $1")
        .bind(bob_id)
        .bind(&sealed)
        .execute(&pool)
        .await
        .unwrap();
    let first = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "bob@example.com", "password": "password-bob"}}),
        )
        .await;
    let challenge = first.body["challenge"]["token"].as_str().unwrap();
    let answer = app
        .post(
            "/api/users/login/mfa",
            None,
            json!({"challenge": challenge, "code": totp.generate(now())}),
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        answer.text
    );
    assert!(answer.body["user"].is_null());
    assert!(!answer.text.contains(&totp.get_secret_base32()));

    // jake still signs in.
    let answer = sign_in(&app, &totp.generate(now())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn secrets_stored_in_the_clear_before_encryption_are_sealed_by_the_server(pool: PgPool) {
    let (dir, set) = keys_dir();
    let app = spawn(&pool, &dir).await;
    app.register("jake").await;
    let jake_id = user_id(&pool, "jake").await;
    // A row as the previous release wrote it.
    let secret = b"12345678901234567890".to_vec();
    sqlx::query(
        "INSERT INTO user_totp (user_id, secret, confirmed_at, last_step) VALUES ($1, $2, now(), 0)",
    )
    .bind(jake_id)
    .bind(&secret)
    .execute(&pool)
    .await
    .unwrap();
    // It works as it is, and a starting server seals it.
    let totp = TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        0,
        30,
        secret.clone(),
        None,
        "j".into(),
    )
    .unwrap();
    assert_eq!(
        sign_in(&app, &totp.generate(now() - 30)).await.status,
        StatusCode::OK
    );
    let restarted = spawn(&pool, &dir).await;
    eventually("the clear row is sealed", || async {
        stored(&pool, jake_id).await.clear.is_none()
    })
    .await;
    let row = stored(&pool, jake_id).await;
    assert_eq!(row.kid.as_deref(), Some(set.keys[0].kid.as_str()));
    assert_eq!(
        SecretSealer::from_file(&set)
            .unwrap()
            .open_row(jake_id, &row)
            .unwrap(),
        secret
    );
    let answer = sign_in(&restarted, &totp.generate(now())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_rotated_key_set_reseals_every_secret_and_the_old_key_can_then_be_dropped(pool: PgPool) {
    let (dir, mut set) = keys_dir();
    let app = spawn(&pool, &dir).await;
    let jake = app.register("jake").await;
    let (totp, enrolled_at) = enrol(&app, "jake", &jake).await;
    let jake_id = user_id(&pool, "jake").await;
    let old = set.keys[0].kid.clone();

    // `stoa-api mfa-keys rotate`, as an operator of the cluster runs it on the Secret.
    let rotate = stoa_api()
        .args(["mfa-keys", "rotate", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    set = MfaKeySetFile::read_dir_with_bytes(dir.path()).unwrap().0;
    let new = set.keys[0].kid.clone();
    assert_ne!(new, old);
    eventually("the running server reseals under the new key", || async {
        stored(&pool, jake_id).await.kid.as_deref() == Some(new.as_str())
    })
    .await;

    // Nothing is sealed under the old key now: the CLI lets it go.
    let url = url_of(&pool);
    let drop = stoa_api()
        .env("STOA_DATABASE_URL", &url)
        .args([
            "mfa-keys",
            "drop",
            "--dir",
            dir.path().to_str().unwrap(),
            "--kid",
            &old,
        ])
        .output()
        .unwrap();
    assert!(
        drop.status.success(),
        "{}",
        String::from_utf8_lossy(&drop.stderr)
    );
    let status = stoa_api()
        .env("STOA_DATABASE_URL", &url)
        .args(["mfa-keys", "status"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        format!("{new}\t1\n")
    );
    // The server picks up the smaller set too, and jake signs in with his authenticator.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let answer = sign_in(&app, &totp.generate(enrolled_at + 60)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_retired_key_that_still_seals_secrets_cannot_be_dropped(pool: PgPool) {
    let (dir, mut set) = keys_dir();
    let app = TestApp::spawn(pool.clone()).await;
    app.register("jake").await;
    let jake_id = user_id(&pool, "jake").await;
    let sealed = SecretSealer::from_file(&set)
        .unwrap()
        .seal(jake_id, b"01234567890123456789");
    sqlx::query(
        "INSERT INTO user_totp (user_id, sealed_secret, secret_key_id, confirmed_at) VALUES ($1, $2, $3, now())",
    )
    .bind(jake_id)
    .bind(&sealed.bytes)
    .bind(&sealed.kid)
    .execute(&pool)
    .await
    .unwrap();
    let old = set.keys[0].kid.clone();
    set.rotate();
    set.write_dir(dir.path()).unwrap();
    let url = url_of(&pool);
    let dir_arg = dir.path().to_str().unwrap();
    let cli = |args: &[&str]| {
        stoa_api()
            .env("STOA_DATABASE_URL", &url)
            .env("STOA_MFA_KEYS_DIR", dir_arg)
            .args(args)
            .output()
            .unwrap()
    };
    let refused = cli(&["mfa-keys", "drop", "--dir", dir_arg, "--kid", &old]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("1 second-factor secrets are still sealed"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let reseal = cli(&["mfa-keys", "reseal"]);
    assert!(
        reseal.status.success(),
        "{}",
        String::from_utf8_lossy(&reseal.stderr)
    );
    assert!(String::from_utf8_lossy(&reseal.stdout).starts_with("resealed 1 under"));
    assert!(
        cli(&["mfa-keys", "drop", "--dir", dir_arg, "--kid", &old])
            .status
            .success()
    );
    let file = MfaKeySetFile::read_dir_with_bytes(dir.path()).unwrap().0;
    assert_eq!(file.keys.len(), 1);
}
