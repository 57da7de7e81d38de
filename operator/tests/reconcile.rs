#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The reconcile loop against an in-memory Kubernetes API (kube-fake-client), step by step.
mod fixtures;

use std::sync::Arc;

use fixtures::{container, stoa, with_spec};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use stoa_operator::controller::{Context, reconcile};
use stoa_operator::crd::{IngressSpec, Stoa};
use stoa_operator::metrics::Metrics;

async fn cluster(initial: &Stoa) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube_fake_client::ClientBuilder::new()
        .with_resource::<Stoa>()
        .with_status_subresource::<Stoa>()
        .with_status_subresource::<Deployment>()
        .with_object(initial.clone())
        .build()
        .await
        .unwrap()
}

/// Runs one reconcile of the stored object, as the controller would after a watch event.
async fn reconcile_stored(client: &Client, name: &str) -> Stoa {
    let api: Api<Stoa> = Api::namespaced(client.clone(), "shop");
    let current = api.get(name).await.unwrap();
    let ctx = Arc::new(Context::new(client.clone(), Arc::new(Metrics::new())));
    reconcile(Arc::new(current), ctx).await.unwrap();
    api.get(name).await.unwrap()
}

/// Replaces the stored spec (what `kubectl apply` does), bumping the generation.
async fn update_spec(client: &Client, updated: &Stoa) {
    let api: Api<Stoa> = Api::namespaced(client.clone(), "shop");
    let mut current = api.get(&updated.name_any()).await.unwrap();
    current.spec = updated.spec.clone();
    current.metadata.generation = current.metadata.generation.map(|g| g + 1);
    api.replace(&updated.name_any(), &PostParams::default(), &current)
        .await
        .unwrap();
}

fn image(d: &Deployment) -> String {
    container(d).image.clone().unwrap()
}

fn condition<'a>(
    s: &'a Stoa,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap()
}

#[tokio::test]
async fn create_makes_every_object_with_owner_references_and_reports_status() {
    let s = stoa("api");
    let client = cluster(&s).await;
    let after = reconcile_stored(&client, "api").await;

    let ns = |c: &Client| c.clone();
    let owned_by_stoa =
        |refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
            refs.is_some_and(|r| {
                r.iter()
                    .any(|o| o.kind == "Stoa" && o.name == "api" && o.controller == Some(true))
            })
        };
    let sa = Api::<ServiceAccount>::namespaced(ns(&client), "shop")
        .get("api")
        .await
        .unwrap();
    let cm = Api::<ConfigMap>::namespaced(ns(&client), "shop")
        .get("api-config")
        .await
        .unwrap();
    let secret = Api::<Secret>::namespaced(ns(&client), "shop")
        .get("api-jwt-keys")
        .await
        .unwrap();
    let deployment = Api::<Deployment>::namespaced(ns(&client), "shop")
        .get("api")
        .await
        .unwrap();
    let service = Api::<Service>::namespaced(ns(&client), "shop")
        .get("api")
        .await
        .unwrap();
    let pdb = Api::<PodDisruptionBudget>::namespaced(ns(&client), "shop")
        .get("api")
        .await
        .unwrap();
    for refs in [
        sa.metadata.owner_references.as_ref(),
        cm.metadata.owner_references.as_ref(),
        secret.metadata.owner_references.as_ref(),
        deployment.metadata.owner_references.as_ref(),
        service.metadata.owner_references.as_ref(),
        pdb.metadata.owner_references.as_ref(),
    ] {
        assert!(owned_by_stoa(refs), "missing owner reference: {refs:?}");
    }
    assert_eq!(image(&deployment), "ghcr.io/stoa-dev/stoa-api:0.1.0");
    assert!(
        Api::<Ingress>::namespaced(ns(&client), "shop")
            .get_opt("api")
            .await
            .unwrap()
            .is_none()
    );

    let status = after.status.as_ref().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        status.current_image.as_deref(),
        Some("ghcr.io/stoa-dev/stoa-api:0.1.0")
    );
    assert_eq!(status.keys.len(), 1);
    assert_eq!(status.keys[0].state, "active");
    assert!(
        status
            .selector
            .as_deref()
            .unwrap()
            .contains("app.kubernetes.io/instance=api")
    );
    // No pods are ready yet.
    assert_eq!(condition(&after, "Ready").status, "False");
    assert_eq!(condition(&after, "Ready").reason, "Unavailable");
    assert_eq!(condition(&after, "Progressing").status, "True");
    assert_eq!(condition(&after, "Degraded").status, "False");
}

#[tokio::test]
async fn ready_pods_make_the_stoa_ready_and_a_failed_rollout_degraded() {
    let s = stoa("api");
    let client = cluster(&s).await;
    reconcile_stored(&client, "api").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    // The fake API bumps `generation` on every write, even a no-op apply, so the
    // deployment controller is simulated as having seen the next one too.
    let generation = deployments
        .get("api")
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap_or(1);
    let status = DeploymentStatus {
        observed_generation: Some(generation + 1),
        replicas: Some(2),
        ready_replicas: Some(2),
        updated_replicas: Some(2),
        available_replicas: Some(2),
        ..DeploymentStatus::default()
    };
    deployments
        .patch_status(
            "api",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"status": status})),
        )
        .await
        .unwrap();
    let after = reconcile_stored(&client, "api").await;
    assert_eq!(
        condition(&after, "Ready").status,
        "True",
        "{:?}",
        after.status
    );
    assert_eq!(condition(&after, "Progressing").reason, "Complete");
    assert_eq!(after.status.as_ref().unwrap().ready_replicas, 2);

    let failed = serde_json::json!({"status": {"conditions": [{
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet api-123 has timed out progressing."}]}});
    deployments
        .patch_status("api", &PatchParams::default(), &Patch::Merge(&failed))
        .await
        .unwrap();
    let after = reconcile_stored(&client, "api").await;
    assert_eq!(condition(&after, "Degraded").status, "True");
    assert_eq!(
        condition(&after, "Degraded").reason,
        "ProgressDeadlineExceeded"
    );
}

#[tokio::test]
async fn spec_changes_roll_the_deployment() {
    let s = stoa("api");
    let client = cluster(&s).await;
    reconcile_stored(&client, "api").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[stoa_operator::resources::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let first = deployments.get("api").await.unwrap();

    update_spec(
        &client,
        &with_spec(s.clone(), |spec| {
            spec.image = "ghcr.io/stoa-dev/stoa-api:0.2.0".into()
        }),
    )
    .await;
    let after = reconcile_stored(&client, "api").await;
    let second = deployments.get("api").await.unwrap();
    assert_eq!(image(&second), "ghcr.io/stoa-dev/stoa-api:0.2.0");
    assert_eq!(after.status.as_ref().unwrap().observed_generation, Some(2));

    update_spec(
        &client,
        &with_spec(after.clone(), |spec| {
            spec.auth.access_token_ttl = "5m".into()
        }),
    )
    .await;
    reconcile_stored(&client, "api").await;
    let third = deployments.get("api").await.unwrap();
    assert_ne!(
        hash(&first),
        hash(&third),
        "a configuration change rolls the pods"
    );
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "shop")
        .get("api-config")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["STOA_ACCESS_TOKEN_TTL"], "5m");
}

#[tokio::test]
async fn paused_stops_all_changes() {
    let s = stoa("api");
    let client = cluster(&s).await;
    reconcile_stored(&client, "api").await;
    let paused = with_spec(s.clone(), |spec| {
        spec.paused = true;
        spec.image = "ghcr.io/stoa-dev/stoa-api:9.9.9".into();
        spec.ingress = Some(IngressSpec {
            host: "api.example.com".into(),
            class_name: None,
            tls_secret_name: None,
            annotations: Default::default(),
        });
    });
    update_spec(&client, &paused).await;
    let after = reconcile_stored(&client, "api").await;
    let deployment = Api::<Deployment>::namespaced(client.clone(), "shop")
        .get("api")
        .await
        .unwrap();
    assert_eq!(image(&deployment), "ghcr.io/stoa-dev/stoa-api:0.1.0");
    assert!(
        Api::<Ingress>::namespaced(client.clone(), "shop")
            .get_opt("api")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(condition(&after, "Progressing").reason, "Paused");

    // Unpausing applies what was asked for meanwhile.
    update_spec(&client, &with_spec(paused, |spec| spec.paused = false)).await;
    reconcile_stored(&client, "api").await;
    let deployment = Api::<Deployment>::namespaced(client.clone(), "shop")
        .get("api")
        .await
        .unwrap();
    assert_eq!(image(&deployment), "ghcr.io/stoa-dev/stoa-api:9.9.9");
    assert!(
        Api::<Ingress>::namespaced(client.clone(), "shop")
            .get_opt("api")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn the_key_secret_is_created_once_and_survives_reconciles() {
    let s = stoa("api");
    let client = cluster(&s).await;
    reconcile_stored(&client, "api").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "shop");
    let original = secrets.get("api-jwt-keys").await.unwrap().data.unwrap();
    for i in 0..3 {
        update_spec(&client, &with_spec(s.clone(), |spec| spec.replicas = 3 + i)).await;
        reconcile_stored(&client, "api").await;
    }
    assert_eq!(
        secrets.get("api-jwt-keys").await.unwrap().data.unwrap(),
        original
    );
}

#[tokio::test]
async fn optional_objects_are_removed_when_the_spec_drops_them() {
    let s = stoa("api");
    let client = cluster(&s).await;
    reconcile_stored(&client, "api").await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "shop");
    assert!(pdbs.get_opt("api").await.unwrap().is_some());
    update_spec(
        &client,
        &with_spec(s.clone(), |spec| spec.pod_disruption_budget.enabled = false),
    )
    .await;
    reconcile_stored(&client, "api").await;
    assert!(pdbs.get_opt("api").await.unwrap().is_none());
}
