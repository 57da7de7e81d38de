#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Refresh tokens, logout and revocation, with and without Redis.
mod common;

use common::{
    FEED_LIVE, RedisServer, Replicas, TestApp, eventually, login, shared_keys, wait_for_live_feeds,
};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

async fn refresh(app: &TestApp, token: &str) -> common::Response {
    app.post("/api/auth/refresh", None, json!({"refreshToken": token}))
        .await
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn refresh_rotates_and_a_reused_token_revokes_the_whole_family(pool: PgPool) {
    // No grace: any second use of a spent token is reuse.
    let app = TestApp::spawn_with(pool.clone(), &[("STOA_REFRESH_REUSE_GRACE", "0s")]).await;
    app.register("jake").await;
    let (access, first) = login(&app, "jake").await;

    let rotated = refresh(&app, &first).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let second = rotated.body["user"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_access = rotated.body["user"]["token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(
        app.get("/api/user", Some(&new_access)).await.status,
        StatusCode::OK
    );

    // Replaying the spent token: refused, and the family (including `second`) is revoked.
    let replay = refresh(&app, &first).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert!(replay.text.contains("already used"), "{}", replay.text);
    assert_eq!(
        refresh(&app, &second).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Access tokens of the revoked session stop working at once.
    assert_eq!(
        app.get("/api/user", Some(&new_access)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/user", Some(&access)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        app.metrics()
            .await
            .contains(r#"stoa_security_events_total{event="refresh_token_reuse"} 1"#)
    );

    // Only hashes are stored.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM refresh_tokens")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|h| h.len() == 32 && h.as_slice() != first.as_bytes())
    );

    // Another session of the same user is unaffected.
    let (other_access, other_refresh) = login(&app, "jake").await;
    assert_eq!(
        app.get("/api/user", Some(&other_access)).await.status,
        StatusCode::OK
    );
    assert_eq!(refresh(&app, &other_refresh).await.status, StatusCode::OK);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn two_tabs_refreshing_at_once_share_one_successor_instead_of_logging_out(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("jake").await;
    let (_, first) = login(&app, "jake").await;
    let (tab_a, tab_b) = tokio::join!(refresh(&app, &first), refresh(&app, &first));
    assert_eq!(tab_a.status, StatusCode::OK, "{}", tab_a.text);
    assert_eq!(tab_b.status, StatusCode::OK, "{}", tab_b.text);
    let successor = tab_a.body["user"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(tab_b.body["user"]["refreshToken"], successor.as_str());
    let access = tab_b.body["user"]["token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get("/api/user", Some(&access)).await.status,
        StatusCode::OK
    );

    // Once the successor has been used, the old token is a replay: the family is revoked.
    let next = refresh(&app, &successor).await;
    assert_eq!(next.status, StatusCode::OK);
    let replay = refresh(&app, &first).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    let newest = next.body["user"]["refreshToken"].as_str().unwrap();
    assert_eq!(refresh(&app, newest).await.status, StatusCode::UNAUTHORIZED);
}

/// A refresh as a given browser or program sends it.
async fn refresh_as(app: &TestApp, agent: &str, token: &str) -> common::Response {
    let res = reqwest::Client::new()
        .post(app.url("/api/auth/refresh"))
        .header("User-Agent", agent)
        .json(&json!({"refreshToken": token}))
        .send()
        .await
        .unwrap();
    common::Response::read(res).await
}

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";

/// Within the grace, a spent token yields its successor again only to the client that
/// spent it (the same User-Agent, as a second tab of one browser sends), and each such
/// hand-out is a security event; the same token from another client is a replay.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_refresh_grace_serves_only_the_same_client_and_is_recorded(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("jake").await;
    let (_, first) = login(&app, "jake").await;
    let tab_a = refresh_as(&app, FIREFOX, &first).await;
    assert_eq!(tab_a.status, StatusCode::OK, "{}", tab_a.text);
    let tab_b = refresh_as(&app, FIREFOX, &first).await;
    assert_eq!(tab_b.status, StatusCode::OK, "{}", tab_b.text);
    assert_eq!(
        tab_b.body["user"]["refreshToken"],
        tab_a.body["user"]["refreshToken"]
    );
    assert!(
        app.metrics()
            .await
            .contains(r#"stoa_security_events_total{event="refresh_grace_used"} 1"#)
    );

    // Another session: the spent token presented by another program within the grace.
    let (access, second) = login(&app, "jake").await;
    let mine = refresh_as(&app, FIREFOX, &second).await;
    assert_eq!(mine.status, StatusCode::OK);
    let thief = refresh_as(&app, "curl/8.11.1", &second).await;
    assert_eq!(thief.status, StatusCode::UNAUTHORIZED, "{}", thief.text);
    assert!(
        thief.text.contains("the session is revoked"),
        "{}",
        thief.text
    );
    // The whole session is gone, the owner's new tokens included.
    let owners = mine.body["user"]["refreshToken"].as_str().unwrap();
    assert_eq!(
        refresh_as(&app, FIREFOX, owners).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/user", Some(&access)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"stoa_security_events_total{event="refresh_grace_used"} 1"#));
    assert!(metrics.contains(r#"stoa_security_events_total{event="refresh_token_reuse"} 1"#));
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_session_ends_at_its_absolute_lifetime_however_often_it_is_refreshed(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), &[("STOA_SESSION_MAX_LIFETIME", "1h")]).await;
    app.register("jake").await;
    let (_, first) = login(&app, "jake").await;
    let rotated = refresh(&app, &first).await;
    let second = rotated.body["user"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    // No refresh token of the session outlives the session (7-day tokens, 1-hour session).
    let beyond: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM refresh_tokens
         WHERE expires_at > session_expires_at OR expires_at > now() + interval '1 hour 1 minute'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(beyond, 0);
    // At the session's end, refreshing stops working.
    sqlx::query("UPDATE refresh_tokens SET session_expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        refresh(&app, &second).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_session_without_a_recorded_end_cannot_be_refreshed_and_old_rows_are_backfilled(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    app.register("jake").await;
    let (_, token) = login(&app, "jake").await;
    // As a row written before sessions had an absolute lifetime.
    sqlx::query("UPDATE refresh_tokens SET session_expires_at = NULL")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        refresh(&app, &token).await.status,
        StatusCode::UNAUTHORIZED,
        "no recorded end counts as ended, not as endless"
    );

    // The expand migration gives such rows the end of their current token.
    sqlx::raw_sql(include_str!(
        "../../migrations/20261205000001_session_expiry_backfill.up.sql"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let unbounded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM refresh_tokens
         WHERE session_expires_at IS NULL OR session_expires_at <> expires_at",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(unbounded, 0);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn register_returns_a_refresh_token_and_garbage_is_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app
        .post("/api/users", None, json!({"user": {"username": "amy", "email": "amy@example.com", "password": "password-amy"}}))
        .await;
    let token = res.body["user"]["refreshToken"].as_str().unwrap();
    assert_eq!(refresh(&app, token).await.status, StatusCode::OK);
    assert_eq!(
        refresh(&app, "not-a-token").await.status,
        StatusCode::UNAUTHORIZED
    );
    // No token at all (and no cookie mode): refused like a wrong one.
    let missing = app.post("/api/auth/refresh", None, json!({})).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        common::errors(&missing, "token"),
        ["refresh token is missing"]
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn expired_refresh_tokens_are_refused(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.register("jake").await;
    let (_, token) = login(&app, "jake").await;
    sqlx::query("UPDATE refresh_tokens SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(refresh(&app, &token).await.status, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn logout_revokes_the_access_token_and_its_refresh_family(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("jake").await;
    let (access, refresh_token) = login(&app, "jake").await;
    let (other_access, _) = login(&app, "jake").await;
    let res = app.post("/api/auth/logout", Some(&access), json!({})).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    for path in ["/api/user", "/api/articles/feed"] {
        assert_eq!(
            app.get(path, Some(&access)).await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    // Optional-auth routes reject it too rather than treating the caller as anonymous.
    assert_eq!(
        app.get("/api/articles", Some(&access)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&app, &refresh_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/user", Some(&other_access)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.post("/api/auth/logout", None, json!({})).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn password_change_revokes_every_other_session(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("jake").await;
    let (phone, phone_refresh) = login(&app, "jake").await;
    let (laptop, _) = login(&app, "jake").await;
    let res = app
        .put(
            "/api/user",
            Some(&laptop),
            json!({"user": {"password": "a-new-password", "currentPassword": "password-jake"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    let fresh = res.body["user"]["token"].as_str().unwrap();
    let fresh_refresh = res.body["user"]["refreshToken"].as_str().unwrap();
    assert_eq!(
        app.get("/api/user", Some(&phone)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&app, &phone_refresh).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/user", Some(fresh)).await.status,
        StatusCode::OK
    );
    assert_eq!(refresh(&app, fresh_refresh).await.status, StatusCode::OK);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn revoked_tokens_stay_rejected_with_redis_up_down_and_restarted_empty(pool: PgPool) {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn_with(
        pool,
        &[
            ("STOA_REDIS_URL", &redis.url()),
            ("STOA_REDIS_TIMEOUT", "100ms"),
        ],
    )
    .await;
    eventually("redis up", || async {
        app.admin_get("/readyz").await.body["checks"]["redis"]["status"] == "up"
    })
    .await;
    app.register("jake").await;
    let (revoked, _) = login(&app, "jake").await;
    let (revoked_while_down, _) = login(&app, "jake").await;
    let (valid, _) = login(&app, "jake").await;

    assert_eq!(
        app.post("/api/auth/logout", Some(&revoked), json!({}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get("/api/user", Some(&revoked)).await.status,
        StatusCode::UNAUTHORIZED,
        "redis up"
    );

    redis.stop();
    // The checks fall back to PostgreSQL: still rejected, valid tokens still work.
    assert_eq!(
        app.get("/api/user", Some(&revoked)).await.status,
        StatusCode::UNAUTHORIZED,
        "redis down"
    );
    assert_eq!(
        app.get("/api/user", Some(&valid)).await.status,
        StatusCode::OK
    );
    let ready = app.admin_get("/readyz").await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "Redis is optional: {}",
        ready.text
    );
    assert_eq!(ready.body["checks"]["redis"]["status"], "degraded");
    // A logout while Redis is down only reaches PostgreSQL...
    assert_eq!(
        app.post("/api/auth/logout", Some(&revoked_while_down), json!({}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    // ...and Redis comes back empty: the resync restores both revocations before Redis is trusted.
    redis.restart().await;
    eventually("redis up again", || async {
        app.admin_get("/readyz").await.body["checks"]["redis"]["status"] == "up"
    })
    .await;
    assert_eq!(
        app.get("/api/user", Some(&revoked)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/user", Some(&revoked_while_down)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/user", Some(&valid)).await.status,
        StatusCode::OK
    );
    assert!(
        app.metrics()
            .await
            .contains(r#"stoa_dependency_up{dependency="redis"} 1"#)
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn mirrored_revocations_outlive_the_tokens_they_deny_including_the_leeway(pool: PgPool) {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn_with(
        pool,
        &[
            ("STOA_REDIS_URL", &redis.url()),
            ("STOA_ACCESS_TOKEN_TTL", "10s"),
            ("STOA_JWT_LEEWAY", "2m"),
        ],
    )
    .await;
    eventually("redis up", || async {
        app.admin_get("/readyz").await.body["checks"]["redis"]["status"] == "up"
    })
    .await;
    app.register("jake").await;
    let (token, _) = login(&app, "jake").await;
    assert_eq!(
        app.post("/api/auth/logout", Some(&token), json!({}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    // The token verifies until exp (10 s) + leeway (120 s): so must its revocation keys.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("stoa:{revoked}:[jf]*") // jti: and fam:, not the marker
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.len() >= 2, "the jti and the family: {keys:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            ttl > 120,
            "{key} expires in {ttl} s, before its token stops verifying"
        );
    }
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn expired_sessions_and_revocations_are_purged(pool: PgPool) {
    use stoa_api::auth::retention::purge_expired;
    use stoa_api::auth::revocation::MirrorWindow;
    let app = TestApp::spawn(pool.clone()).await;
    app.register("jake").await;
    let (access, _) = login(&app, "jake").await;
    assert_eq!(
        app.post("/api/auth/logout", Some(&access), json!({}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    // Age one session and the revocation far past any token's life; keep the rest.
    sqlx::query(
        "UPDATE refresh_tokens SET expires_at = now() - interval '2 days'
         WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE revoked_at IS NOT NULL LIMIT 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE revoked_tokens SET expires_at = now() - interval '2 days'")
        .execute(&pool)
        .await
        .unwrap();
    let window = MirrorWindow {
        access_ttl: std::time::Duration::from_secs(900),
        leeway: std::time::Duration::from_secs(30),
    };
    let mut tx = common::db(&pool).begin().await.unwrap();
    let purged = purge_expired(&mut tx, window).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((purged.refresh_tokens, purged.revocations), (1, 1));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_tokens")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "the register session is still live");
}

/// Provider sign-ins never finished (flows, one-time codes, link tickets) and admin
/// console sessions are purged once expired; live ones stay.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn unfinished_sign_ins_and_ended_console_sessions_are_purged(pool: PgPool) {
    use stoa_api::auth::retention::purge_expired;
    use stoa_api::auth::revocation::MirrorWindow;
    let app = TestApp::spawn(pool.clone()).await;
    app.register("jake").await;
    for (age, tag) in [
        ("- interval '1 minute'", "old"),
        ("+ interval '5 minutes'", "new"),
    ] {
        let statements = [
            format!("INSERT INTO oauth_flows (state_hash, browser_hash, provider, nonce, pkce_verifier, return_to, expires_at)
                     VALUES ('{tag}'::bytea, 'b'::bytea, 'google', 'n', 'v', 'https://app.example.com/', now() {age})"),
            format!("INSERT INTO oauth_handoffs (code_hash, purpose, user_id, provider, expires_at)
                     SELECT '{tag}'::bytea, 'sign_in', id, 'google', now() {age} FROM users"),
            format!("INSERT INTO oauth_link_tickets (ticket_hash, user_id, provider, expires_at)
                     SELECT '{tag}'::bytea, id, 'google', now() {age} FROM users"),
            format!("INSERT INTO console_sessions (token_hash, user_id, csrf_token, expires_at)
                     SELECT '{tag}'::bytea, id, 'csrf', now() {age} FROM users"),
        ];
        for statement in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await
                .unwrap();
        }
    }
    let window = MirrorWindow {
        access_ttl: std::time::Duration::from_secs(900),
        leeway: std::time::Duration::from_secs(30),
    };
    let mut tx = common::db(&pool).begin().await.unwrap();
    let purged = purge_expired(&mut tx, window).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((purged.sign_in_flows, purged.console_sessions), (3, 1));
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM oauth_flows) + (SELECT count(*) FROM oauth_handoffs)
              + (SELECT count(*) FROM oauth_link_tickets) + (SELECT count(*) FROM console_sessions)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 4, "the live ones stay");
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_redis_that_lost_its_data_is_never_read_as_not_revoked(pool: PgPool) {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn_with(pool, &[("STOA_REDIS_URL", &redis.url())]).await;
    eventually("redis up", || async {
        app.admin_get("/readyz").await.body["checks"]["redis"]["status"] == "up"
    })
    .await;
    app.register("jake").await;
    let (revoked, _) = login(&app, "jake").await;
    app.post("/api/auth/logout", Some(&revoked), json!({}))
        .await;
    // Redis loses everything (FLUSHALL, or a restart without persistence) while trusted.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    // Not one request in the window before the probe resyncs may accept the token.
    for _ in 0..40 {
        assert_eq!(
            app.get("/api/user", Some(&revoked)).await.status,
            StatusCode::UNAUTHORIZED
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    eventually("trusted again after the resync", || async {
        app.admin_get("/readyz").await.body["checks"]["redis"]["status"] == "up"
    })
    .await;
    assert_eq!(
        app.get("/api/user", Some(&revoked)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_redis_that_may_evict_revocations_is_not_trusted(pool: PgPool) {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "volatile-lru"]).await;
    let app = TestApp::spawn_with(pool, &[("STOA_REDIS_URL", &redis.url())]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let ready = app.admin_get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "Redis is optional");
    assert_eq!(ready.body["checks"]["redis"]["status"], "degraded");
    // Revocation still holds, through PostgreSQL.
    app.register("jake").await;
    let (token, _) = login(&app, "jake").await;
    app.post("/api/auth/logout", Some(&token), json!({})).await;
    assert_eq!(
        app.get("/api/user", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_revocation_made_by_a_replica_cut_off_from_redis_reaches_the_others(pool: PgPool) {
    let redis = RedisServer::start().await;
    // Replica A cannot reach Redis (a closed port); replica B can. Same database.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("redis://127.0.0.1:{}", dead.local_addr().unwrap().port());
    drop(dead);
    // Replicas share the key set, as pods mounting one Secret do.
    let keys = tempfile::tempdir().unwrap();
    stoa_api::keys::generate_keyset()
        .write_dir(keys.path())
        .unwrap();
    let keys_dir = keys.path().to_str().unwrap();
    let a = TestApp::spawn_with(
        pool.clone(),
        &[
            ("STOA_REDIS_URL", &dead_url),
            ("STOA_JWT_KEYS_DIR", keys_dir),
        ],
    )
    .await;
    let b = TestApp::spawn_with(
        pool,
        &[
            ("STOA_REDIS_URL", &redis.url()),
            ("STOA_JWT_KEYS_DIR", keys_dir),
        ],
    )
    .await;
    eventually("B trusts redis", || async {
        b.admin_get("/readyz").await.body["checks"]["redis"]["status"] == "up"
    })
    .await;
    b.register("jake").await;
    let (token, _) = login(&b, "jake").await;
    assert_eq!(
        b.get("/api/user", Some(&token)).await.status,
        StatusCode::OK
    );
    // Logged out through A: only PostgreSQL hears of it.
    assert_eq!(
        a.post("/api/auth/logout", Some(&token), json!({}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    // B, still trusting Redis, learns it within a probe interval.
    eventually("B rejects the revoked token", || async {
        b.get("/api/user", Some(&token)).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert_eq!(
        b.admin_get("/readyz").await.body["checks"]["redis"]["status"],
        "up",
        "answered from Redis, not by falling back"
    );
}

/// A key set for two replicas of one test to share (removed with the directory).
/// Logs `token` out through `a`; `b` must refuse it within 250 ms (how soon is printed).
async fn logout_is_refused_by_the_other_replica(a: &TestApp, b: &TestApp, token: &str) {
    assert_eq!(
        a.post("/api/auth/logout", Some(token), json!({}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let logged_out = std::time::Instant::now();
    while b.get("/api/user", Some(token)).await.status != StatusCode::UNAUTHORIZED {
        assert!(
            logged_out.elapsed() < std::time::Duration::from_millis(250),
            "B still accepted the token 250 ms after the logout"
        );
    }
    eprintln!(
        "B refused the revoked token {:?} after the logout",
        logged_out.elapsed()
    );
}

/// Each replica checks revocations in its own copy of the denylist (no Redis round trip),
/// and a logout on one replica is honoured by another within 250 ms (stated bound: one
/// Redis publish; measured in the test output).
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn revocations_are_checked_locally_and_reach_other_replicas_at_once(pool: PgPool) {
    let Replicas {
        redis,
        keys: _keys,
        a,
        b,
    } = Replicas::start(pool).await;
    a.register("jake").await;
    let (token, _) = login(&a, "jake").await;

    // Signed-in requests ask Redis nothing about revocation.
    let before = redis.calls("mget").await;
    for _ in 0..20 {
        assert_eq!(
            b.get("/api/user", Some(&token)).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        redis.calls("mget").await,
        before,
        "revocation was looked up in Redis"
    );

    // A logout through A: B refuses the token within the bound.
    logout_is_refused_by_the_other_replica(&a, &b, &token).await;
    assert_eq!(
        redis.calls("mget").await,
        before,
        "answered from the local copy"
    );
}

/// Without Redis, each replica's copy of the denylist is fed by PostgreSQL notifications
/// sent as revocations commit: a signed-in request asks the database nothing about
/// revocation (proved by locking the revocation tables: a request that looked there would
/// wait and time out), a logout on one replica is honoured by another within 250 ms, a
/// revocation written by anything else (here plain SQL) reaches every replica, and after
/// the listening connection is cut the feed reloads and is live again.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn without_redis_revocations_reach_every_replica_from_postgres_notifications(pool: PgPool) {
    let keys = shared_keys();
    let keys_dir = keys.path().to_str().unwrap().to_owned();
    let env = [
        ("STOA_JWT_KEYS_DIR", keys_dir.as_str()),
        ("STOA_REQUEST_TIMEOUT", "2s"),
    ];
    let a = TestApp::spawn_with(pool.clone(), &env).await;
    let b = TestApp::spawn_with(pool.clone(), &env).await;
    wait_for_live_feeds([&a, &b]).await;
    a.register("jake").await;
    let (token, _) = login(&a, "jake").await;

    // With both revocation tables locked, requests still succeed: answered locally.
    let answered_locally = |token: String| {
        let pool = pool.clone();
        let b = &b;
        async move {
            let mut lock = pool.begin().await.unwrap();
            sqlx::query("LOCK TABLE revoked_tokens, refresh_tokens IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *lock)
                .await
                .unwrap();
            for _ in 0..10 {
                assert_eq!(
                    b.get("/api/user", Some(&token)).await.status,
                    StatusCode::OK,
                    "the revocation check went to the locked tables"
                );
            }
            lock.rollback().await.unwrap();
        }
    };
    answered_locally(token.clone()).await;

    // A logout through A: B refuses the token within the bound.
    logout_is_refused_by_the_other_replica(&a, &b, &token).await;

    // A revocation by plain SQL (another release, an operator's script) reaches both.
    let (second, _) = login(&a, "jake").await;
    answered_locally(second.clone()).await;
    sqlx::query("UPDATE refresh_tokens SET revoked_at = now() WHERE revoked_at IS NULL")
        .execute(&pool)
        .await
        .unwrap();
    for app in [&a, &b] {
        eventually("the SQL revocation is honoured", || async {
            app.get("/api/user", Some(&second)).await.status == StatusCode::UNAUTHORIZED
        })
        .await;
    }

    // Cut every connection to the database, the listeners' included: each feed reloads
    // and is live again, answering locally.
    let (third, _) = login(&a, "jake").await;
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(cut.len() >= 2, "the two listeners were among the cut");
    for app in [&a, &b] {
        eventually("the revocation feed is live again", || async {
            app.metrics().await.contains(FEED_LIVE)
                && app.get("/api/user", Some(&third)).await.status == StatusCode::OK
        })
        .await;
    }
    answered_locally(third).await;
}

/// Only sign-in, refresh and a password change issue access tokens: reading or editing the
/// profile answers with the caller's own token, so an access token cannot renew itself
/// past its session's end or its refresh token's revocation.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn reading_or_editing_the_profile_never_renews_the_access_token(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("jake").await;
    let (access, _) = login(&app, "jake").await;
    let read = app.get("/api/user", Some(&access)).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["user"]["token"], access.as_str());
    assert_eq!(read.body["user"]["username"], "jake");
    let edited = app
        .put(
            "/api/user",
            Some(&access),
            json!({"user": {"bio": "edited"}}),
        )
        .await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    assert_eq!(edited.body["user"]["token"], access.as_str());
    assert_eq!(edited.body["user"]["bio"], "edited");
    // The Bearer scheme answers with the same token too.
    let bearer = app
        .client
        .get(app.url("/api/user"))
        .header("Authorization", format!("Bearer  {access} "))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    let body: serde_json::Value = bearer.json().await.unwrap();
    assert_eq!(body["user"]["token"], access.as_str());
}

/// Browser sessions: with `X-Stoa-Session: cookie` the refresh token lives in an
/// HttpOnly, Secure, SameSite=Strict cookie scoped to `/api/auth`; the cookie is read only
/// by requests that carry the header from an allowed origin (CSRF); body mode keeps
/// working beside it.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn browser_sessions_keep_the_refresh_token_in_an_http_only_cookie(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[
            ("STOA_REFRESH_REUSE_GRACE", "0s"),
            ("STOA_CORS_ALLOWED_ORIGINS", "https://app.example"),
        ],
    )
    .await;
    app.register("jake").await;
    let send = |path: &str, cookie: Option<&str>, mode: bool, origin: Option<&str>, body| {
        let mut req = app.client.post(app.url(path)).json(&body);
        if let Some(cookie) = cookie {
            req = req.header(
                "Cookie",
                format!("theme=dark; __Secure-stoa-refresh={cookie}"),
            );
        }
        if mode {
            req = req.header("X-Stoa-Session", "cookie");
        }
        if let Some(origin) = origin {
            req = req.header("Origin", origin);
        }
        req.send()
    };
    let cookie_of = |res: &reqwest::Response| -> String {
        let set = res.headers()["set-cookie"].to_str().unwrap().to_owned();
        for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/api/auth"] {
            assert!(set.contains(attribute), "{set} lacks {attribute}");
        }
        set.strip_prefix("__Secure-stoa-refresh=")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    let credentials = json!({"user": {"email": "jake@example.com", "password": "password-jake"}});

    // Sign-in in cookie mode: the access token in the body, the refresh token only in
    // the cookie.
    let res = send("/api/users/login", None, true, None, credentials.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let first = cookie_of(&res);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["user"]["token"].is_string());
    assert!(body["user"].get("refreshToken").is_none(), "{body}");

    // Without the header (what a forged cross-site form or image sends), the cookie is
    // not used; from an origin that is not allowed, neither.
    let forged = send("/api/auth/refresh", Some(&first), false, None, json!({}))
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let foreign = send(
        "/api/auth/refresh",
        Some(&first),
        true,
        Some("https://evil.example"),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);

    // The allowed app refreshes: a new cookie, a new access token that works.
    let res = send(
        "/api/auth/refresh",
        Some(&first),
        true,
        Some("https://app.example"),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let second = cookie_of(&res);
    assert_ne!(second, first);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["user"].get("refreshToken").is_none());
    let access = body["user"]["token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get("/api/user", Some(&access)).await.status,
        StatusCode::OK
    );

    // Reuse detection works the same; the refused cookie is deleted.
    let replay = send("/api/auth/refresh", Some(&first), true, None, json!({}))
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    assert!(
        replay.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        app.get("/api/user", Some(&access)).await.status,
        StatusCode::UNAUTHORIZED,
        "the reused session is revoked"
    );

    // Body mode, side by side: no cookie set, the token in the body.
    let res = send("/api/users/login", None, false, None, credentials.clone())
        .await
        .unwrap();
    assert!(res.headers().get("set-cookie").is_none());
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["user"]["refreshToken"].is_string());

    // Logout in cookie mode deletes the cookie.
    let res = send("/api/users/login", None, true, None, credentials)
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    let access = body["user"]["token"].as_str().unwrap().to_owned();
    let out = app
        .client
        .post(app.url("/api/auth/logout"))
        .header("Authorization", format!("Token {access}"))
        .header("X-Stoa-Session", "cookie")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );

    // The allowed origin may send the header with credentials; others get no grant.
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/auth/refresh"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "x-stoa-session,content-type",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    assert!(
        allowed.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-stoa-session")
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_replica_whose_redis_breaker_is_open_still_announces_its_revocations(pool: PgPool) {
    // The breaker opens on one slow probe (250 ms) while the other replicas still follow
    // Redis; if revocations waited for it to close, those replicas would hear of them a
    // probe interval late. Here the replica's Redis user may not run the probe's EXISTS,
    // so its breaker stays open, and the test's own subscription stands in for the other
    // replicas (no other replica runs a catch-up that could announce it instead).
    let redis = RedisServer::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "replica",
            "on",
            ">replica-pw",
            "~*",
            "&*",
            "+@all",
            "-exists",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let url = format!("redis://replica:replica-pw@127.0.0.1:{}", redis.port);
    let app = TestApp::spawn_with(pool, &[("STOA_REDIS_URL", &url)]).await;
    app.register("jake").await;
    let (token, _) = login(&app, "jake").await;
    // Let a few probes run: none can close the breaker.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(
        app.admin_get("/readyz").await.body["checks"]["redis"]["status"],
        "degraded"
    );

    let mut announcements = client.get_async_pubsub().await.unwrap();
    announcements
        .subscribe(stoa_api::auth::denylist::CHANNEL)
        .await
        .unwrap();
    let logout = app.post("/api/auth/logout", Some(&token), json!({})).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let heard = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        use futures::StreamExt;
        let mut messages = announcements.on_message();
        let mut heard = Vec::new();
        // The token and its session family.
        while heard.len() < 2 {
            let message = messages.next().await.unwrap();
            heard.push(message.get_payload::<String>().unwrap());
        }
        heard
    })
    .await
    .expect("the revocation was not announced while the breaker was open");
    assert!(heard.iter().any(|m| m.starts_with("j ")), "{heard:?}");
    assert!(heard.iter().any(|m| m.starts_with("f ")), "{heard:?}");
    assert!(
        app.metrics()
            .await
            .contains("stoa_revocation_mirror_failures_total 0"),
        "the mirror counted as failed"
    );
}
