#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! In a real browser (headless Chromium from Debian `chromium`, through playwright-core,
//! scripts in tests/browser) against a live server: the documentation page
//! (`docs-page.mjs`: every operation of the OpenAPI document listed, one "Try it out"
//! request run), a browser app's cookie session (`cookie-session.mjs`) and the book's
//! "Sign in with …" example page against a real OpenID Provider (`provider-sign-in.mjs`),
//! and the admin console (`console.mjs`).
//! Without node,
//! Chromium or `npm ci` in tests/browser they say SKIP, unless STOA_REQUIRE_TOOLS=1 (as
//! in CI).
mod common;

use std::path::{Path, PathBuf};

use common::TestApp;
use sqlx::PgPool;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// Why the browser test cannot run here, if it cannot.
fn missing_tool() -> Option<String> {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
    };
    if !on_path("node") {
        return Some("node is not installed".into());
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} is missing (Debian package chromium)"));
    }
    for package in ["playwright-core", "axe-core"] {
        if !browser_dir().join("node_modules").join(package).exists() {
            return Some(format!(
                "{package} is not installed (npm ci --prefix tests/browser)"
            ));
        }
    }
    None
}

/// Whether the browser tests can run; panics when they are required and cannot.
fn browser_available() -> bool {
    let Some(reason) = missing_tool() else {
        return true;
    };
    assert!(
        std::env::var("STOA_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "the browser tests are required (STOA_REQUIRE_TOOLS=1): {reason}"
    );
    eprintln!("SKIP: {reason}");
    false
}

/// Runs `tests/browser/<script>` with `args`; its one JSON line of findings.
async fn run_script(script: &str, args: &[String]) -> serde_json::Value {
    let out = tokio::process::Command::new("node")
        .arg(browser_dir().join(script))
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("{seen}");
    seen
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_docs_page_lists_every_operation_and_tries_one_out_in_chromium(pool: PgPool) {
    if !browser_available() {
        return;
    }
    let app = TestApp::spawn(pool).await;
    let token = app.register("reader").await;
    app.article(&token, "Seen in a browser", &["docs-page"])
        .await;

    let seen = run_script("docs-page.mjs", &[app.url("")]).await;
    assert!(seen["operations"].as_u64().unwrap() >= 19, "{seen}");
    assert_eq!(seen["tryItOut"]["code"], "200");
    // The body shown is the live server's answer, not an example from the document.
    assert!(
        seen["tryItOut"]["body"]
            .as_str()
            .unwrap()
            .contains("docs-page"),
        "{seen}"
    );
}

/// A browser app on another origin of the same site (`localhost`, another port) signs
/// in with `X-Stoa-Session: cookie`: Chromium stores the refresh token HttpOnly, Secure
/// and SameSite=Strict where the page cannot read it, sends it on refresh (CORS with
/// credentials for the listed origin) and drops it on logout.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_browser_app_keeps_its_session_in_the_cookie_in_chromium(pool: PgPool) {
    if !browser_available() {
        return;
    }
    let app_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let origin = format!("http://localhost:{app_port}");
    let api = TestApp::spawn_with(pool, &[("STOA_CORS_ALLOWED_ORIGINS", origin.as_str())]).await;
    api.register("browser").await;
    let api_url = format!("http://localhost:{}", api.addr.port());
    let seen = run_script("cookie-session.mjs", &[api_url, app_port.to_string()]).await;
    assert_eq!(seen["signIn"], 200, "{seen}");
    assert_eq!(seen["cookie"]["httpOnly"], true);
    assert_eq!(seen["refresh"], 200);
    assert_eq!(seen["logout"], 204);
}

/// The book's "Sign in with …" example page (docs/examples/sign-in.html) works in a real
/// browser: it lists the providers, the provider (node-oidc-provider) signs the user in,
/// and the page exchanges the one-time code it came back with and shows the user.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_example_sign_in_page_signs_in_with_a_provider_in_chromium(pool: PgPool) {
    if !browser_available() || !common::oidc::available() {
        return;
    }
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (api_port, app_port) = (free(), free());
    let api_url = format!("http://localhost:{api_port}");
    let page = format!("http://localhost:{app_port}/sign-in.html");
    let provider = common::oidc::TestProvider::start(
        &[format!("{api_url}/api/auth/oauth/test/callback")],
        serde_json::json!({"alice": {"email": "alice@example.com", "email_verified": true}}),
    )
    .await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), common::oidc::CLIENT_SECRET).unwrap();
    let providers = serde_json::json!([{
        "name": "test", "type": "oidc", "displayName": "Test OP", "issuer": provider.issuer,
        "clientId": common::oidc::CLIENT_ID, "clientSecretFile": secret.path(),
    }])
    .to_string();
    let listen = format!("127.0.0.1:{api_port}");
    let origin = format!("http://localhost:{app_port}");
    let _api = TestApp::spawn_with(
        pool,
        &[
            ("STOA_LISTEN_ADDR", &listen),
            ("STOA_PUBLIC_URL", &api_url),
            ("STOA_AUTH_PROVIDERS", &providers),
            ("STOA_AUTH_RETURN_TO", &page),
            ("STOA_CORS_ALLOWED_ORIGINS", &origin),
        ],
    )
    .await;
    let seen = run_script(
        "provider-sign-in.mjs",
        &[api_url, app_port.to_string(), "alice".into()],
    )
    .await;
    assert_eq!(seen["status"], "Signed in as alice", "{seen}");
    assert_eq!(seen["flowCookie"]["sameSite"], "Lax");
}

/// The admin console in Chromium, served with its CSP (`console.mjs`): a non-admin is
/// refused; an admin with TOTP signs in by the labelled fields; they disable a user (the
/// API then refuses that user's token), remove a comment (gone from the public API) and
/// retry a dead job (the worker runs it); a form without its CSRF token is refused; every
/// screen passes axe-core with no serious or critical violation; the keyboard reaches
/// "Sign out everywhere"; no page logs a console error or asks another origin for
/// anything. The session cookie is HttpOnly, `SameSite=Strict`, scoped to `/admin`.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_admin_console_works_in_chromium(pool: PgPool) {
    use reqwest::StatusCode;
    use serde_json::json;
    if !browser_available() {
        return;
    }
    // A worker in the process, to run the retried job.
    let app = TestApp::spawn_with(pool, &[("STOA_WORKER_IN_PROCESS", "true")]).await;
    let jake = app.register("jake").await;
    app.register("mallory").await;
    let token = app.register("root").await;
    sqlx::query("UPDATE users SET role = 'admin' WHERE username = 'root'")
        .execute(&app.pool)
        .await
        .unwrap();
    let slug = app.article(&jake, "Cheap watches", &[]).await;
    let comments = format!("/api/articles/{slug}/comments");
    let comment = app
        .post(
            &comments,
            Some(&jake),
            json!({"comment": {"body": "buy now"}}),
        )
        .await;
    let comment_id = comment.body["comment"]["id"].as_i64().unwrap();
    let dead_job: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, state, attempts, max_attempts, last_error, finished_at)
         VALUES ('purge_expired', 'dead', 5, 5, 'statement timeout', now()) RETURNING id",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let totp = common::enable_totp(&app, &token, Some("password-root")).await;
    let now = common::unix_now();
    let code_at = |t: u64| totp.generate(t);

    let scenario = json!({
        "email": "root@example.com", "password": "password-root", "code": code_at(now),
        "disable": "jake", "article": slug, "comment": comment_id, "deadJob": dead_job,
        "nonAdmin": {"email": "mallory@example.com", "password": "password-mallory"},
    });
    let base = format!("http://localhost:{}", app.addr.port());
    let seen = run_script("console.mjs", &[base, scenario.to_string()]).await;
    assert_eq!(seen["heading"], "Overview", "{seen}");
    assert_eq!(seen["cookie"]["sameSite"], "Strict");
    assert_eq!(seen["otherOrigins"], json!([]));
    // What the console did, as the API and the worker see it.
    assert_eq!(
        app.get("/api/user", Some(&jake)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.get(&comments, None).await.body["commentsCount"], 0);
    let mut ran = false;
    for _ in 0..100 {
        let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(dead_job)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if state == "done" {
            ran = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ran, "the retried job ran");
}
