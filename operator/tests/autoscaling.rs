#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! `autoscaling.mode: Concurrency` through the real reconciler against an in-memory API:
//! the Deployment's replica count follows the pods' reported concurrency, is bounded by
//! PostgreSQL's limits (with a Warning when that bites), holds still during a migration,
//! and the operator owns `replicas` (no HPA). Pods answer through a scripted probe;
//! `tests/tests/autoscaling_protocol.rs` scales real stoa-api processes.
mod fixtures;

use std::time::Duration;

use fixtures::cluster::events_since;
use fixtures::from_yaml;
use fixtures::scripted::Cluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::Api;
use stoa_contract::pod::ServerLimits;
use stoa_operator::crd::{AutoscalingStatus, Stoa};

fn scaled(migrations: &str) -> Stoa {
    from_yaml(&format!(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {{name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555, generation: 1}}
spec:
  image: ghcr.io/stoa-dev/stoa-api:0.1.0
  database: {{urlSecretRef: {{name: api-db}}, maxConnections: 8}}
  migrations: {{mode: {migrations}}}
  autoscaling:
    mode: Concurrency
    minReplicas: 2
    maxReplicas: 20
    reservedConnections: 10
    concurrency: {{target: 10, stableWindow: 60s}}
"
    ))
}

async fn replicas(cluster: &Cluster) -> i32 {
    Api::<Deployment>::namespaced(cluster.client.clone(), "shop")
        .get("api")
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas
        .unwrap()
}

/// `n` ready pods that answer the probe.
async fn ready_pods(cluster: &Cluster, n: usize) {
    for i in 0..n {
        let name = format!("api-{i}");
        cluster.ready_pod(&name, &format!("10.0.0.{i}")).await;
        cluster.pods.set(&name, &[]);
    }
}

/// Two reads of the pods a little apart: the second has a concurrency to report.
async fn two_samples(cluster: &Cluster) -> Stoa {
    cluster.reconcile().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.reconcile().await
}

fn autoscaling(s: &Stoa) -> AutoscalingStatus {
    s.status.as_ref().unwrap().autoscaling.clone().unwrap()
}

#[tokio::test]
async fn the_replica_count_follows_requests_in_flight_and_no_hpa_is_made() {
    let scaled_stoa = Cluster::new(&scaled("Disabled")).await;
    let first = scaled_stoa.reconcile().await;
    assert_eq!(replicas(&scaled_stoa).await, 2, "starts at minReplicas");
    assert_eq!(autoscaling(&first).reason, "NoMetrics");
    ready_pods(&scaled_stoa, 2).await;

    // 30 in flight on each of 2 pods at 10 per pod: 6 pods, at once (a burst panics).
    *scaled_stoa.pods.concurrency.lock().unwrap() = 30.0;
    let from = scaled_stoa.mark();
    let busy = two_samples(&scaled_stoa).await;
    let status = autoscaling(&busy);
    assert_eq!(status.desired_replicas, 6, "{status:?}");
    assert_eq!(status.reason, "Panic");
    assert_eq!(replicas(&scaled_stoa).await, 6);
    assert!(events_since(&scaled_stoa.log, from).contains(&("Normal".into(), "Scaled".into())));
    assert!(
        Api::<HorizontalPodAutoscaler>::namespaced(scaled_stoa.client.clone(), "shop")
            .get_opt("api")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn postgres_bounds_the_count_and_a_warning_says_so_once() {
    let scaled_stoa = Cluster::new(&scaled("Disabled")).await;
    scaled_stoa.reconcile().await;
    ready_pods(&scaled_stoa, 2).await;
    *scaled_stoa.pods.concurrency.lock().unwrap() = 100.0;
    // (47 - 3 reserved by the server - 10 kept for migrations - 7 for the one worker)
    // / 8 per pod = 3 pods.
    *scaled_stoa.pods.limits.lock().unwrap() = Some(ServerLimits {
        postgres_max_connections: 47,
        postgres_reserved_connections: 3,
        redis_max_clients: None,
    });
    let from = scaled_stoa.mark();
    let bounded = two_samples(&scaled_stoa).await;
    let status = autoscaling(&bounded);
    assert_eq!(
        (
            status.desired_replicas,
            status.effective_max_replicas,
            status.limited_by.as_str()
        ),
        (3, 3, "postgres")
    );
    assert!(status.wanted_replicas > 3, "{status:?}");
    assert_eq!(replicas(&scaled_stoa).await, 3);
    scaled_stoa.reconcile().await;
    let warnings = events_since(&scaled_stoa.log, from)
        .into_iter()
        .filter(|e| e == &("Warning".to_owned(), "ScaleBounded".to_owned()))
        .count();
    assert_eq!(warnings, 1);
}

#[tokio::test]
async fn scaling_holds_still_while_a_migration_runs() {
    let scaled_stoa = Cluster::new(&scaled("Auto")).await;
    scaled_stoa.reconcile().await;
    // The first migration Job runs: no Deployment yet, and the decision is frozen.
    ready_pods(&scaled_stoa, 2).await;
    *scaled_stoa.pods.concurrency.lock().unwrap() = 30.0;
    let migrating = two_samples(&scaled_stoa).await;
    let status = autoscaling(&migrating);
    assert_eq!(status.reason, "Frozen");
    assert_eq!(status.frozen_by.as_deref(), Some("migration"));
    assert_eq!(status.desired_replicas, 2, "the load alone would ask for 6");
}

#[tokio::test]
async fn scaling_holds_still_while_a_new_signing_key_is_confirmed() {
    let scaled_stoa = Cluster::new(&scaled("Disabled")).await;
    scaled_stoa.reconcile().await;
    ready_pods(&scaled_stoa, 2).await;
    // A rotation starts; the pods have not loaded the new key (they report none).
    scaled_stoa.annotate("stoa.dev/rotate-keys", "now").await;
    *scaled_stoa.pods.concurrency.lock().unwrap() = 30.0;
    let rotating = two_samples(&scaled_stoa).await;
    let status = autoscaling(&rotating);
    assert_eq!(
        status.frozen_by.as_deref(),
        Some("signing-key rotation"),
        "{status:?}"
    );
    assert_eq!(
        replicas(&scaled_stoa).await,
        2,
        "the load alone would ask for 6"
    );
}
