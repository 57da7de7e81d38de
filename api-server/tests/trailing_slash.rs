#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Every operation answers the same with and without one trailing slash (RealWorld
//! clients such as the official Angular one post to `/api/articles/`).
//!
//! Two servers over two databases loaded with the same demo data set walk every operation
//! of the served OpenAPI document in the same order, one with canonical paths and one with
//! a slash appended; their answers must match in status, headers and body, with only
//! values that differ between any two databases (timestamps, random ids, tokens) masked.
mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{RedisServer, TestApp, eventually, shared_keys, test_env};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, PgPool};
use stoa_api::config::{Config, Env};

const ORIGIN: &str = "http://localhost:4200";
const REQUEST_ID: &str = "3f1d7b0e-0000-4000-8000-000000000001";

/// One operation of the walk: the document's method and path template, the concrete path,
/// and the body (from the caller's own refresh token where one is needed).
struct Step {
    method: Method,
    template: &'static str,
    path: &'static str,
    body: fn(&Caller) -> Option<Value>,
}

/// Alice (an admin) on one of the two servers.
struct Caller {
    token: String,
    refresh_token: String,
}

fn none(_: &Caller) -> Option<Value> {
    None
}

/// The walk: reads first, then writes that leave the data as they found it, then writes
/// that remove things, and signing out last.
fn steps() -> Vec<Step> {
    use Method as M;
    let step = |method, template, path, body| Step {
        method,
        template,
        path,
        body,
    };
    vec![
        step(
            M::GET,
            "/.well-known/jwks.json",
            "/.well-known/jwks.json",
            none,
        ),
        step(M::GET, "/healthz", "/healthz", none),
        step(M::GET, "/readyz", "/readyz", none),
        step(M::GET, "/api/tags", "/api/tags", none),
        step(
            M::GET,
            "/api/articles",
            "/api/articles?limit=3&tag=web",
            none,
        ),
        step(M::GET, "/api/articles/feed", "/api/articles/feed", none),
        step(
            M::GET,
            "/api/articles/{slug}",
            "/api/articles/getting-started-with-axum",
            none,
        ),
        step(
            M::GET,
            "/api/articles/{slug}/comments",
            "/api/articles/getting-started-with-axum/comments",
            none,
        ),
        step(
            M::GET,
            "/api/profiles/{username}",
            "/api/profiles/bob",
            none,
        ),
        step(M::GET, "/api/user", "/api/user", none),
        step(M::GET, "/api/user/mfa", "/api/user/mfa", none),
        step(M::GET, "/api/user/identities", "/api/user/identities", none),
        step(
            M::POST,
            "/api/user/identities/{provider}",
            "/api/user/identities/google",
            none,
        ),
        step(
            M::DELETE,
            "/api/user/identities/{provider}",
            "/api/user/identities/google",
            none,
        ),
        step(
            M::POST,
            "/api/user/identities/{provider}/confirm",
            "/api/user/identities/google/confirm",
            |_| Some(json!({"code": "not-a-code"})),
        ),
        step(M::GET, "/api/auth/providers", "/api/auth/providers", none),
        step(
            M::GET,
            "/api/auth/oauth/{provider}/authorize",
            "/api/auth/oauth/google/authorize",
            none,
        ),
        step(
            M::GET,
            "/api/auth/oauth/{provider}/callback",
            "/api/auth/oauth/google/callback",
            none,
        ),
        step(
            M::POST,
            "/api/auth/oauth/exchange",
            "/api/auth/oauth/exchange",
            |_| Some(json!({"code": "not-a-code"})),
        ),
        step(M::GET, "/api/admin/users", "/api/admin/users", none),
        step(M::POST, "/api/user/export", "/api/user/export", none),
        step(M::GET, "/api/user/export", "/api/user/export", none),
        step(
            M::POST,
            "/api/profiles/{username}/follow",
            "/api/profiles/dave/follow",
            none,
        ),
        step(
            M::DELETE,
            "/api/profiles/{username}/follow",
            "/api/profiles/dave/follow",
            none,
        ),
        step(
            M::POST,
            "/api/articles/{slug}/favorite",
            "/api/articles/transactions-for-every-write/favorite",
            none,
        ),
        step(
            M::DELETE,
            "/api/articles/{slug}/favorite",
            "/api/articles/transactions-for-every-write/favorite",
            none,
        ),
        step(M::POST, "/api/articles", "/api/articles", |_| {
            Some(json!({"article": {
                "title": "Slashes", "description": "both forms", "body": "one body",
                "tagList": ["web"],
            }}))
        }),
        step(
            M::PUT,
            "/api/articles/{slug}",
            "/api/articles/slashes",
            |_| Some(json!({"article": {"body": "edited"}})),
        ),
        step(
            M::POST,
            "/api/articles/{slug}/comments",
            "/api/articles/slashes/comments",
            |_| Some(json!({"comment": {"body": "first"}})),
        ),
        // The sixth comment: the demo data set wrote five in both databases.
        step(
            M::DELETE,
            "/api/articles/{slug}/comments/{id}",
            "/api/articles/slashes/comments/6",
            none,
        ),
        step(
            M::DELETE,
            "/api/articles/{slug}",
            "/api/articles/slashes",
            none,
        ),
        step(M::PUT, "/api/user", "/api/user", |_| {
            Some(json!({"user": {"bio": "Now with slashes."}}))
        }),
        step(M::POST, "/api/users", "/api/users", |_| {
            Some(json!({"user": {
                "username": "erin", "email": "erin@example.com", "password": "erin-password",
            }}))
        }),
        step(M::POST, "/api/users/login", "/api/users/login", |_| {
            Some(json!({"user": {
                "email": "erin@example.com", "password": "erin-password",
            }}))
        }),
        step(
            M::POST,
            "/api/users/login/mfa",
            "/api/users/login/mfa",
            |_| Some(json!({"challenge": "not-a-challenge", "code": "000000"})),
        ),
        step(M::POST, "/api/user/mfa/totp", "/api/user/mfa/totp", |_| {
            Some(json!({"currentPassword": stoa_api::seed::DEMO_PASSWORD}))
        }),
        step(
            M::POST,
            "/api/user/mfa/totp/confirm",
            "/api/user/mfa/totp/confirm",
            |_| Some(json!({"code": "not-a-code"})),
        ),
        step(
            M::POST,
            "/api/user/mfa/totp/disable",
            "/api/user/mfa/totp/disable",
            |_| {
                Some(json!({
                    "currentPassword": stoa_api::seed::DEMO_PASSWORD, "code": "000000",
                }))
            },
        ),
        step(
            M::POST,
            "/api/admin/users/{username}/disable",
            "/api/admin/users/erin/disable",
            none,
        ),
        step(
            M::POST,
            "/api/admin/users/{username}/enable",
            "/api/admin/users/erin/enable",
            none,
        ),
        step(
            M::POST,
            "/api/admin/users/{username}/sessions/end",
            "/api/admin/users/erin/sessions/end",
            none,
        ),
        step(
            M::POST,
            "/api/admin/users/{username}/mfa/reset",
            "/api/admin/users/erin/mfa/reset",
            none,
        ),
        step(
            M::DELETE,
            "/api/admin/articles/{slug}/comments/{id}",
            "/api/admin/articles/getting-started-with-axum/comments/1",
            none,
        ),
        step(
            M::DELETE,
            "/api/admin/articles/{slug}",
            "/api/admin/articles/caching-reads-with-redis",
            none,
        ),
        step(
            M::POST,
            "/api/auth/refresh",
            "/api/auth/refresh",
            |caller| Some(json!({"refreshToken": caller.refresh_token})),
        ),
        step(M::POST, "/api/auth/logout", "/api/auth/logout", none),
    ]
}

/// The operations of the served document, as `METHOD template`.
fn documented_operations(document: &Value) -> BTreeSet<String> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                operations.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    operations
}

/// A server over its own database loaded with the demo data set, and alice (made an admin)
/// signed in on it.
async fn demo_server(pool: PgPool, env: &[(&str, &str)]) -> (TestApp, Caller) {
    let settings = test_env(env);
    let config = Config::from_env(&Env::new(move |k| settings.get(k).cloned()), true).unwrap();
    let state = stoa_api::app::App::state_only(config, Some(pool.clone())).unwrap();
    let db = common::db(&pool);
    stoa_api::seed::load(
        stoa_api::http::router(state),
        &db,
        stoa_api::seed::WhenNotEmpty::Refuse,
    )
    .await
    .unwrap();
    stoa_api::auth::accounts::change(
        &db,
        "alice",
        stoa_api::auth::accounts::Change::SetRole(stoa_api::auth::Role::Admin),
        None,
    )
    .await
    .unwrap();
    let app = TestApp::spawn_with(pool, env).await;
    let login = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "alice@example.com", "password": stoa_api::seed::DEMO_PASSWORD}}),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    let caller = Caller {
        token: login.body["user"]["token"].as_str().unwrap().to_owned(),
        refresh_token: login.body["user"]["refreshToken"]
            .as_str()
            .unwrap()
            .to_owned(),
    };
    (app, caller)
}

/// A second database beside the test's own, migrated, dropped when the test ends.
struct TwinDatabase {
    admin_url: String,
    name: String,
    pool: PgPool,
}

impl TwinDatabase {
    async fn beside(pool: &PgPool) -> TwinDatabase {
        let base = common::url_of(pool);
        let original = pool.connect_options().get_database().unwrap().to_owned();
        // PostgreSQL cuts names at 63 bytes and sqlx's test names are 62: a short name of
        // its own, derived from the original so a rerun drops a failed run's twin.
        let name = format!("twin{}", &original[original.len().saturating_sub(40)..]);
        let admin_url = base.replace(&format!("/{original}"), "/postgres");
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\""
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap();
        let twin = PgPool::connect(&base.replace(&format!("/{original}"), &format!("/{name}")))
            .await
            .unwrap();
        stoa_api::db::MIGRATOR.run(&twin).await.unwrap();
        TwinDatabase {
            admin_url,
            name,
            pool: twin,
        }
    }

    async fn drop_now(self) {
        self.pool.close().await;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}

/// Values that differ between two databases loaded alike: when things happened, random
/// ids, and anything signed or random (tokens, challenges, TOTP secrets).
fn is_volatile(key: &str, value: &Value) -> bool {
    const KEYS: [&str; 7] = [
        // Cursors encode the creation time of the page's last row.
        "nextCursor",
        "token",
        "refreshToken",
        "secret",
        "otpauthUri",
        "otpauthUrl",
        "uri",
    ];
    let Some(text) = value.as_str() else {
        return false;
    };
    KEYS.contains(&key)
        || chrono::DateTime::parse_from_rfc3339(text).is_ok()
        || uuid::Uuid::parse_str(text).is_ok()
}

fn masked(value: &Value, key: &str) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), masked(v, k))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| masked(v, key)).collect()),
        other if is_volatile(key, other) => json!("<volatile>"),
        other => other.clone(),
    }
}

/// Headers whose values follow the body's volatile values or the clock.
const VOLATILE_HEADERS: [&str; 5] = [
    "date",
    "etag",
    "content-length",
    "ratelimit-reset",
    "set-cookie",
];

/// What must be equal between the two forms' answers.
fn comparable(res: &common::Response) -> Value {
    let mut headers = BTreeMap::new();
    for name in res.headers.keys() {
        let values: Vec<String> = res
            .headers
            .get_all(name)
            .iter()
            .map(|v| {
                let v = v.to_str().unwrap_or("<binary>");
                if name.as_str() == "set-cookie" {
                    // The cookie's value is a token; its name and attributes must match.
                    let (cookie, attributes) = v.split_once(';').unwrap_or((v, ""));
                    let name = cookie.split('=').next().unwrap_or_default();
                    format!("{name}=<volatile>;{attributes}")
                } else if VOLATILE_HEADERS.contains(&name.as_str()) {
                    "<volatile>".to_owned()
                } else {
                    v.to_owned()
                }
            })
            .collect();
        headers.insert(name.as_str().to_owned(), values);
    }
    json!({
        "status": res.status.as_u16(),
        "headers": headers,
        "body": if res.body.is_null() { json!(res.text) } else { masked(&res.body, "") },
    })
}

async fn send(app: &TestApp, caller: &Caller, step: &Step, path: &str) -> common::Response {
    let mut request = app
        .client
        .request(step.method.clone(), app.url(path))
        .header("Authorization", format!("Token {}", caller.token))
        .header("X-Request-Id", REQUEST_ID)
        .header("Origin", ORIGIN);
    if let Some(body) = (step.body)(caller) {
        request = request.json(&body);
    }
    common::Response::read(request.send().await.unwrap()).await
}

async fn preflight(app: &TestApp, step: &Step, path: &str) -> Value {
    let res = app
        .client
        .request(Method::OPTIONS, app.url(path))
        .header("Origin", ORIGIN)
        .header("Access-Control-Request-Method", step.method.as_str())
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .header("X-Request-Id", REQUEST_ID)
        .send()
        .await
        .unwrap();
    comparable(&common::Response::read(res).await)
}

/// A slash before the query string: `/api/articles?limit=3` → `/api/articles/?limit=3`.
fn with_slash(path: &str) -> String {
    match path.split_once('?') {
        Some((path, query)) => format!("{path}/?{query}"),
        None => format!("{path}/"),
    }
}

fn route_labels(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("stoa_http_requests_total{"))
        .filter_map(|l| l.split("route=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn every_documented_operation_answers_the_same_with_a_trailing_slash(pool: PgPool) {
    let twin = TwinDatabase::beside(&pool).await;
    let keys = shared_keys();
    let keys_dir = keys.path().to_str().unwrap().to_owned();
    let env = [
        ("STOA_JWT_KEYS_DIR", keys_dir.as_str()),
        ("STOA_CORS_ALLOWED_ORIGINS", ORIGIN),
    ];
    let (canonical, alice_canonical) = demo_server(pool, &env).await;
    let (slashed, alice_slashed) = demo_server(twin.pool.clone(), &env).await;

    let document = canonical.get("/api/openapi.json", None).await.body;
    assert_eq!(slashed.get("/api/openapi.json/", None).await.body, document);
    let walked: BTreeSet<String> = steps()
        .iter()
        .map(|s| format!("{} {}", s.method, s.template))
        .collect();
    assert_eq!(
        walked,
        documented_operations(&document),
        "the walk covers every documented operation, and no other"
    );
    assert!(
        document["info"]["description"]
            .as_str()
            .unwrap()
            .contains("one trailing slash"),
        "the document says a trailing slash is accepted"
    );
    assert!(
        !document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .any(|p| p.ends_with('/')),
        "the document keeps the canonical paths"
    );

    for step in steps() {
        let slash_path = with_slash(step.path);
        let expected = send(&canonical, &alice_canonical, &step, step.path).await;
        let actual = send(&slashed, &alice_slashed, &step, &slash_path).await;
        assert_ne!(
            expected.body,
            json!({"errors": {"route": ["not found"]}}),
            "{} {} reaches its handler: {}",
            step.method,
            step.path,
            expected.text
        );
        assert_eq!(
            comparable(&actual),
            comparable(&expected),
            "{} {} and {slash_path} answer alike",
            step.method,
            step.path
        );
        assert_eq!(
            preflight(&canonical, &step, &slash_path).await,
            preflight(&canonical, &step, step.path).await,
            "the CORS preflight of {} {slash_path}",
            step.method
        );
    }

    // Metrics label the canonical route: the server that only saw slashes reports the same
    // routes as the one that saw none, and no new label value.
    let slashed_routes = route_labels(&slashed.metrics().await);
    assert_eq!(slashed_routes, route_labels(&canonical.metrics().await));
    assert!(
        !slashed_routes.iter().any(|r| r.ends_with('/')),
        "{slashed_routes:?}"
    );
    drop(canonical);
    drop(slashed);
    twin.drop_now().await;
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn both_forms_share_one_cache_entry_and_one_etag(pool: PgPool) {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(pool, &[("STOA_REDIS_URL", url.as_str())]).await;
    eventually("redis up", || async {
        app.admin_get("/readyz").await.body["checks"]["redis"]["status"] == "up"
    })
    .await;
    let jake = app.register("jake").await;
    let slug = app.article(&jake, "Cached once", &["one"]).await;
    let hits = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"stoa_cache_requests_total{kind="article",outcome="hit"} "#)
            })
            .map_or(0, |v| v.parse().unwrap())
    };

    let canonical = app.get(&format!("/api/articles/{slug}"), None).await;
    let before = hits(&app.metrics().await);
    let slashed = app.get(&format!("/api/articles/{slug}/"), None).await;
    assert_eq!(slashed.text, canonical.text);
    assert_eq!(
        hits(&app.metrics().await),
        before + 1,
        "the slash form is served from the entry the canonical form stored"
    );

    // The ETag of one form is the other's: a revalidation is a 304 either way.
    let etag = canonical.headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(slashed.headers["etag"], etag.as_str());
    let revalidated = app
        .client
        .get(app.url(&format!("/api/articles/{slug}/")))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);

    // A write through the slash form invalidates the shared entry.
    let edited = app
        .put(
            &format!("/api/articles/{slug}/"),
            Some(&jake),
            json!({"article": {"body": "edited"}}),
        )
        .await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    assert_eq!(
        app.get(&format!("/api/articles/{slug}"), None).await.body["article"]["body"],
        "edited"
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn only_one_slash_is_accepted_and_the_docs_ui_keeps_its_own(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let twice = app.get("/api/tags//", None).await;
    assert_eq!(twice.status, StatusCode::NOT_FOUND);
    assert_eq!(twice.body, json!({"errors": {"route": ["not found"]}}));
    let docs = app.get("/api/docs/", None).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.text.contains("swagger"), "{}", docs.text);
}
