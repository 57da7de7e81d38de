#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Error tracking against a local endpoint that receives what the Sentry client sends
//! (envelopes over HTTP, as sentry.io's ingest does): a 5xx answer, an ERROR log event of
//! a background task and a panic each arrive, with the request id, route and release,
//! and no token, password, cookie, query string or body ever does. One test in its own
//! process: the Sentry client and the log subscriber are process-wide.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use common::{TestApp, test_env};
use sqlx::PgPool;
use stoa_api::config::{Config, Env};

/// Receives envelopes on `POST /api/<project>/envelope/`, on a runtime of its own (the
/// client's transport thread blocks on each send).
fn collector() -> (String, Arc<Mutex<Vec<String>>>) {
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let store = received.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().route(
                "/api/{project}/envelope/",
                axum::routing::post(move |body: Bytes| {
                    let store = store.clone();
                    async move {
                        store
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&body).into_owned());
                        "{}"
                    }
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (format!("http://public-key@{address}/42"), received)
}

/// The events (JSON items) in the received envelopes.
fn events(received: &[String]) -> Vec<serde_json::Value> {
    received
        .iter()
        .flat_map(|envelope| envelope.lines())
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        // An event item: its id and platform (`level` is left out when it is `error`).
        .filter(|item| item.get("event_id").is_some() && item.get("platform").is_some())
        .collect()
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn failures_reach_error_tracking_without_secrets(pool: PgPool) {
    let (dsn, received) = collector();
    let settings = [("STOA_SENTRY_DSN", dsn.as_str()), ("STOA_LOG", "info")];
    let env = test_env(&settings);
    let config = Config::from_env(&Env::new(move |k| env.get(k).cloned()), true).unwrap();
    let _logging = stoa_api::telemetry::init(&config);
    let guard = stoa_api::error_tracking::init(&config).expect("a DSN turns it on");
    let app = TestApp::spawn_with(pool.clone(), &settings).await;

    let token = app.register("jake").await;
    // A failure the client cannot cause on purpose: the table is gone.
    sqlx::query("ALTER TABLE users RENAME TO users_elsewhere")
        .execute(&pool)
        .await
        .unwrap();
    let failed = reqwest::Client::new()
        .put(app.url("/api/user?access_token=query-secret-value"))
        .header("Authorization", format!("Token {token}"))
        .header("Cookie", "__Secure-stoa-refresh=cookie-secret-value")
        .header("X-Request-Id", "req-error-tracking-1")
        .json(
            &serde_json::json!({"user": {"bio": "a bio", "password": "hunter2-body-secret",
            "currentPassword": "password-jake"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    // A background task's error, and a panic off any request.
    tracing::error!(target: "stoa_api::watch", "rejected key set update (error tracking test)");
    let _ =
        std::thread::spawn(|| panic!("a background thread panicked (error tracking test)")).join();
    // A 4xx is the client's business, not an error to track.
    assert_eq!(app.get("/api/no-such-route", None).await.status, 404);

    tokio::task::spawn_blocking(move || {
        assert!(
            sentry::Hub::current()
                .client()
                .unwrap()
                .flush(Some(Duration::from_secs(10)))
        );
        drop(guard);
    })
    .await
    .unwrap();

    let received = received.lock().unwrap().clone();
    let events = events(&received);
    let request = events
        .iter()
        .find(|e| e["tags"]["request_id"] == "req-error-tracking-1")
        .unwrap_or_else(|| panic!("no event for the failed request in {events:#?}"));
    assert_eq!(request["tags"]["route"], "/api/user");
    assert_eq!(request["tags"]["method"], "PUT");
    assert_eq!(request["tags"]["status"], "500");
    assert_eq!(
        request["release"],
        format!("stoa-api@{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(request["environment"], "development");
    let message = request["message"].to_string() + &request["logentry"].to_string();
    assert!(message.contains("database error"), "{request:#}");
    assert!(request.get("request").is_none(), "{request:#}");
    assert!(request.get("user").is_none(), "{request:#}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["tags"]["request_id"] == "req-error-tracking-1")
            .count(),
        1,
        "one event per failed request"
    );
    assert!(
        events.iter().any(|e| e
            .to_string()
            .contains("rejected key set update (error tracking test)")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e["exception"]
            .to_string()
            .contains("a background thread panicked (error tracking test)")),
        "{events:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.to_string().contains("no-such-route"))
    );
    let everything = received.concat();
    for secret in [
        token.as_str(),
        "hunter2-body-secret",
        "password-jake",
        "cookie-secret-value",
        "query-secret-value",
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} reached error tracking"
        );
    }
    assert!(!everything.to_lowercase().contains("authorization"));
}
