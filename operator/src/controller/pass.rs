//! One reconcile pass of a Stoa that is neither deleted nor paused, as named steps run in
//! the order [`ORDER`] gives. Why each step must come after another is [`MUST_PRECEDE`],
//! which a test holds `ORDER` to; each step reads what earlier steps left in [`Pass`].

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::credential_rotator::{self, CredentialPass};
use super::keys::{self, Rotation, ensure_key_secret, ensure_mfa_key_secret, key_status};
use super::workers::{self, WorkerPass};
use super::{
    Context, ReadyPods, Target, apply_deployment, create_job, event, freeze_reason, plan_rollout,
    reconcile_service_monitor, scaling, tolerate_conflict, write_status,
};
use crate::apply::{self, ensure_current};
use crate::conditions;
use crate::crd::{AutoscalingMode, Stoa};
use crate::error::{Error, Result};
use crate::resources;
use crate::rollout::Plan;
use crate::status::{self, Facts, KeyRotationFacts};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The signing-key and MFA-key Secrets exist; the key rotation advances.
    SigningKeys,
    /// The database credential rotation advances.
    Credentials,
    /// The ServiceAccount and the ConfigMap of settings.
    Configuration,
    /// The migration protocol decides which image may run; a migration Job starts.
    Migrations,
    /// The replica count (autoscaler or `spec.replicas`).
    Scaling,
    /// The API Deployment, with the approved image and the count.
    Deployment,
    /// The worker Deployment.
    Workers,
    /// The Service and the optional objects: worker Service, PodDisruptionBudget, Ingress,
    /// NetworkPolicy, the HPA's removal, ServiceMonitor.
    Networking,
    /// The status and the Events.
    Status,
}

/// The steps of a pass, in the order they run.
pub const ORDER: [Step; 9] = [
    Step::SigningKeys,
    Step::Credentials,
    Step::Configuration,
    Step::Migrations,
    Step::Scaling,
    Step::Deployment,
    Step::Workers,
    Step::Networking,
    Step::Status,
];

/// `(earlier, later, why)`: the constraints `ORDER` satisfies, every input a step reads
/// through [`need`] among them (directly or through the steps between).
pub const MUST_PRECEDE: &[(Step, Step, &str)] = &[
    (
        Step::SigningKeys,
        Step::Deployment,
        "pods mount the signing-key Secret: it exists before the first pod, and a new key \
         is published (verify-only) before any pod signs with it",
    ),
    (
        Step::SigningKeys,
        Step::Scaling,
        "a key rotation in progress freezes the replica count",
    ),
    (
        Step::Credentials,
        Step::Scaling,
        "a credential rotation in progress freezes the replica count",
    ),
    (
        Step::Configuration,
        Step::Deployment,
        "the pod template carries the ConfigMap's checksum, so changed settings roll the pods",
    ),
    (
        Step::Configuration,
        Step::Workers,
        "the worker pods carry the same checksum",
    ),
    (
        Step::Migrations,
        Step::Scaling,
        "a migration in progress freezes the replica count",
    ),
    (
        Step::Migrations,
        Step::Deployment,
        "the Deployment only gets an image whose migration succeeded",
    ),
    (
        Step::Migrations,
        Step::Workers,
        "workers run the approved image too",
    ),
    (
        Step::Scaling,
        Step::Deployment,
        "the Deployment is applied with the count just decided",
    ),
    (
        Step::Deployment,
        Step::Networking,
        "leaving Hpa mode, the Deployment carries spec.replicas again before the \
         HorizontalPodAutoscaler is deleted, so the count never falls to a default",
    ),
    (
        Step::Deployment,
        Step::Status,
        "the status reports the Deployment as this pass applied it",
    ),
    (
        Step::Workers,
        Step::Status,
        "the status reports the workers' scaling",
    ),
    (
        Step::Networking,
        Step::Status,
        "name conflicts met while applying optional objects are reported",
    ),
];

/// What the steps of one pass leave for the later ones.
pub(super) struct Pass<'a> {
    ctx: &'a Context,
    stoa: &'a Stoa,
    target: &'a Target,
    ready: ReadyPods<'a>,
    /// As read at the start of the pass, then as `Step::Deployment` applied it.
    deployment: Option<Deployment>,
    rotation: Option<Rotation>,
    credentials: Option<CredentialPass>,
    config: Option<ConfigMap>,
    plan: Option<Plan>,
    frozen_by: Option<String>,
    scale: Option<scaling::ScalePass>,
    workers: Option<WorkerPass>,
    conflicts: Vec<String>,
    /// The soonest any step wants to look again.
    requeue: Duration,
}

/// An input a step needs from an earlier one (absent only if `ORDER` were wrong).
fn need<'v, T>(value: &'v Option<T>, step: Step, input: &'static str) -> Result<&'v T> {
    value.as_ref().ok_or_else(|| Error::OutOfOrder {
        step: format!("{step:?}"),
        input,
    })
}

impl<'a> Pass<'a> {
    pub fn new(
        ctx: &'a Context,
        stoa: &'a Stoa,
        target: &'a Target,
        deployment: Option<Deployment>,
    ) -> Self {
        Pass {
            ctx,
            stoa,
            target,
            ready: ReadyPods::new(ctx, stoa, target),
            deployment,
            rotation: None,
            credentials: None,
            config: None,
            plan: None,
            frozen_by: None,
            scale: None,
            workers: None,
            conflicts: Vec::new(),
            requeue: Duration::MAX,
        }
    }

    /// Runs every step in order; returns when to look again.
    pub async fn run(mut self) -> Result<Duration> {
        for step in ORDER {
            match step {
                Step::SigningKeys => self.signing_keys().await?,
                Step::Credentials => self.credentials().await?,
                Step::Configuration => self.configuration().await?,
                Step::Migrations => self.migrations().await?,
                Step::Scaling => self.scaling().await?,
                Step::Deployment => self.deployment().await?,
                Step::Workers => self.workers().await?,
                Step::Networking => self.networking().await?,
                Step::Status => self.status().await?,
            }
        }
        Ok(self.requeue)
    }

    fn look_again_within(&mut self, after: Duration) {
        self.requeue = self.requeue.min(after);
    }

    async fn signing_keys(&mut self) -> Result<()> {
        let (ctx, stoa, target) = (self.ctx, self.stoa, self.target);
        let secret = ensure_key_secret(ctx, stoa, target).await?;
        ensure_mfa_key_secret(ctx, stoa, target).await?;
        let rotation = keys::rotate_keys(ctx, stoa, target, secret, &self.ready).await?;
        self.look_again_within(rotation.requeue);
        self.rotation = Some(rotation);
        Ok(())
    }

    async fn credentials(&mut self) -> Result<()> {
        let pass =
            credential_rotator::rotate_credentials(self.ctx, self.stoa, self.target, &self.ready)
                .await?;
        self.look_again_within(pass.requeue);
        self.credentials = Some(pass);
        Ok(())
    }

    async fn configuration(&mut self) -> Result<()> {
        let client = &self.ctx.client;
        ensure_current(
            &self.target.api::<ServiceAccount>(client),
            resources::service_account(self.stoa)?,
            &self.target.uid,
            "ServiceAccount",
        )
        .await?;
        let config = resources::config_map(self.stoa)?;
        ensure_current(
            &self.target.api::<ConfigMap>(client),
            config.clone(),
            &self.target.uid,
            "ConfigMap",
        )
        .await?;
        self.config = Some(config);
        Ok(())
    }

    async fn migrations(&mut self) -> Result<()> {
        let plan = plan_rollout(self.ctx, self.stoa, self.target, self.deployment.as_ref()).await?;
        if let Some(request) = &plan.create {
            create_job(
                self.ctx,
                self.target,
                &resources::migration_job(self.stoa, request)?,
            )
            .await?;
        }
        if let Some(requeue) = plan.requeue {
            self.look_again_within(requeue);
        }
        self.plan = Some(plan);
        Ok(())
    }

    async fn scaling(&mut self) -> Result<()> {
        let step = Step::Scaling;
        self.frozen_by = freeze_reason(
            need(&self.plan, step, "the rollout plan")?,
            &need(&self.rotation, step, "the key rotation")?.status.phase,
            &need(&self.credentials, step, "the credential rotation")?
                .facts
                .status
                .phase,
        );
        let pass = scaling::scale(
            self.ctx,
            self.stoa,
            self.deployment.as_ref(),
            self.frozen_by.clone(),
            &self.ready,
        )
        .await?;
        self.look_again_within(pass.requeue);
        self.scale = Some(pass);
        Ok(())
    }

    async fn deployment(&mut self) -> Result<()> {
        let step = Step::Deployment;
        // First install: nothing runs until the first migration succeeded.
        let Some(image) = &need(&self.plan, step, "the rollout plan")?.deploy_image else {
            return Ok(());
        };
        let desired = resources::scaled_deployment(
            self.stoa,
            need(&self.config, step, "the ConfigMap")?,
            image,
            need(&self.scale, step, "the replica count")?.replicas,
        )?;
        let applied = apply_deployment(
            self.ctx,
            self.stoa,
            self.target,
            self.deployment.take(),
            desired,
        )
        .await?;
        self.deployment = Some(applied);
        Ok(())
    }

    async fn workers(&mut self) -> Result<()> {
        let step = Step::Workers;
        let pass = workers::reconcile_workers(
            self.ctx,
            self.stoa,
            self.target,
            need(&self.config, step, "the ConfigMap")?,
            need(&self.plan, step, "the rollout plan")?
                .deploy_image
                .as_deref(),
            self.frozen_by.is_some(),
            &self.ready,
        )
        .await?;
        self.look_again_within(pass.requeue);
        self.workers = Some(pass);
        Ok(())
    }

    /// An optional object whose name an object of someone else's holds is reported
    /// (Degraded/NameConflict) and skipped: everything else is still applied, and the
    /// status still written.
    async fn networking(&mut self) -> Result<()> {
        let (ctx, stoa, target) = (self.ctx, self.stoa, self.target);
        let client = &ctx.client;
        ensure_current(
            &target.api::<Service>(client),
            resources::service(stoa)?,
            &target.uid,
            "Service",
        )
        .await?;
        let conflicts = &mut self.conflicts;
        let worker_service = apply::reconcile_optional(
            &target.api::<Service>(client),
            &target.names.worker,
            resources::worker_metrics_service(stoa)?,
            &target.uid,
            "Service",
        )
        .await;
        tolerate_conflict(conflicts, worker_service)?;
        let budget = target
            .reconcile_optional::<PodDisruptionBudget>(
                client,
                resources::pod_disruption_budget(stoa)?,
                "PodDisruptionBudget",
            )
            .await;
        tolerate_conflict(conflicts, budget)?;
        let ingress = target
            .reconcile_optional::<Ingress>(client, resources::ingress(stoa)?, "Ingress")
            .await;
        tolerate_conflict(conflicts, ingress)?;
        let policy = target
            .reconcile_optional::<NetworkPolicy>(
                client,
                resources::network_policy(stoa, ctx.operator_namespace.as_deref())?,
                "NetworkPolicy",
            )
            .await;
        tolerate_conflict(conflicts, policy)?;
        if stoa.spec.autoscaling.mode != AutoscalingMode::Hpa {
            let autoscaler = target
                .reconcile_optional::<HorizontalPodAutoscaler>(
                    client,
                    None,
                    "HorizontalPodAutoscaler",
                )
                .await;
            tolerate_conflict(conflicts, autoscaler)?;
        }
        if ctx.service_monitors {
            let monitor = reconcile_service_monitor(ctx, stoa, target).await;
            tolerate_conflict(conflicts, monitor)?;
        }
        Ok(())
    }

    async fn status(&mut self) -> Result<()> {
        let step = Step::Status;
        let rotation = need(&self.rotation, step, "the key rotation")?;
        let facts = Facts {
            conflicts: std::mem::take(&mut self.conflicts),
            deployment: self.deployment.as_ref(),
            keys: key_status(&rotation.secret),
            paused: false,
            plan: Some(need(&self.plan, step, "the rollout plan")?),
            key_rotation: Some(KeyRotationFacts {
                status: rotation.status.clone(),
                stalled: rotation.stalled.clone(),
            }),
            credential_rotation: self.credentials.take().map(|pass| pass.facts),
            autoscaling: need(&self.scale, step, "the replica count")?.status.clone(),
            worker: self.workers.as_ref().map(|pass| pass.status.clone()),
        };
        let next = status::status(self.stoa, &facts);
        for notice in status::migration_notices(
            self.stoa.status.as_ref().and_then(|s| s.migration.as_ref()),
            next.migration.as_ref(),
        ) {
            event(self.ctx, self.stoa, notice).await;
        }
        let ready = status::condition_true(&next, conditions::ready::TYPE);
        let migrating = status::condition_true(&next, conditions::progressing::TYPE);
        write_status(self.ctx, self.stoa, self.target, next).await?;
        // Owned objects wake us on change; these are safety nets (and the migration retry).
        self.look_again_within(if migrating {
            Duration::from_secs(30)
        } else if ready {
            Duration::from_secs(300)
        } else {
            Duration::from_secs(60)
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(step: Step) -> usize {
        ORDER
            .iter()
            .position(|s| *s == step)
            .unwrap_or_else(|| panic!("{step:?} is not in ORDER"))
    }

    #[test]
    fn every_step_runs_once() {
        for step in ORDER {
            assert_eq!(ORDER.iter().filter(|s| **s == step).count(), 1, "{step:?}");
        }
    }

    #[test]
    fn the_order_keeps_every_constraint() {
        for (earlier, later, why) in MUST_PRECEDE {
            assert!(
                position(*earlier) < position(*later),
                "{earlier:?} must run before {later:?}: {why}"
            );
        }
    }
}
