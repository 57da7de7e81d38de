#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The job queue and `stoa-api worker`: exactly-once effects across a killed worker,
//! retries and the dead letter, idempotency keys, schedules across workers, and the
//! account export the API enqueues with its write.
mod common;

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{TestApp, db, eventually, free_port, url_of};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use stoa_api::config::{Config, Env};
use stoa_api::db::Db;
use stoa_api::jobs::queue::{self, Claim};
use stoa_api::jobs::schedule::{self, SCHEDULER_LOCK, Schedule, Tick};
use stoa_api::jobs::worker::Worker;
use stoa_api::jobs::{Kind, kinds};
use stoa_api::metrics::Metrics;

/// A `stoa-api worker` process (killed when dropped).
struct WorkerProcess {
    child: Child,
    admin: String,
}

impl WorkerProcess {
    fn start(pool: &PgPool, extra: &[(&str, &str)]) -> WorkerProcess {
        let admin = format!("127.0.0.1:{}", free_port());
        let mut command = common::stoa_api();
        command
            .arg("worker")
            .env("STOA_DATABASE_URL", url_of(pool))
            .env("STOA_ADMIN_ADDR", &admin)
            .env("STOA_WORKER_POLL_INTERVAL", "100ms")
            .env("STOA_LOG", "warn")
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        WorkerProcess {
            child: command.spawn().unwrap(),
            admin,
        }
    }

    fn kill9(&mut self) {
        // SIGKILL: no shutdown code runs; PostgreSQL sees the connections drop.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    async fn get(&self, path: &str) -> Option<String> {
        let res = reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .ok()?;
        res.text().await.ok()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn job_row(pool: &PgPool, kind: &str) -> (i64, String, i32, Option<String>) {
    sqlx::query_as(
        "SELECT id, state, attempts, last_error FROM jobs WHERE kind = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(kind)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_worker_killed_mid_job_leaves_no_effect_and_the_job_finishes_once(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let token = app.register("jake").await;
    app.article(&token, "Exported", &["kept"]).await;
    sqlx::query(
        "INSERT INTO user_identities (provider, subject, user_id, email, email_verified)
         SELECT 'github', '583231', id, 'jake@example.com', true FROM users",
    )
    .execute(&pool)
    .await
    .unwrap();
    let requested = app.post("/api/user/export", Some(&token), json!({})).await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{}", requested.text);
    assert_eq!(requested.body["export"]["status"], "pending");

    // Hold the export row so the first worker's job blocks inside its transaction.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM account_exports FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut first = WorkerProcess::start(&pool, &[("STOA_WORKER_LEASE", "1s")]);
    eventually("the first worker is inside the job, waiting", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND query LIKE 'UPDATE account_exports%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        waiting == 1
    })
    .await;
    let (_, state, attempts, _) = job_row(&pool, "export_account").await;
    assert_eq!((state.as_str(), attempts), ("running", 1));
    first.kill9();
    holder.commit().await.unwrap();

    let second = WorkerProcess::start(&pool, &[("STOA_WORKER_LEASE", "1s")]);
    eventually("the job ran again and finished", || async {
        job_row(&pool, "export_account").await.1 == "done"
    })
    .await;
    let (_, _, attempts, _) = job_row(&pool, "export_account").await;
    assert_eq!(attempts, 2, "the killed attempt counts");
    let (revision, jobs): (i32, i64) = sqlx::query_as(
        "SELECT revision, (SELECT count(*) FROM jobs WHERE kind = 'export_account') FROM account_exports",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(revision, 1, "the document was written exactly once");
    assert_eq!(jobs, 1);

    let export = app.get("/api/user/export", Some(&token)).await;
    assert_eq!(export.status, StatusCode::OK);
    assert_eq!(export.body["export"]["status"], "ready");
    let document = &export.body["export"]["document"];
    assert_eq!(document["user"]["username"], "jake");
    assert_eq!(document["articles"][0]["title"], "Exported");
    assert_eq!(document["articles"][0]["tagList"], json!(["kept"]));
    assert_eq!(document["identities"][0]["provider"], "github");
    assert_eq!(document["identities"][0]["subject"], "583231");

    // The worker reports what it did on its admin port.
    let metrics = second.get("/metrics").await.unwrap();
    assert!(
        metrics.contains(r#"stoa_job_attempts_total{kind="export_account",outcome="done"} 1"#),
        "{metrics}"
    );
    eventually("the pod state carries the queue", || async {
        let state = second.get("/state").await.unwrap_or_default();
        state.contains(r#""queue":{"queued":0"#)
    })
    .await;
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn an_export_request_and_its_job_are_one_write_and_queued_requests_share_a_job(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let token = app.register("jake").await;
    assert_eq!(
        app.get("/api/user/export", Some(&token)).await.status,
        StatusCode::NOT_FOUND
    );
    for _ in 0..3 {
        let res = app.post("/api/user/export", Some(&token), json!({})).await;
        assert_eq!(res.status, StatusCode::ACCEPTED);
    }
    let (exports, jobs): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM account_exports), (SELECT count(*) FROM jobs)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (exports, jobs),
        (1, 1),
        "three requests while queued: one job"
    );
    assert_eq!(
        app.post("/api/user/export", None, json!({})).await.status,
        StatusCode::UNAUTHORIZED
    );
    let pending = app.get("/api/user/export", Some(&token)).await;
    assert_eq!(pending.body["export"]["status"], "pending");
    assert!(pending.body["export"]["document"].is_null());

    // A server that runs its worker in process (development) completes it.
    let _dev = TestApp::spawn_with(
        pool.clone(),
        &[
            ("STOA_WORKER_IN_PROCESS", "true"),
            ("STOA_WORKER_POLL_INTERVAL", "50ms"),
        ],
    )
    .await;
    eventually("the export is ready", || async {
        app.get("/api/user/export", Some(&token)).await.body["export"]["status"] == "ready"
    })
    .await;
    // A new request after the document was built queues a new job.
    app.post("/api/user/export", Some(&token), json!({})).await;
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'export_account'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 2);
}

fn config(extra: &[(&str, &str)]) -> Config {
    let env = common::test_env(extra);
    Config::from_env_for_worker(&Env::new(move |k| env.get(k).cloned())).unwrap()
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_failing_job_backs_off_then_is_kept_dead_until_retried(pool: PgPool) {
    // A payload no handler accepts fails every attempt.
    let mut conn = pool.acquire().await.unwrap();
    let id = queue::enqueue(
        &mut *conn,
        Kind::ExportAccount,
        &json!({"userId": 7}),
        None,
        3,
    )
    .await
    .unwrap()
    .unwrap();
    drop(conn);
    let config = config(&[
        ("STOA_DATABASE_URL", &url_of(&pool)),
        ("STOA_WORKER_POLL_INTERVAL", "20ms"),
        // Waits of 0.5–1 s between attempts: long enough to see the job wait for its retry.
        ("STOA_JOB_BACKOFF_BASE", "1s"),
        ("STOA_JOB_BACKOFF_MAX", "1s"),
    ]);
    let metrics = Arc::new(Metrics::new(0));
    let worker = Worker::new(
        Arc::new(Db::new(db(&pool), &config.database.url)),
        metrics.clone(),
        &config,
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(worker.run(stopped, Duration::from_secs(5)));

    eventually(
        "the first attempt failed and waits for its retry",
        || async {
            let (state, attempts, run_at_ahead): (String, i32, bool) =
                sqlx::query_as("SELECT state, attempts, run_at > now() FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            state == "queued" && attempts == 1 && run_at_ahead
        },
    )
    .await;
    eventually("three attempts, then dead", || async {
        job_row(&pool, "export_account").await.1 == "dead"
    })
    .await;
    let (_, _, attempts, error) = job_row(&pool, "export_account").await;
    assert_eq!(attempts, 3);
    assert!(error.unwrap().contains("malformed payload"));
    let dead = queue::list(&db(&pool), true, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let encoded = metrics.encode().unwrap();
    assert!(
        encoded.contains(r#"stoa_job_attempts_total{kind="export_account",outcome="retried"} 2"#),
        "{encoded}"
    );
    assert!(encoded.contains(r#"stoa_job_attempts_total{kind="export_account",outcome="dead"} 1"#));

    // Dead jobs stay until someone decides.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(job_row(&pool, "export_account").await.1, "dead");
    assert!(queue::retry_dead(&db(&pool), id).await.unwrap());
    assert!(
        !queue::retry_dead(&db(&pool), id + 1000).await.unwrap(),
        "only dead jobs are retried"
    );
    eventually("the retried job failed again", || async {
        let (_, state, attempts, _) = job_row(&pool, "export_account").await;
        state == "dead" && attempts == 3
    })
    .await;
    stop.send(true).unwrap();
    running.await.unwrap();
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn concurrent_claims_never_take_the_same_job(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    for n in 0..40 {
        queue::enqueue(
            &mut *conn,
            Kind::RecountCounters,
            &json!({}),
            Some(&format!("k{n}")),
            5,
        )
        .await
        .unwrap()
        .unwrap();
    }
    // A queued key is enqueued once.
    assert_eq!(
        queue::enqueue(&mut *conn, Kind::RecountCounters, &json!({}), Some("k0"), 5)
            .await
            .unwrap(),
        None
    );
    drop(conn);
    let claimers = (0..4).map(|n| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut claimed = Vec::new();
            while let Claim::Job(job) =
                queue::claim(&db(&pool), &format!("w{n}"), Duration::from_secs(60))
                    .await
                    .unwrap()
            {
                claimed.push(job.id);
            }
            claimed
        })
    });
    let mut all: Vec<i64> = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.unwrap());
    }
    all.sort_unstable();
    let before = all.len();
    all.dedup();
    assert_eq!(
        (before, all.len()),
        (40, 40),
        "each job claimed exactly once"
    );
    // A running job's key may be queued again (the running one may have read old state).
    let mut conn = pool.acquire().await.unwrap();
    assert!(
        queue::enqueue(&mut *conn, Kind::RecountCounters, &json!({}), Some("k0"), 5)
            .await
            .unwrap()
            .is_some()
    );
    // Jobs of a kind this binary does not know wait for a worker that does.
    sqlx::query("INSERT INTO jobs (kind) VALUES ('from_a_newer_release')")
        .execute(&pool)
        .await
        .unwrap();
    let mut seen = 0;
    while let Claim::Job(job) = queue::claim(&db(&pool), "w", Duration::from_secs(60))
        .await
        .unwrap()
    {
        assert_ne!(job.kind.as_str(), "from_a_newer_release");
        seen += 1;
    }
    assert_eq!(seen, 1);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_schedule_enqueues_once_per_interval_whatever_the_number_of_workers(pool: PgPool) {
    let schedules = [Schedule {
        kind: Kind::PurgeExpired,
        every: Duration::from_secs(3600),
    }];
    // Many workers tick at once: one job.
    let ticks = (0..6).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move { schedule::tick(&db(&pool), &schedules, 5).await.unwrap() })
    });
    let mut enqueued = 0;
    for tick in ticks {
        if let Tick::Enqueued(kinds) = tick.await.unwrap() {
            enqueued += kinds.len();
        }
    }
    assert_eq!(enqueued, 1);
    assert_eq!(
        schedule::tick(&db(&pool), &schedules, 5).await.unwrap(),
        Tick::Enqueued(vec![])
    );
    // While another worker holds the scheduler's lock, a tick does nothing.
    let mut other = pool.begin().await.unwrap();
    let _: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(SCHEDULER_LOCK)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    sqlx::query("UPDATE job_schedules SET last_queued_at = now() - interval '2 hours'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        schedule::tick(&db(&pool), &schedules, 5).await.unwrap(),
        Tick::Skipped
    );
    other.rollback().await.unwrap();
    // Due again, but the last job has not run yet: not queued twice.
    assert_eq!(
        schedule::tick(&db(&pool), &schedules, 5).await.unwrap(),
        Tick::Enqueued(vec![])
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_recount_repairs_drifted_counters_and_leaves_right_ones(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let jake = app.register("jake").await;
    let jane = app.register("jane").await;
    let slug = app.article(&jake, "Counted", &["a", "b"]).await;
    app.article(&jake, "Other", &["a"]).await;
    app.post(
        &format!("/api/articles/{slug}/favorite"),
        Some(&jane),
        json!({}),
    )
    .await;
    let mut tx = db(&pool).begin().await.unwrap();
    assert_eq!(
        kinds::recount_counters(&mut tx).await.unwrap(),
        kinds::Repaired::default(),
        "the triggers kept every counter exact"
    );
    tx.commit().await.unwrap();
    sqlx::query("UPDATE articles SET favorites_count = 5 WHERE slug = $1;")
        .bind(&slug)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE tag_counts SET articles = 9 WHERE tag = 'a'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM tag_counts WHERE tag = 'b'")
        .execute(&pool)
        .await
        .unwrap();
    // Through the view, as the previous release's recount sets it.
    sqlx::query("UPDATE article_stats SET article_count = 40")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM author_article_counts")
        .execute(&pool)
        .await
        .unwrap();
    // The tag list's entries: one missing, one left by no article.
    sqlx::query("DELETE FROM article_tags WHERE tag = 'b'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO article_tags (tag, created_at, article_id) VALUES ('b', now(), -1)")
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = db(&pool).begin().await.unwrap();
    let repaired = kinds::recount_counters(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        repaired,
        kinds::Repaired {
            favorites_counts: 1,
            tag_counts: 2,
            article_count: 1,
            author_counts: 1,
            tag_entries: 2,
        }
    );
    let tagged = app.get("/api/articles?tag=b", None).await;
    assert_eq!(tagged.body["articles"][0]["slug"], slug);
    assert_eq!(tagged.body["articles"].as_array().unwrap().len(), 1);
    let article = app.get(&format!("/api/articles/{slug}"), None).await;
    assert_eq!(article.body["article"]["favoritesCount"], 1);
    let tags = app.get("/api/tags", None).await;
    assert_eq!(tags.body["tags"], json!(["a", "b"]));
    assert_eq!(
        app.get("/api/articles", None).await.body["articlesCount"],
        2
    );
    assert_eq!(
        app.get("/api/articles?author=jake", None).await.body["articlesCount"],
        2
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_failed_job_whose_key_was_queued_again_leaves_the_work_to_the_newer_one(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    let first = queue::enqueue(&mut *conn, Kind::RecountCounters, &json!({}), Some("k"), 5)
        .await
        .unwrap()
        .unwrap();
    let Claim::Job(job) = queue::claim(&db(&pool), "w", Duration::from_secs(60))
        .await
        .unwrap()
    else {
        panic!("nothing claimed");
    };
    assert_eq!(job.id, first);
    // While it runs, the same work is asked for again: a new job queues.
    let second = queue::enqueue(&mut *conn, Kind::RecountCounters, &json!({}), Some("k"), 5)
        .await
        .unwrap()
        .unwrap();
    // The running one fails: requeueing it would make two queued jobs for one key.
    let state = queue::fail(&db(&pool), &job, "w", "boom", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(state.as_deref(), Some("done"));
    let rows: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT id, state, last_error FROM jobs ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows[0].1, "done");
    assert!(rows[0].2.as_deref().unwrap().starts_with("superseded"));
    assert_eq!((rows[1].0, rows[1].1.as_str()), (second, "queued"));
    // Without a newer job, a failure queues the job again.
    let Claim::Job(job) = queue::claim(&db(&pool), "w", Duration::from_secs(60))
        .await
        .unwrap()
    else {
        panic!("nothing claimed");
    };
    let state = queue::fail(&db(&pool), &job, "w", "boom", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(state.as_deref(), Some("queued"));
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn a_running_job_is_its_workers_past_the_lease_until_its_transaction_ends(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue(&mut *conn, Kind::RecountCounters, &json!({}), None, 5)
        .await
        .unwrap();
    drop(conn);
    let lease = Duration::from_millis(200);
    let Claim::Job(job) = queue::claim(&db(&pool), "a", lease).await.unwrap() else {
        panic!("nothing claimed");
    };
    let mut running = pool.begin().await.unwrap();
    assert!(queue::hold(&mut *running, &job, "a").await.unwrap());
    tokio::time::sleep(lease * 2).await;
    // A long job outlives its lease: the row lock keeps everyone else off it.
    assert!(matches!(
        queue::claim(&db(&pool), "b", lease).await.unwrap(),
        Claim::Empty
    ));
    // Its worker dies (the transaction ends without the job done): the next claim takes it.
    running.rollback().await.unwrap();
    let Claim::Job(again) = queue::claim(&db(&pool), "b", lease).await.unwrap() else {
        panic!("the abandoned job was not taken again");
    };
    assert_eq!((again.id, again.attempt), (job.id, 2));
    // The first worker, back from the dead, finds the job is no longer its own.
    let mut late = pool.begin().await.unwrap();
    assert!(!queue::hold(&mut *late, &job, "a").await.unwrap());
}

/// The purge deletes stored security events past `STOA_SECURITY_EVENT_RETENTION` and
/// keeps the newer ones.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_purge_deletes_security_events_past_their_retention(pool: PgPool) {
    use stoa_api::jobs::kinds::{Context, run};
    sqlx::query(
        "INSERT INTO security_events (at, event) VALUES
           (now() - interval '91 days', 'login_failed'), (now() - interval '1 day', 'login_failed')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let context = Context {
        mirror: stoa_api::auth::revocation::MirrorWindow {
            access_ttl: std::time::Duration::from_secs(900),
            leeway: std::time::Duration::from_secs(30),
        },
        retention: std::time::Duration::from_secs(7 * 86400),
        security_event_retention: std::time::Duration::from_secs(90 * 86400),
    };
    let mut tx = common::db(&pool).begin().await.unwrap();
    let report = run(
        &mut tx,
        stoa_api::jobs::Kind::PurgeExpired,
        &json!({}),
        context,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(report["securityEvents"], 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM security_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 1);
}
