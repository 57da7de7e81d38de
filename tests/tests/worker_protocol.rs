#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The worker protocol end to end: real `stoa-api worker` pods report the job queue on
//! their admin port, the operator scales the worker Deployment on it (up under a backlog,
//! back down one worker at a time once nothing waits, each leaving worker finishing its
//! jobs on SIGTERM), and every job takes effect exactly once. See `harness`.

mod common;
mod harness;

use std::time::Duration;

use harness::Cluster;
use sqlx::PgPool;
use stoa_operator::crd::Stoa;

fn worker_stoa() -> Stoa {
    harness::test_stoa(
        "  replicas: 1
  database: {urlSecretRef: {name: api-db}}
  redis: {urlSecretRef: {name: api-redis}}
  worker: {minReplicas: 1, maxReplicas: 3, jobsPerReplica: 2, concurrency: 2}
",
        &[("STOA_WORKER_POLL_INTERVAL", "100ms")],
    )
}

/// Steps the cluster until `workers` worker pods run (or panics after `timeout`).
async fn run_until_workers(
    cluster: &mut Cluster,
    what: &str,
    timeout: Duration,
    workers: usize,
) -> Stoa {
    let reached = cluster
        .step_until(timeout, |cluster, _| cluster.workers().len() == workers)
        .await;
    reached.unwrap_or_else(|stoa| {
        panic!(
            "{what}: {} workers, status {:?}",
            cluster.workers().len(),
            stoa.status.as_ref().and_then(|s| s.worker.clone())
        )
    })
}

#[sqlx::test(migrations = false)]
async fn workers_follow_the_queue_up_and_down_and_every_job_runs_once(pool: PgPool) {
    let mut cluster = harness::install(
        &worker_stoa(),
        vec![harness::database_secret("api-db", &common::url_of(&pool))],
    )
    .await;
    assert_eq!(
        cluster.workers().len(),
        1,
        "the minimum runs from the start"
    );

    // Twelve account exports whose rows the test holds: the workers take their jobs and
    // wait inside them, so the backlog stays until the test lets go.
    sqlx::query(
        "WITH account AS (
             INSERT INTO users (username, email, password_hash)
             SELECT 'user' || n, 'user' || n || '@example.com', 'x'
               FROM generate_series(1, 12) n RETURNING id)
         INSERT INTO account_exports (user_id, requested_at) SELECT id, now() FROM account",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM account_exports FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobs (kind, payload, idempotency_key)
         SELECT 'export_account', jsonb_build_object('userId', user_id), 'user:' || user_id
           FROM account_exports",
    )
    .execute(&pool)
    .await
    .unwrap();

    // 12 due or running jobs at 2 per worker ask for 6: the maximum, 3.
    let up = run_until_workers(
        &mut cluster,
        "scaled up on the backlog",
        Duration::from_secs(60),
        3,
    )
    .await;
    let status = up.status.unwrap().worker.unwrap();
    assert_eq!(
        (status.desired_replicas, status.reason.as_str()),
        (3, "Queue")
    );
    assert!(
        status.queued.unwrap() + status.running.unwrap() >= 10,
        "{status:?}"
    );

    // Let the jobs through: the queue drains, and the workers go one at a time.
    holder.commit().await.unwrap();
    let down = run_until_workers(
        &mut cluster,
        "back to the minimum",
        Duration::from_secs(90),
        1,
    )
    .await;
    let (done, exports_once, attempts): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE kind = 'export_account' AND state = 'done'),
                (SELECT count(*) FROM account_exports WHERE revision = 1 AND ready_at IS NOT NULL),
                (SELECT sum(attempts) FROM jobs WHERE kind = 'export_account')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (done, exports_once),
        (12, 12),
        "every export built, each once"
    );
    assert_eq!(attempts, 12, "no job was lost to a leaving worker");
    let status = down.status.unwrap().worker.unwrap();
    assert_eq!(status.desired_replicas, 1, "{status:?}");
    eprintln!("workers scaled 1 -> 3 -> 1, last decision {status:?}");
    cluster.shutdown().await;
}
