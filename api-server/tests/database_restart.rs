#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! When PostgreSQL ends a connection under a statement (a restart, a failover,
//! `pg_terminate_backend`): a read runs once more on a fresh connection and answers as if
//! nothing happened; a write, which may or may not have committed, answers 503 with
//! `Retry-After`; never a 500. Counted in `stoa_db_connection_lost_total`. Then the whole
//! thing with a real restart of a PostgreSQL the test starts, under reads and writes.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::tls::{Postgres, postgres_bin};
use common::{TestApp, eventually};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Holds `table` locked until the returned transaction ends, then waits for a backend of
/// the server to queue behind the lock, and ends that backend's connection (as a
/// PostgreSQL restart does: SQLSTATE 57P01).
async fn terminate_the_statement_waiting_on(pool: &PgPool, table: &str) {
    eventually("a statement waits for the lock", || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()
               AND datname = current_database() AND query ILIKE '%' || $1 || '%'",
        )
        .bind(table)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(false)
    })
    .await;
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_read_that_loses_its_connection_runs_again_and_a_write_answers_503(pool: PgPool) {
    let app = Arc::new(TestApp::spawn(pool.clone()).await);
    let token = app.register("jake").await;
    let slug = app.article(&token, "Survives restarts", &[]).await;

    // A read queued behind a lock when its connection is ended: run again, answered.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE articles IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let reader = {
        let app = app.clone();
        let path = format!("/api/articles/{slug}");
        tokio::spawn(async move { app.get(&path, None).await })
    };
    terminate_the_statement_waiting_on(&pool, "articles").await;
    lock.rollback().await.unwrap();
    let read = reader.await.unwrap();
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    assert_eq!(read.body["article"]["slug"], slug.as_str());

    // A write in the same position: it may have committed, so 503, never 500.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE comments IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let writer = {
        let app = app.clone();
        let (path, token) = (format!("/api/articles/{slug}/comments"), token.clone());
        tokio::spawn(async move {
            app.post(&path, Some(&token), json!({"comment": {"body": "first"}}))
                .await
        })
    };
    terminate_the_statement_waiting_on(&pool, "comments").await;
    lock.rollback().await.unwrap();
    let written = writer.await.unwrap();
    assert_eq!(
        written.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        written.text
    );
    assert_eq!(written.headers["retry-after"], "1");
    assert!(
        written.text.contains("lost its database connection"),
        "{}",
        written.text
    );

    let metrics = app.metrics().await;
    for series in [
        r#"stoa_db_connection_lost_total{reason="admin_shutdown",outcome="retried"} 1"#,
        r#"stoa_db_connection_lost_total{reason="admin_shutdown",outcome="unavailable"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
}

fn url_of(postgres: &Postgres) -> String {
    format!("postgres://postgres@127.0.0.1:{}/postgres", postgres.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_fails_no_read_and_answers_no_500() {
    let Some(bin) = postgres_bin() else {
        assert!(
            std::env::var("STOA_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "the restart test is required: initdb is missing (Debian package postgresql)"
        );
        eprintln!("SKIP: initdb is missing (Debian package postgresql)");
        return;
    };
    let mut postgres = Postgres::start(&bin, &["listen_addresses=127.0.0.1"], |_| {});
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(15))
        .connect(&url_of(&postgres))
        .await
        .unwrap();
    stoa_api::db::MIGRATOR.run(&pool).await.unwrap();
    let app = Arc::new(TestApp::spawn(pool).await);
    let token = app.register("jake").await;
    let slug = app.article(&token, "Under load", &["restart"]).await;

    // (read?, status) of every request, from 6 readers and 2 writers.
    let seen: Arc<Mutex<Vec<(bool, StatusCode)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for worker in 0..8 {
        let (app, seen, stop, token, slug) = (
            app.clone(),
            seen.clone(),
            stop.clone(),
            token.clone(),
            slug.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (read, status) = match worker {
                    0 | 1 => (true, app.get("/api/articles", None).await.status),
                    2 | 3 => (
                        true,
                        app.get(&format!("/api/articles/{slug}"), None).await.status,
                    ),
                    4 | 5 => (true, app.get("/api/user", Some(&token)).await.status),
                    _ => {
                        let path = format!("/api/articles/{slug}/comments");
                        let body = json!({"comment": {"body": "still here"}});
                        (false, app.post(&path, Some(&token), body).await.status)
                    }
                };
                seen.lock().unwrap().push((read, status));
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = seen.lock().unwrap().len();
    let restarted = tokio::task::spawn_blocking(move || {
        postgres.stop();
        std::thread::sleep(Duration::from_millis(300));
        postgres.spawn();
        postgres
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let after = seen.len() - before;
    eprintln!("{} requests, {after} from the restart on", seen.len());
    assert!(after > 50, "the load went on after the restart ({after})");
    let failed_reads: Vec<_> = seen
        .iter()
        .filter(|(read, status)| *read && *status != StatusCode::OK)
        .collect();
    assert!(failed_reads.is_empty(), "failed reads: {failed_reads:?}");
    assert!(
        seen.iter()
            .all(|(_, status)| *status != StatusCode::INTERNAL_SERVER_ERROR),
        "a 500"
    );
    assert!(
        seen.iter().all(|(read, status)| *read
            || [
                StatusCode::OK,
                StatusCode::CREATED,
                StatusCode::SERVICE_UNAVAILABLE
            ]
            .contains(status)),
        "writes answer their status or 503: {:?}",
        seen.iter()
            .filter(|(r, _)| !r)
            .map(|(_, s)| *s)
            .collect::<Vec<_>>()
    );
    drop(restarted);
}
