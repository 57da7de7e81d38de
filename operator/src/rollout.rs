//! Protocol 1: database migrations gate every rollout.
//!
//! A pure decision over the spec and what was observed (the migration Jobs of this Stoa,
//! whether the Deployment's rollout is complete): which image the Deployment runs, which
//! Job to create, and what to report. The controller observes, calls [`plan`], and applies.
//!
//! 1. A new `spec.image` is *not* given to the Deployment. An expand Job
//!    (`stoa-api migrate --phase expand`) runs with that image first; when it succeeds the
//!    image becomes `status.approvedImage` and the Deployment moves to it.
//! 2. Once no pod of an older revision remains, a contract Job (`--phase all`) applies the
//!    release's contract steps; `status.contractedImage` records it. When the expand
//!    Job's report lists no pending contract step, there is no contract Job.
//! 3. A failed Job keeps the Deployment where it was; it is retried with capped
//!    exponential backoff under a new name (the failed Job is kept for its logs).
//! 4. An image older than the schema's last contraction exits with
//!    [`EXIT_NEWER_CONTRACT`](stoa_contract::migration::EXIT_NEWER_CONTRACT), which the
//!    Job's pod failure policy turns into an immediate Job failure: the rollback is
//!    blocked (no retry) until `spec.migrations.allowRollbackTo` names the image.

use std::time::Duration;

use sha2::{Digest, Sha256};
use stoa_contract::migration::{MigrationReport, Outcome};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::crd::{MigrationMode, Stoa};
use crate::resources::{ATTEMPT_ANNOTATION, MIGRATION_KEY_LABEL};
pub use crate::resources::{JobRequest, Step};

pub use crate::jobs::{FIRST_BACKOFF, MAX_BACKOFF, backoff};
use crate::jobs::{Finish, failed_by_policy, job_finish};

/// How a migration Job ended, if it did.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    Running,
    Succeeded {
        report: Option<MigrationReport>,
    },
    Failed {
        /// The Job failed through its pod failure policy (the migrator's refusal exit
        /// code, the only rule that fails a Job at once) or reported `newerContract`.
        refused: bool,
        message: String,
        /// Seconds since the Job finished (for the retry backoff).
        finished_ago: Duration,
        report: Option<MigrationReport>,
    },
}

/// One migration Job of this Stoa, as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedJob {
    pub name: String,
    /// [`JobRequest::key`] of the Job.
    pub key: String,
    pub attempt: i32,
    pub state: JobState,
}

/// What the controller saw before deciding.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// `status.approvedImage`, or the running Deployment's image for a Stoa created by an
    /// operator release that predates approval.
    pub approved_image: Option<String>,
    pub contracted_image: Option<String>,
    pub schema_version: Option<i64>,
    pub jobs: Vec<ObservedJob>,
    /// The Deployment runs the approved image on every pod and no pod of an older
    /// revision remains (terminating ones included).
    pub rollout_complete: bool,
}

/// Where the migration protocol stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Nothing to do.
    Idle,
    /// Migrations are off: the Deployment follows `spec.image`.
    Disabled,
    /// A Job is running (or was just created); `attempt` > 1 means earlier ones failed.
    Running {
        step: Step,
        job: String,
        attempt: i32,
    },
    /// The step's Job succeeded (this reconcile acts on it).
    Succeeded { step: Step, job: String },
    /// The last attempt failed; the next one starts in `retry_in`.
    Failed {
        step: Step,
        job: String,
        message: String,
        retry_in: Duration,
    },
    /// The image does not know contract steps the database has; waiting for approval.
    Blocked {
        step: Step,
        job: String,
        image: String,
        message: String,
    },
}

/// The decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The Deployment's image; `None` keeps it from being created yet (first migration).
    pub deploy_image: Option<String>,
    pub approved_image: Option<String>,
    pub contracted_image: Option<String>,
    pub schema_version: Option<i64>,
    pub create: Option<JobRequest>,
    pub activity: Activity,
    /// The attempts so far for the step in progress.
    pub attempts: i32,
    /// Reconcile again this soon even without a watch event (a pending retry).
    pub requeue: Option<Duration>,
}

/// Reads a migration Job (and its pod's termination message, if any) into what [`plan`]
/// needs. `None` for a Job without the grouping label (not one of ours).
pub fn observe_job(
    job: &Job,
    termination_message: Option<&str>,
    now: Timestamp,
) -> Option<ObservedJob> {
    let key = job.labels().get(MIGRATION_KEY_LABEL)?.clone();
    let attempt = job
        .annotations()
        .get(ATTEMPT_ANNOTATION)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let report = termination_message.and_then(MigrationReport::parse);
    let state = match job_finish(job, now) {
        Finish::Running => JobState::Running,
        Finish::Complete => JobState::Succeeded { report },
        Finish::Failed {
            message,
            finished_ago,
        } => JobState::Failed {
            // The pod failure policy's only FailJob rule is the migrator's refusal code.
            refused: failed_by_policy(job),
            message: report
                .as_ref()
                .map(|r| r.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or(message),
            finished_ago,
            report,
        },
    };
    Some(ObservedJob {
        name: job.name_any(),
        key,
        attempt,
        state,
    })
}

/// Eight hex digits of SHA-256 over the image (and the approval, which changes what runs).
fn short_hash(image: &str, allow_newer_contract: bool) -> String {
    let mut hasher = Sha256::new();
    hasher.update(image.as_bytes());
    if allow_newer_contract {
        hasher.update(b"\0allow-newer-contract");
    }
    hasher.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `<name>-migrate-<hash>` (first attempt) or `<name>-migrate-<hash>-<attempt>`. Job names
/// become a pod label value, so the whole name stays within 63 characters.
pub fn job_name(stoa_name: &str, step: Step, key_hash: &str, attempt: i32) -> String {
    let suffix = if attempt > 1 {
        format!("-{}-{key_hash}-{attempt}", step.job_word())
    } else {
        format!("-{}-{key_hash}", step.job_word())
    };
    crate::resources::bounded_name(stoa_name, &suffix)
}

/// The grouping key of a (step, image, approval): `<step>-<hash>`, a valid label value.
fn job_key(step: Step, image: &str, allow_newer_contract: bool) -> (String, String) {
    let hash = short_hash(image, allow_newer_contract);
    (format!("{}-{hash}", step.label()), hash)
}

pub fn plan(stoa: &Stoa, observed: &Observed) -> Plan {
    let spec = &stoa.spec;
    let desired = spec.image.clone();
    let mut plan = Plan {
        deploy_image: observed.approved_image.clone(),
        approved_image: observed.approved_image.clone(),
        contracted_image: observed.contracted_image.clone(),
        schema_version: observed.schema_version,
        create: None,
        activity: Activity::Idle,
        attempts: 0,
        requeue: None,
    };
    if spec.migrations.mode == MigrationMode::Disabled {
        plan.deploy_image = Some(desired.clone());
        plan.approved_image = Some(desired);
        plan.activity = Activity::Disabled;
        return plan;
    }
    let allow = spec.migrations.allow_rollback_to.as_deref() == Some(desired.as_str());
    if observed.approved_image.as_deref() == Some(desired.as_str()) {
        if observed.contracted_image.as_deref() != Some(desired.as_str())
            && observed.rollout_complete
        {
            let done = step(stoa, observed, Step::Contract, &desired, allow, &mut plan);
            if let Some(report) = done {
                plan.contracted_image = Some(desired);
                if let Some(version) = report.and_then(|r| r.schema_version) {
                    plan.schema_version = Some(version);
                }
            }
        }
        return plan;
    }
    let done = step(stoa, observed, Step::Expand, &desired, allow, &mut plan);
    if let Some(report) = done {
        plan.approved_image = Some(desired.clone());
        plan.deploy_image = Some(desired.clone());
        if let Some(report) = report {
            plan.schema_version = report.schema_version.or(plan.schema_version);
            // The new binary embeds every migration ever shipped: when it reports no
            // pending contract step, there is nothing for a contract Job to do. Without a
            // report (no termination message), the contract Job runs to find out.
            if report.pending_contract.is_empty() {
                plan.contracted_image = Some(desired);
            }
        }
    }
    plan
}

/// Advances one step. Returns `Some(report)` once its Job succeeded. Over ~80 lines: one
/// arm per state of the step's Job, read top to bottom as the protocol is written.
fn step(
    stoa: &Stoa,
    observed: &Observed,
    step: Step,
    image: &str,
    allow: bool,
    plan: &mut Plan,
) -> Option<Option<MigrationReport>> {
    let (key, hash) = job_key(step, image, allow);
    let name = stoa.metadata.name.as_deref().unwrap_or_default();
    let latest = observed
        .jobs
        .iter()
        .filter(|j| j.key == key)
        .max_by_key(|j| j.attempt);
    let request = |attempt: i32| JobRequest {
        name: job_name(name, step, &hash, attempt),
        step,
        image: image.to_owned(),
        allow_newer_contract: allow,
        attempt,
        key: key.clone(),
    };
    let Some(job) = latest else {
        let create = request(1);
        plan.activity = Activity::Running {
            step,
            job: create.name.clone(),
            attempt: 1,
        };
        plan.attempts = 1;
        plan.create = Some(create);
        return None;
    };
    plan.attempts = job.attempt;
    match &job.state {
        JobState::Running => {
            plan.activity = Activity::Running {
                step,
                job: job.name.clone(),
                attempt: job.attempt,
            };
            None
        }
        JobState::Succeeded { report } => {
            plan.activity = Activity::Succeeded {
                step,
                job: job.name.clone(),
            };
            Some(report.clone())
        }
        JobState::Failed {
            refused,
            message,
            report,
            ..
        } if *refused
            || report
                .as_ref()
                .is_some_and(|r| r.outcome == Outcome::NewerContract) =>
        {
            let detail = report
                .as_ref()
                .filter(|r| !r.unknown_contract.is_empty())
                .map(|r| {
                    format!(
                        "the database holds contract migration(s) {:?} that image {image} does not know",
                        r.unknown_contract
                    )
                })
                .unwrap_or_else(|| {
                    format!(
                        "image {image} does not know contract migrations the database already has ({message})"
                    )
                });
            plan.activity = Activity::Blocked {
                step,
                job: job.name.clone(),
                image: image.to_owned(),
                message: format!(
                    "{detail}; it is older than the schema's last contraction. Roll forward, or set \
                     spec.migrations.allowRollbackTo: {image} to roll back anyway"
                ),
            };
            None
        }
        JobState::Failed {
            message,
            finished_ago,
            ..
        } => {
            let wait = backoff(job.attempt).saturating_sub(*finished_ago);
            if wait.is_zero() {
                let create = request(job.attempt.saturating_add(1));
                plan.activity = Activity::Running {
                    step,
                    job: create.name.clone(),
                    attempt: create.attempt,
                };
                plan.attempts = create.attempt;
                plan.create = Some(create);
            } else {
                plan.activity = Activity::Failed {
                    step,
                    job: job.name.clone(),
                    message: format!(
                        "migration Job {} failed (attempt {}): {message}",
                        job.name, job.attempt
                    ),
                    retry_in: wait,
                };
                plan.requeue = Some(wait);
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(30));
        assert_eq!(backoff(2), Duration::from_secs(60));
        assert_eq!(backoff(3), Duration::from_secs(120));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(1000), MAX_BACKOFF);
    }

    #[test]
    fn job_names_fit_a_label_value() {
        let long = "a".repeat(80);
        let name = job_name(&long, Step::Contract, "0123abcd", 12);
        assert!(name.len() <= 63, "{name}");
        assert!(name.ends_with("-contract-0123abcd-12"));
        assert_eq!(
            job_name("api", Step::Expand, "0123abcd", 1),
            "api-migrate-0123abcd"
        );
    }

    #[test]
    fn approval_changes_the_job() {
        assert_ne!(short_hash("img:1", false), short_hash("img:1", true));
        assert_eq!(short_hash("img:1", false), short_hash("img:1", false));
    }
}
