#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The shipped Roles grant exactly what the operator uses, with no wildcard; start-up
//! fails with one clear line; readiness does not wait for the leader Lease.
mod fixtures;

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use serde_norway::Value;
use stoa_operator::startup::{self, Health, StartupError};

type Grant = (String, String, String);

fn grants_of(rules: &Value) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for rule in rules.as_sequence().unwrap() {
        // The narrow discovery rule (one named CRD) is not part of the operator's Role.
        if rule.get("resourceNames").is_some() {
            continue;
        }
        let list = |key: &str| -> Vec<String> {
            rule[key]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "wildcard in {rule:?}"
                    );
                    grants.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    grants
}

fn declared() -> BTreeSet<Grant> {
    stoa_operator::rbac::grants().into_iter().collect()
}

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)).unwrap()
}

#[test]
fn the_kustomize_roles_grant_exactly_what_the_operator_uses() {
    // The base's namespaced Role and the cluster-wide overlay's ClusterRole.
    for (path, kind) in [
        ("manifests/operator/rbac.yaml", "Role"),
        (
            "manifests/operator-cluster-wide/cluster-role.yaml",
            "ClusterRole",
        ),
    ] {
        let text = repo(path);
        let role = serde_norway::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).unwrap())
            .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == "stoa-operator")
            .unwrap_or_else(|| panic!("no {kind} stoa-operator in {path}"));
        assert_eq!(grants_of(&role["rules"]), declared(), "{path}");
    }
}

#[test]
fn the_helm_role_grants_exactly_what_the_operator_uses() {
    // The rules block of the chart's Role is plain YAML inside the template.
    let text = repo("helm/stoa-operator/templates/rbac.yaml");
    let start = text.find("rules:\n").unwrap();
    let end = start + text[start..].find("---").unwrap();
    let block: Value = serde_norway::from_str(&text[start..end]).unwrap();
    assert_eq!(grants_of(&block["rules"]), declared());
}

#[tokio::test]
async fn a_missing_crd_stops_start_up_with_one_clear_line() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // An API server that knows nothing of stoa.dev.
    let client = kube_fake_client::ClientBuilder::new()
        .build()
        .await
        .unwrap();
    let error = startup::preflight(&client, Some("shop")).await.unwrap_err();
    assert!(matches!(error, StartupError::MissingCrd), "{error:?}");
    let line = error.to_string();
    assert!(
        !line.contains('\n') && line.contains("stoas.stoa.dev"),
        "{line}"
    );
}

#[tokio::test]
async fn with_the_crd_installed_start_up_passes() {
    let s = fixtures::stoa("api");
    let (client, _log) = fixtures::cluster::with(&s).await;
    startup::preflight(&client, Some("shop")).await.unwrap();
}

#[tokio::test]
async fn readiness_does_not_wait_for_the_leader_lease() {
    let metrics = std::sync::Arc::new(stoa_operator::metrics::Metrics::new());
    let health = Health::new(metrics.clone());
    let app = startup::router(health.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let ready = |addr| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response.lines().next().unwrap().to_owned()
    };
    assert!(
        ready(addr).await.contains("503"),
        "not ready before the checks"
    );
    health.mark_started();
    // A standby: started, not leading.
    assert_eq!(metrics.leader.get(), 0);
    assert!(ready(addr).await.contains("200"));
}

/// A Lease held by `holder`, renewed `renewed_ago` seconds ago, for 15 s.
fn lease(holder: &str, renewed_ago: i64) -> k8s_openapi::api::coordination::v1::Lease {
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    serde_json::from_value(serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "stoa-operator", "namespace": "stoa-system"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
            "renewTime": Timestamp::now().checked_sub(SignedDuration::from_secs(renewed_ago)).unwrap().to_string()}
    }))
    .unwrap()
}

async fn leases_with(
    lease: k8s_openapi::api::coordination::v1::Lease,
) -> kube::Api<k8s_openapi::api::coordination::v1::Lease> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube_fake_client::ClientBuilder::new()
        .with_object(lease)
        .build()
        .await
        .unwrap();
    kube::Api::namespaced(client, "stoa-system")
}

#[tokio::test]
async fn a_leader_stops_when_its_lease_was_not_renewed_in_time() {
    use std::time::Duration;
    use stoa_operator::leader::{Lost, lost};
    // The manager still says "leader" (it only logs failed renewals), but the Lease is
    // past its duration: another replica may hold it now.
    let (_still_leading, leading) = tokio::sync::watch::channel(true);
    let leases = leases_with(lease("pod-a", 20)).await;
    let why = tokio::time::timeout(
        Duration::from_secs(5),
        lost(
            leading,
            leases,
            "stoa-operator",
            "pod-a",
            Duration::from_millis(50),
        ),
    )
    .await
    .expect("stops at the first check");
    assert!(
        matches!(why, Lost::NotRenewed(ref w) if w.contains("past its 15s duration")),
        "{why}"
    );

    // Another holder.
    let (_still_leading, leading) = tokio::sync::watch::channel(true);
    let leases = leases_with(lease("pod-b", 1)).await;
    let why = lost(
        leading,
        leases,
        "stoa-operator",
        "pod-a",
        Duration::from_millis(50),
    )
    .await;
    assert!(
        matches!(why, Lost::NotRenewed(ref w) if w.contains("pod-b")),
        "{why}"
    );
}

#[tokio::test]
async fn a_leader_stops_when_the_lease_manager_stops_or_hands_over() {
    use std::time::Duration;
    use stoa_operator::leader::{Lost, lost};
    let (manager, leading) = tokio::sync::watch::channel(true);
    let leases = leases_with(lease("pod-a", 1)).await;
    let watching = tokio::spawn(async move {
        lost(
            leading,
            leases,
            "stoa-operator",
            "pod-a",
            Duration::from_secs(60),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !watching.is_finished(),
        "a renewed lease keeps the leader leading"
    );
    // The manager's task ended (an error it returned, a panic): its sender is gone.
    drop(manager);
    assert_eq!(watching.await.unwrap(), Lost::ManagerStopped);

    let (manager, leading) = tokio::sync::watch::channel(true);
    let leases = leases_with(lease("pod-a", 1)).await;
    let watching = tokio::spawn(async move {
        lost(
            leading,
            leases,
            "stoa-operator",
            "pod-a",
            Duration::from_secs(60),
        )
        .await
    });
    manager.send(false).unwrap();
    assert_eq!(watching.await.unwrap(), Lost::Replaced);
}
