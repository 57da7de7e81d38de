#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod common;

use std::time::Duration;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn health_and_readiness_report_each_dependency(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let health = app.get("/healthz", None).await;
    assert_eq!(
        (health.status, health.text.as_str()),
        (StatusCode::OK, "ok")
    );
    let ready = app.admin_get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    assert_eq!(ready.body["status"], "ready");
    for check in ["database", "schema", "signingKeys", "lifecycle"] {
        assert_eq!(
            ready.body["checks"][check]["ok"], true,
            "{check}: {}",
            ready.text
        );
    }
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn public_readiness_is_a_bare_verdict_and_the_detail_is_on_the_admin_port(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let public = app.get("/readyz", None).await;
    assert_eq!(public.status, StatusCode::OK);
    assert_eq!(public.body, json!({"status": "ready"}));
    let detail = app.admin_get("/readyz").await;
    assert_eq!(detail.status, StatusCode::OK);
    assert_eq!(detail.body["checks"]["schema"]["ok"], true);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_admin_port_reports_what_the_pod_has_loaded_for_the_operator(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.admin_get("/readyz").await;
    let state = app.admin_get(stoa_contract::pod::STATE_PATH).await;
    assert_eq!(state.status, StatusCode::OK, "{}", state.text);
    let reported: stoa_contract::pod::PodState = serde_json::from_value(state.body).unwrap();
    let jwks = app.get("/.well-known/jwks.json", None).await;
    assert_eq!(reported.keys.len(), 1);
    assert_eq!(
        reported.keys[0].kid,
        jwks.body["keys"][0]["kid"].as_str().unwrap()
    );
    assert_eq!(
        reported.keys[0].state,
        stoa_contract::keys::KeyState::Active
    );
    assert_eq!(reported.database.user, "postgres");
    assert_eq!(
        reported.database.fingerprint,
        stoa_contract::pod::credential_fingerprint(stoa_api::config::DEV_DATABASE_URL)
    );
    assert!(reported.schema_version.is_some_and(|v| v >= 20261125000002));
    assert_eq!(reported.in_flight, 0);
    // Time spent serving (the autoscaler's concurrency) grows with requests.
    let later: stoa_contract::pod::PodState =
        serde_json::from_value(app.admin_get(stoa_contract::pod::STATE_PATH).await.body).unwrap();
    assert!(
        later.busy_seconds > reported.busy_seconds,
        "the JWKS request was served in between"
    );
    // The servers' connection limits (the autoscaler's capacity bound).
    let mut limits = None;
    for _ in 0..50 {
        let state = app.admin_get(stoa_contract::pod::STATE_PATH).await;
        if let Some(found) = state.body.get("limits").filter(|l| !l.is_null()) {
            limits = Some(found.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let limits: stoa_contract::pod::ServerLimits = serde_json::from_value(limits.unwrap()).unwrap();
    let max: String = sqlx::query_scalar("SHOW max_connections")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(limits.postgres_max_connections.to_string(), max);
    assert!(limits.postgres_reserved_connections >= 1);
    // Not on the public port.
    assert_eq!(
        app.get(stoa_contract::pod::STATE_PATH, None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[sqlx::test(migrations = false)]
async fn readiness_is_false_until_the_schema_is_migrated(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let behind = app.admin_get("/readyz").await;
    assert_eq!(behind.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(behind.body["checks"]["schema"]["status"], "behind");
    assert_eq!(behind.body["checks"]["database"]["ok"], true);

    stoa_api::db::MIGRATOR.run(&pool).await.unwrap();
    let ready = app.admin_get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn readiness_tolerates_newer_migrations_but_not_a_half_applied_one(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    // A newer release's expand step (unknown to this binary): still ready.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29990101000000, 'add pronouns', true, '\\x00', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let ahead = app.admin_get("/readyz").await;
    assert_eq!(ahead.status, StatusCode::OK, "{}", ahead.text);
    assert_eq!(ahead.body["checks"]["schema"]["status"], "ahead");
    let detail = ahead.body["checks"]["schema"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("database at 29990101000000") && detail.contains("this binary needs"),
        "{detail}"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("stoa_schema_version 29990101000000"),
        "{metrics}"
    );
    let required = stoa_api::schema::required_version();
    assert!(
        metrics.contains(&format!("stoa_schema_required_version {required}")),
        "{metrics}"
    );

    // A migration that failed half-way: nothing serves reliably on that schema.
    sqlx::query("UPDATE _sqlx_migrations SET success = false WHERE version = 29990101000000")
        .execute(&pool)
        .await
        .unwrap();
    let dirty = app.admin_get("/readyz").await;
    assert_eq!(dirty.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(dirty.body["checks"]["schema"]["status"], "dirty");
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn readiness_is_false_when_the_database_is_unreachable(pool: PgPool) {
    let _ = pool;
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let app = TestApp::spawn(unreachable).await;
    let res = app.admin_get("/readyz").await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.body["checks"]["database"]["status"], "down");
    assert!(
        !res.text.contains("postgres://"),
        "no connection details leak: {}",
        res.text
    );
    // API calls fail cleanly, without internals.
    let list = app.get("/api/articles", None).await;
    assert!(list.status.is_server_error());
    assert!(list.body["errors"].is_object(), "{}", list.text);
    assert!(!list.text.contains("127.0.0.1"));
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn metrics_count_requests_by_route_template(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.register("jake").await;
    let slug = app.article(&token, "Counted", &[]).await;
    app.get(&format!("/api/articles/{slug}"), None).await;
    app.get("/api/articles/missing", None).await;
    let text = app.metrics().await;
    assert!(
        text.contains(
            r#"stoa_http_requests_total{method="GET",route="/api/articles/{slug}",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"stoa_http_requests_total{method="GET",route="/api/articles/{slug}",status="404"} 1"#
    ));
    assert!(text.contains("stoa_http_request_duration_seconds_bucket"));
    assert!(text.contains("stoa_http_requests_in_flight"));
    assert!(text.contains("stoa_db_pool_connections"));
    assert!(text.contains("stoa_build_info{"));
    assert!(text.contains("stoa_signing_keys_loaded{"));
    assert!(!text.contains(&slug), "raw paths never become labels");
    // Metrics are not on the public port.
    assert_eq!(
        app.get("/metrics", None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn openapi_document_and_offline_docs_page_are_served(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let doc = app.get("/api/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/users",
        "/api/users/login",
        "/api/user",
        "/api/profiles/{username}/follow",
        "/api/articles",
        "/api/articles/feed",
        "/api/articles/{slug}",
        "/api/articles/{slug}/comments/{id}",
        "/api/articles/{slug}/favorite",
        "/api/tags",
        "/.well-known/jwks.json",
        "/api/auth/refresh",
        "/api/auth/logout",
        "/readyz",
    ] {
        assert!(doc.body["paths"].get(path).is_some(), "missing {path}");
    }
    let page = app.client.get(app.url("/api/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(csp, stoa_api::http::DOCS_CSP);
    // The page's scripts are its own files: no inline script is allowed.
    let scripts = csp
        .split(';')
        .find(|d| d.trim().starts_with("script-src"))
        .unwrap();
    assert_eq!(scripts.trim(), "script-src 'self'");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("https://"),
        "the docs page loads nothing from the internet"
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn jwks_publishes_the_public_key_that_verifies_tokens(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.register("jake").await;
    let jwks = app.get("/.well-known/jwks.json", None).await;
    assert_eq!(jwks.status, StatusCode::OK);
    let key = &jwks.body["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    assert!(key.get("d").is_none());
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), key["kid"].as_str());
    let decoding =
        jsonwebtoken::DecodingKey::from_ed_components(key["x"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["stoa-api"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
        .unwrap()
        .claims;
    for claim in ["sub", "iss", "aud", "exp", "iat", "jti"] {
        assert!(claims.get(claim).is_some(), "missing {claim}");
    }
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900,
        "15 minute default"
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn request_ids_are_returned_and_propagated(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let generated = app.get("/healthz", None).await;
    assert_eq!(generated.headers["x-request-id"].len(), 36);
    let given = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "abc-123");
}

/// The served routes and the OpenAPI document come from one table read two ways
/// (`http/routing.rs`): every documented operation is served at its path and method, and
/// every other method of a documented path is refused as not allowed.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn every_documented_operation_is_served_and_no_other_method(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let doc = app.get("/api/openapi.json", None).await.body;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() > 30, "{} paths", paths.len());
    let methods = ["get", "put", "post", "delete"];
    for (path, item) in paths {
        // Any value for a path parameter: the router matches the shape, handlers may 404.
        let concrete = path.replace('{', "x").replace('}', "");
        for method in methods {
            let http_method =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let res = app.request(http_method, &concrete, None, None).await;
            let routed = res.status != StatusCode::METHOD_NOT_ALLOWED
                && res.body["errors"].get("route").is_none();
            assert_eq!(
                routed,
                item.get(method).is_some(),
                "{method} {path} ({concrete}): {} {}",
                res.status,
                res.text
            );
        }
    }
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn oversized_bodies_unknown_routes_and_wrong_methods_get_api_errors(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &[("STOA_BODY_LIMIT_BYTES", "2048")]).await;
    let token = app.register("jake").await;
    let big = "x".repeat(4096);
    let res = app
        .post(
            "/api/articles",
            Some(&token),
            json!({"article": {"title": "t", "description": "d", "body": big}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(res.body["errors"]["body"].is_array(), "{}", res.text);

    let unknown = app.get("/api/nothing-here", None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.body["errors"].is_object());
    let wrong = app
        .request(reqwest::Method::PATCH, "/api/tags", None, None)
        .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong.body["errors"].is_object(), "{}", wrong.text);
    // Hardening headers on every response.
    assert_eq!(unknown.headers["x-content-type-options"], "nosniff");
    assert_eq!(unknown.headers["x-frame-options"], "DENY");
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn cors_allows_only_configured_origins(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[("STOA_CORS_ALLOWED_ORIGINS", "http://localhost:4200")],
    )
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/articles"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("http://localhost:4200").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://localhost:4200"
    );
    let denied = preflight("https://evil.example").await.unwrap();
    assert!(
        denied
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn shutdown_reports_not_ready_first_then_drains(pool: PgPool) {
    let mut app = TestApp::spawn_with(pool, &[("STOA_SHUTDOWN_DELAY", "700ms")]).await;
    assert_eq!(app.admin_get("/readyz").await.status, StatusCode::OK);
    app.signal_shutdown();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Still serving, but telling the load balancer to go away.
    let draining = app.admin_get("/readyz").await;
    assert_eq!(draining.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(draining.body["checks"]["lifecycle"]["status"], "draining");
    assert_eq!(app.get("/api/tags", None).await.status, StatusCode::OK);
    let server = app.server.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("exits after draining")
        .unwrap()
        .unwrap();
    assert!(
        reqwest::get(app.url("/healthz")).await.is_err(),
        "listener closed"
    );
}

#[sqlx::test(migrations = false)]
async fn migrations_are_reversible(pool: PgPool) {
    let migrator = &stoa_api::db::MIGRATOR;
    migrator.run(&pool).await.unwrap();
    migrator.undo(&pool, 0).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables, 0,
        "every down migration removes what its up migration created"
    );
    migrator.run(&pool).await.unwrap();
    let app = TestApp::spawn(pool).await;
    assert_eq!(app.admin_get("/readyz").await.status, StatusCode::OK);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn nul_characters_are_refused_not_a_server_error(pool: PgPool) {
    // Found by the contract fuzzer: PostgreSQL text cannot hold NUL, which was a 500.
    let app = TestApp::spawn(pool).await;
    let token = app.register("jake").await;
    let body = app
        .post(
            "/api/articles",
            Some(&token),
            json!({"article": {"title": "t", "description": "d", "body": "a\u{0}b"}}),
        )
        .await;
    assert_eq!(
        body.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        body.text
    );
    for path in [
        "/api/articles/a%00b",
        "/api/articles?tag=a%00b",
        "/api/profiles/a%00b",
    ] {
        let res = app.get(path, None).await;
        assert_eq!(
            res.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {}",
            res.text
        );
        assert!(res.body["errors"]["request"].is_array(), "{}", res.text);
    }
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_openapi_document_carries_the_rules_the_handlers_enforce(pool: PgPool) {
    use stoa_api::validate;
    let app = TestApp::spawn(pool).await;
    let doc = app.get("/api/openapi.json", None).await.body;
    let schemas = &doc["components"]["schemas"];
    let new_user = &schemas["NewUser"]["properties"];
    assert_eq!(new_user["username"]["maxLength"], validate::USERNAME_MAX);
    assert_eq!(new_user["username"]["pattern"], validate::USERNAME_PATTERN);
    assert_eq!(new_user["email"]["pattern"], validate::EMAIL_PATTERN);
    assert_eq!(new_user["password"]["minLength"], validate::PASSWORD_MIN);
    let article = &schemas["NewArticle"]["properties"];
    assert_eq!(article["title"]["maxLength"], validate::TITLE_MAX);
    assert_eq!(article["body"]["pattern"], validate::NOT_BLANK_PATTERN);
    assert_eq!(article["tagList"]["maxItems"], validate::TAGS_MAX);
    assert_eq!(schemas["UpdateArticle"]["minProperties"], 1);
    // Statuses every operation can answer are documented.
    let refresh = &doc["paths"]["/api/auth/refresh"]["post"]["responses"];
    for status in ["401", "413", "422", "429"] {
        assert!(refresh.get(status).is_some(), "refresh lacks {status}");
    }
    let limit = doc["paths"]["/api/articles"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()
        .clone();
    assert_eq!(limit["schema"]["minimum"], 1);
    // And what the document says is valid, the server accepts.
    let token = app.register("jake").await;
    let longest = "é".repeat(validate::TITLE_MAX);
    let created = app
        .post(
            "/api/articles",
            Some(&token),
            json!({"article": {"title": longest, "description": "d", "body": "b"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
}

/// Series an SRE's dashboard and alerts read exist from the start (at zero), and a
/// request refused under load is counted by why it was refused.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn refused_requests_are_counted_by_reason_and_known_series_start_at_zero(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &[("STOA_MAX_CONCURRENT_REQUESTS", "1")]).await;
    let fresh = app.metrics().await;
    for series in [
        r#"stoa_refused_requests_total{reason="overloaded"} 0"#,
        r#"stoa_refused_requests_total{reason="timeout"} 0"#,
        r#"stoa_refused_requests_total{reason="database_busy"} 0"#,
        r#"stoa_rate_limited_requests_total{bucket="login"} 0"#,
        r#"stoa_security_events_total{event="refresh_token_reuse"} 0"#,
        r#"stoa_cache_requests_total{kind="list",outcome="hit"} 0"#,
        r#"stoa_db_credential_reloads_total{outcome="rejected"} 0"#,
    ] {
        assert!(fresh.contains(series), "missing {series} in\n{fresh}");
    }

    // One request at a time: registrations hash a password (tens of milliseconds), so
    // most of a concurrent burst finds the server busy and is shed.
    let burst = (0..12).map(|i| {
        app.post(
            "/api/users",
            None,
            json!({"user": {"username": format!("shed{i}"), "email": format!("shed{i}@example.com"), "password": "correct horse battery"}}),
        )
    });
    let answers = futures::future::join_all(burst).await;
    let shed = answers
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert!(shed > 0, "expected some of the burst to be shed");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&format!(
            r#"stoa_refused_requests_total{{reason="overloaded"}} {shed}"#
        )),
        "{shed} shed requests, metrics:\n{metrics}"
    );
}

/// Sends a GET for `/healthz` on an open connection and reads the status line, or `None`
/// when nothing arrives within `wait`.
async fn healthz_on(stream: &mut tokio::net::TcpStream, wait: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: stoa\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(wait, stream.read(&mut answer))
        .await
        .ok()?;
    let n = read.unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    text.lines().next().map(str::to_owned)
}

/// Open connections hold memory whatever they send, so their number is bounded
/// (`STOA_MAX_CONNECTIONS`): past it a new connection waits to be accepted (it is not
/// refused, and nothing already open is disturbed) and is served as soon as another
/// closes; the number open is a metric.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn connections_past_the_limit_wait_until_one_closes(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &[("STOA_MAX_CONNECTIONS", "2")]).await;
    let mut first = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    for stream in [&mut first, &mut second] {
        let status = healthz_on(stream, Duration::from_secs(10)).await;
        assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"));
    }
    assert!(app.metrics().await.contains("stoa_http_connections_open 2"));

    // The kernel completes the handshake (the accept queue), the server does not accept.
    let mut third = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(
        healthz_on(&mut third, Duration::from_millis(500)).await,
        None,
        "a third connection was served past a limit of two"
    );
    // The open ones keep being served.
    let status = healthz_on(&mut first, Duration::from_secs(10)).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"));

    drop(second);
    // Its request was already sent: it is answered once the third is accepted.
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut third, &mut answer),
    )
    .await
    .expect("the waiting connection is served once another closes")
    .unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200 OK"));
}
