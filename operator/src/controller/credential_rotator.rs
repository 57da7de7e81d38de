//! Database credentials: the connection Secret, the credential Jobs, and the rotation
//! protocol ([`credential_rotation`](crate::credential_rotation)) applied to them. The
//! operator never connects to the database: every database step is a `stoa-api
//! credentials` Job with the application's own image and the admin credential.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::conditions::{Reason, degraded};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;
use stoa_contract::credential_rotation::{CredentialCommand, CredentialReport, generate_password};
use stoa_contract::pod::credential_fingerprint;

use super::{Context, ReadyPods, Target, event, notice};
use crate::apply;
use crate::crd::{CredentialRotationStatus, Stoa};
use crate::credential_rotation::{
    self, Connection, FINALIZER, GENERATION_ANNOTATION, HANDLED_REQUEST_ANNOTATION, JobKind,
    JobState, PASSWORD_KEY, PENDING_ANNOTATION, PREVIOUS_ANNOTATION, PUBLISHED_AT_ANNOTATION,
    PodCredential, ROLE_ANNOTATION, ROTATE_ANNOTATION, Step, StepJob, Timing, URL_KEY,
};
use crate::error::{Error, FIELD_MANAGER, Result};
use crate::resources::{
    self, CREDENTIAL_GENERATION_LABEL, CREDENTIAL_JOB_LABEL, CREDENTIAL_STEP_LABEL,
    CredentialJobRequest, PASSWORD_MOUNT,
};
use crate::status::CredentialRotationFacts;

/// How long an expire Job waits for the previous role's sessions to end.
const EXPIRE_WAIT_SECONDS: u64 = 60;

/// The expiry of `role`. Behind a pooler its idle sessions are ended rather than waited
/// for: the pooler keeps idle server connections of the old role long after the pods moved
/// on (PgBouncer: `server_idle_timeout`, 10 min by default, beyond the wait).
fn expire_command(stoa: &Stoa, role: &str) -> CredentialCommand {
    CredentialCommand::Expire {
        role: role.to_owned(),
        wait_seconds: EXPIRE_WAIT_SECONDS,
        end_idle_sessions: stoa.spec.database.pooler.is_some(),
    }
}
const POLL: Duration = Duration::from_secs(2);
const CONFIRM_POLL: Duration = Duration::from_secs(5);

pub(super) struct CredentialPass {
    pub facts: CredentialRotationFacts,
    pub requeue: Duration,
}

/// The image credential Jobs run: the one the pods run (it has the same subcommands).
fn job_image(stoa: &Stoa) -> String {
    stoa.status
        .as_ref()
        .and_then(|s| s.approved_image.clone())
        .unwrap_or_else(|| stoa.spec.image.clone())
}

fn disabled(message: &str) -> CredentialPass {
    CredentialPass {
        facts: CredentialRotationFacts {
            status: CredentialRotationStatus {
                phase: "Disabled".into(),
                message: Some(message.to_owned()),
                ..CredentialRotationStatus::default()
            },
            degraded: None,
        },
        requeue: Duration::from_secs(3600),
    }
}

/// One step of the credential rotation for this Stoa.
pub(super) async fn rotate_credentials(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
    ready: &ReadyPods<'_>,
) -> Result<CredentialPass> {
    if stoa.spec.database.admin_secret_ref.is_none() {
        return Ok(disabled(
            "credential rotation needs spec.database.adminSecretRef (a role that may create \
             roles); the pods use urlSecretRef as given",
        ));
    }
    if !stoa.spec.database.credential_rotation.enabled {
        return Ok(disabled(
            "spec.database.credentialRotation.enabled is false",
        ));
    }
    let timing = Timing::of(stoa).map_err(Error::InvalidSpec)?;
    ensure_finalizer(ctx, stoa, target).await?;
    let secret = ensure_connection_secret(ctx, stoa, target).await?;
    let mut connection = connection_of(&secret);
    let group = credential_rotation::group_role(&target.namespace, &stoa.name_any());
    let (publish, expire) = observe_jobs(ctx, stoa, target, connection.generation).await?;
    let pods = pods_to_confirm(ready, &connection).await?;
    let now = Timestamp::now();
    let observed = credential_rotation::Observed {
        connection: &connection,
        publish: publish.as_ref(),
        expire: expire.as_ref(),
        pods: &pods,
        request: stoa
            .annotations()
            .get(ROTATE_ANNOTATION)
            .map(String::as_str),
    };
    let step = credential_rotation::decide(&timing, &group, &observed, now);
    let rotator = Rotator {
        ctx,
        stoa,
        target,
        secret: &secret,
        group,
        now,
    };
    let requeue = rotator.apply(&step, &mut connection).await?;

    let (status, degraded) = report(&step, &connection, &timing);
    let previous = stoa
        .status
        .as_ref()
        .and_then(|s| s.credential_rotation.as_ref());
    let newly = previous.is_none_or(|p| p.phase != status.phase);
    if let (true, Some((reason, message))) = (newly, &degraded) {
        if *reason == &degraded::CREDENTIAL_ROTATION_STALLED {
            ctx.metrics.observe_rotation("credentials", "stalled");
        }
        event(
            ctx,
            stoa,
            notice(EventType::Warning, reason.name, message.clone()),
        )
        .await;
    }
    Ok(CredentialPass {
        facts: CredentialRotationFacts { status, degraded },
        requeue,
    })
}

/// What each ready pod (API and worker: workers hold sessions of the role too) says it
/// connects with, while a published credential waits for them; nothing otherwise.
async fn pods_to_confirm(
    ready: &ReadyPods<'_>,
    connection: &Connection,
) -> Result<Vec<PodCredential>> {
    if connection.previous.is_none() || connection.pending.is_some() {
        return Ok(Vec::new());
    }
    Ok(ready
        .get()
        .await?
        .iter()
        .chain(ready.workers().await?)
        .map(|reading| PodCredential {
            pod: reading.pod.clone(),
            fingerprint: reading
                .state
                .as_ref()
                .map(|s| s.database.fingerprint.clone()),
        })
        .collect())
}

/// Carries out one decision of the rotation protocol on the connection Secret and Jobs.
struct Rotator<'a> {
    ctx: &'a Context,
    stoa: &'a Stoa,
    target: &'a Target,
    secret: &'a Secret,
    group: String,
    now: Timestamp,
}

impl Rotator<'_> {
    /// Applies `step`, updating `connection` to what the Secret now says; returns when
    /// to look again.
    async fn apply(&self, step: &Step, connection: &mut Connection) -> Result<Duration> {
        Ok(match step {
            Step::Begin { role, request } => {
                self.begin(role, request.as_deref(), connection).await?;
                Duration::from_secs(1)
            }
            Step::Run {
                kind,
                role,
                attempt,
            } => {
                self.run_job(*kind, role, *attempt, connection.generation)
                    .await?;
                POLL
            }
            Step::Publish { role } => {
                self.publish(role, connection).await?;
                Duration::from_secs(1)
            }
            Step::Expired { role } => {
                self.expired(role, connection).await?;
                Duration::from_secs(1)
            }
            Step::Waiting { .. } => POLL,
            Step::Confirming { .. } => CONFIRM_POLL,
            Step::Failed { retry_in, .. } => (*retry_in).max(Duration::from_secs(1)),
            Step::Idle { due } => Duration::try_from(due.duration_since(self.now))
                .unwrap_or_default()
                .max(Duration::from_secs(1)),
        })
    }

    async fn note(&self, reason: &'static str, note: String) {
        event(self.ctx, self.stoa, notice(EventType::Normal, reason, note)).await;
    }

    /// A new password for the idle role, marked pending in the Secret.
    async fn begin(
        &self,
        role: &str,
        request: Option<&str>,
        connection: &mut Connection,
    ) -> Result<()> {
        let mut changes = annotations_with(&[
            (PENDING_ANNOTATION, Some(role.to_owned())),
            (
                GENERATION_ANNOTATION,
                Some((connection.generation + 1).to_string()),
            ),
        ]);
        if let Some(request) = request {
            changes.insert(HANDLED_REQUEST_ANNOTATION.into(), Some(request.to_owned()));
        }
        let data = BTreeMap::from([(PASSWORD_KEY, Some(generate_password()))]);
        if write(self.ctx, self.target, self.secret, &data, &changes).await? {
            self.ctx.metrics.observe_rotation("credentials", "started");
            let why = request.map_or_else(
                || "scheduled".to_owned(),
                |v| format!("requested by {ROTATE_ANNOTATION}={v}"),
            );
            let note = format!("rotating the database credential to role {role} ({why})");
            self.note("CredentialRotationStarted", note).await;
            connection.pending = Some(role.to_owned());
        }
        Ok(())
    }

    /// The Job of a database step: give `role` the password, or expire it.
    async fn run_job(
        &self,
        kind: JobKind,
        role: &str,
        attempt: i32,
        generation: u32,
    ) -> Result<()> {
        let command = match kind {
            JobKind::Publish => CredentialCommand::Publish {
                group: self.group.clone(),
                role: role.to_owned(),
                password_file: format!("{PASSWORD_MOUNT}/{PASSWORD_KEY}"),
            },
            JobKind::Expire => expire_command(self.stoa, role),
        };
        let request = CredentialJobRequest {
            generation,
            kind,
            attempt,
            command,
            image: job_image(self.stoa),
        };
        let job = resources::credential_job(self.stoa, &request)?;
        super::create_job(self.ctx, self.target, &job).await
    }

    /// The URL with `role`'s credential becomes the one the pods mount.
    async fn publish(&self, role: &str, connection: &mut Connection) -> Result<()> {
        let password = secret_value(self.secret, PASSWORD_KEY).unwrap_or_default();
        let current = secret_value(self.secret, URL_KEY).unwrap_or_default();
        let url =
            credential_rotation::with_credentials(&current, role, &password).ok_or_else(|| {
                Error::InvalidSpec(format!(
                    "Secret {} holds no valid database URL to derive the new one from",
                    self.target.names.credentials
                ))
            })?;
        let changes = annotations_with(&[
            (ROLE_ANNOTATION, Some(role.to_owned())),
            (PREVIOUS_ANNOTATION, connection.role.clone()),
            (PENDING_ANNOTATION, None),
            (PUBLISHED_AT_ANNOTATION, Some(self.now.to_string())),
        ]);
        let data = BTreeMap::from([(URL_KEY, Some(url)), (PASSWORD_KEY, None)]);
        if write(self.ctx, self.target, self.secret, &data, &changes).await? {
            self.ctx
                .metrics
                .observe_rotation("credentials", "published");
            let note = format!(
                "published role {role}'s credential; pods switch as the kubelet refreshes \
                 the mounted Secret{}",
                connection
                    .role
                    .as_ref()
                    .map(|old| format!(", then {old}'s password expires"))
                    .unwrap_or_default()
            );
            self.note("CredentialPublished", note).await;
            connection.previous = connection.role.take();
            connection.role = Some(role.to_owned());
            connection.pending = None;
            connection.published_at = Some(self.now);
        }
        Ok(())
    }

    /// The previous role's password expired: the rotation is complete.
    async fn expired(&self, role: &str, connection: &mut Connection) -> Result<()> {
        let changes = annotations_with(&[(PREVIOUS_ANNOTATION, None)]);
        if write(
            self.ctx,
            self.target,
            self.secret,
            &BTreeMap::new(),
            &changes,
        )
        .await?
        {
            self.ctx.metrics.observe_rotation("credentials", "expired");
            if let Some(at) = connection.published_at {
                let waited = Duration::try_from(self.now.duration_since(at)).unwrap_or_default();
                self.ctx.metrics.observe_confirmation("credentials", waited);
            }
            let note = format!(
                "role {role}'s password expired after every pod switched and its last \
                 session ended: rotation complete"
            );
            self.note("CredentialRotated", note).await;
            connection.previous = None;
        }
        Ok(())
    }
}

/// Status and `Degraded` for a step (after it was applied). Over ~80 lines: one arm per
/// step of the protocol.
fn report(
    step: &Step,
    connection: &Connection,
    timing: &Timing,
) -> (CredentialRotationStatus, Option<(&'static Reason, String)>) {
    let mut status = CredentialRotationStatus {
        role: connection.role.clone(),
        published_at: connection.published_at.map(|t| t.to_string()),
        ..CredentialRotationStatus::default()
    };
    let mut degraded = None;
    status.phase = match step {
        Step::Idle { due } => {
            status.next_step_at = Some(due.to_string());
            "Idle"
        }
        Step::Expired { .. } => {
            status.next_step_at = connection
                .published_at
                .and_then(|t| t.checked_add(timing.every).ok())
                .map(|t| t.to_string());
            "Idle"
        }
        Step::Begin { .. }
        | Step::Run {
            kind: JobKind::Publish,
            ..
        }
        | Step::Waiting {
            kind: JobKind::Publish,
            ..
        } => "Publishing",
        Step::Publish { .. } => "Confirming",
        Step::Confirming {
            waiting_for,
            stalled,
        } => {
            status.waiting_for.clone_from(waiting_for);
            if *stalled {
                let message = format!(
                    "pods {} still use the previous database credential after {}; its \
                     password stays until they switch",
                    waiting_for.join(", "),
                    humantime::format_duration(timing.confirm_timeout)
                );
                status.message = Some(message.clone());
                degraded = Some((&degraded::CREDENTIAL_ROTATION_STALLED, message));
                "Stalled"
            } else {
                "Confirming"
            }
        }
        Step::Run {
            kind: JobKind::Expire,
            ..
        }
        | Step::Waiting {
            kind: JobKind::Expire,
            ..
        } => "Expiring",
        Step::Failed {
            kind,
            role,
            message,
            remaining,
            retry_in,
        } => {
            let held_by = if remaining.is_empty() {
                String::new()
            } else {
                format!(" (sessions held by {})", remaining.join(", "))
            };
            let text = format!(
                "{} of role {role} failed: {message}{held_by}; retrying in {}",
                kind.as_str(),
                humantime::format_duration(Duration::from_secs(retry_in.as_secs()))
            );
            status.message = Some(text.clone());
            degraded = Some((&degraded::CREDENTIAL_ROTATION_FAILED, text));
            "Failed"
        }
    }
    .to_owned();
    (status, degraded)
}

/// Adds the finalizer that drops the roles on deletion, before any role exists.
async fn ensure_finalizer(ctx: &Context, stoa: &Stoa, target: &Target) -> Result<()> {
    if stoa.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let mut finalizers = stoa.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    set_finalizers(ctx, stoa, target, finalizers).await
}

/// A merge patch of the whole list, conditioned on the resourceVersion read (a list is
/// replaced by a merge patch, so a concurrent change must not be lost).
async fn set_finalizers(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
    finalizers: Vec<String>,
) -> Result<()> {
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": stoa.resource_version(),
    }});
    target
        .api::<Stoa>(&ctx.client)
        .patch(
            &stoa.name_any(),
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// The connection Secret; created from the user's URL Secret the first time.
async fn ensure_connection_secret(ctx: &Context, stoa: &Stoa, target: &Target) -> Result<Secret> {
    let api: Api<Secret> = target.api(&ctx.client);
    let name = &target.names.credentials;
    if let Some(existing) = api.get_opt(name).await? {
        if !apply::owned_by(&existing, &target.uid) {
            return Err(Error::NotOwned {
                kind: "Secret",
                name: name.clone(),
            });
        }
        return Ok(existing);
    }
    let source = &stoa.spec.database.url_secret_ref;
    let url = api
        .get_opt(&source.name)
        .await?
        .and_then(|s| s.data?.remove(&source.key))
        .ok_or_else(|| {
            Error::InvalidSpec(format!(
                "Secret {} has no key {:?} (spec.database.urlSecretRef)",
                source.name, source.key
            ))
        })?;
    let secret = resources::connection_secret(stoa, url.0)?;
    match apply::create_once(&api, &secret).await? {
        Some(created) => Ok(created),
        None => Ok(api.get(name).await?),
    }
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn connection_of(secret: &Secret) -> Connection {
    let annotations = secret.annotations();
    let get = |key: &str| annotations.get(key).cloned();
    Connection {
        role: get(ROLE_ANNOTATION),
        pending: get(PENDING_ANNOTATION),
        previous: get(PREVIOUS_ANNOTATION),
        published_at: get(PUBLISHED_AT_ANNOTATION).and_then(|t| t.parse().ok()),
        generation: get(GENERATION_ANNOTATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
        handled: get(HANDLED_REQUEST_ANNOTATION),
        fingerprint: secret_value(secret, URL_KEY).map(|u| credential_fingerprint(&u)),
    }
}

fn annotations_with(pairs: &[(&str, Option<String>)]) -> BTreeMap<String, Option<String>> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Replaces the connection Secret with these data keys and annotations set (`None`
/// removes), conditioned on the resourceVersion read; `false` on a conflict (the next
/// pass decides again on fresh data).
async fn write(
    ctx: &Context,
    target: &Target,
    read: &Secret,
    data: &BTreeMap<&str, Option<String>>,
    annotations: &BTreeMap<String, Option<String>>,
) -> Result<bool> {
    let mut secret = read.clone();
    let stored = secret.data.get_or_insert_default();
    for (key, value) in data {
        set_or_remove(
            stored,
            key,
            value.as_ref().map(|v| ByteString(v.clone().into_bytes())),
        );
    }
    let stored = secret.annotations_mut();
    for (key, value) in annotations {
        set_or_remove(stored, key, value.clone());
    }
    let written =
        apply::replace_unless_changed(&target.api::<Secret>(&ctx.client), &secret).await?;
    Ok(written.is_some())
}

fn set_or_remove<V>(map: &mut BTreeMap<String, V>, key: &str, value: Option<V>) {
    match value {
        Some(v) => {
            map.insert(key.to_owned(), v);
        }
        None => {
            map.remove(key);
        }
    }
}

/// The newest attempt of each step in this generation, with the failed ones' reports.
async fn observe_jobs(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
    generation: u32,
) -> Result<(Option<StepJob>, Option<StepJob>)> {
    let selector = format!(
        "{},{CREDENTIAL_GENERATION_LABEL}={generation}",
        resources::credential_selector(stoa)
    );
    let jobs = target
        .api::<Job>(&ctx.client)
        .list(&ListParams::default().labels(&selector))
        .await?;
    let now = Timestamp::now();
    let mut newest: BTreeMap<String, (i32, &Job)> = BTreeMap::new();
    for job in &jobs.items {
        let Some(step) = job.labels().get(CREDENTIAL_STEP_LABEL) else {
            continue;
        };
        let attempt = job
            .annotations()
            .get(resources::ATTEMPT_ANNOTATION)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        if newest.get(step).is_none_or(|(a, _)| attempt > *a) {
            newest.insert(step.clone(), (attempt, job));
        }
    }
    let mut result = (None, None);
    for (step, (attempt, job)) in newest {
        let state = match crate::jobs::job_finish(job, now) {
            crate::jobs::Finish::Running => JobState::Running,
            crate::jobs::Finish::Complete => JobState::Succeeded,
            crate::jobs::Finish::Failed {
                message,
                finished_ago,
            } => {
                let report = job_report(ctx, target, &job.name_any()).await?;
                JobState::Failed {
                    message: report
                        .as_ref()
                        .map(|r| r.message.clone())
                        .filter(|m| !m.is_empty())
                        .unwrap_or(message),
                    finished_ago,
                    remaining: report.map(|r| r.remaining).unwrap_or_default(),
                }
            }
        };
        let observed = Some(StepJob { attempt, state });
        match step.as_str() {
            "publish" => result.0 = observed,
            "expire" => result.1 = observed,
            _ => {}
        }
    }
    Ok(result)
}

/// The report a credential Job's pod left as its termination message.
async fn job_report(ctx: &Context, target: &Target, job: &str) -> Result<Option<CredentialReport>> {
    let pods = target
        .api::<Pod>(&ctx.client)
        .list(&ListParams::default().labels(&format!("{CREDENTIAL_JOB_LABEL}={job}")))
        .await?;
    Ok(super::job_report(&pods.items, "credentials")
        .and_then(|message| serde_json::from_str(&message).ok()))
}

/// Every attempt to drop the roles failed this many times (each after its backoff): the
/// database is unreachable or refuses, and a Stoa must not stay in deletion forever.
const MAX_DROP_ATTEMPTS: i32 = 5;

/// On deletion: drop the roles with a Job, then let the Stoa go. `Some(requeue)` while
/// that is still under way. Where the drop cannot succeed, the roles are left (an Event
/// and `stoa_operator_database_role_drops_total{outcome="abandoned"}` say so, and
/// docs/operations.md has the manual procedure): a finalizer must never hold a Stoa, and
/// with it its namespace, in deletion forever.
pub(super) async fn finalize(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
) -> Result<Option<Duration>> {
    if !stoa.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(None);
    }
    let group = credential_rotation::group_role(&target.namespace, &stoa.name_any());
    if stoa
        .annotations()
        .get(SKIP_ROLE_DROP_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        let note = format!(
            "database roles {group}_a, {group}_b and {group} left in the database, as \
             {SKIP_ROLE_DROP_ANNOTATION} asks; drop them by hand (docs/operations.md)"
        );
        return release(ctx, stoa, target, "skipped", note).await;
    }
    // No pod may still use a role when it goes. Garbage collection would remove the
    // Deployment only after the finalizers are gone (background deletion: Kubernetes docs,
    // "Garbage Collection"), so the operator removes it first and waits for its pods.
    let deployments = target.api::<Deployment>(&ctx.client);
    for name in [&target.names.base, &target.names.worker] {
        let deployment = deployments.get_opt(name).await?;
        apply::remove(&deployments, deployment, &target.uid).await?;
    }
    let pods = target
        .api::<Pod>(&ctx.client)
        .list(&ListParams::default().labels(&resources::instance_selector(stoa)))
        .await?;
    if pods
        .items
        .iter()
        .any(|p| resources::runs_the_service(p) && !super::finished(p))
    {
        return Ok(Some(POLL));
    }
    // The Job runs with the admin Secret (the user's, not owned: it survives the Stoa);
    // without it the Job's pod could never start.
    let admin = stoa.spec.database.admin_secret_ref.as_ref();
    let admin_present = match admin {
        Some(admin) => target
            .api::<Secret>(&ctx.client)
            .get_opt(&admin.name)
            .await?
            .is_some(),
        None => false,
    };
    if !admin_present {
        let note = format!(
            "database roles {group}_a, {group}_b and {group} left in the database: the admin \
             Secret {} is gone, so no Job can drop them; drop them by hand (docs/operations.md)",
            admin.map_or("(none)", |a| a.name.as_str())
        );
        return release(ctx, stoa, target, "abandoned", note).await;
    }
    drop_with_job(ctx, stoa, target, &group).await
}

/// The drop-roles Job's next step: start it, wait for it, retry it after its backoff, or
/// let the Stoa go once it succeeded or can no longer succeed.
async fn drop_with_job(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
    group: &str,
) -> Result<Option<Duration>> {
    let jobs = target
        .api::<Job>(&ctx.client)
        .list(&ListParams::default().labels(&format!(
            "{},{CREDENTIAL_STEP_LABEL}=drop",
            resources::credential_selector(stoa)
        )))
        .await?;
    let now = Timestamp::now();
    let newest = jobs.items.iter().max_by_key(|j| {
        j.annotations()
            .get(resources::ATTEMPT_ANNOTATION)
            .and_then(|a| a.parse::<i32>().ok())
            .unwrap_or(1)
    });
    let attempt = newest
        .and_then(|j| j.annotations().get(resources::ATTEMPT_ANNOTATION))
        .and_then(|a| a.parse::<i32>().ok())
        .unwrap_or(0);
    let next_attempt = match newest.map(|j| crate::jobs::job_finish(j, now)) {
        None => Some(1),
        Some(crate::jobs::Finish::Running) => None,
        Some(crate::jobs::Finish::Complete) => {
            ctx.metrics.observe_role_drop("dropped");
            remove_finalizer(ctx, stoa, target).await?;
            let note = format!("dropped database roles {group}_a, {group}_b and {group}");
            event(
                ctx,
                stoa,
                notice(EventType::Normal, "DatabaseRolesDropped", note),
            )
            .await;
            return Ok(None);
        }
        Some(crate::jobs::Finish::Failed {
            message,
            finished_ago,
        }) => {
            if attempt >= MAX_DROP_ATTEMPTS {
                let note = format!(
                    "database roles {group}_a, {group}_b and {group} left in the database: \
                     dropping them failed {attempt} times (last: {message}); drop them by \
                     hand (docs/operations.md)"
                );
                return release(ctx, stoa, target, "abandoned", note).await;
            }
            let wait = crate::jobs::backoff(attempt);
            if finished_ago < wait {
                let note = format!("dropping the database roles failed: {message}; retrying");
                event(
                    ctx,
                    stoa,
                    notice(EventType::Warning, "DatabaseRolesNotDropped", note),
                )
                .await;
                return Ok(Some(wait.saturating_sub(finished_ago)));
            }
            Some(attempt + 1)
        }
    };
    if let Some(attempt) = next_attempt {
        let job = resources::drop_roles_job(stoa, group, &job_image(stoa), attempt)?;
        match super::create_job(ctx, target, &job).await {
            Ok(()) => {}
            Err(Error::Kube(kube::Error::Api(e))) if namespace_terminating(&e) => {
                let note = format!(
                    "database roles {group}_a, {group}_b and {group} left in the database: \
                     namespace {} is being deleted, so no Job can run there; drop them by \
                     hand (docs/operations.md)",
                    target.namespace
                );
                return release(ctx, stoa, target, "abandoned", note).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Some(POLL))
}

/// The annotation that lets a Stoa go without dropping its database roles.
pub const SKIP_ROLE_DROP_ANNOTATION: &str = "stoa.dev/skip-database-role-drop";

/// The NamespaceLifecycle admission plugin's refusal: "unable to create new content in
/// namespace … because it is being terminated" (403; its cause type is
/// `NamespaceTerminating`, which kube's error type does not carry, so the message is read).
fn namespace_terminating(e: &kube::core::Status) -> bool {
    e.code == 403 && e.message.contains("because it is being terminated")
}

/// Lets the Stoa go without dropping the roles, saying why (a Warning Event, which a
/// terminating namespace may refuse too, and the metric, which always counts).
async fn release(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
    outcome: &'static str,
    note: String,
) -> Result<Option<Duration>> {
    tracing::warn!(namespace = %target.namespace, name = %stoa.name_any(), "{note}");
    ctx.metrics.observe_role_drop(outcome);
    event(
        ctx,
        stoa,
        notice(EventType::Warning, "DatabaseRolesLeft", note),
    )
    .await;
    remove_finalizer(ctx, stoa, target).await?;
    Ok(None)
}

/// Lets the Stoa go: its other finalizers stay.
async fn remove_finalizer(ctx: &Context, stoa: &Stoa, target: &Target) -> Result<()> {
    let rest = stoa
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(ctx, stoa, target, rest).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_a_pooler_the_expiry_ends_the_old_roles_idle_sessions() {
        let stoa = |pooler: &str| -> Stoa {
            serde_norway::from_str(&format!(
                "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {{name: api}}
spec:
  image: stoa-api
  database: {{urlSecretRef: {{name: db}}, adminSecretRef: {{name: admin}}{pooler}}}"
            ))
            .unwrap()
        };
        let ends = |stoa: &Stoa| match expire_command(stoa, "g_a") {
            CredentialCommand::Expire {
                end_idle_sessions, ..
            } => end_idle_sessions,
            other => panic!("{other:?}"),
        };
        assert!(!ends(&stoa("")));
        assert!(ends(&stoa(
            ", pooler: {urlSecretRef: {name: p, key: url}, maxClientConnections: 100}"
        )));
    }
}
