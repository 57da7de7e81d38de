//! The reconciler: a thin orchestration over the pure builders in `resources`, the
//! migration protocol in `rollout` and the status in `status`.
//!
//! One pass: read what exists → decide (rollout plan) → write only what differs (see
//! `apply`) → report status (server-side apply on the status subresource, only when it
//! changed) and the Events a human wants to see.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::apply::{self, ensure};
use crate::crd::{AutoscalingMode, MigrationMode, Stoa, StoaStatus};
use crate::metrics::Metrics;
use crate::observe::{HttpProbe, PodProbe, PodReading};
use crate::resources::{self, Names};
use crate::rollout::{self, Observed, Plan};
use crate::status::{self, Facts, Failure, Notice};

pub use crate::error::{Error, FIELD_MANAGER, HANDOVER_MANAGER, Result};

mod credential_rotator;
mod keys;
pub mod pass;
pub mod scaling;
mod workers;

use keys::key_status;

/// A pod that has not answered within this is not confirmed.
const POD_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Pods asked at once (per Stoa).
const POD_READ_CONCURRENCY: usize = 16;

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Whether the Prometheus Operator's ServiceMonitor CRD exists (checked at start-up).
    pub service_monitors: bool,
    /// Reads what each ready pod has loaded (rotation confirmation).
    pub probe: Arc<dyn PodProbe>,
    /// The operator's own namespace: the NetworkPolicy lets it reach the pods' admin port.
    pub operator_namespace: Option<String>,
    /// The Concurrency autoscaler's samples, per Stoa.
    scalers: Mutex<HashMap<String, scaling::ScalerMemory>>,
    /// Consecutive failures per object, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            service_monitors: false,
            probe: Arc::new(HttpProbe::new(POD_READ_TIMEOUT, POD_READ_CONCURRENCY)),
            operator_namespace: None,
            scalers: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    pub fn with_service_monitors(mut self, supported: bool) -> Self {
        self.service_monitors = supported;
        self
    }

    pub fn with_probe(mut self, probe: Arc<dyn PodProbe>) -> Self {
        self.probe = probe;
        self
    }

    pub fn with_operator_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.operator_namespace = Some(namespace.into());
        self
    }

    fn scalers(&self) -> std::sync::MutexGuard<'_, HashMap<String, scaling::ScalerMemory>> {
        match self.scalers.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        match self.failures.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

async fn event(ctx: &Context, stoa: &Stoa, notice: Notice) {
    let event = Event {
        type_: notice.type_,
        reason: notice.reason.into(),
        note: Some(notice.note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // Events are informational: failing to record one must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&event, &stoa.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record event");
    }
}

fn notice(type_: EventType, reason: &'static str, note: String) -> Notice {
    Notice {
        type_,
        reason,
        note,
    }
}

/// Whether the Prometheus Operator's ServiceMonitor CRD is installed.
pub async fn service_monitor_supported(client: &Client) -> Result<bool> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.get_opt(resources::SERVICE_MONITOR_CRD).await {
        Ok(found) => Ok(found.is_some()),
        // Without permission to read CRDs, behave as if it is absent.
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub async fn reconcile(stoa: Arc<Stoa>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&stoa, &ctx).await;
    let outcome = if result.is_ok() { "success" } else { "error" };
    ctx.metrics.observe_reconcile(outcome, started.elapsed());
    match &result {
        Ok(_) => {
            ctx.failures().remove(&key(&stoa));
        }
        Err(error) => report_failure(&stoa, &ctx, error).await,
    }
    result
}

fn key(stoa: &Stoa) -> String {
    format!(
        "{}/{}",
        stoa.namespace().unwrap_or_default(),
        stoa.name_any()
    )
}

/// The identity every owned object refers to.
struct Target {
    namespace: String,
    uid: String,
    names: Names,
}

impl Target {
    fn of(stoa: &Stoa) -> Result<Target> {
        Ok(Target {
            namespace: stoa.namespace().ok_or(Error::NoIdentity)?,
            uid: stoa.uid().ok_or(Error::NoIdentity)?,
            names: Names::of(stoa),
        })
    }

    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(client.clone(), &self.namespace)
    }

    /// An optional object named like the Stoa: applied, or removed when `None`.
    async fn reconcile_optional<K>(
        &self,
        client: &Client,
        desired: Option<K>,
        kind: &'static str,
    ) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = self.api(client);
        apply::reconcile_optional(&api, &self.names.base, desired, &self.uid, kind).await
    }
}

async fn reconcile_inner(stoa: &Stoa, ctx: &Context) -> Result<Action> {
    // Garbage collection removes what the Stoa owns (owner references); applying anything
    // now would only race it.
    let target = Target::of(stoa)?;
    if stoa.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget(&target.namespace, &stoa.name_any());
        // Only the database roles live outside Kubernetes: drop them, then let go.
        return Ok(
            match credential_rotator::finalize(ctx, stoa, &target).await? {
                Some(requeue) => Action::requeue(requeue),
                None => Action::await_change(),
            },
        );
    }
    let client = &ctx.client;
    let deployments: Api<Deployment> = target.api(client);
    let deployment = deployments.get_opt(&target.names.base).await?;

    if stoa.spec.paused {
        let keys = target
            .api::<Secret>(client)
            .get_opt(&target.names.keys)
            .await?;
        let facts = Facts {
            deployment: deployment.as_ref(),
            keys: keys.as_ref().map(key_status).unwrap_or_default(),
            paused: true,
            plan: None,
            key_rotation: None,
            credential_rotation: None,
            autoscaling: stoa.status.as_ref().and_then(|s| s.autoscaling.clone()),
            worker: None,
            conflicts: Vec::new(),
        };
        write_status(ctx, stoa, &target, status::status(stoa, &facts)).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    let requeue = pass::Pass::new(ctx, stoa, &target, deployment)
        .run()
        .await?;
    Ok(Action::requeue(requeue))
}

/// What the Stoa's ready pods report, read at most once per reconcile: the key rotation,
/// the credential rotation and the autoscaler each look at it when they need it.
struct ReadyPods<'a> {
    ctx: &'a Context,
    stoa: &'a Stoa,
    target: &'a Target,
    readings: tokio::sync::OnceCell<Vec<PodReading>>,
    workers: tokio::sync::OnceCell<Vec<PodReading>>,
}

impl<'a> ReadyPods<'a> {
    fn new(ctx: &'a Context, stoa: &'a Stoa, target: &'a Target) -> Self {
        ReadyPods {
            ctx,
            stoa,
            target,
            readings: tokio::sync::OnceCell::new(),
            workers: tokio::sync::OnceCell::new(),
        }
    }

    /// The API pods.
    async fn get(&self) -> Result<&[PodReading]> {
        let selector = resources::selector_string(self.stoa);
        let readings = self
            .readings
            .get_or_try_init(|| self.read(&selector))
            .await?;
        Ok(readings)
    }

    /// The worker pods.
    async fn workers(&self) -> Result<&[PodReading]> {
        let selector = resources::worker_selector(self.stoa);
        let readings = self
            .workers
            .get_or_try_init(|| self.read(&selector))
            .await?;
        Ok(readings)
    }

    async fn read(&self, selector: &str) -> Result<Vec<PodReading>> {
        let pods = self
            .target
            .api::<Pod>(&self.ctx.client)
            .list(&ListParams::default().labels(selector))
            .await?;
        let targets = crate::observe::ready_targets(&pods.items);
        Ok(self.ctx.probe.read(&targets).await)
    }
}

/// Scaling holds still while the schema or a credential changes: a new pod would start
/// in the middle of it, and a leaving one could take the last session of a role.
fn freeze_reason(plan: &Plan, key_phase: &str, credential_phase: &str) -> Option<String> {
    if matches!(plan.activity, rollout::Activity::Running { .. }) {
        return Some("migration".into());
    }
    if matches!(key_phase, "Confirming" | "Stalled") {
        return Some("signing-key rotation".into());
    }
    if matches!(
        credential_phase,
        "Publishing" | "Confirming" | "Stalled" | "Expiring"
    ) {
        return Some("credential rotation".into());
    }
    None
}

/// Observes the migration Jobs (and, when a contract step may be due, the pods) and
/// decides with [`rollout::plan`].
async fn plan_rollout(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
    deployment: Option<&Deployment>,
) -> Result<Plan> {
    let previous = stoa.status.clone().unwrap_or_default();
    // A Stoa from an operator release without approval: what runs is what was approved.
    let approved_image = previous
        .approved_image
        .clone()
        .or_else(|| deployment.and_then(status::deployment_image));
    let mut observed = Observed {
        approved_image,
        contracted_image: previous.contracted_image.clone(),
        schema_version: previous.schema_version,
        jobs: Vec::new(),
        rollout_complete: false,
    };
    let desired = Some(stoa.spec.image.as_str());
    let settled = observed.approved_image.as_deref() == desired
        && observed.contracted_image.as_deref() == desired;
    // Nothing to migrate: the Jobs are history, not worth a read.
    if stoa.spec.migrations.mode == MigrationMode::Disabled || settled {
        return Ok(rollout::plan(stoa, &observed));
    }
    let jobs = target
        .api::<Job>(&ctx.client)
        .list(&ListParams::default().labels(&resources::migration_selector(stoa)))
        .await?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let finished = |job: &Job| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            })
    };
    // Reports are read only from the pods of finished Jobs this decision may act on:
    // the ones for the image asked for (the rest are history).
    let wanted =
        |job: &Job| job.annotations().get(resources::IMAGE_ANNOTATION) == Some(&stoa.spec.image);
    let mut reports = HashMap::new();
    if jobs.items.iter().any(|j| finished(j) && wanted(j)) {
        let pods = target
            .api::<Pod>(&ctx.client)
            .list(&ListParams::default().labels(&resources::migration_selector(stoa)))
            .await?;
        let mut by_job: HashMap<String, Vec<&Pod>> = HashMap::new();
        for pod in &pods.items {
            if let Some(job) = pod.labels().get(resources::MIGRATION_JOB_LABEL) {
                by_job.entry(job.clone()).or_default().push(pod);
            }
        }
        for (job, pods) in by_job {
            if let Some(message) = job_report(pods, "migrate") {
                reports.insert(job, message);
            }
        }
    }
    observed.jobs = jobs
        .items
        .iter()
        .filter_map(|job| {
            rollout::observe_job(job, reports.get(&job.name_any()).map(String::as_str), now)
        })
        .collect();

    let contract_due = observed.approved_image.as_deref() == Some(stoa.spec.image.as_str())
        && observed.contracted_image.as_deref() != Some(stoa.spec.image.as_str());
    if contract_due {
        observed.rollout_complete =
            rollout_complete(ctx, stoa, target, deployment, &stoa.spec.image).await?;
    }
    Ok(rollout::plan(stoa, &observed))
}

/// The report of a Job, from its pods' termination messages: a Job retries in new pods
/// (`backoffLimit`), so a completed Job's report is its succeeded pod's (exit code 0),
/// whatever order the pods are listed in; otherwise the last attempt's (latest finish).
pub(super) fn job_report<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    container: &str,
) -> Option<String> {
    pods.into_iter()
        .filter_map(|pod| {
            let state = pod
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .find(|c| c.name == container)?
                .state
                .as_ref()?
                .terminated
                .as_ref()?;
            let rank = (
                state.exit_code == 0,
                state.finished_at.as_ref().map(|t| t.0),
            );
            Some((rank, state.message.clone()?))
        })
        .max_by(|(a, _), (b, _)| a.cmp(b))
        .map(|(_, message)| message)
}

/// The Deployment runs `image` on every replica, and no pod of an older revision remains,
/// API or worker (terminating pods still serve their last requests or finish their last
/// jobs, so they count too). Only Stoa's own container is compared (webhooks inject
/// others, and may pin ours to a digest); a pod in phase `Failed` or `Succeeded` (evicted,
/// shut down with its node) runs nothing and may linger until pod garbage collection
/// (Kubernetes docs, "Pod Lifecycle: Garbage collection of Pods"), so it does not count.
async fn rollout_complete(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
    deployment: Option<&Deployment>,
    image: &str,
) -> Result<bool> {
    let Some(deployment) = deployment else {
        return Ok(false);
    };
    if !status::deployment_image(deployment).is_some_and(|d| resources::runs_image(&d, image))
        || !status::deployment_state(stoa, Some(deployment)).rolled_out
    {
        return Ok(false);
    }
    let pods = target
        .api::<Pod>(&ctx.client)
        .list(&ListParams::default().labels(&resources::instance_selector(stoa)))
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| resources::runs_the_service(p) && !finished(p))
        .all(|pod| {
            pod.spec
                .as_ref()
                .and_then(resources::stoa_container)
                .and_then(|c| c.image.as_deref())
                .is_some_and(|running| resources::runs_image(running, image))
        }))
}

/// A pod whose containers have all terminated for good (`Failed`: evicted, its node shut
/// down; `Succeeded`).
pub(super) fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

/// `Ok` for a name conflict, which is noted in `conflicts`; any other result as it is.
fn tolerate_conflict(conflicts: &mut Vec<String>, result: Result<()>) -> Result<()> {
    match result {
        Err(conflict @ Error::NotOwned { .. }) => {
            conflicts.push(conflict.to_string());
            Ok(())
        }
        other => other,
    }
}

/// Creates a migration or credential Job. One that exists was created by an earlier pass
/// whose status write did not land: the next observation picks it up.
async fn create_job(ctx: &Context, target: &Target, job: &Job) -> Result<()> {
    apply::create_once(&target.api::<Job>(&ctx.client), job).await?;
    Ok(())
}

/// Applies the Deployment. With an autoscaler, `spec.replicas` is handed over first: the
/// applied object leaves it out, and server-side apply *removes* a field that only its
/// manager owned, after which the API server defaults it to 1. Following the Kubernetes
/// docs ("Server-Side Apply", "Transferring ownership"), a second field manager first
/// applies the current count, so the field keeps an owner until the autoscaler writes it.
async fn apply_deployment(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
    existing: Option<Deployment>,
    desired: Deployment,
) -> Result<Deployment> {
    let api: Api<Deployment> = target.api(&ctx.client);
    let scaled = stoa.spec.autoscaling.mode == AutoscalingMode::Hpa;
    if scaled {
        if let Some(hpa) = resources::horizontal_pod_autoscaler(stoa)? {
            // The autoscaler exists before the operator lets go of the replica count.
            target
                .reconcile_optional(&ctx.client, Some(hpa), "HorizontalPodAutoscaler")
                .await?;
        }
        let handed_over = existing
            .as_ref()
            .and_then(|d| d.annotations().get(resources::REPLICAS_OWNER_ANNOTATION))
            .is_some_and(|owner| owner == resources::REPLICAS_OWNER_AUTOSCALER);
        if let Some(current) = existing.as_ref().filter(|_| !handed_over) {
            if !apply::owned_by(current, &target.uid) {
                return Err(Error::NotOwned {
                    kind: "Deployment",
                    name: target.names.base.clone(),
                });
            }
            let replicas = current
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(stoa.spec.replicas);
            let handover = json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": target.names.base, "namespace": target.namespace},
                "spec": {"replicas": replicas}
            });
            // Not forced: a conflict means the autoscaler already owns the field.
            match api
                .patch(
                    &target.names.base,
                    &PatchParams::apply(HANDOVER_MANAGER),
                    &Patch::Apply(&handover),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let before = existing.as_ref().and_then(status::deployment_image);
    let applied = ensure(&api, existing, desired, &target.uid, "Deployment").await?;
    let after = status::deployment_image(&applied);
    match before {
        None => {
            let note = format!(
                "created Deployment with image {}",
                after.unwrap_or_default()
            );
            event(
                ctx,
                stoa,
                notice(EventType::Normal, "DeploymentCreated", note),
            )
            .await;
        }
        Some(old) if Some(&old) != after.as_ref() => {
            let note = format!(
                "rolling out image {} (was {old})",
                after.unwrap_or_default()
            );
            event(ctx, stoa, notice(EventType::Normal, "RollingOut", note)).await;
        }
        Some(_) => {}
    }
    Ok(applied)
}

async fn reconcile_service_monitor(ctx: &Context, stoa: &Stoa, target: &Target) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &target.namespace,
        &resources::service_monitor_resource(),
    );
    apply::reconcile_optional(
        &api,
        &target.names.base,
        resources::service_monitor(stoa)?,
        &target.uid,
        "ServiceMonitor",
    )
    .await
}

/// Writes `status` with server-side apply on the status subresource (so a field the
/// operator stops reporting is removed), and only when it differs from the stored one.
async fn write_status(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
    status: StoaStatus,
) -> Result<()> {
    ctx.metrics
        .observe_status(&target.namespace, &stoa.name_any(), &status);
    if stoa.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Stoa> = target.api(&ctx.client);
    let patch = json!({
        "apiVersion": Stoa::api_version(&()),
        "kind": Stoa::kind(&()),
        "status": status,
    });
    api.patch_status(
        &stoa.name_any(),
        &apply::apply_params(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// On a failed reconcile: `Degraded` with the reason, and one Warning event when the
/// failure is new (a retry of the same failure records nothing more). Best effort: the
/// error itself is what the controller acts on.
async fn report_failure(stoa: &Stoa, ctx: &Context, error: &Error) {
    let failure = Failure {
        reason: error.reason(),
        message: error.to_string(),
    };
    let already = stoa.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Degraded"
                && c.status == "True"
                && c.reason == failure.reason
                && c.message == failure.message
        })
    });
    if already {
        return;
    }
    event(
        ctx,
        stoa,
        notice(
            EventType::Warning,
            "ReconcileFailed",
            failure.message.clone(),
        ),
    )
    .await;
    let Ok(target) = Target::of(stoa) else { return };
    let next = status::with_failure(stoa, &failure);
    if let Err(e) = write_status(ctx, stoa, &target, next).await {
        tracing::warn!(stoa = %key(stoa), error = %e, "could not report the failure in status");
    }
}

/// Retries with exponential backoff: 5 s, 10 s, 20 s, … up to 5 minutes.
pub fn error_policy(stoa: Arc<Stoa>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.observe_error(error.metric_label());
    let attempts = {
        let mut failures = ctx.failures();
        let n = failures.entry(key(&stoa)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = Duration::from_secs(5u64.saturating_mul(1 << attempts.min(6).saturating_sub(1)))
        .min(Duration::from_secs(300));
    tracing::warn!(stoa = %key(&stoa), error = %error, attempts, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
