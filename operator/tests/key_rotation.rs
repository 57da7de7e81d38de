#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Protocol 2 through the real reconciler against an in-memory API: what is written to the
//! key Secret at each step, how (conditioned on its resourceVersion), what the status and
//! the Events say, and that no key signs before every ready pod reports it loaded. Pods
//! answer through a scripted probe; `tests/tests/key_rotation_protocol.rs` runs the same
//! protocol against real stoa-api processes.
mod fixtures;

use std::sync::Arc;

use fixtures::cluster::{calls_since, events_since};
use fixtures::scripted::{Cluster, assert_operator_requests_granted};
use fixtures::{from_yaml, stoa};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use stoa_contract::keys::{KEYSET_FILE, KeySetFile, KeyState};
use stoa_operator::controller::reconcile;
use stoa_operator::crd::Stoa;
use stoa_operator::key_rotation::{
    PROMOTED_AT_ANNOTATION, PROMOTION_CONFIRMED_AT_ANNOTATION, ROTATE_ANNOTATION,
};

fn secrets(cluster: &Cluster) -> Api<Secret> {
    Api::namespaced(cluster.client.clone(), "shop")
}

/// `(kid, state)` of each key in the key Secret.
async fn key_states(cluster: &Cluster) -> Vec<(String, KeyState)> {
    let secret = secrets(cluster).get("api-jwt-keys").await.unwrap();
    let file: KeySetFile = serde_json::from_slice(&secret.data.unwrap()[KEYSET_FILE].0).unwrap();
    file.keys.into_iter().map(|k| (k.kid, k.state)).collect()
}

fn rotation(s: &Stoa) -> &stoa_operator::crd::KeyRotationStatus {
    s.status.as_ref().unwrap().key_rotation.as_ref().unwrap()
}

fn degraded_reason(s: &Stoa) -> String {
    s.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| c.reason.clone())
        .unwrap()
}

#[tokio::test]
async fn a_requested_rotation_is_confirmed_by_every_pod_then_promoted_then_retired() {
    let cluster = Cluster::new(&stoa("api")).await;
    let first = cluster.reconcile().await;
    let original = key_states(&cluster).await;
    assert_eq!(original.len(), 1);
    let old = original[0].0.clone();
    assert_eq!(rotation(&first).phase, "Idle");
    assert_eq!(rotation(&first).active_kid.as_deref(), Some(old.as_str()));
    assert!(rotation(&first).next_step_at.is_some());
    cluster.ready_pod("api-1", "10.0.0.1").await;
    cluster.ready_pod("api-2", "10.0.0.2").await;

    // 1. The request adds a key as `next`, written only if the Secret is as it was read.
    cluster
        .annotate(ROTATE_ANNOTATION, "2026-11-25T10:00")
        .await;
    let from = cluster.mark();
    let added = cluster.reconcile().await;
    let keys = key_states(&cluster).await;
    assert_eq!(keys.len(), 2);
    let new = keys[1].0.clone();
    assert_eq!(keys[1].1, KeyState::Next);
    let write = calls_since(&cluster.log, from)
        .into_iter()
        .find(|c| c.method == "PUT" && c.path.ends_with("/secrets/api-jwt-keys"))
        .unwrap();
    assert!(
        write.body.unwrap()["metadata"]["resourceVersion"].is_string(),
        "the key set is replaced conditionally"
    );
    assert!(
        events_since(&cluster.log, from).contains(&("Normal".into(), "KeyRotationStarted".into()))
    );
    assert_eq!(rotation(&added).phase, "Confirming");

    // 2. One pod has not loaded it: nothing is promoted, and the status names the pod.
    cluster.pods.set("api-1", &[&old, &new]);
    cluster.pods.set("api-2", &[&old]);
    for _ in 0..2 {
        let waiting = cluster.reconcile().await;
        assert_eq!(rotation(&waiting).phase, "Confirming");
        assert_eq!(rotation(&waiting).waiting_for, ["api-2"]);
        assert_eq!(degraded_reason(&waiting), "AsExpected");
        assert_eq!(key_states(&cluster).await[1].1, KeyState::Next);
    }

    // 3. Every ready pod has it: it signs, the old key verifies until it retires.
    cluster.pods.set("api-2", &[&old, &new]);
    let from = cluster.mark();
    let promoted = cluster.reconcile().await;
    assert_eq!(
        key_states(&cluster).await,
        [
            (old.clone(), KeyState::Retiring),
            (new.clone(), KeyState::Active)
        ]
    );
    assert!(events_since(&cluster.log, from).contains(&("Normal".into(), "KeyPromoted".into())));
    assert_eq!(rotation(&promoted).phase, "Retiring");
    assert_eq!(
        rotation(&promoted).active_kid.as_deref(),
        Some(new.as_str())
    );
    let statuses = &promoted.status.as_ref().unwrap().keys;
    assert!(statuses.iter().all(|k| k.since.is_some()), "{statuses:?}");

    // The same request does not rotate twice, and the retiring key stays while tokens it
    // signed may still be valid: the pods still sign with it (they list it first) until
    // they reload the promoted key set, even with the promotion an hour old.
    let mut secret = secrets(&cluster).get("api-jwt-keys").await.unwrap();
    let an_hour_ago = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_hours(1))
        .unwrap();
    secret
        .annotations_mut()
        .insert(PROMOTED_AT_ANNOTATION.into(), an_hour_ago.to_string());
    secrets(&cluster)
        .replace("api-jwt-keys", &PostParams::default(), &secret)
        .await
        .unwrap();
    let from = cluster.mark();
    let waiting = cluster.reconcile().await;
    assert!(
        !calls_since(&cluster.log, from)
            .iter()
            .any(|c| c.path.contains("/secrets/") && c.is_write()),
        "nothing to write while pods still sign with the retiring key"
    );
    assert_eq!(
        key_states(&cluster).await.len(),
        2,
        "{:?}",
        rotation(&waiting)
    );
    assert_eq!(rotation(&waiting).waiting_for, ["api-1", "api-2"]);

    // 4. Every ready pod signs with the new key: the retire clock starts now.
    cluster.pods.set("api-1", &[&new, &old]);
    cluster.pods.set("api-2", &[&new, &old]);
    let from = cluster.mark();
    let confirmed = cluster.reconcile().await;
    assert!(
        events_since(&cluster.log, from)
            .contains(&("Normal".into(), "KeyPromotionConfirmed".into()))
    );
    assert_eq!(
        key_states(&cluster).await.len(),
        2,
        "the retiring key stays"
    );
    assert!(rotation(&confirmed).next_step_at.is_some());

    // 5. Once the access-token lifetime plus leeway has passed since then (here: the
    // recorded confirmation moved an hour back), the retiring key goes.
    let mut secret = secrets(&cluster).get("api-jwt-keys").await.unwrap();
    secret.annotations_mut().insert(
        PROMOTION_CONFIRMED_AT_ANNOTATION.into(),
        an_hour_ago.to_string(),
    );
    secrets(&cluster)
        .replace("api-jwt-keys", &PostParams::default(), &secret)
        .await
        .unwrap();
    let from = cluster.mark();
    let retired = cluster.reconcile().await;
    assert_eq!(
        key_states(&cluster).await,
        [(new.clone(), KeyState::Active)]
    );
    assert!(events_since(&cluster.log, from).contains(&("Normal".into(), "KeyRetired".into())));
    assert_eq!(rotation(&retired).phase, "Idle");

    assert_operator_requests_granted(&cluster.log);
}

#[tokio::test]
async fn a_pod_that_never_loads_the_new_key_stalls_the_rotation_and_nothing_signs_with_it() {
    let stoa = from_yaml(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555, generation: 1}
spec:
  image: ghcr.io/stoa-dev/stoa-api:0.1.0
  database: {urlSecretRef: {name: api-db}}
  auth: {keyRotation: {confirmTimeout: 0s}}
",
    );
    let cluster = Cluster::new(&stoa).await;
    cluster.reconcile().await;
    let old = key_states(&cluster).await[0].0.clone();
    cluster.ready_pod("api-1", "10.0.0.1").await;
    cluster.ready_pod("api-2", "10.0.0.2").await;
    cluster.annotate(ROTATE_ANNOTATION, "now").await;
    cluster.reconcile().await;
    let new = key_states(&cluster).await[1].0.clone();
    cluster.pods.set("api-1", &[&old, &new]);
    // api-2 does not answer at all.

    let from = cluster.mark();
    for _ in 0..3 {
        let stalled = cluster.reconcile().await;
        assert_eq!(rotation(&stalled).phase, "Stalled");
        assert_eq!(rotation(&stalled).waiting_for, ["api-2"]);
        assert_eq!(degraded_reason(&stalled), "RotationStalled");
        let message = &stalled
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap()
            .message;
        assert!(
            message.contains("api-2") && message.contains(&new),
            "{message}"
        );
    }
    assert_eq!(
        key_states(&cluster).await,
        [
            (old.clone(), KeyState::Active),
            (new.clone(), KeyState::Next)
        ],
        "never promoted"
    );
    let warnings: Vec<_> = events_since(&cluster.log, from)
        .into_iter()
        .filter(|(type_, reason)| type_ == "Warning" && reason == "RotationStalled")
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one Warning per stall, not per reconcile"
    );

    // When the pod catches up, the rotation resumes and the condition clears.
    cluster.pods.set("api-2", &[&old, &new]);
    let resumed = cluster.reconcile().await;
    assert_eq!(key_states(&cluster).await[1], (new, KeyState::Active));
    assert_eq!(degraded_reason(&resumed), "AsExpected");
}

#[tokio::test]
async fn a_key_set_changed_by_someone_else_meanwhile_is_not_overwritten() {
    let cluster = Cluster::new(&stoa("api")).await;
    cluster.reconcile().await;
    let old = key_states(&cluster).await[0].0.clone();
    cluster.ready_pod("api-1", "10.0.0.1").await;
    cluster.annotate(ROTATE_ANNOTATION, "now").await;
    cluster.reconcile().await;
    let new = key_states(&cluster).await[1].0.clone();
    cluster.pods.set("api-1", &[&old, &new]);

    // While the pods are read, someone else (a second operator replica, a human) writes
    // the Secret: the promotion decided on the older copy must not land.
    let writer = secrets(&cluster);
    *cluster.pods.on_read.lock().unwrap() = Some(Box::pin(async move {
        let mut secret = writer.get("api-jwt-keys").await.unwrap();
        secret
            .labels_mut()
            .insert("example.com/touched".into(), "yes".into());
        writer
            .replace("api-jwt-keys", &PostParams::default(), &secret)
            .await
            .unwrap();
    }));
    cluster.reconcile().await;
    let secret = secrets(&cluster).get("api-jwt-keys").await.unwrap();
    assert_eq!(
        secret
            .labels()
            .get("example.com/touched")
            .map(String::as_str),
        Some("yes"),
        "the other writer's change survives"
    );
    assert_eq!(
        key_states(&cluster).await[1].1,
        KeyState::Next,
        "not promoted on stale data"
    );

    // The next pass decides on fresh data and promotes.
    cluster.reconcile().await;
    assert_eq!(key_states(&cluster).await[1], (new, KeyState::Active));
}

#[tokio::test]
async fn a_rotation_interval_shorter_than_a_token_lifetime_is_refused() {
    let stoa = from_yaml(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555, generation: 1}
spec:
  image: ghcr.io/stoa-dev/stoa-api:0.1.0
  database: {urlSecretRef: {name: api-db}}
  auth: {accessTokenTtl: 1h, keyRotation: {every: 30m}}
",
    );
    let cluster = Cluster::new(&stoa).await;
    let api: Api<Stoa> = Api::namespaced(cluster.client.clone(), "shop");
    let current = api.get("api").await.unwrap();
    let err = reconcile(Arc::new(current), cluster.context.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("keyRotation.every"), "{err}");
    let reported = api.get("api").await.unwrap();
    assert_eq!(degraded_reason(&reported), "InvalidSpec");
}
