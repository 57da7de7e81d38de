#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Sign-in with an identity provider against a real OpenID Provider (node-oidc-provider,
//! `common::oidc`), driven as a browser would over HTTP: the whole flow, each way an
//! answer is refused, account linking and unlinking, a second factor after the provider.
//! Without node or `npm ci` in tests/browser they say SKIP, unless STOA_REQUIRE_TOOLS=1.
mod common;

use common::oidc::{self, Browser, Landing, OTHER_RETURN_TO, RETURN_TO, TestProvider};
use common::{TestApp, free_port};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

/// Stoa with the test provider; the provider knows these users.
struct Setup {
    app: TestApp,
    provider: TestProvider,
    port: u16,
    _secret: tempfile::NamedTempFile,
}

impl Setup {
    /// `None` (the test says SKIP) where node or the provider is not installed.
    async fn start(pool: PgPool) -> Option<Setup> {
        if !oidc::available() {
            return None;
        }
        let users = users();
        let port = free_port();
        let callback = format!("http://127.0.0.1:{port}/api/auth/oauth/test/callback");
        let provider = TestProvider::start(&[callback], users).await;
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), oidc::CLIENT_SECRET).unwrap();
        let settings = oidc::settings(&provider, port, secret.path());
        let settings: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let app = TestApp::spawn_with(pool, &settings).await;
        Some(Setup {
            app,
            provider,
            port,
            _secret: secret,
        })
    }

    fn authorize(&self) -> String {
        format!(
            "http://127.0.0.1:{}/api/auth/oauth/test/authorize",
            self.port
        )
    }

    /// A full sign-in as provider user `user`, exchanged for Stoa's answer.
    async fn sign_in(&self, browser: &mut Browser, user: &str) -> common::Response {
        let landing = browser.sign_in(&self.authorize(), user).await;
        let code = landing
            .param("stoa_code")
            .unwrap_or_else(|| panic!("{landing:?}"));
        oidc::exchange(&self.app, &code, json!({})).await
    }

    async fn security_events(&self, event: &str) -> u64 {
        self.counter(&format!("stoa_security_events_total{{event=\"{event}\"}}"))
            .await
            .unwrap_or(0)
    }

    /// `stoa_provider_sign_ins_total` for the test provider and `outcome`; `None` when
    /// the series does not exist.
    async fn outcomes(&self, outcome: &str) -> Option<u64> {
        self.counter(&format!(
            "stoa_provider_sign_ins_total{{provider=\"test\",outcome=\"{outcome}\"}}"
        ))
        .await
    }

    async fn counter(&self, series: &str) -> Option<u64> {
        let metrics = self.app.metrics().await;
        let prefix = format!("{series} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().parse().unwrap())
    }
}

fn users() -> Value {
    json!({
        "alice": {"email": "alice@example.com", "email_verified": true, "name": "Alice Liddell"},
        "bob": {"email": "bob@example.com", "email_verified": true},
        "mallory": {"email": "carol@example.com", "email_verified": false},
        "carol-work": {"email": "carol@work.example", "email_verified": true},
    })
}

fn error_of(landing: &Landing) -> Option<String> {
    landing.param("stoa_error")
}

#[sqlx::test(migrations = "../migrations")]
async fn a_first_sign_in_creates_the_account_and_later_ones_sign_in_to_it(pool: PgPool) {
    let Some(setup) = Setup::start(pool).await else {
        return;
    };
    let app = &setup.app;

    let listed = app.get("/api/auth/providers", None).await;
    assert_eq!(
        listed.body,
        json!({"providers": [{"name": "test", "displayName": "Test OP", "authorizeUrl": "/api/auth/oauth/test/authorize"}]})
    );

    let mut browser = Browser::default();
    let first = setup.sign_in(&mut browser, "alice").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let user = &first.body["user"];
    // The email came from the provider's UserInfo (its ID tokens carry only `sub`).
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["username"], "alice");
    let token = user["token"].as_str().unwrap();
    assert!(user["refreshToken"].is_string());
    assert_eq!(
        app.get("/api/user", Some(token)).await.body["user"]["username"],
        "alice"
    );

    // Again: the same account, and in cookie mode the refresh token is a cookie.
    let landing = browser.sign_in(&setup.authorize(), "alice").await;
    let res = app
        .client
        .post(app.url("/api/auth/oauth/exchange"))
        .header("X-Stoa-Session", "cookie")
        .json(&json!({"code": landing.param("stoa_code").unwrap()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Secure-stoa-refresh="), "{cookie}");
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["user"]["username"], "alice");
    assert!(again["user"].get("refreshToken").is_none());

    let identities = app.get("/api/user/identities", Some(token)).await;
    assert_eq!(identities.body["hasPassword"], false);
    assert_eq!(identities.body["identities"][0]["provider"], "test");
    assert_eq!(
        identities.body["identities"][0]["email"],
        "alice@example.com"
    );
    assert_eq!(setup.security_events("provider_sign_in").await, 2);

    // No password to log in with.
    let login = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "alice@example.com", "password": "anything-at-all"}}),
        )
        .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);

    // The one-time code is one time.
    let landing = browser.sign_in(&setup.authorize(), "alice").await;
    let code = landing.param("stoa_code").unwrap();
    assert_eq!(
        oidc::exchange(app, &code, json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(
        oidc::exchange(app, &code, json!({})).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn return_addresses_are_exact_and_unknown_providers_are_404(pool: PgPool) {
    let Some(setup) = Setup::start(pool).await else {
        return;
    };
    let mut browser = Browser::default();
    for evil in [
        "https://evil.example/oauth",
        "https://app.example.com/oauth/../x",
        "https://app.example.com/oauthx",
        "//evil.example",
    ] {
        let url = format!("{}?returnTo={}", setup.authorize(), urlencode(evil));
        let res = browser.get(&url).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{evil}");
    }
    let url = format!(
        "{}?returnTo={}",
        setup.authorize(),
        urlencode(OTHER_RETURN_TO)
    );
    let landing = browser.sign_in(&url, "alice").await;
    assert!(
        landing
            .url
            .as_str()
            .starts_with(&format!("{OTHER_RETURN_TO}?stoa_code=")),
        "{landing:?}"
    );

    let res = browser
        .get(&format!(
            "http://127.0.0.1:{}/api/auth/oauth/nope/authorize",
            setup.port
        ))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn state_is_single_use_and_bound_to_the_browser_that_started(pool: PgPool) {
    let Some(setup) = Setup::start(pool).await else {
        return;
    };
    let mut browser = Browser::default();
    let stoa_host = format!("127.0.0.1:{}", setup.port);

    // A state Stoa never issued.
    let callback = browser.through_provider(&setup.authorize(), "alice").await;
    let forged = callback.replace("state=", "state=forged");
    let landing = browser.callback(&forged).await;
    assert_eq!(error_of(&landing).as_deref(), Some("invalid_state"));
    assert!(landing.url.as_str().starts_with(RETURN_TO));
    // The real one still works, once.
    let landing = browser.callback(&callback).await;
    assert!(landing.param("stoa_code").is_some(), "{landing:?}");
    // Replayed (the same code and state again): the state is gone.
    let replayed = browser.callback(&callback).await;
    assert_eq!(error_of(&replayed).as_deref(), Some("invalid_state"));
    assert!(replayed.param("stoa_code").is_none());

    // Another browser (without the flow's cookie) cannot finish the flow.
    let callback = browser.through_provider(&setup.authorize(), "alice").await;
    let mut other = Browser::default();
    let landing = other.callback(&callback).await;
    assert_eq!(error_of(&landing).as_deref(), Some("invalid_state"));

    // A spent code under a fresh state: the provider refuses it (and its PKCE verifier
    // is another flow's).
    let spent = callback.clone();
    let fresh = browser.through_provider(&setup.authorize(), "alice").await;
    let spent_code = url::Url::parse(&spent)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let mut swapped = url::Url::parse(&fresh).unwrap();
    let pairs: Vec<(String, String)> = swapped
        .query_pairs()
        .map(|(k, v)| {
            if k == "code" {
                (k.into_owned(), spent_code.clone())
            } else {
                (k.into_owned(), v.into_owned())
            }
        })
        .collect();
    swapped.query_pairs_mut().clear().extend_pairs(pairs);
    let landing = browser.callback(swapped.as_str()).await;
    assert_eq!(error_of(&landing).as_deref(), Some("provider_error"));

    // A user who declines at the provider comes back with access_denied.
    browser.forget(&stoa_host);
    let start = browser.get(&setup.authorize()).await;
    let to_provider = start.headers()["location"].to_str().unwrap().to_owned();
    let state = url::Url::parse(&to_provider)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let denied = format!(
        "http://{stoa_host}/api/auth/oauth/test/callback?error=access_denied&state={state}"
    );
    let landing = browser.callback(&denied).await;
    assert_eq!(error_of(&landing).as_deref(), Some("access_denied"));
    assert!(setup.security_events("provider_sign_in_failed").await >= 5);
}

#[sqlx::test(migrations = "../migrations")]
async fn id_tokens_that_fail_validation_are_refused(pool: PgPool) {
    let Some(setup) = Setup::start(pool).await else {
        return;
    };
    let mut browser = Browser::default();
    let cases = [
        (
            "another issuer",
            json!({"iss": "https://accounts.evil.example"}),
        ),
        ("wrong audience", json!({"aud": "someone-else"})),
        (
            "an extra untrusted audience",
            json!({"aud": [oidc::CLIENT_ID, "someone-else"], "azp": oidc::CLIENT_ID}),
        ),
        ("azp of another client", json!({"azp": "someone-else"})),
        ("expired beyond the leeway", json!({"exp": -120})),
        ("issued in the future", json!({"iat": 600})),
        ("issued long ago", json!({"iat": -7200})),
        ("wrong nonce", json!({"nonce": "not-the-flows-nonce"})),
        (
            "wrong at_hash",
            json!({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}),
        ),
        (
            "signed with a key the provider does not publish",
            json!({"foreignKey": true}),
        ),
    ];
    for (case, tamper) in cases {
        setup.provider.tamper(tamper).await;
        let landing = browser.sign_in(&setup.authorize(), "alice").await;
        assert_eq!(
            error_of(&landing).as_deref(),
            Some("invalid_token"),
            "{case}: {landing:?}"
        );
        assert!(landing.param("stoa_code").is_none(), "{case}");
    }
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&setup.app.pool)
        .await
        .unwrap();
    assert_eq!(accounts, 0, "no refused sign-in made an account");
    // SREs see each refusal by provider and outcome.
    assert_eq!(setup.outcomes("invalid_token").await, Some(10));
    assert_eq!(
        setup.outcomes("signed_in").await,
        Some(0),
        "created at zero"
    );
    assert_eq!(setup.outcomes("identity_taken").await, Some(0));

    // Expired by less than the leeway (30 s): accepted.
    setup.provider.tamper(json!({"exp": -5})).await;
    let res = setup.sign_in(&mut browser, "alice").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
}

#[sqlx::test(migrations = "../migrations")]
async fn rotated_provider_keys_are_fetched_again(pool: PgPool) {
    let Some(setup) = Setup::start(pool).await else {
        return;
    };
    let mut browser = Browser::default();
    assert_eq!(
        setup.sign_in(&mut browser, "alice").await.status,
        StatusCode::OK
    );
    // The provider now signs with a key Stoa has not seen, and no longer publishes the old.
    setup.provider.rotate_keys(false).await;
    let res = setup.sign_in(&mut browser, "alice").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    setup.provider.rotate_keys(true).await;
    let res = setup.sign_in(&mut browser, "alice").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_unverified_email_never_matches_nor_makes_an_account(pool: PgPool) {
    let Some(setup) = Setup::start(pool).await else {
        return;
    };
    let app = &setup.app;
    app.register("carol").await;
    let mut browser = Browser::default();
    // mallory's provider account claims carol's email, unverified.
    let landing = browser.sign_in(&setup.authorize(), "mallory").await;
    assert_eq!(error_of(&landing).as_deref(), Some("email_not_verified"));
    assert!(landing.param("stoa_code").is_none());
    let identities: i64 = sqlx::query_scalar("SELECT count(*) FROM user_identities")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((identities, accounts), (0, 1));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_verified_email_of_an_account_links_only_with_its_password(pool: PgPool) {
    let Some(setup) = Setup::start(pool).await else {
        return;
    };
    let app = &setup.app;
    app.register("bob").await; // bob@example.com, password-bob
    let mut browser = Browser::default();

    let landing = browser.sign_in(&setup.authorize(), "bob").await;
    assert_eq!(error_of(&landing).as_deref(), Some("account_exists"));
    let code = landing.param("stoa_code").unwrap();
    let res = oidc::exchange(app, &code, json!({})).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(common::errors(&res, "password")[0].contains("is required"));

    let landing = browser.sign_in(&setup.authorize(), "bob").await;
    let res = oidc::exchange(
        app,
        &landing.param("stoa_code").unwrap(),
        json!({"password": "wrong-password"}),
    )
    .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    let linked: i64 = sqlx::query_scalar("SELECT count(*) FROM user_identities")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(linked, 0, "nothing linked without the password");

    let landing = browser.sign_in(&setup.authorize(), "bob").await;
    let res = oidc::exchange(
        app,
        &landing.param("stoa_code").unwrap(),
        json!({"password": "password-bob"}),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["user"]["username"], "bob");
    // Linked now: straight in.
    let res = setup.sign_in(&mut browser, "bob").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["user"]["username"], "bob");
    assert_eq!(setup.security_events("identity_linked").await, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn users_link_and_unlink_but_keep_one_way_to_sign_in(pool: PgPool) {
    let Some(setup) = Setup::start(pool).await else {
        return;
    };
    let app = &setup.app;
    let carol = app.register("carol").await;
    let mut browser = Browser::default();

    // carol links her work account (another email) while signed in.
    let link = app
        .post(
            "/api/user/identities/test",
            Some(&carol),
            json!({"returnTo": OTHER_RETURN_TO}),
        )
        .await;
    assert_eq!(link.status, StatusCode::OK, "{}", link.text);
    let start = link.body["link"]["authorizeUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let landing = browser.sign_in(&start, "carol-work").await;
    assert_eq!(
        landing.param("stoa_link").as_deref(),
        Some("test"),
        "{landing:?}"
    );
    assert!(landing.url.as_str().starts_with(OTHER_RETURN_TO));
    // Nothing is linked until carol confirms with her own token.
    let linked = app.get("/api/user/identities", Some(&carol)).await;
    assert_eq!(linked.body["identities"], json!([]));
    let code = landing.param("stoa_code").unwrap();
    let confirm = |code: String, token: String| async move {
        app.post(
            "/api/user/identities/test/confirm",
            Some(&token),
            json!({ "code": code }),
        )
        .await
    };
    let res = confirm(code.clone(), carol.clone()).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{}", res.text);
    assert_eq!(
        confirm(code, carol.clone()).await.status,
        StatusCode::UNAUTHORIZED,
        "once"
    );
    // The ticket was single use.
    let landing = browser.get(&start).await;
    let location = landing.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("stoa_error=invalid_link"), "{location}");
    // Signing in with it now signs in to carol.
    let res = setup.sign_in(&mut browser, "carol-work").await;
    assert_eq!(res.body["user"]["username"], "carol");

    // alice signs up with the provider; her identity cannot be linked to carol too.
    assert_eq!(
        setup.sign_in(&mut browser, "alice").await.status,
        StatusCode::OK
    );
    let link = app
        .post("/api/user/identities/test", Some(&carol), json!({}))
        .await;
    let landing = browser
        .sign_in(link.body["link"]["authorizeUrl"].as_str().unwrap(), "alice")
        .await;
    assert_eq!(error_of(&landing).as_deref(), Some("identity_taken"));

    // A link started by carol but finished in bob's browser with bob's provider account
    // (a link address he was tricked into opening) links nothing: bob's app confirms with
    // bob's token, which is not carol's.
    app.delete("/api/user/identities/test", Some(&carol)).await;
    let bob = app.register("bob-local").await;
    let link = app
        .post("/api/user/identities/test", Some(&carol), json!({}))
        .await;
    let mut bobs_browser = Browser::default();
    let landing = bobs_browser
        .sign_in(
            link.body["link"]["authorizeUrl"].as_str().unwrap(),
            "carol-work",
        )
        .await;
    let res = confirm(landing.param("stoa_code").unwrap(), bob).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.text);
    let identities: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_identities WHERE provider = 'test' AND subject = 'carol-work'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(identities, 0);
    // Relinked by carol herself, for what follows.
    let link = app
        .post("/api/user/identities/test", Some(&carol), json!({}))
        .await;
    let landing = browser
        .sign_in(
            link.body["link"]["authorizeUrl"].as_str().unwrap(),
            "carol-work",
        )
        .await;
    let res = confirm(landing.param("stoa_code").unwrap(), carol.clone()).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);

    // carol has a password, so she may unlink her only identity.
    let res = app.delete("/api/user/identities/test", Some(&carol)).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.delete("/api/user/identities/test", Some(&carol))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Twice now: once before the relink above.
    assert_eq!(setup.security_events("identity_unlinked").await, 2);
    assert_eq!(setup.security_events("identity_linked").await, 2);

    // alice has no password: her provider is her only way in.
    let alice = setup.sign_in(&mut browser, "alice").await;
    let alice = alice.body["user"]["token"].as_str().unwrap().to_owned();
    let res = app.delete("/api/user/identities/test", Some(&alice)).await;
    assert_eq!(res.status, StatusCode::CONFLICT);
    assert!(common::errors(&res, "identity")[0].contains("only way to sign in"));
    // Just signed in with the provider, she may set a password without a current one.
    let res = app
        .put(
            "/api/user",
            Some(&alice),
            json!({"user": {"password": "alice-now-has-one"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    let alice = res.body["user"]["token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get("/api/user/identities", Some(&alice)).await.body["hasPassword"],
        true
    );
    let res = app.delete("/api/user/identities/test", Some(&alice)).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let login = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "alice@example.com", "password": "alice-now-has-one"}}),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_passwordless_account_needs_a_recent_provider_sign_in_to_set_a_password(pool: PgPool) {
    let Some(setup) = Setup::start(pool).await else {
        return;
    };
    let app = &setup.app;
    let mut browser = Browser::default();
    let res = setup.sign_in(&mut browser, "alice").await;
    let token = res.body["user"]["token"].as_str().unwrap().to_owned();
    // The session began long ago (as if the access token were stolen later on).
    sqlx::query("UPDATE refresh_tokens SET created_at = now() - interval '1 hour'")
        .execute(&app.pool)
        .await
        .unwrap();
    let res = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"password": "stolen-token-pw"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.text);
    assert!(common::errors(&res, "currentPassword")[0].contains("no password"));
    let res = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"email": "thief@example.com"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
}

#[sqlx::test(migrations = "../migrations")]
async fn mfa_still_applies_after_a_provider_sign_in(pool: PgPool) {
    let Some(setup) = Setup::start(pool).await else {
        return;
    };
    let app = &setup.app;
    let mut browser = Browser::default();
    let res = setup.sign_in(&mut browser, "alice").await;
    let token = res.body["user"]["token"].as_str().unwrap().to_owned();
    // A passwordless account enrols with its recent provider sign-in.
    let totp = common::enable_totp(app, &token, None).await;
    let now = common::unix_now();
    let code_at = |t: u64| totp.generate(t);

    let landing = browser.sign_in(&setup.authorize(), "alice").await;
    let res = oidc::exchange(app, &landing.param("stoa_code").unwrap(), json!({})).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    assert!(
        res.body["user"].is_null(),
        "no tokens before the second factor"
    );
    let challenge = res.body["challenge"]["token"].as_str().unwrap();
    let done = app
        .post(
            "/api/users/login/mfa",
            None,
            json!({"challenge": challenge, "code": code_at(now)}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_eq!(done.body["user"]["username"], "alice");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_disabled_account_cannot_sign_in_with_a_provider(pool: PgPool) {
    let Some(setup) = Setup::start(pool).await else {
        return;
    };
    let mut browser = Browser::default();
    assert_eq!(
        setup.sign_in(&mut browser, "alice").await.status,
        StatusCode::OK
    );
    sqlx::query("UPDATE users SET disabled_at = now()")
        .execute(&setup.app.pool)
        .await
        .unwrap();
    let res = setup.sign_in(&mut browser, "alice").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.text);
    assert!(common::errors(&res, "account")[0].contains("disabled"));
    assert_eq!(setup.security_events("provider_sign_in").await, 1);
}
