//! The reconciler: a thin orchestration over the pure builders in `resources`.
//!
//! Each pass applies every owned object with server-side apply (one field manager,
//! forced), creates the signing-key Secret once, removes optional objects the spec no
//! longer asks for, and writes the observed state into `status`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::{KeyStatus, Stoa, StoaStatus};
use crate::metrics::Metrics;
use crate::resources::{self, BuildError, Names};

pub const FIELD_MANAGER: &str = "stoa-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("the Stoa has no namespace")]
    NoNamespace,
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(_) => "client_error",
            Error::Build(_) => "invalid_spec",
            Error::NoNamespace => "no_namespace",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
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
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        match self.failures.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .patch(&object.name_any(), &apply_params(), &Patch::Apply(object))
        .await?)
}

/// Deletes an optional object the spec no longer wants, if it exists.
async fn remove<K>(client: &Client, namespace: &str, name: &str) -> Result<bool>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn event(ctx: &Context, stoa: &Stoa, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // Events are informational: failing to record one must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&event, &stoa.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record event");
    }
}

/// Makes sure the signing-key Secret exists. Returns it (existing or new).
async fn ensure_key_secret(ctx: &Context, stoa: &Stoa, namespace: &str) -> Result<Secret> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let name = Names::of(stoa).keys;
    if let Some(existing) = api.get_opt(&name).await? {
        return Ok(existing);
    }
    let secret = resources::key_secret(stoa, &stoa_api::keys::generate_keyset())?;
    match api
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            },
            &secret,
        )
        .await
    {
        Ok(created) => {
            event(
                ctx,
                stoa,
                EventType::Normal,
                "KeySetCreated",
                format!("created signing key set in Secret {name}"),
            )
            .await;
            Ok(created)
        }
        // Another reconcile won the race: use its Secret.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api.get(&name).await?),
        Err(e) => Err(e.into()),
    }
}

fn key_status(secret: &Secret) -> Vec<KeyStatus> {
    let Some(bytes) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(stoa_api::keys::KEYSET_FILE))
    else {
        return Vec::new();
    };
    serde_json::from_slice::<stoa_api::keys::KeySetFile>(&bytes.0)
        .map(|file| {
            file.keys
                .into_iter()
                .map(|k| KeyStatus {
                    kid: k.kid,
                    state: k.state.as_str().to_owned(),
                    created_at: k.created_at,
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn service_monitor_supported(client: &Client) -> Result<bool> {
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
    if result.is_ok() {
        ctx.failures().remove(&key(&stoa));
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

async fn reconcile_inner(stoa: &Stoa, ctx: &Context) -> Result<Action> {
    let namespace = stoa.namespace().ok_or(Error::NoNamespace)?;
    let names = Names::of(stoa);
    let client = &ctx.client;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    if stoa.spec.paused {
        let current = deployments.get_opt(&names.base).await?;
        let keys = Api::<Secret>::namespaced(client.clone(), &namespace)
            .get_opt(&names.keys)
            .await?;
        let status = observe(
            stoa,
            current.as_ref(),
            keys.as_ref().map(key_status).unwrap_or_default(),
            true,
        );
        patch_status(ctx, stoa, &namespace, status).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    let keys = ensure_key_secret(ctx, stoa, &namespace).await?;
    apply(client, &namespace, &resources::service_account(stoa)?).await?;
    let config = resources::config_map(stoa)?;
    apply(client, &namespace, &config).await?;

    let desired = resources::deployment(stoa, &config)?;
    let before = deployments.get_opt(&names.base).await?;
    let applied = apply(client, &namespace, &desired).await?;
    announce_rollout(ctx, stoa, before.as_ref(), &applied).await;

    apply(client, &namespace, &resources::service(stoa)?).await?;
    match resources::pod_disruption_budget(stoa)? {
        Some(pdb) => drop(apply(client, &namespace, &pdb).await?),
        None => drop(remove::<PodDisruptionBudget>(client, &namespace, &names.base).await?),
    }
    match resources::ingress(stoa)? {
        Some(ingress) => drop(apply(client, &namespace, &ingress).await?),
        None => drop(remove::<Ingress>(client, &namespace, &names.base).await?),
    }
    match resources::network_policy(stoa)? {
        Some(policy) => drop(apply(client, &namespace, &policy).await?),
        None => drop(remove::<NetworkPolicy>(client, &namespace, &names.base).await?),
    }
    match resources::horizontal_pod_autoscaler(stoa)? {
        Some(hpa) => drop(apply(client, &namespace, &hpa).await?),
        None => drop(remove::<HorizontalPodAutoscaler>(client, &namespace, &names.base).await?),
    }
    if let Some(monitor) = resources::service_monitor(stoa)?
        && service_monitor_supported(client).await?
    {
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            client.clone(),
            &namespace,
            &resources::service_monitor_resource(),
        );
        api.patch(&names.base, &apply_params(), &Patch::Apply(&monitor))
            .await?;
    }

    let status = observe(stoa, Some(&applied), key_status(&keys), false);
    let ready = condition_true(&status, "Ready");
    patch_status(ctx, stoa, &namespace, status).await?;
    // Owned objects wake us on change; the requeue is a safety net.
    Ok(Action::requeue(if ready {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(15)
    }))
}

/// Records an Event when the pods are about to roll (new image or configuration).
async fn announce_rollout(
    ctx: &Context,
    stoa: &Stoa,
    before: Option<&Deployment>,
    after: &Deployment,
) {
    let fingerprint = |d: &Deployment| {
        let template = d.spec.as_ref().map(|s| &s.template);
        let image = template
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone());
        let hash = template
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(resources::CONFIG_HASH_ANNOTATION).cloned());
        (image, hash)
    };
    let (new_image, new_hash) = fingerprint(after);
    match before.map(fingerprint) {
        None => {
            let note = format!(
                "created Deployment with image {}",
                new_image.unwrap_or_default()
            );
            event(ctx, stoa, EventType::Normal, "DeploymentCreated", note).await;
        }
        Some((old_image, _)) if old_image != new_image => {
            let note = format!(
                "rolling out image {} (was {})",
                new_image.unwrap_or_default(),
                old_image.unwrap_or_default()
            );
            event(ctx, stoa, EventType::Normal, "RollingOut", note).await;
        }
        Some((_, old_hash)) if old_hash != new_hash => {
            event(
                ctx,
                stoa,
                EventType::Normal,
                "ConfigChanged",
                "configuration changed; rolling the pods".into(),
            )
            .await;
        }
        Some(_) => {}
    }
}

fn condition_true(status: &StoaStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// The status that describes `deployment` (pure, apart from timestamps).
pub fn observe(
    stoa: &Stoa,
    deployment: Option<&Deployment>,
    keys: Vec<KeyStatus>,
    paused: bool,
) -> StoaStatus {
    let generation = stoa.metadata.generation;
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
    let deployment_generation_seen = match (
        deployment.and_then(|d| d.metadata.generation),
        status.observed_generation,
    ) {
        (Some(generation), Some(observed)) => observed >= generation,
        // No generation recorded (not set by every API implementation): trust the status.
        (None, Some(_)) => true,
        _ => false,
    };
    let rolled_out = deployment_generation_seen && updated >= desired && current == updated;
    let failed = status.conditions.iter().flatten().find(|c| {
        (c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            || (c.type_ == "ReplicaFailure" && c.status == "True")
    });

    let mut conditions = Vec::with_capacity(3);
    let available = ready >= desired.max(1) || (desired == 0 && deployment.is_some());
    conditions.push(condition(
        "Ready",
        available && !paused,
        if paused {
            "Paused"
        } else if available {
            "Available"
        } else {
            "Unavailable"
        },
        format!("{ready}/{desired} replicas ready"),
        generation,
    ));
    let progressing = !paused && !rolled_out && failed.is_none();
    conditions.push(condition(
        "Progressing",
        progressing,
        if paused {
            "Paused"
        } else if progressing {
            "RollingOut"
        } else {
            "Complete"
        },
        if paused {
            "spec.paused is true: changes are not applied".into()
        } else {
            format!("{updated}/{desired} replicas updated")
        },
        generation,
    ));
    conditions.push(match failed {
        Some(c) => condition(
            "Degraded",
            true,
            c.reason.as_deref().unwrap_or("DeploymentFailed"),
            c.message.clone().unwrap_or_default(),
            generation,
        ),
        None => condition(
            "Degraded",
            false,
            "AsExpected",
            "no failures observed".into(),
            generation,
        ),
    });

    StoaStatus {
        observed_generation: generation,
        conditions,
        current_image: deployment
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone()),
        replicas: current,
        ready_replicas: ready,
        updated_replicas: updated,
        selector: Some(resources::selector_string(stoa)),
        keys,
    }
}

/// Keeps `lastTransitionTime` of conditions whose status did not change.
fn carry_transition_times(previous: Option<&StoaStatus>, next: &mut StoaStatus) {
    let Some(previous) = previous else { return };
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

async fn patch_status(
    ctx: &Context,
    stoa: &Stoa,
    namespace: &str,
    mut status: StoaStatus,
) -> Result<()> {
    carry_transition_times(stoa.status.as_ref(), &mut status);
    if stoa.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Stoa> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({"status": status});
    api.patch_status(
        &stoa.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
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
