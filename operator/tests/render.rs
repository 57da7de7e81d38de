#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! `stoa-operator render` prints exactly what the reconciler applies: after a reconcile
//! against the in-memory API, every object it rendered for the stored Stoa compares as
//! unchanged with the object the reconciler wrote.
mod fixtures;

use std::sync::Arc;

use fixtures::{cluster, from_yaml};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use serde_json::Value;
use stoa_operator::controller::{Context, reconcile};
use stoa_operator::crd::Stoa;
use stoa_operator::metrics::Metrics;
use stoa_operator::render::{self, Comparison, Options};

async fn stored<K>(client: &kube::Client, name: &str) -> Value
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let object = Api::<K>::namespaced(client.clone(), "shop")
        .get(name)
        .await
        .unwrap();
    serde_json::to_value(object).unwrap()
}

#[tokio::test]
async fn render_prints_what_the_reconciler_applies() {
    let stoa = from_yaml(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555, generation: 1}
spec:
  image: ghcr.io/stoa-dev/stoa-api:0.1.0
  replicas: 3
  database: {urlSecretRef: {name: api-db}}
  migrations: {mode: Disabled}
  ingress: {host: api.example.com}
  networkPolicy: {enabled: true}
",
    );
    let (client, _log) = cluster::with(&stoa).await;
    let context = Arc::new(Context::new(client.clone(), Arc::new(Metrics::new())));
    reconcile(Arc::new(stoa), context).await.unwrap();
    let current: Stoa = Api::namespaced(client.clone(), "shop")
        .get("api")
        .await
        .unwrap();

    let (objects, _notes) = render::render(
        &current,
        &Options {
            service_monitors: false,
            operator_namespace: None,
        },
    )
    .unwrap();
    let existing = vec![
        stored::<ServiceAccount>(&client, "api").await,
        stored::<ConfigMap>(&client, "api-config").await,
        stored::<Deployment>(&client, "api").await,
        stored::<Deployment>(&client, "api-worker").await,
        stored::<Service>(&client, "api").await,
        stored::<Service>(&client, "api-worker").await,
        stored::<PodDisruptionBudget>(&client, "api").await,
        stored::<Ingress>(&client, "api").await,
        stored::<NetworkPolicy>(&client, "api").await,
    ];
    let compared: Vec<(String, Comparison)> = objects
        .iter()
        .map(|o| o.kind.clone())
        .zip(render::compare(&objects, &existing))
        .collect();
    assert_eq!(compared.len(), existing.len(), "{compared:?}");
    assert!(
        compared.iter().all(|(_, c)| *c == Comparison::Unchanged),
        "{compared:?}"
    );

    // A change to the spec shows up as a change to review.
    let mut edited = current.clone();
    edited.spec.replicas = 5;
    let (objects, _) = render::render(
        &edited,
        &Options {
            service_monitors: false,
            operator_namespace: None,
        },
    )
    .unwrap();
    let changed: Vec<String> = objects
        .iter()
        .zip(render::compare(&objects, &existing))
        .filter(|(_, c)| *c == Comparison::Changed)
        .map(|(o, _)| o.kind.clone())
        .collect();
    assert_eq!(changed, ["Deployment"]);
}

/// The kind suite names the objects a Stoa owns from this command's output
/// (`tests/e2e/owned.sh`): run that shell function here, on the suite's own Stoa, so a
/// renamed object or a changed render format breaks this test instead of the suite on a
/// cluster.
#[test]
fn the_kind_suite_finds_every_owned_object_in_the_render() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let manifest = "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: demo, namespace: stoa-demo}
spec:
  image: ghcr.io/stoa-dev/stoa-api:e2e
  replicas: 2
  database:
    urlSecretRef: {name: demo-db}
    adminSecretRef: {name: demo-db-admin}
  redis: {urlSecretRef: {name: demo-redis}}
  ingress: {host: stoa.localtest.me, className: nginx}
";
    let mut render = Command::new(env!("CARGO_BIN_EXE_stoa-operator"))
        .args(["render", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    render
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let rendered = render.wait_with_output().unwrap();
    assert!(rendered.status.success());
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut owned = Command::new("bash")
        .args(["-c", ". tests/e2e/owned.sh && owned_objects"])
        .current_dir(repo)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    owned
        .stdin
        .take()
        .unwrap()
        .write_all(&rendered.stdout)
        .unwrap();
    let out = owned.wait_with_output().unwrap();
    assert!(out.status.success());
    let objects: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    for expected in [
        "ServiceAccount/demo",
        "ConfigMap/demo-config",
        "Deployment/demo",
        "Deployment/demo-worker",
        "Service/demo",
        "Service/demo-worker",
        "PodDisruptionBudget/demo",
        "Ingress/demo",
    ] {
        assert!(
            objects.iter().any(|o| o == expected),
            "{expected} in {objects:?}"
        );
    }
    assert!(
        !objects.iter().any(|o| o.starts_with("Job/")),
        "Jobs are not owned state: {objects:?}"
    );
}
