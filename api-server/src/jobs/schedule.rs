//! Maintenance on a timetable: every worker ticks, and under one advisory lock the due
//! schedules enqueue their job, so a schedule runs once per interval however many workers
//! there are (and never twice at once: its job carries the schedule's name as idempotency
//! key, so it is not enqueued again while the last one is pending).

use std::time::Duration;

use crate::db::Pool;

use super::{Kind, queue};

/// `pg_try_advisory_xact_lock` key of the scheduler ("stoasche").
pub const SCHEDULER_LOCK: i64 = 0x73746f6173636865;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub kind: Kind,
    pub every: Duration,
}

/// What one tick did.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    /// Another worker holds the scheduler's lock this instant.
    Skipped,
    /// The kinds whose job this tick enqueued.
    Enqueued(Vec<Kind>),
}

pub async fn tick(
    pool: &Pool,
    schedules: &[Schedule],
    max_attempts: u32,
) -> Result<Tick, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(SCHEDULER_LOCK)
        .fetch_one(&mut tx)
        .await?;
    if !locked {
        tx.rollback().await?;
        return Ok(Tick::Skipped);
    }
    let mut enqueued = Vec::new();
    for schedule in schedules {
        let due = sqlx::query(
            "INSERT INTO job_schedules AS s (name, last_queued_at) VALUES ($1, now())
             ON CONFLICT (name) DO UPDATE SET last_queued_at = now()
              WHERE s.last_queued_at <= now() - make_interval(secs => $2)",
        )
        .bind(schedule.kind.as_str())
        .bind(schedule.every.as_secs_f64())
        .execute(&mut tx)
        .await?
        .rows_affected()
            > 0;
        if due {
            let added = queue::enqueue(
                &mut tx,
                schedule.kind,
                &serde_json::json!({}),
                Some(schedule.kind.as_str()),
                max_attempts,
            )
            .await?;
            if added.is_some() {
                enqueued.push(schedule.kind);
            }
        }
    }
    tx.commit().await?;
    Ok(Tick::Enqueued(enqueued))
}
