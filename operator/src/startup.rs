//! Start-up: checks that fail fast with one clear line, and the process's health
//! endpoints.
//!
//! Readiness says "this process works" (configured, CRD present, permissions granted); it
//! never depends on holding the leader Lease. With two replicas and a rolling update that
//! waits for the new pod to be Ready, a standby that could only become Ready by leading
//! would stall every upgrade of the operator.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::{Client, Resource};

use crate::crd::Stoa;
use crate::metrics::Metrics;

/// Why the operator cannot start, in words a platform team can act on.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "the Stoa CRD (stoas.stoa.dev) is not installed: apply crds/stoa.dev_stoas.yaml, or \
         install the Helm chart with crds.install=true"
    )]
    MissingCrd,
    #[error(
        "missing permission: cannot list {resource} {scope}; install the Role from the Helm \
         chart or manifests/operator (it grants exactly what the operator uses)"
    )]
    Forbidden { resource: String, scope: String },
    #[error("cannot reach the Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn can_list<K>(client: &Client, namespace: Option<&str>) -> Result<(), StartupError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K: Resource<DynamicType = ()>,
{
    match api::<K>(client, namespace)
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 && K::group(&()) == "stoa.dev" => {
            Err(StartupError::MissingCrd)
        }
        Err(kube::Error::Api(e)) if e.code == 403 => Err(StartupError::Forbidden {
            resource: K::plural(&()).into_owned(),
            scope: namespace.map_or_else(
                || "in all namespaces".to_owned(),
                |ns| format!("in namespace {ns}"),
            ),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Lists each type the controller watches once (at most one item): a missing CRD or a
/// missing permission ends start-up with one line instead of a stream of watch errors.
pub async fn preflight(client: &Client, namespace: Option<&str>) -> Result<(), StartupError> {
    can_list::<Stoa>(client, namespace).await?;
    can_list::<Deployment>(client, namespace).await?;
    can_list::<Service>(client, namespace).await?;
    can_list::<ConfigMap>(client, namespace).await?;
    can_list::<ServiceAccount>(client, namespace).await?;
    can_list::<Secret>(client, namespace).await?;
    can_list::<Pod>(client, namespace).await?;
    can_list::<Job>(client, namespace).await?;
    can_list::<PodDisruptionBudget>(client, namespace).await?;
    can_list::<Ingress>(client, namespace).await?;
    can_list::<NetworkPolicy>(client, namespace).await?;
    can_list::<HorizontalPodAutoscaler>(client, namespace).await?;
    Ok(())
}

/// State behind `/healthz`, `/readyz` and `/metrics`.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    started: Arc<AtomicBool>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Health {
            metrics,
            started: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Start-up checks passed: ready, whether or not this replica leads.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                if h.started.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move {
                match h.metrics.encode() {
                    Ok(body) => (StatusCode::OK, body),
                    Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                }
            }),
        )
        .with_state(health)
}
