#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Protocol 3 through the real reconciler against an in-memory API: what it writes, with
//! which credential its Jobs run, and what it reports. `tests/tests/credential_rotation_
//! protocol.rs` runs the same protocol with real stoa-api processes and PostgreSQL.
mod fixtures;

use std::collections::BTreeMap;
use std::sync::Arc;

use fixtures::cluster::{self, Log, calls_since, events_since};
use fixtures::scripted::assert_operator_requests_granted;
use fixtures::{from_yaml, stoa};
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use stoa_operator::controller::{Context, reconcile};
use stoa_operator::crd::Stoa;
use stoa_operator::credential_rotation::FINALIZER;
use stoa_operator::metrics::Metrics;

const USER_URL: &str = "postgres://app:given@db.internal:5432/stoa?sslmode=require";

fn rotating() -> Stoa {
    from_yaml(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555, generation: 1}
spec:
  image: ghcr.io/stoa-dev/stoa-api:0.1.0
  database:
    urlSecretRef: {name: api-db}
    adminSecretRef: {name: api-db-admin, key: url}
",
    )
}

/// A Secret `name` in `shop` holding a database `url`.
async fn url_secret(client: &Client, name: &str, url: &str) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "url".to_owned(),
            ByteString(url.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

async fn with_url_secret(stoa: &Stoa) -> (Client, Log) {
    let (client, log) = cluster::with(stoa).await;
    url_secret(&client, "api-db", USER_URL).await;
    (client, log)
}

async fn pass(client: &Client, stoa: Option<Stoa>) -> Stoa {
    let api: Api<Stoa> = Api::namespaced(client.clone(), "shop");
    let current = match stoa {
        Some(s) => s,
        None => api.get("api").await.unwrap(),
    };
    let context = Arc::new(Context::new(client.clone(), Arc::new(Metrics::new())));
    reconcile(Arc::new(current), context).await.unwrap();
    api.get("api").await.unwrap()
}

async fn connection(client: &Client) -> Secret {
    Api::<Secret>::namespaced(client.clone(), "shop")
        .get("api-db-credentials")
        .await
        .unwrap()
}

fn url(secret: &Secret) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()["url"].0.clone()).unwrap()
}

async fn credential_jobs(client: &Client) -> Vec<Job> {
    Api::<Job>::namespaced(client.clone(), "shop")
        .list(&ListParams::default().labels("app.kubernetes.io/component=credentials"))
        .await
        .unwrap()
        .items
}

async fn complete(client: &Client, job: &str) {
    Api::<Job>::namespaced(client.clone(), "shop")
        .patch_status(
            job,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": [{
                "type": "Complete", "status": "True",
                "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}]}})),
        )
        .await
        .unwrap();
}

fn phase(s: &Stoa) -> String {
    s.status
        .as_ref()
        .unwrap()
        .credential_rotation
        .as_ref()
        .unwrap()
        .phase
        .clone()
}

#[tokio::test]
async fn without_an_admin_secret_rotation_is_off_and_the_status_says_so() {
    let (client, _log) = cluster::with(&stoa("api")).await;
    let s = pass(&client, None).await;
    let rotation = s.status.unwrap().credential_rotation.unwrap();
    assert_eq!(rotation.phase, "Disabled");
    assert!(rotation.message.unwrap().contains("adminSecretRef"));
    assert!(
        s.metadata.finalizers.is_none(),
        "nothing outside Kubernetes to clean up"
    );
}

#[tokio::test]
async fn the_first_rotation_publishes_a_managed_role_set_by_a_job_with_the_admin_credential() {
    let (client, log) = with_url_secret(&rotating()).await;
    let first = pass(&client, None).await;
    assert!(first.finalizers().iter().any(|f| f == FINALIZER));
    // The connection Secret starts from the user's URL; the rotation begins at once.
    let secret = connection(&client).await;
    assert_eq!(url(&secret), USER_URL);
    assert_eq!(
        secret
            .annotations()
            .get("stoa.dev/credential-pending")
            .map(String::as_str),
        Some("stoa_shop_api_a")
    );
    let password = String::from_utf8(secret.data.as_ref().unwrap()["password"].0.clone()).unwrap();
    assert!(stoa_contract::credential_rotation::valid_password(
        &password
    ));
    assert_eq!(phase(&first), "Publishing");

    let publishing = pass(&client, None).await;
    assert_eq!(phase(&publishing), "Publishing");
    let jobs = credential_jobs(&client).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.name_any(), "api-cred-1-publish");
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    assert_eq!(
        container.args.as_ref().unwrap()[..7],
        [
            "credentials",
            "publish",
            "--group",
            "stoa_shop_api",
            "--role",
            "stoa_shop_api_a",
            "--password-file"
        ]
    );
    let mounted: Vec<(String, String)> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| {
            let s = v.secret.as_ref().unwrap();
            (
                s.secret_name.clone().unwrap(),
                s.items.as_ref().unwrap()[0].key.clone(),
            )
        })
        .collect();
    assert_eq!(
        mounted,
        [
            ("api-db-admin".to_owned(), "url".to_owned()),
            ("api-db-credentials".to_owned(), "password".to_owned())
        ],
        "the admin credential and the new password, nothing else"
    );

    // The Job succeeded: the URL names the new role, with the user's host and options.
    complete(&client, "api-cred-1-publish").await;
    let from = log.lock().unwrap().len();
    let published = pass(&client, None).await;
    let secret = connection(&client).await;
    assert_eq!(
        url(&secret),
        format!("postgres://stoa_shop_api_a:{password}@db.internal:5432/stoa?sslmode=require")
    );
    assert!(!secret.data.as_ref().unwrap().contains_key("password"));
    assert!(events_since(&log, from).contains(&("Normal".into(), "CredentialPublished".into())));
    assert_eq!(
        published
            .status
            .as_ref()
            .unwrap()
            .credential_rotation
            .as_ref()
            .unwrap()
            .role
            .as_deref(),
        Some("stoa_shop_api_a")
    );
    // The user's own role is not the operator's: nothing expires it.
    let settled = pass(&client, None).await;
    assert_eq!(phase(&settled), "Idle");
    assert_eq!(credential_jobs(&client).await.len(), 1);

    assert_operator_requests_granted(&log);
}

#[tokio::test]
async fn deletion_drops_the_roles_with_a_job_that_outlives_the_stoa_then_lets_go() {
    let (client, _log) = with_url_secret(&rotating()).await;
    admin_secret(&client).await;
    pass(&client, None).await;
    let mut deleting = Api::<Stoa>::namespaced(client.clone(), "shop")
        .get("api")
        .await
        .unwrap();
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    pass(&client, Some(deleting.clone())).await;
    let job = Api::<Job>::namespaced(client.clone(), "shop")
        .get("api-cred-drop")
        .await
        .unwrap();
    assert!(
        job.metadata.owner_references.is_none(),
        "garbage collection must not take it"
    );
    assert_eq!(
        job.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .as_ref()
            .unwrap()[..4],
        ["credentials", "drop", "--group", "stoa_shop_api"]
    );
    let still = pass(&client, Some(deleting.clone())).await;
    assert!(
        still.finalizers().iter().any(|f| f == FINALIZER),
        "kept while the Job runs"
    );
    complete(&client, "api-cred-drop").await;
    let mut deleting = still;
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let released = pass(&client, Some(deleting)).await;
    assert!(!released.finalizers().iter().any(|f| f == FINALIZER));
}

/// The admin credential the drop Job runs with (the user's Secret, not owned).
async fn admin_secret(client: &Client) {
    url_secret(
        client,
        "api-db-admin",
        "postgres://admin:x@db.internal:5432/stoa",
    )
    .await;
}

/// One reconcile of the stored Stoa with `metrics`; `None` once the Stoa is gone.
async fn pass_with(client: &Client, metrics: &Arc<Metrics>) -> Option<Stoa> {
    let api: Api<Stoa> = Api::namespaced(client.clone(), "shop");
    let current = api.get_opt("api").await.unwrap()?;
    let context = Arc::new(Context::new(client.clone(), metrics.clone()));
    reconcile(Arc::new(current), context).await.unwrap();
    api.get_opt("api").await.unwrap()
}

fn role_drops(metrics: &Metrics, outcome: &str) -> u64 {
    let prefix = format!("stoa_operator_database_role_drops_total{{outcome=\"{outcome}\"}} ");
    metrics
        .encode()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.parse().unwrap())
}

/// `kubectl delete stoa api` (with the given propagation), as the API server answers it:
/// the Stoa stays, marked for deletion, while its finalizers remain.
async fn delete(client: &Client, params: &kube::api::DeleteParams) {
    Api::<Stoa>::namespaced(client.clone(), "shop")
        .delete("api", params)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_foreground_deletion_drops_the_roles_with_a_job_whose_pod_can_start() {
    let (client, _log) = with_url_secret(&rotating()).await;
    admin_secret(&client).await;
    let metrics = Arc::new(Metrics::new());
    pass_with(&client, &metrics).await;
    // Foreground: the garbage collector removes what the Stoa owns first, its
    // ServiceAccount included, while the finalizer holds the Stoa.
    delete(&client, &kube::api::DeleteParams::foreground()).await;
    let deleting = pass_with(&client, &metrics).await.unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let job = Api::<Job>::namespaced(client.clone(), "shop")
        .get("api-cred-drop")
        .await
        .unwrap();
    let account = job
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .service_account_name;
    if let Some(account) = account {
        let present =
            Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), "shop")
                .get_opt(&account)
                .await
                .unwrap();
        assert!(
            present.is_some(),
            "the drop Job's pod names ServiceAccount {account}, which garbage collection removed: \
             it would never be admitted"
        );
    }
    complete(&client, "api-cred-drop").await;
    assert!(
        pass_with(&client, &metrics).await.is_none(),
        "the Stoa is gone once its roles are"
    );
    assert_eq!(role_drops(&metrics, "dropped"), 1);
}

#[tokio::test]
async fn in_a_namespace_being_deleted_the_stoa_goes_and_the_roles_are_reported_left() {
    let (client, _log, rules) = cluster::with_rules(&rotating()).await;
    url_secret(&client, "api-db", USER_URL).await;
    admin_secret(&client).await;
    let metrics = Arc::new(Metrics::new());
    pass_with(&client, &metrics).await;
    // `kubectl delete namespace shop`: the namespace controller deletes every object in
    // it, and admission refuses anything new there, the drop Job included.
    rules.terminate_namespace("shop");
    delete(&client, &kube::api::DeleteParams::background()).await;
    assert!(
        pass_with(&client, &metrics).await.is_none(),
        "the finalizer must not hold the namespace in Terminating"
    );
    assert_eq!(role_drops(&metrics, "abandoned"), 1);
}

#[tokio::test]
async fn without_its_admin_secret_the_stoa_goes_and_says_the_roles_were_left() {
    let (client, log) = with_url_secret(&rotating()).await;
    let metrics = Arc::new(Metrics::new());
    pass_with(&client, &metrics).await;
    let from = log.lock().unwrap().len();
    delete(&client, &kube::api::DeleteParams::background()).await;
    assert!(pass_with(&client, &metrics).await.is_none());
    assert!(
        events_since(&log, from).contains(&("Warning".into(), "DatabaseRolesLeft".into())),
        "{:?}",
        events_since(&log, from)
    );
    assert!(
        !calls_since(&log, from)
            .iter()
            .any(|c| c.method == "POST" && c.path.ends_with("/jobs")),
        "no Job that could never run"
    );
    assert_eq!(role_drops(&metrics, "abandoned"), 1);
}

/// The newest drop Job failed long enough ago for its backoff to have passed.
async fn fail(client: &Client, job: &str) {
    let long_ago = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_hours(2))
        .unwrap();
    Api::<Job>::namespaced(client.clone(), "shop")
        .patch_status(
            job,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": [{
                "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "connection refused",
                "lastTransitionTime": long_ago.to_string()}]}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_database_that_refuses_every_drop_lets_the_stoa_go_after_the_last_attempt() {
    let (client, _log) = with_url_secret(&rotating()).await;
    admin_secret(&client).await;
    let metrics = Arc::new(Metrics::new());
    pass_with(&client, &metrics).await;
    delete(&client, &kube::api::DeleteParams::background()).await;
    for attempt in 1..=5 {
        assert!(
            pass_with(&client, &metrics).await.is_some(),
            "attempt {attempt}"
        );
        let name = if attempt == 1 {
            "api-cred-drop".to_owned()
        } else {
            format!("api-cred-drop-{attempt}")
        };
        fail(&client, &name).await;
    }
    assert!(pass_with(&client, &metrics).await.is_none());
    assert_eq!(role_drops(&metrics, "abandoned"), 1);
}

#[tokio::test]
async fn the_skip_annotation_lets_the_stoa_go_without_dropping_the_roles() {
    let (client, log) = with_url_secret(&rotating()).await;
    admin_secret(&client).await;
    let metrics = Arc::new(Metrics::new());
    pass_with(&client, &metrics).await;
    let api: Api<Stoa> = Api::namespaced(client.clone(), "shop");
    api.patch(
        "api",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {
            "stoa.dev/skip-database-role-drop": "true"}}})),
    )
    .await
    .unwrap();
    let from = log.lock().unwrap().len();
    delete(&client, &kube::api::DeleteParams::background()).await;
    assert!(pass_with(&client, &metrics).await.is_none());
    assert!(
        !calls_since(&log, from)
            .iter()
            .any(|c| c.method == "POST" && c.path.ends_with("/jobs"))
    );
    assert_eq!(role_drops(&metrics, "skipped"), 1);
}

#[tokio::test]
async fn the_longest_name_a_stoa_may_have_still_gives_jobs_the_api_server_accepts() {
    let name = format!("payments-{}", "x".repeat(47));
    assert_eq!(name.len(), stoa_operator::resources::STOA_NAME_LIMIT);
    let stoa = from_yaml(&format!(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {{name: {name}, namespace: shop, uid: 11111111-2222-3333-4444-555555555555, generation: 1}}
spec:
  image: ghcr.io/stoa-dev/stoa-api:0.1.0
  database:
    urlSecretRef: {{name: api-db}}
    adminSecretRef: {{name: api-db-admin, key: url}}
"
    ));
    let (client, _log) = with_url_secret(&stoa).await;
    admin_secret(&client).await;
    let api: Api<Stoa> = Api::namespaced(client.clone(), "shop");
    let context = Arc::new(Context::new(client.clone(), Arc::new(Metrics::new())));
    // The strict API refuses a Job name over 63 characters (it is its pods' job-name
    // label), so each pass succeeding is the check; then the names themselves.
    for _ in 0..3 {
        let current = api.get(&name).await.unwrap();
        reconcile(Arc::new(current), context.clone()).await.unwrap();
    }
    let jobs = Api::<Job>::namespaced(client.clone(), "shop")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(!jobs.items.is_empty());
    for job in &jobs.items {
        let job_name = job.name_any();
        assert!(job_name.len() <= 63, "{job_name}");
        assert!(job_name.starts_with("payments-"), "{job_name}");
    }
    // Two long names that share their first 50 characters get different Job names.
    let other = format!("payments-{}y", "x".repeat(46));
    let job_of =
        |stoa_name: &str| stoa_operator::resources::drop_job_name(&fixtures::stoa(stoa_name), 2);
    assert_ne!(job_of(&name), job_of(&other));
}
