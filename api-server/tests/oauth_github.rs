#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Sign-in with GitHub (OAuth 2.0 without OpenID Connect) against a local fake of its
//! endpoints: the authorization redirect, the token exchange (client secret and PKCE
//! checked as GitHub checks them), `GET /user` and `GET /user/emails`.
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use common::oidc::{Browser, RETURN_TO};
use common::{TestApp, free_port};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

const CLIENT_ID: &str = "gh-client";

/// What the fake GitHub knows: the signed-in user, the secret it expects, codes issued.
#[derive(Default)]
struct GitHub {
    user: Value,
    emails: Value,
    secret: String,
    /// code → PKCE challenge
    codes: HashMap<String, String>,
    tokens: Vec<String>,
}

type Fake = Arc<Mutex<GitHub>>;

async fn authorize(State(fake): State<Fake>, Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "read:user user:email");
    let code = format!("code-{}", rand::random::<u64>());
    fake.lock()
        .unwrap()
        .codes
        .insert(code.clone(), q["code_challenge"].clone());
    Redirect::to(&format!(
        "{}?code={code}&state={}",
        q["redirect_uri"], q["state"]
    ))
    .into_response()
}

/// GitHub answers a bad exchange with 200 and an `error` body.
async fn access_token(
    State(fake): State<Fake>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> axum::Json<Value> {
    let mut fake = fake.lock().unwrap();
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{}", fake.secret));
    let authorized = headers
        .get("authorization")
        .is_some_and(|v| v.to_str().unwrap() == format!("Basic {basic}"));
    if !authorized {
        return axum::Json(json!({"error": "incorrect_client_credentials"}));
    }
    let Some(challenge) = fake.codes.remove(&form["code"]) else {
        return axum::Json(json!({"error": "bad_verification_code"}));
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    if computed != challenge {
        return axum::Json(json!({"error": "bad_verification_code"}));
    }
    let token = format!("gho_{}", rand::random::<u64>());
    fake.tokens.push(token.clone());
    axum::Json(
        json!({"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"}),
    )
}

fn bearer_ok(fake: &GitHub, headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| fake.tokens.iter().any(|k| k == t))
}

async fn user(State(fake): State<Fake>, headers: HeaderMap) -> Response {
    let fake = fake.lock().unwrap();
    if !bearer_ok(&fake, &headers) {
        return AxumStatus::UNAUTHORIZED.into_response();
    }
    axum::Json(fake.user.clone()).into_response()
}

async fn emails(State(fake): State<Fake>, headers: HeaderMap) -> Response {
    let fake = fake.lock().unwrap();
    if !bearer_ok(&fake, &headers) {
        return AxumStatus::UNAUTHORIZED.into_response();
    }
    axum::Json(fake.emails.clone()).into_response()
}

async fn start_fake(fake: Fake) -> String {
    let app = axum::Router::new()
        .route("/login/oauth/authorize", get(authorize))
        .route("/login/oauth/access_token", post(access_token))
        .route("/api/user", get(user))
        .route("/api/user/emails", get(emails))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[sqlx::test(migrations = "../migrations")]
async fn github_sign_in_trusts_only_a_verified_primary_email_and_follows_a_rotated_secret(
    pool: PgPool,
) {
    let fake: Fake = Arc::default();
    {
        let mut f = fake.lock().unwrap();
        f.secret = "secret-v1".into();
        f.user = json!({"id": 583231, "login": "octocat", "avatar_url": "https://avatars.example/u/583231"});
        f.emails = json!([
            {"email": "old@octo.example", "primary": false, "verified": true},
            {"email": "octocat@github.example", "primary": true, "verified": true},
        ]);
    }
    let base = start_fake(fake.clone()).await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "secret-v1\n").unwrap();
    let port = free_port();
    let providers = json!([{
        "name": "github", "type": "github", "clientId": CLIENT_ID,
        "clientSecretFile": secret.path(),
        "authorizationUrl": format!("{base}/login/oauth/authorize"),
        "tokenUrl": format!("{base}/login/oauth/access_token"),
        "apiUrl": format!("{base}/api"),
    }])
    .to_string();
    let listen = format!("127.0.0.1:{port}");
    let public = format!("http://127.0.0.1:{port}");
    let app = TestApp::spawn_with(
        pool,
        &[
            ("STOA_LISTEN_ADDR", &listen),
            ("STOA_PUBLIC_URL", &public),
            ("STOA_AUTH_PROVIDERS", &providers),
            ("STOA_AUTH_RETURN_TO", RETURN_TO),
        ],
    )
    .await;
    let start = format!("{public}/api/auth/oauth/github/authorize");
    let listed = app.get("/api/auth/providers", None).await;
    assert_eq!(listed.body["providers"][0]["displayName"], "GitHub");

    let mut browser = Browser::default();
    let landing = browser.sign_in(&start, "").await;
    let code = landing
        .param("stoa_code")
        .unwrap_or_else(|| panic!("{landing:?}"));
    let res = common::oidc::exchange(&app, &code, json!({})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["user"]["username"], "octocat");
    assert_eq!(res.body["user"]["email"], "octocat@github.example");
    assert_eq!(
        res.body["user"]["image"],
        "https://avatars.example/u/583231"
    );
    let subject: String =
        sqlx::query_scalar("SELECT subject FROM user_identities WHERE provider = 'github'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        subject, "583231",
        "the numeric id, which a rename does not change"
    );

    // Another GitHub user whose primary email is unverified: no account.
    {
        let mut f = fake.lock().unwrap();
        f.user = json!({"id": 1, "login": "newbie"});
        f.emails = json!([{"email": "newbie@example.com", "primary": true, "verified": false}]);
    }
    let landing = browser.sign_in(&start, "").await;
    assert_eq!(
        landing.param("stoa_error").as_deref(),
        Some("email_not_verified")
    );

    // GitHub now expects a new client secret that the mounted file does not hold yet.
    {
        let mut f = fake.lock().unwrap();
        f.secret = "secret-v2".into();
        f.user = json!({"id": 583231, "login": "octocat"});
    }
    let landing = browser.sign_in(&start, "").await;
    assert_eq!(
        landing.param("stoa_error").as_deref(),
        Some("provider_error")
    );
    // The Secret is updated: the next sign-in uses it, without a restart.
    std::fs::write(secret.path(), "secret-v2\n").unwrap();
    let landing = browser.sign_in(&start, "").await;
    let res = common::oidc::exchange(&app, &landing.param("stoa_code").unwrap(), json!({})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["user"]["username"], "octocat");
}
