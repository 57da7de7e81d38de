//! The queue's statements: enqueue, claim, finish, fail, and what the queue holds.
//!
//! A claim commits on its own (the attempt is counted even if the worker then dies, so a
//! job that kills its worker still ends up dead) and leases the job to the worker until
//! `run_at`. The worker then runs the job in a second transaction that first locks the
//! row: while that lock is held, `SKIP LOCKED` keeps every other worker off the job however
//! long it runs; if the worker dies, PostgreSQL ends the transaction and, once the lease is
//! over, the next claim takes the job again.

use std::time::Duration;

use sqlx::PgExecutor;

use crate::db::Pool;

use super::Kind;

/// A job a worker has claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub kind: Kind,
    pub payload: serde_json::Value,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub max_attempts: i32,
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    Job(Claimed),
    /// A job whose worker vanished during its last attempt: now dead, not run.
    Expired {
        id: i64,
        kind: Kind,
    },
    Empty,
}

/// Enqueues a job unless one with the same `(kind, key)` is queued (not yet started);
/// returns its id when it was added. Runs on the caller's connection, so a job enqueued in
/// a transaction exists exactly when the transaction commits.
pub async fn enqueue(
    conn: impl PgExecutor<'_>,
    kind: Kind,
    payload: &serde_json::Value,
    key: Option<&str>,
    max_attempts: u32,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(concat!(
        "INSERT INTO jobs (kind, payload, idempotency_key, max_attempts) VALUES ($1, $2, $3, $4) ",
        crate::jobs_on_conflict!(),
        " RETURNING id"
    ))
    .bind(kind.as_str())
    .bind(payload)
    .bind(key)
    .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
    .fetch_optional(conn)
    .await
}

/// The clause that makes an enqueue with a queued `(kind, idempotency_key)` a no-op; for
/// statements that enqueue beside another write.
#[macro_export]
macro_rules! jobs_on_conflict {
    () => {
        "ON CONFLICT (kind, idempotency_key) WHERE idempotency_key IS NOT NULL \
         AND state = 'queued' DO NOTHING"
    };
}

/// Takes the earliest due job (queued, or running past its lease) for `worker`, leased
/// for `lease`.
/// Only the kinds this binary knows are claimed: a job of a newer release's kind waits for
/// a worker that knows it instead of failing here.
pub async fn claim(pool: &Pool, worker: &str, lease: Duration) -> Result<Claim, sqlx::Error> {
    let row: Option<(i64, String, serde_json::Value, i32, i32, String)> = sqlx::query_as(
        "WITH next AS (
             SELECT id FROM jobs
              WHERE state IN ('queued', 'running') AND run_at <= now() AND kind = ANY($3)
              ORDER BY run_at, id
              LIMIT 1
                FOR UPDATE SKIP LOCKED)
         UPDATE jobs j SET
             state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'running' END,
             attempts = LEAST(j.attempts + 1, j.max_attempts),
             last_error = CASE WHEN j.attempts >= j.max_attempts
                 THEN 'its worker stopped during the last attempt' ELSE j.last_error END,
             finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
             run_at = now() + make_interval(secs => $2),
             started_at = now(),
             locked_by = $1
           FROM next
          WHERE j.id = next.id
         RETURNING j.id, j.kind, j.payload, j.attempts, j.max_attempts, j.state",
    )
    .bind(worker)
    .bind(lease.as_secs_f64())
    .bind(&Kind::ALL.map(Kind::as_str)[..])
    .fetch_optional(pool)
    .await?;
    let Some((id, kind, payload, attempt, max_attempts, state)) = row else {
        return Ok(Claim::Empty);
    };
    let kind = Kind::parse(&kind)
        .ok_or_else(|| sqlx::Error::Protocol(format!("claimed job {id} of unknown kind {kind}")))?;
    Ok(match state.as_str() {
        "dead" => Claim::Expired { id, kind },
        _ => Claim::Job(Claimed {
            id,
            kind,
            payload,
            attempt,
            max_attempts,
        }),
    })
}

/// In the job's transaction, before its handler: locks the row for as long as the job
/// runs. `false` when the job is no longer this worker's (its lease ran out and another
/// worker took it).
pub async fn hold(
    conn: impl PgExecutor<'_>,
    job: &Claimed,
    worker: &str,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "SELECT 1 FROM jobs WHERE id = $1 AND locked_by = $2 AND state = 'running' FOR UPDATE",
    )
    .bind(job.id)
    .bind(worker)
    .fetch_optional(conn)
    .await?
    .is_some())
}

/// In the job's transaction, after its handler: the job is done when it commits.
pub async fn finish(conn: impl PgExecutor<'_>, job: &Claimed) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET state = 'done', finished_at = now(), locked_by = NULL, last_error = NULL
          WHERE id = $1",
    )
    .bind(job.id)
    .execute(conn)
    .await?;
    Ok(())
}

/// How long to wait before the attempt after `attempt` failed: `base` doubled for each
/// earlier failure, capped at `max`, the second half drawn at random so jobs that failed
/// together (a database restart) do not all come back at once.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub base: Duration,
    pub max: Duration,
}

impl Retry {
    pub fn delay(&self, attempt: i32, random: f64) -> Duration {
        let doublings = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let full = self.base.saturating_mul(1u32 << doublings).min(self.max);
        full / 2 + full.mul_f64(random.clamp(0.0, 1.0) / 2.0)
    }
}

/// After a failed attempt (its transaction rolled back): queued again after `delay`, or
/// dead when it was the last attempt, or done (superseded) when a job with the same key
/// was queued meanwhile: that one does the work. Returns the new state (`None`: no longer
/// this worker's job).
pub async fn fail(
    pool: &Pool,
    job: &Claimed,
    worker: &str,
    error: &str,
    delay: Duration,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH superseded AS (
             SELECT EXISTS (SELECT 1 FROM jobs j, jobs o
                             WHERE j.id = $1 AND o.kind = j.kind
                               AND o.idempotency_key = j.idempotency_key
                               AND o.state = 'queued') AS yes)
         UPDATE jobs SET
             state = CASE WHEN attempts >= max_attempts THEN 'dead'
                          WHEN superseded.yes THEN 'done' ELSE 'queued' END,
             finished_at = CASE WHEN attempts >= max_attempts OR superseded.yes THEN now() END,
             run_at = now() + make_interval(secs => $3),
             last_error = CASE WHEN superseded.yes AND attempts < max_attempts
                 THEN 'superseded by a newer job with its key after: ' || $4 ELSE $4 END,
             locked_by = NULL
           FROM superseded
          WHERE id = $1 AND locked_by = $2 AND state = 'running'
         RETURNING state",
    )
    .bind(job.id)
    .bind(worker)
    .bind(delay.as_secs_f64())
    .bind(truncate(error, 2000))
    .fetch_optional(pool)
    .await
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// The queue by kind: jobs due now (queued or running), dead, and the age of the oldest
/// due job that waits for a worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Depth {
    pub kind: String,
    pub queued: i64,
    /// Queued but not yet due (waiting for a retry's backoff).
    pub delayed: i64,
    pub running: i64,
    pub dead: i64,
    pub oldest_due_seconds: f64,
}

pub async fn depth(pool: &Pool) -> Result<Vec<Depth>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64, i64, f64)> = sqlx::query_as(
        "SELECT kind,
                count(*) FILTER (WHERE state = 'queued' AND run_at <= now()),
                count(*) FILTER (WHERE state = 'queued' AND run_at > now()),
                count(*) FILTER (WHERE state = 'running'),
                count(*) FILTER (WHERE state = 'dead'),
                COALESCE(extract(epoch FROM now() - min(created_at)
                    FILTER (WHERE state = 'queued' AND run_at <= now())), 0)::float8
           FROM jobs WHERE state <> 'done'
          GROUP BY kind ORDER BY kind",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(kind, queued, delayed, running, dead, oldest_due_seconds)| Depth {
                kind,
                queued,
                delayed,
                running,
                dead,
                oldest_due_seconds,
            },
        )
        .collect())
}

/// A job as `stoa-api jobs list` shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    pub id: i64,
    pub kind: String,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub run_at: chrono::DateTime<chrono::Utc>,
    pub last_error: Option<String>,
}

/// The newest `limit` jobs, dead ones only if `dead_only`.
pub async fn list(pool: &Pool, dead_only: bool, limit: i64) -> Result<Vec<Listed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, state, attempts, max_attempts, created_at, run_at, last_error
           FROM jobs WHERE state <> 'done' AND (NOT $1 OR state = 'dead')
          ORDER BY id DESC LIMIT $2",
    )
    .bind(dead_only)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Queues a dead job again with a fresh set of attempts; `false` if `id` is not dead.
pub async fn retry_dead(conn: impl PgExecutor<'_>, id: i64) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE jobs SET state = 'queued', attempts = 0, run_at = now(), finished_at = NULL,
                locked_by = NULL
          WHERE id = $1 AND state = 'dead'",
    )
    .bind(id)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// Deletes a dead job someone decided not to run again; `false` if `id` is not dead.
pub async fn discard_dead(conn: impl PgExecutor<'_>, id: i64) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM jobs WHERE id = $1 AND state = 'dead'")
            .bind(id)
            .execute(conn)
            .await?
            .rows_affected()
            > 0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let retry = Retry {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
        };
        // With the random half at its maximum, the delay is the full step.
        let full: Vec<u64> = (1..=7).map(|a| retry.delay(a, 1.0).as_secs()).collect();
        assert_eq!(full, [2, 4, 8, 16, 32, 60, 60]);
        // Never less than half the step.
        assert_eq!(retry.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(retry.delay(1000, 0.5), Duration::from_secs(45));
    }

    #[test]
    fn errors_are_kept_short() {
        assert_eq!(truncate("ééé", 2), "éé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
