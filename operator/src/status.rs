//! The Stoa's status and the Events worth a human's attention, as pure functions of what
//! the reconciler observed and decided (timestamps aside).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::EventType;

use crate::conditions::{Reason, degraded, paused, progressing, ready, rollback_blocked};
use crate::crd::{
    AutoscalingStatus, CredentialRotationStatus, KeyRotationStatus, KeyStatus, MigrationStatus,
    RedisSpec, Stoa, StoaStatus, WorkerStatus,
};
use crate::resources;
use crate::rollout::{Activity, Plan};

/// A reconcile failure to report (its reason is a bounded, CamelCase word).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

/// Everything the status is computed from.
pub struct Facts<'a> {
    pub deployment: Option<&'a Deployment>,
    pub keys: Vec<KeyStatus>,
    pub paused: bool,
    /// The migration protocol's decision (`None` while paused: nothing was decided).
    pub plan: Option<&'a Plan>,
    /// The key rotation's state (`None` while paused: the last one reported stays).
    pub key_rotation: Option<KeyRotationFacts>,
    /// The credential rotation's state (`None` while paused).
    pub credential_rotation: Option<CredentialRotationFacts>,
    /// The Concurrency autoscaler's decision (`None` in other modes).
    pub autoscaling: Option<AutoscalingStatus>,
    /// The worker Deployment's scaling (`None` while paused: the last one stays).
    pub worker: Option<WorkerStatus>,
    /// Optional objects left alone because an object the Stoa does not own has the name.
    pub conflicts: Vec<String>,
}

pub struct CredentialRotationFacts {
    pub status: CredentialRotationStatus,
    /// `(reason, message)` for `Degraded` (stalled, or a failing step).
    pub degraded: Option<(&'static Reason, String)>,
}

pub struct KeyRotationFacts {
    pub status: KeyRotationStatus,
    /// Why the rotation is stalled, if it is.
    pub stalled: Option<String>,
}

/// The image of the Deployment's (first and only) container.
pub fn deployment_image(deployment: &Deployment) -> Option<String> {
    crate::resources::stoa_container(deployment.spec.as_ref()?.template.spec.as_ref()?)?
        .image
        .clone()
}

/// The stored status with `Degraded` reporting `failure`, everything else as last
/// reported (a failed reconcile observed nothing new).
pub fn with_failure(stoa: &Stoa, failure: &Failure) -> StoaStatus {
    let previous = stoa.status.clone().unwrap_or_default();
    let mut next = previous.clone();
    next.conditions.retain(|c| c.type_ != degraded::TYPE);
    next.conditions.push(condition(
        degraded::TYPE,
        "True",
        failure.reason,
        failure.message.clone(),
        stoa.metadata.generation,
    ));
    carry_transition_times(&previous, &mut next);
    next
}

/// What the Deployment says about its rollout.
pub struct DeploymentState {
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
    pub current: i32,
    /// Every pod runs the current template and the controller has seen the latest spec.
    pub rolled_out: bool,
    /// `(reason, message)` of a failed rollout.
    pub failed: Option<(String, String)>,
}

pub fn deployment_state(stoa: &Stoa, deployment: Option<&Deployment>) -> DeploymentState {
    let status = deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let desired = deployment
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(stoa.spec.replicas);
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let current = status.replicas.unwrap_or(0);
    let generation_seen = match (
        deployment.and_then(|d| d.metadata.generation),
        status.observed_generation,
    ) {
        (Some(generation), Some(observed)) => observed >= generation,
        // No generation recorded (not set by every API implementation): trust the status.
        (None, Some(_)) => true,
        _ => false,
    };
    let failed = status.conditions.iter().flatten().find_map(|c| {
        let deadline = c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded");
        let replica_failure = c.type_ == "ReplicaFailure" && c.status == "True";
        (deadline || replica_failure).then(|| {
            (
                c.reason
                    .clone()
                    .unwrap_or_else(|| "DeploymentFailed".into()),
                c.message.clone().unwrap_or_default(),
            )
        })
    });
    DeploymentState {
        desired,
        ready,
        updated,
        current,
        rolled_out: deployment.is_some()
            && generation_seen
            && updated >= desired
            && current == updated,
        failed,
    }
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// A condition of `type_` giving `reason` (and the status that reason comes with).
fn because(type_: &str, reason: &Reason, message: String, generation: Option<i64>) -> Condition {
    condition(type_, reason.status(), reason.name, message, generation)
}

/// What every condition is computed from.
struct Observed<'a> {
    stoa: &'a Stoa,
    facts: &'a Facts<'a>,
    deployment: &'a DeploymentState,
    activity: Option<&'a Activity>,
    generation: Option<i64>,
    data_tier: &'a str,
}

/// The status for these facts; `previous` supplies what a reconcile that decided nothing
/// about migrations (paused) keeps, and the transition times of unchanged conditions.
pub fn status(stoa: &Stoa, facts: &Facts<'_>) -> StoaStatus {
    let generation = stoa.metadata.generation;
    let previous = stoa.status.clone().unwrap_or_default();
    let deployment = deployment_state(stoa, facts.deployment);
    let tier = data_tier(stoa);
    let observed = Observed {
        stoa,
        facts,
        deployment: &deployment,
        activity: facts.plan.map(|p| &p.activity),
        generation,
        data_tier: &tier,
    };
    let last_message = previous
        .migration
        .as_ref()
        .and_then(|m| m.message.clone())
        .unwrap_or_default();
    // The order of `conditions::ALL`.
    let conditions = vec![
        ready(&observed),
        progressing(&observed),
        degraded(&observed, &last_message),
        rollback_blocked(&observed),
        paused(&observed),
    ];

    let mut next = StoaStatus {
        observed_generation: generation,
        conditions,
        current_image: facts.deployment.and_then(deployment_image),
        approved_image: facts.plan.map_or(previous.approved_image.clone(), |p| {
            p.approved_image.clone()
        }),
        contracted_image: facts.plan.map_or(previous.contracted_image.clone(), |p| {
            p.contracted_image.clone()
        }),
        schema_version: facts
            .plan
            .map_or(previous.schema_version, |p| p.schema_version),
        migration: migration_status(stoa, facts.plan, previous.migration.clone()),
        replicas: deployment.current,
        ready_replicas: deployment.ready,
        updated_replicas: deployment.updated,
        selector: Some(resources::selector_string(stoa)),
        keys: facts.keys.clone(),
        key_rotation: match &facts.key_rotation {
            Some(rotation) => Some(rotation.status.clone()),
            None => previous.key_rotation.clone(),
        },
        credential_rotation: match &facts.credential_rotation {
            Some(rotation) => Some(rotation.status.clone()),
            None => previous.credential_rotation.clone(),
        },
        autoscaling: facts.autoscaling.clone(),
        worker: facts.worker.clone().or_else(|| previous.worker.clone()),
        data_tier: Some(tier),
    };
    carry_transition_times(&previous, &mut next);
    next
}

/// What the pods connect to, in words: `PostgreSQL` or `PostgreSQL via pooler`, a read
/// replica, and Redis or its absence.
pub fn data_tier(stoa: &Stoa) -> String {
    let database = &stoa.spec.database;
    let mut tier = String::from(if database.pooler.is_some() {
        "PostgreSQL via pooler"
    } else {
        "PostgreSQL"
    });
    if database.read_url_secret_ref.is_some() {
        tier.push_str(" + read replica");
    }
    tier.push_str(", ");
    tier.push_str(match stoa.spec.redis.as_ref().map(RedisSpec::endpoint) {
        None => "no Redis",
        Some(Some(endpoint)) => endpoint.describe(),
        Some(None) => "Redis (invalid)",
    });
    tier
}

fn ready(o: &Observed<'_>) -> Condition {
    let available = o.facts.deployment.is_some()
        && (o.deployment.ready >= o.deployment.desired.max(1) || o.deployment.desired == 0);
    let reason = if available {
        &ready::AVAILABLE
    } else if o.facts.deployment.is_none() && matches!(o.activity, Some(Activity::Running { .. })) {
        &ready::MIGRATING
    } else {
        &ready::UNAVAILABLE
    };
    let message = format!(
        "{}/{} replicas ready; data tier: {}",
        o.deployment.ready, o.deployment.desired, o.data_tier
    );
    because(ready::TYPE, reason, message, o.generation)
}

fn progressing(o: &Observed<'_>) -> Condition {
    let (reason, message) = match o.activity {
        _ if o.facts.paused => (
            &progressing::PAUSED,
            "spec.paused is true: changes are not applied".to_owned(),
        ),
        Some(Activity::Running {
            step: resources::Step::Expand,
            job,
            ..
        }) => (
            &progressing::MIGRATING,
            format!(
                "Job {job} is migrating the database for image {}; the Deployment stays on {}",
                o.stoa.spec.image,
                o.facts
                    .plan
                    .and_then(|p| p.deploy_image.as_deref())
                    .unwrap_or("nothing yet")
            ),
        ),
        Some(Activity::Running {
            step: resources::Step::Contract,
            job,
            ..
        }) => (
            &progressing::CONTRACTING,
            format!("rollout complete; Job {job} applies the release's contract migrations"),
        ),
        Some(Activity::Blocked { message, .. }) => {
            (&progressing::ROLLBACK_BLOCKED, message.clone())
        }
        Some(Activity::Failed { message, .. }) => (&progressing::MIGRATION_FAILED, message.clone()),
        _ => {
            let updated = format!(
                "{}/{} replicas updated",
                o.deployment.updated, o.deployment.desired
            );
            match &o.deployment.failed {
                Some((reason, message))
                    if reason == progressing::PROGRESS_DEADLINE_EXCEEDED.name =>
                {
                    (&progressing::PROGRESS_DEADLINE_EXCEEDED, message.clone())
                }
                _ if o.facts.deployment.is_some() && !o.deployment.rolled_out => {
                    (&progressing::ROLLING_OUT, updated)
                }
                _ => (&progressing::COMPLETE, updated),
            }
        }
    };
    because(progressing::TYPE, reason, message, o.generation)
}

/// The first failure found, in order of what a human should fix first.
fn degraded(o: &Observed<'_>, last_migration_message: &str) -> Condition {
    let (reason, message) = match o.activity {
        Some(Activity::Failed { message, .. }) => (&degraded::MIGRATION_FAILED, message.clone()),
        Some(Activity::Running { job, attempt, .. }) if *attempt > 1 => (
            &degraded::MIGRATION_FAILED,
            format!(
                "retrying: Job {job} is attempt {attempt}; last failure: {last_migration_message}"
            ),
        ),
        _ => {
            let key_rotation = o
                .facts
                .key_rotation
                .as_ref()
                .and_then(|r| r.stalled.clone());
            let credentials = o
                .facts
                .credential_rotation
                .as_ref()
                .and_then(|r| r.degraded.clone());
            match (key_rotation, credentials) {
                (Some(message), _) => (&degraded::ROTATION_STALLED, message),
                (None, Some((reason, message))) => (reason, message),
                (None, None) if !o.facts.conflicts.is_empty() => {
                    (&degraded::NAME_CONFLICT, o.facts.conflicts.join("; "))
                }
                (None, None) => match &o.deployment.failed {
                    // The Deployment's own reason, passed through (see `conditions::ALL`).
                    Some((reason, message)) => {
                        return condition(
                            degraded::TYPE,
                            "True",
                            reason,
                            message.clone(),
                            o.generation,
                        );
                    }
                    None => (&degraded::AS_EXPECTED, "no failures observed".to_owned()),
                },
            }
        }
    };
    because(degraded::TYPE, reason, message, o.generation)
}

fn rollback_blocked(o: &Observed<'_>) -> Condition {
    match o.activity {
        Some(Activity::Blocked { message, .. }) => because(
            rollback_blocked::TYPE,
            &rollback_blocked::NEWER_CONTRACT_APPLIED,
            message.clone(),
            o.generation,
        ),
        _ => because(
            rollback_blocked::TYPE,
            &rollback_blocked::NOT_BLOCKED,
            rollback_blocked::NOT_BLOCKED.meaning.to_owned(),
            o.generation,
        ),
    }
}

fn paused(o: &Observed<'_>) -> Condition {
    let (reason, message) = if o.facts.paused {
        (
            &paused::SPEC_PAUSED,
            "spec.paused is true: the operator reports status but changes nothing",
        )
    } else {
        (&paused::NOT_PAUSED, "changes are applied")
    };
    because(paused::TYPE, reason, message.to_owned(), o.generation)
}

fn migration_status(
    stoa: &Stoa,
    plan: Option<&Plan>,
    previous: Option<MigrationStatus>,
) -> Option<MigrationStatus> {
    let Some(plan) = plan else { return previous };
    let image = stoa.spec.image.clone();
    let (step, job, state, message) = match &plan.activity {
        Activity::Idle | Activity::Disabled => return previous,
        Activity::Running { step, job, attempt } => {
            let message = (*attempt > 1)
                .then(|| previous.as_ref().and_then(|p| p.message.clone()))
                .flatten();
            (*step, job, "Running", message)
        }
        Activity::Succeeded { step, job } => (*step, job, "Succeeded", None),
        Activity::Failed {
            step, job, message, ..
        } => (*step, job, "Failed", Some(message.clone())),
        Activity::Blocked {
            step, job, message, ..
        } => (*step, job, "Blocked", Some(message.clone())),
    };
    Some(MigrationStatus {
        job: job.clone(),
        image,
        phase: step.as_str().to_owned(),
        state: state.to_owned(),
        attempts: plan.attempts,
        message,
    })
}

/// Keeps `lastTransitionTime` of conditions whose status did not change.
fn carry_transition_times(previous: &StoaStatus, next: &mut StoaStatus) {
    for condition in &mut next.conditions {
        if let Some(old) = previous
            .conditions
            .iter()
            .find(|c| c.type_ == condition.type_)
            && old.status == condition.status
        {
            condition.last_transition_time = old.last_transition_time.clone();
        }
    }
}

/// An Event to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

fn failing(m: &MigrationStatus) -> bool {
    m.state == "Failed" || (m.state == "Running" && m.attempts > 1)
}

/// The migration Events between two statuses: one per Job started, one Warning when a
/// step starts failing (not one per retry), one when it is blocked, one on success.
pub fn migration_notices(
    previous: Option<&MigrationStatus>,
    next: Option<&MigrationStatus>,
) -> Vec<Notice> {
    let Some(next) = next else { return Vec::new() };
    if previous == Some(next) {
        return Vec::new();
    }
    let same_step = previous.is_some_and(|p| p.image == next.image && p.phase == next.phase);
    let same_job = previous.is_some_and(|p| p.job == next.job);
    let mut notices = Vec::new();
    let word = if next.phase == "Contract" {
        "contract migrations"
    } else {
        "migrations"
    };
    match next.state.as_str() {
        "Running" if !same_job && next.attempts == 1 => notices.push(Notice {
            type_: EventType::Normal,
            reason: if next.phase == "Contract" {
                "ContractStarted"
            } else {
                "MigrationStarted"
            },
            note: format!("Job {} runs the {word} of image {}", next.job, next.image),
        }),
        "Failed" if !(same_step && previous.is_some_and(failing)) => notices.push(Notice {
            type_: EventType::Warning,
            reason: "MigrationFailed",
            note: format!(
                "{}; retrying with backoff, logs: kubectl logs job/{}",
                next.message.clone().unwrap_or_default(),
                next.job
            ),
        }),
        "Blocked" if !(same_job && previous.is_some_and(|p| p.state == "Blocked")) => {
            notices.push(Notice {
                type_: EventType::Warning,
                reason: "RollbackBlocked",
                note: next.message.clone().unwrap_or_default(),
            })
        }
        "Succeeded" if !(same_job && previous.is_some_and(|p| p.state == "Succeeded")) => notices
            .push(Notice {
                type_: EventType::Normal,
                reason: if next.phase == "Contract" {
                    "ContractSucceeded"
                } else {
                    "MigrationSucceeded"
                },
                note: if next.phase == "Contract" {
                    format!(
                        "Job {} applied the contract migrations of image {}",
                        next.job, next.image
                    )
                } else {
                    format!(
                        "Job {} migrated the database; rolling out image {}",
                        next.job, next.image
                    )
                },
            }),
        _ => {}
    }
    notices
}

/// Whether `status` says `type_` is True.
pub fn condition_true(status: &StoaStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}
