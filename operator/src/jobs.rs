//! What the operator reads from its one-shot Jobs (migrations, credential steps), and
//! how soon it retries a failed one.

use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::jiff::Timestamp;

/// First retry after a failed attempt; doubles per attempt up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(30);
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// How a Job stands, from its conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    Running,
    Complete,
    Failed {
        /// The condition's message, or a generic one.
        message: String,
        /// Since the Job failed (for a retry backoff).
        finished_ago: Duration,
    },
}

fn finished_condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// The Job failed through its pod failure policy (a `FailJob` rule).
pub fn failed_by_policy(job: &Job) -> bool {
    finished_condition(job, "Failed")
        .is_some_and(|c| c.reason.as_deref() == Some("PodFailurePolicy"))
}

pub fn job_finish(job: &Job, now: Timestamp) -> Finish {
    if finished_condition(job, "Complete").is_some() {
        return Finish::Complete;
    }
    let Some(failed) = finished_condition(job, "Failed") else {
        return Finish::Running;
    };
    let finished_ago = failed
        .last_transition_time
        .as_ref()
        .and_then(|t| now.since(t.0).ok())
        .and_then(|span| span.total(k8s_openapi::jiff::Unit::Second).ok())
        .map_or(Duration::ZERO, |secs| {
            Duration::from_secs_f64(secs.max(0.0))
        });
    Finish::Failed {
        message: failed
            .message
            .clone()
            .unwrap_or_else(|| "the Job failed".into()),
        finished_ago,
    }
}

/// Capped exponential backoff after `attempt` failed attempts.
pub fn backoff(attempt: i32) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    FIRST_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF)
}
