#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Protocol 2 end to end: the real reconciler rotates the signing keys of real stoa-api
//! pods (processes on their own loopback addresses, their key Secret projected by a
//! stand-in kubelet with propagation delays) while clients keep signing in and calling
//! every pod. No request may fail, and a pod that never sees the new key must stall the
//! rotation rather than break tokens. See `harness` for what plays the cluster.

mod common;
mod harness;

use std::time::Duration;

use harness::Cluster;
use harness::load::Load;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use sqlx::PgPool;
use stoa_contract::keys::KeyState;
use stoa_operator::crd::Stoa;
use stoa_operator::key_rotation::{
    PROMOTED_AT_ANNOTATION, PROMOTION_CONFIRMED_AT_ANNOTATION, ROTATE_ANNOTATION,
};

fn phase(s: &Stoa) -> String {
    s.status
        .as_ref()
        .and_then(|st| st.key_rotation.as_ref())
        .map(|r| r.phase.clone())
        .unwrap_or_default()
}

fn kids(s: &Stoa) -> Vec<(String, String)> {
    s.status
        .as_ref()
        .unwrap()
        .keys
        .iter()
        .map(|k| (k.kid.clone(), k.state.clone()))
        .collect()
}

async fn request_rotation(cluster: &Cluster, value: &str) {
    let api: Api<Stoa> = cluster.api();
    let mut current = api.get("api").await.unwrap();
    current
        .annotations_mut()
        .insert(ROTATE_ANNOTATION.into(), value.into());
    api.replace("api", &PostParams::default(), &current)
        .await
        .unwrap();
}

/// Moves the recorded promotion back, as the passing of the access-token lifetime would.
/// Once the operator has seen every pod sign with the promoted key (the retire clock's
/// start), moves the promotion and that confirmation an hour back, as if the token
/// lifetime had passed since.
async fn age_promotion(cluster: &mut Cluster) {
    cluster
        .settle(
            "every pod signs with the promoted key (confirmed)",
            harness::SETTLE,
            |s| {
                s.status
                    .as_ref()
                    .and_then(|s| s.key_rotation.as_ref())
                    .is_some_and(|r| r.phase == "Retiring" && r.next_step_at.is_some())
            },
        )
        .await;
    let secrets: Api<Secret> = cluster.api();
    let mut secret = secrets.get("api-jwt-keys").await.unwrap();
    assert!(
        secret
            .annotations()
            .contains_key(PROMOTION_CONFIRMED_AT_ANNOTATION),
        "the confirmation is recorded on the key Secret"
    );
    let past = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_hours(1))
        .unwrap();
    for annotation in [PROMOTED_AT_ANNOTATION, PROMOTION_CONFIRMED_AT_ANNOTATION] {
        secret
            .annotations_mut()
            .insert(annotation.into(), past.to_string());
    }
    secrets
        .replace("api-jwt-keys", &PostParams::default(), &secret)
        .await
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_full_key_rotation_under_load_fails_no_request(pool: PgPool) {
    let mut cluster = harness::running(&pool, 3, "5m").await;
    let before = cluster.reconcile().await;
    let old = kids(&before)[0].0.clone();
    let load = Load::start(cluster.endpoints.clone(), 4, Duration::from_millis(300)).await;
    // A token signed before the rotation (by the user the first worker registered).
    let http = reqwest::Client::new();
    let login =
        serde_json::json!({"user": {"email": load.email(0), "password": "load-password-1"}});
    let signed_before: serde_json::Value = http
        .post(format!("{}/api/users/login", cluster.pods()[0].base_url()))
        .json(&login)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token_before = signed_before["user"]["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(1)).await;

    request_rotation(&cluster, "2026-11-25T10:00:00Z").await;
    let confirming = cluster
        .settle("next key added", harness::SETTLE, |s| {
            phase(s) == "Confirming"
        })
        .await;
    let new = kids(&confirming)
        .into_iter()
        .find(|(_, state)| state == "next")
        .unwrap()
        .0;
    // Nothing signs with the new key before every pod has it.
    for pod in cluster.pods() {
        let state = pod.state().await;
        assert!(
            state
                .keys
                .iter()
                .any(|k| k.kid == old && k.state == KeyState::Active),
            "{}: {state:?}",
            pod.name
        );
    }
    let promoted = cluster
        .settle("promoted after every pod loaded it", harness::SETTLE, |s| {
            phase(s) == "Retiring"
        })
        .await;
    assert!(kids(&promoted).contains(&(new.clone(), "active".into())));
    assert!(kids(&promoted).contains(&(old.clone(), "retiring".into())));

    // Every pod follows the promotion; clients then hold only tokens of the new key.
    for pod in cluster.pods() {
        let mut followed = false;
        for _ in 0..100 {
            let state = pod.state().await;
            if state
                .keys
                .iter()
                .any(|k| k.kid == new && k.state == KeyState::Active)
            {
                followed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(followed, "{} never signed with {new}", pod.name);
    }
    // Tokens signed before the rotation keep working on every pod until they expire.
    for pod in cluster.pods() {
        let me = http
            .get(format!("{}/api/user", pod.base_url()))
            .header("Authorization", format!("Token {token_before}"))
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 200, "{}", pod.name);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    age_promotion(&mut cluster).await;
    let retired = cluster
        .settle("retiring key removed", harness::SETTLE, |s| {
            phase(s) == "Idle"
        })
        .await;
    assert_eq!(kids(&retired), [(new.clone(), "active".to_owned())]);
    // Let every pod load the smaller key set while the load runs.
    for pod in cluster.pods() {
        for _ in 0..100 {
            if pod.state().await.keys.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(pod.state().await.keys.len(), 1, "{}", pod.name);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let tally = load.finish().await;
    eprintln!("key rotation under load: {tally:?}");
    assert!(tally.requests > 200, "{tally:?}");
    assert_eq!(tally.failures, 0, "{tally:?}");
    let steps = cluster.metrics.encode().unwrap();
    for step in ["started", "promoted", "retired"] {
        assert!(
            steps.contains(&format!(
                "stoa_operator_rotation_steps_total{{protocol=\"keys\",step=\"{step}\"}} 1"
            )),
            "{steps}"
        );
    }
    cluster.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_pod_that_never_sees_the_new_key_stalls_the_rotation_and_no_request_fails(pool: PgPool) {
    let mut cluster = harness::running(&pool, 2, "2s").await;
    let behind = cluster.pods()[1].name.clone();
    cluster.freeze_projection(&behind, true);
    let load = Load::start(cluster.endpoints.clone(), 2, Duration::from_millis(300)).await;

    request_rotation(&cluster, "now").await;
    let stalled = cluster
        .settle("stalled on the frozen pod", harness::SETTLE, |s| {
            phase(s) == "Stalled"
        })
        .await;
    let rotation = stalled
        .status
        .as_ref()
        .unwrap()
        .key_rotation
        .clone()
        .unwrap();
    assert_eq!(rotation.waiting_for, std::slice::from_ref(&behind));
    let degraded = stalled
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "RotationStalled")
    );
    assert!(degraded.message.contains(&behind), "{}", degraded.message);
    // A few more passes: still not promoted.
    for _ in 0..5 {
        let s = cluster.reconcile().await;
        assert!(
            kids(&s).iter().any(|(_, state)| state == "next"),
            "{:?}",
            kids(&s)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The node catches up: the rotation completes by itself.
    cluster.freeze_projection(&behind, false);
    cluster
        .settle(
            "promoted once the pod loaded the key",
            harness::SETTLE,
            |s| phase(s) == "Retiring",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.finish().await;
    eprintln!("stalled rotation under load: {tally:?}");
    assert!(tally.requests > 50, "{tally:?}");
    assert_eq!(tally.failures, 0, "{tally:?}");
    cluster.shutdown().await;
}
