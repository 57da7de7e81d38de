#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The reconcile loop against an in-memory Kubernetes API (kube-fake-client), step by step,
//! with every request recorded: objects, the migration protocol, the order of calls where
//! the API server's semantics depend on it, and the cost of an unchanged reconcile.
mod fixtures;

use std::sync::Arc;

use fixtures::cluster::{self, Call, Log, calls_since, events_since};
use fixtures::{container, job_container, stoa, with_spec};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use stoa_contract::migration::{MigrationReport, Outcome, Phase};
use stoa_operator::controller::{Context, HANDOVER_MANAGER, reconcile};
use stoa_operator::crd::{AutoscalingMode, IngressSpec, MigrationMode, Stoa};
use stoa_operator::metrics::Metrics;
use stoa_operator::resources;

const V1: &str = "ghcr.io/stoa-dev/stoa-api:0.1.0";
const V2: &str = "ghcr.io/stoa-dev/stoa-api:0.2.0";

fn ctx(client: &Client) -> Arc<Context> {
    Arc::new(Context::new(client.clone(), Arc::new(Metrics::new())))
}

/// Runs one reconcile of the stored object, as the controller would after a watch event.
async fn reconcile_stored(client: &Client, name: &str) -> Stoa {
    let api: Api<Stoa> = Api::namespaced(client.clone(), "shop");
    let current = api.get(name).await.unwrap();
    reconcile(Arc::new(current), ctx(client)).await.unwrap();
    api.get(name).await.unwrap()
}

/// Replaces the stored spec (what `kubectl apply` does), bumping the generation.
async fn update_spec(client: &Client, name: &str, change: impl FnOnce(&mut Stoa)) {
    let api: Api<Stoa> = Api::namespaced(client.clone(), "shop");
    let mut current = api.get(name).await.unwrap();
    change(&mut current);
    current.metadata.generation = current.metadata.generation.map(|g| g + 1);
    api.replace(name, &PostParams::default(), &current)
        .await
        .unwrap();
}

fn image(d: &Deployment) -> String {
    container(d).image.clone().unwrap()
}

fn condition<'a>(s: &'a Stoa, type_: &str) -> &'a Condition {
    s.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", s.status))
}

async fn deployment(client: &Client) -> Option<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), "shop")
        .get_opt("api")
        .await
        .unwrap()
}

async fn jobs(client: &Client) -> Vec<Job> {
    let mut jobs = Api::<Job>::namespaced(client.clone(), "shop")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.clone());
    jobs
}

async fn job_for(client: &Client, image: &str, step: &str) -> Job {
    let found: Vec<Job> = jobs(client)
        .await
        .into_iter()
        .filter(|j| {
            j.annotations()
                .get(resources::IMAGE_ANNOTATION)
                .map(String::as_str)
                == Some(image)
                && j.labels()
                    .get(resources::MIGRATION_STEP_LABEL)
                    .map(String::as_str)
                    == Some(step)
        })
        .collect();
    found
        .into_iter()
        .max_by_key(|j| {
            j.annotations()[resources::ATTEMPT_ANNOTATION]
                .parse::<i32>()
                .unwrap()
        })
        .unwrap_or_else(|| panic!("no {step} Job for {image}"))
}

fn report(outcome: Outcome, schema: i64, unknown_contract: Vec<i64>) -> MigrationReport {
    MigrationReport {
        outcome,
        phase: Phase::Expand,
        schema_version: Some(schema),
        required_version: schema,
        applied: vec![],
        unknown_contract,
        unknown_expand: vec![],
        // A release with a contract step, so the contract Job is part of the flow.
        pending_contract: vec![schema + 1],
        message: match outcome {
            Outcome::Applied => format!("schema at {schema}"),
            _ => "the database holds contract migration(s) this binary does not know".into(),
        },
    }
}

/// Plays the Job controller and the kubelet: the Job's pod ends with `report` as its
/// termination message, and the Job gets its final condition.
async fn finish_job(
    client: &Client,
    job: &Job,
    condition: (&str, &str),
    report: &MigrationReport,
    ago_seconds: i64,
) {
    let name = job.name_any();
    let mut labels = job.labels().clone();
    labels.insert(resources::MIGRATION_JOB_LABEL.into(), name.clone());
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{name}-pod"), "namespace": "shop", "labels": labels},
        "spec": {"containers": [{"name": "migrate", "image": "x"}]},
        "status": {"containerStatuses": [{"name": "migrate", "image": "x", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 0, "message": report.to_line()}}}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let at = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(ago_seconds))
        .unwrap();
    let (type_, reason) = condition;
    Api::<Job>::namespaced(client.clone(), "shop")
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": [{
                "type": type_, "status": "True", "reason": reason,
                "message": format!("{type_}: {reason}"),
                "lastTransitionTime": at.to_string()}]}})),
        )
        .await
        .unwrap();
}

async fn succeed(client: &Client, image: &str, step: &str, schema: i64) {
    let job = job_for(client, image, step).await;
    finish_job(
        client,
        &job,
        ("Complete", "Completed"),
        &report(Outcome::Applied, schema, vec![]),
        0,
    )
    .await;
}

/// Plays the Deployment controller: every replica updated and ready.
async fn roll_out(client: &Client) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let d = deployments.get("api").await.unwrap();
    let replicas = d.spec.as_ref().unwrap().replicas.unwrap_or(1);
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        ready_replicas: Some(replicas),
        updated_replicas: Some(replicas),
        available_replicas: Some(replicas),
        ..DeploymentStatus::default()
    };
    deployments
        .patch_status(
            "api",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .unwrap();
}

/// A pod of `component` that still runs `image` (of an older revision, or terminating);
/// returns the pods API to delete it with.
async fn old_pod(
    client: &Client,
    name: &str,
    component: resources::Component,
    image: &str,
) -> Api<Pod> {
    let labels = resources::component_selector_labels(&stoa("api"), component);
    let pod: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"containers": [{"name": component.label(), "image": image}]}}))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods
}

/// Contract migration Jobs created for `image`.
async fn contract_jobs(client: &Client, image: &str) -> usize {
    jobs(client)
        .await
        .iter()
        .filter(|j| {
            j.labels()[resources::MIGRATION_STEP_LABEL] == "contract"
                && j.annotations()[resources::IMAGE_ANNOTATION] == image
        })
        .count()
}

/// A Stoa whose first migration succeeded and whose pods run `V1`, contract step done.
async fn converged() -> (Client, Log) {
    let (client, log, _) = converged_from(&stoa("api")).await;
    (client, log)
}

/// The same from any Stoa named `api`, with the strict API's switches.
async fn converged_from(stoa: &Stoa) -> (Client, Log, Arc<fixtures::strict::Rules>) {
    let (client, log, rules) = cluster::with_rules(stoa).await;
    reconcile_stored(&client, "api").await;
    succeed(&client, V1, "expand", 2).await;
    reconcile_stored(&client, "api").await;
    roll_out(&client).await;
    reconcile_stored(&client, "api").await;
    succeed(&client, V1, "contract", 2).await;
    let after = reconcile_stored(&client, "api").await;
    assert_eq!(
        after.status.as_ref().unwrap().contracted_image.as_deref(),
        Some(V1)
    );
    roll_out(&client).await;
    reconcile_stored(&client, "api").await;
    (client, log, rules)
}

fn mark(log: &Log) -> usize {
    log.lock().unwrap().len()
}

#[tokio::test]
async fn a_new_stoa_migrates_before_any_pod_runs() {
    let (client, log) = cluster::with(&stoa("api")).await;
    let after = reconcile_stored(&client, "api").await;

    // The Job comes first; no pod exists until it succeeded.
    assert!(deployment(&client).await.is_none());
    let job = job_for(&client, V1, "expand").await;
    assert!(
        job.name_any().starts_with("api-migrate-"),
        "{}",
        job.name_any()
    );
    let args = job_container(&job).args.clone().unwrap();
    assert_eq!(&args[..3], ["migrate", "--phase", "expand"]);
    assert_eq!(condition(&after, "Progressing").reason, "Migrating");
    assert_eq!(condition(&after, "Progressing").status, "True");
    assert_eq!(condition(&after, "Ready").reason, "Migrating");
    let status = after.status.as_ref().unwrap();
    assert_eq!(status.approved_image, None);
    assert_eq!(status.migration.as_ref().unwrap().state, "Running");
    assert!(events_since(&log, 0).contains(&("Normal".into(), "MigrationStarted".into())));

    // Every other object is in place, owned by the Stoa.
    let owned =
        |refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
            refs.is_some_and(|r| {
                r.iter()
                    .any(|o| o.kind == "Stoa" && o.name == "api" && o.controller == Some(true))
            })
        };
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), "shop")
        .get("api")
        .await
        .unwrap();
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "shop")
        .get("api-config")
        .await
        .unwrap();
    let secret = Api::<Secret>::namespaced(client.clone(), "shop")
        .get("api-jwt-keys")
        .await
        .unwrap();
    let service = Api::<Service>::namespaced(client.clone(), "shop")
        .get("api")
        .await
        .unwrap();
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), "shop")
        .get("api")
        .await
        .unwrap();
    for refs in [
        sa.metadata.owner_references.as_ref(),
        cm.metadata.owner_references.as_ref(),
        secret.metadata.owner_references.as_ref(),
        service.metadata.owner_references.as_ref(),
        pdb.metadata.owner_references.as_ref(),
    ] {
        assert!(owned(refs), "missing owner reference: {refs:?}");
    }

    let from = mark(&log);
    succeed(&client, V1, "expand", 20261124000002).await;
    let after = reconcile_stored(&client, "api").await;
    let d = deployment(&client)
        .await
        .expect("the Deployment follows the successful migration");
    assert_eq!(image(&d), V1);
    assert!(owned(d.metadata.owner_references.as_ref()));
    let status = after.status.as_ref().unwrap();
    assert_eq!(status.approved_image.as_deref(), Some(V1));
    assert_eq!(status.schema_version, Some(20261124000002));
    assert_eq!(status.keys.len(), 1);
    assert_eq!(condition(&after, "Progressing").reason, "RollingOut");
    let events = events_since(&log, from);
    assert!(
        events.contains(&("Normal".into(), "MigrationSucceeded".into())),
        "{events:?}"
    );
    assert!(
        events.contains(&("Normal".into(), "DeploymentCreated".into())),
        "{events:?}"
    );

    roll_out(&client).await;
    let after = reconcile_stored(&client, "api").await;
    assert_eq!(
        condition(&after, "Ready").status,
        "True",
        "{:?}",
        after.status
    );
}

#[tokio::test]
async fn a_new_image_reaches_the_pods_only_after_its_migration_and_scaling_continues_meanwhile() {
    let (client, _log) = converged().await;
    update_spec(&client, "api", |s| s.spec.image = V2.into()).await;
    let after = reconcile_stored(&client, "api").await;
    assert_eq!(
        image(&deployment(&client).await.unwrap()),
        V1,
        "the Deployment waits"
    );
    let job = job_for(&client, V2, "expand").await;
    assert_eq!(job_container(&job).image.as_deref(), Some(V2));
    assert_eq!(condition(&after, "Progressing").reason, "Migrating");
    assert!(condition(&after, "Progressing").message.contains(V1));

    // A scale event during the migration reaches the Deployment, on the approved image.
    update_spec(&client, "api", |s| s.spec.replicas = 5).await;
    reconcile_stored(&client, "api").await;
    let d = deployment(&client).await.unwrap();
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(5));
    assert_eq!(image(&d), V1);
    assert_eq!(
        jobs(&client)
            .await
            .iter()
            .filter(|j| j.annotations()[resources::IMAGE_ANNOTATION] == V2)
            .count(),
        1,
        "no duplicate Job"
    );

    succeed(&client, V2, "expand", 3).await;
    let after = reconcile_stored(&client, "api").await;
    assert_eq!(image(&deployment(&client).await.unwrap()), V2);
    assert_eq!(
        after.status.as_ref().unwrap().approved_image.as_deref(),
        Some(V2)
    );
    assert_eq!(after.status.as_ref().unwrap().schema_version, Some(3));
}

#[tokio::test]
async fn a_failed_migration_keeps_the_old_image_warns_once_and_retries_with_backoff() {
    let (client, log) = converged().await;
    update_spec(&client, "api", |s| s.spec.image = V2.into()).await;
    reconcile_stored(&client, "api").await;
    let from = mark(&log);
    let first = job_for(&client, V2, "expand").await;
    let mut failed = report(Outcome::Failed, 2, vec![]);
    failed.message = "migration 3 (add bio) failed: column \"bio\" already exists".into();
    finish_job(
        &client,
        &first,
        ("Failed", "BackoffLimitExceeded"),
        &failed,
        0,
    )
    .await;

    let after = reconcile_stored(&client, "api").await;
    assert_eq!(image(&deployment(&client).await.unwrap()), V1);
    let degraded = condition(&after, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "MigrationFailed")
    );
    assert!(
        degraded.message.contains(&first.name_any()),
        "names the Job: {}",
        degraded.message
    );
    assert!(
        degraded.message.contains("already exists"),
        "{}",
        degraded.message
    );
    assert_eq!(
        after
            .status
            .as_ref()
            .unwrap()
            .migration
            .as_ref()
            .unwrap()
            .state,
        "Failed"
    );
    // Within the backoff: no new attempt, and a second pass records nothing new.
    reconcile_stored(&client, "api").await;
    assert_eq!(
        jobs(&client).await.len(),
        3,
        "expand+contract of V1 and the failed one"
    );
    let warnings: Vec<_> = events_since(&log, from)
        .into_iter()
        .filter(|(t, _)| t == "Warning")
        .collect();
    assert_eq!(
        warnings,
        [("Warning".to_owned(), "MigrationFailed".to_owned())]
    );

    // After the backoff, a new attempt under a new name; the failed Job stays for its logs.
    Api::<Job>::namespaced(client.clone(), "shop")
        .patch_status(&first.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"status": {"conditions": [{
            "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "x",
            "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(31)).unwrap().to_string()}]}})))
        .await
        .unwrap();
    let after = reconcile_stored(&client, "api").await;
    let retry = job_for(&client, V2, "expand").await;
    assert_eq!(retry.name_any(), format!("{}-2", first.name_any()));
    assert!(
        Api::<Job>::namespaced(client.clone(), "shop")
            .get_opt(&first.name_any())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        condition(&after, "Degraded").status,
        "True",
        "still degraded while retrying"
    );
    assert_eq!(image(&deployment(&client).await.unwrap()), V1);
    let warnings = events_since(&log, from)
        .into_iter()
        .filter(|(t, _)| t == "Warning")
        .count();
    assert_eq!(
        warnings, 1,
        "one Warning for the failure, not one per retry"
    );

    succeed(&client, V2, "expand", 3).await;
    let after = reconcile_stored(&client, "api").await;
    assert_eq!(image(&deployment(&client).await.unwrap()), V2);
    assert_eq!(condition(&after, "Degraded").status, "False");
}

#[tokio::test]
async fn a_rollback_past_a_contraction_is_blocked_until_approved() {
    let (client, log) = cluster::with(&with_spec(stoa("api"), |s| s.image = V2.into())).await;
    reconcile_stored(&client, "api").await;
    succeed(&client, V2, "expand", 3).await;
    reconcile_stored(&client, "api").await;
    roll_out(&client).await;
    reconcile_stored(&client, "api").await;
    succeed(&client, V2, "contract", 4).await;
    reconcile_stored(&client, "api").await;

    // Roll back to V1, whose binary does not know V2's contract step 4.
    update_spec(&client, "api", |s| s.spec.image = V1.into()).await;
    reconcile_stored(&client, "api").await;
    let attempt = job_for(&client, V1, "expand").await;
    finish_job(
        &client,
        &attempt,
        ("Failed", "PodFailurePolicy"),
        &report(Outcome::NewerContract, 4, vec![4]),
        600,
    )
    .await;
    let from = mark(&log);
    let after = reconcile_stored(&client, "api").await;
    assert_eq!(
        image(&deployment(&client).await.unwrap()),
        V2,
        "the Deployment keeps its image"
    );
    let blocked = condition(&after, "RollbackBlocked");
    assert_eq!(blocked.status, "True");
    assert!(
        blocked.message.contains("[4]") && blocked.message.contains("allowRollbackTo"),
        "{}",
        blocked.message
    );
    assert_eq!(condition(&after, "Progressing").reason, "RollbackBlocked");
    // Refusals are not retried, however long ago they happened.
    reconcile_stored(&client, "api").await;
    assert_eq!(
        jobs(&client)
            .await
            .iter()
            .filter(|j| j.annotations()[resources::IMAGE_ANNOTATION] == V1)
            .count(),
        1
    );
    assert_eq!(
        events_since(&log, from),
        [("Warning".to_owned(), "RollbackBlocked".to_owned())]
    );

    // Approval: a new Job (another name) that runs with --allow-newer-contract.
    update_spec(&client, "api", |s| {
        s.spec.migrations.allow_rollback_to = Some(V1.into())
    })
    .await;
    reconcile_stored(&client, "api").await;
    // Both are first attempts of their own kind: the approval Job is the other one.
    let v1_jobs: Vec<Job> = jobs(&client)
        .await
        .into_iter()
        .filter(|j| j.annotations()[resources::IMAGE_ANNOTATION] == V1)
        .collect();
    assert_eq!(
        v1_jobs.len(),
        2,
        "the refused Job is kept, the approval runs anew"
    );
    let approved = v1_jobs
        .into_iter()
        .find(|j| j.name_any() != attempt.name_any())
        .unwrap();
    let args = job_container(&approved).args.clone().unwrap();
    assert!(
        args.contains(&"--allow-newer-contract".to_owned()),
        "{args:?}"
    );
    finish_job(
        &client,
        &approved,
        ("Complete", "Completed"),
        &report(Outcome::Applied, 4, vec![]),
        0,
    )
    .await;
    let after = reconcile_stored(&client, "api").await;
    assert_eq!(image(&deployment(&client).await.unwrap()), V1);
    assert_eq!(condition(&after, "RollbackBlocked").status, "False");
}

#[tokio::test]
async fn contract_steps_run_only_once_no_pod_of_the_old_revision_remains() {
    let (client, _log) = converged().await;
    update_spec(&client, "api", |s| s.spec.image = V2.into()).await;
    reconcile_stored(&client, "api").await;
    succeed(&client, V2, "expand", 3).await;
    reconcile_stored(&client, "api").await;
    // An old pod still runs V1 (or terminates): no contract Job yet.
    let pods = old_pod(&client, "api-old", resources::Component::Api, V1).await;
    roll_out(&client).await;
    reconcile_stored(&client, "api").await;
    assert_eq!(contract_jobs(&client, V2).await, 0);

    pods.delete("api-old", &DeleteParams::default())
        .await
        .unwrap();
    let after = reconcile_stored(&client, "api").await;
    assert_eq!(contract_jobs(&client, V2).await, 1);
    let job = job_for(&client, V2, "contract").await;
    let args = job_container(&job).args.clone().unwrap();
    assert_eq!(&args[..3], ["migrate", "--phase", "all"]);
    assert_eq!(condition(&after, "Progressing").reason, "Contracting");
    succeed(&client, V2, "contract", 4).await;
    let after = reconcile_stored(&client, "api").await;
    let status = after.status.as_ref().unwrap();
    assert_eq!(status.contracted_image.as_deref(), Some(V2));
    assert_eq!(status.schema_version, Some(4));
}

#[tokio::test]
async fn a_release_without_contract_steps_needs_no_contract_job() {
    let (client, _log) = converged().await;
    update_spec(&client, "api", |s| s.spec.image = V2.into()).await;
    reconcile_stored(&client, "api").await;
    let job = job_for(&client, V2, "expand").await;
    let mut applied = report(Outcome::Applied, 3, vec![]);
    applied.pending_contract.clear();
    finish_job(&client, &job, ("Complete", "Completed"), &applied, 0).await;
    let after = reconcile_stored(&client, "api").await;
    roll_out(&client).await;
    reconcile_stored(&client, "api").await;
    let status = after.status.as_ref().unwrap();
    assert_eq!(status.contracted_image.as_deref(), Some(V2));
    assert!(
        jobs(&client)
            .await
            .iter()
            .all(|j| j.labels()[resources::MIGRATION_STEP_LABEL] == "expand"
                || j.annotations()[resources::IMAGE_ANNOTATION] == V1)
    );
}

#[tokio::test]
async fn with_migrations_disabled_the_deployment_follows_the_image_at_once() {
    let (client, _log) = cluster::with(&with_spec(stoa("api"), |s| {
        s.migrations.mode = MigrationMode::Disabled
    }))
    .await;
    reconcile_stored(&client, "api").await;
    assert_eq!(image(&deployment(&client).await.unwrap()), V1);
    assert!(jobs(&client).await.is_empty());
}

#[tokio::test]
async fn an_unchanged_stoa_costs_no_writes() {
    let (client, log) = converged().await;
    let from = mark(&log);
    reconcile_stored(&client, "api").await;
    let calls = calls_since(&log, from);
    let writes: Vec<_> = calls.iter().filter(|c| c.is_write()).collect();
    // The reconcile's own requests, without the test's reads of the Stoa before and after.
    let calls = &calls[1..calls.len() - 1];
    let reads = calls.iter().filter(|c| !c.is_write()).count();
    println!(
        "unchanged reconcile: {} requests, {reads} reads, {} writes",
        reads + writes.len(),
        writes.len()
    );
    for call in calls {
        println!("  {} {}", call.method, call.path);
    }
    assert!(writes.is_empty(), "{writes:#?}");

    // Drift is corrected: an edited field is written back.
    Api::<Service>::namespaced(client.clone(), "shop")
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"type": "NodePort"}})),
        )
        .await
        .unwrap();
    let from = mark(&log);
    reconcile_stored(&client, "api").await;
    let writes: Vec<_> = calls_since(&log, from)
        .into_iter()
        .filter(Call::is_write)
        .collect();
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert!(writes[0].path.ends_with("/services/api"));
}

#[tokio::test]
async fn switching_to_an_autoscaler_hands_replicas_over_before_letting_go() {
    let (client, log) = converged().await;
    update_spec(&client, "api", |s| s.spec.replicas = 3).await;
    reconcile_stored(&client, "api").await;
    let from = mark(&log);
    update_spec(&client, "api", |s| {
        s.spec.autoscaling.mode = AutoscalingMode::Hpa;
        s.spec.autoscaling.min_replicas = 2;
    })
    .await;
    reconcile_stored(&client, "api").await;
    let writes: Vec<Call> = calls_since(&log, from)
        .into_iter()
        .filter(|c| c.method == "PATCH" && !c.path.contains("/stoas/"))
        .collect();
    let position = |pred: &dyn Fn(&Call) -> bool| {
        writes
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("{writes:#?}"))
    };
    let hpa = position(&|c| c.path.contains("horizontalpodautoscalers"));
    let handover = position(&|c| {
        c.path.ends_with("/deployments/api")
            && c.field_manager().as_deref() == Some(HANDOVER_MANAGER)
    });
    let release = position(&|c| {
        c.path.ends_with("/deployments/api")
            && c.field_manager().as_deref() == Some("stoa-operator")
    });
    assert!(
        hpa < handover && handover < release,
        "HPA, then handover, then release: {writes:#?}"
    );
    assert_eq!(
        writes[handover].body.as_ref().unwrap()["spec"]["replicas"],
        3,
        "the current count, kept"
    );
    assert!(
        writes[release].body.as_ref().unwrap()["spec"]
            .get("replicas")
            .is_none(),
        "the operator lets go"
    );

    // And back: the operator sets replicas again before the autoscaler goes.
    let from = mark(&log);
    update_spec(&client, "api", |s| {
        s.spec.autoscaling.mode = AutoscalingMode::Disabled
    })
    .await;
    reconcile_stored(&client, "api").await;
    let calls: Vec<Call> = calls_since(&log, from)
        .into_iter()
        .filter(Call::is_write)
        .collect();
    let restore = calls
        .iter()
        .position(|c| c.path.ends_with("/deployments/api") && c.method == "PATCH")
        .unwrap();
    let delete = calls
        .iter()
        .position(|c| c.path.contains("horizontalpodautoscalers") && c.method == "DELETE")
        .unwrap();
    assert!(restore < delete, "{calls:#?}");
    assert_eq!(calls[restore].body.as_ref().unwrap()["spec"]["replicas"], 3);
}

#[tokio::test]
async fn objects_the_stoa_does_not_own_are_reported_never_taken_over_or_deleted() {
    let s = stoa("api");
    let (client, log) = cluster::with(&s).await;
    let theirs: Service = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "api", "namespace": "shop"}, "spec": {"type": "ExternalName", "externalName": "example.com"}})).unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    services
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let ingress: Ingress = serde_json::from_value(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "api", "namespace": "shop"}, "spec": {"defaultBackend": {"service": {"name": "x", "port": {"number": 80}}}}})).unwrap();
    Api::<Ingress>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &ingress)
        .await
        .unwrap();

    let api: Api<Stoa> = Api::namespaced(client.clone(), "shop");
    for _ in 0..2 {
        let current = api.get("api").await.unwrap();
        let error = reconcile(Arc::new(current), ctx(&client))
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("not owned by this Stoa"),
            "{error}"
        );
    }
    let after = api.get("api").await.unwrap();
    let degraded = condition(&after, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "NameConflict")
    );
    assert_eq!(
        services
            .get("api")
            .await
            .unwrap()
            .spec
            .unwrap()
            .type_
            .as_deref(),
        Some("ExternalName")
    );
    let warnings = events_since(&log, 0)
        .into_iter()
        .filter(|(t, _)| t == "Warning")
        .count();
    assert_eq!(
        warnings, 1,
        "one Warning for the failure, not one per retry"
    );
    // The spec has no Ingress, yet the user's Ingress of that name was not deleted.
    assert!(calls_since(&log, 0).iter().all(|c| c.method != "DELETE"));
}

#[tokio::test]
async fn nothing_is_applied_to_a_stoa_being_deleted() {
    let (client, log) = cluster::with(&stoa("api")).await;
    let mut deleting = Api::<Stoa>::namespaced(client.clone(), "shop")
        .get("api")
        .await
        .unwrap();
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let from = mark(&log);
    reconcile(Arc::new(deleting), ctx(&client)).await.unwrap();
    assert!(calls_since(&log, from).is_empty());
}

#[tokio::test]
async fn a_failed_rollout_and_a_pause_have_their_own_conditions() {
    let (client, _log) = converged().await;
    let failed = json!({"status": {"conditions": [{
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet api-123 has timed out progressing."}]}});
    Api::<Deployment>::namespaced(client.clone(), "shop")
        .patch_status("api", &PatchParams::default(), &Patch::Merge(&failed))
        .await
        .unwrap();
    let after = reconcile_stored(&client, "api").await;
    let progressing = condition(&after, "Progressing");
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("False", "ProgressDeadlineExceeded")
    );
    assert_eq!(
        condition(&after, "Degraded").reason,
        "ProgressDeadlineExceeded"
    );
    assert_eq!(condition(&after, "Paused").status, "False");

    update_spec(&client, "api", |s| {
        s.spec.paused = true;
        s.spec.image = "ghcr.io/stoa-dev/stoa-api:9.9.9".into();
        s.spec.ingress = Some(IngressSpec {
            host: "api.example.com".into(),
            class_name: None,
            tls_secret_name: None,
            annotations: Default::default(),
        });
    })
    .await;
    let after = reconcile_stored(&client, "api").await;
    assert_eq!(image(&deployment(&client).await.unwrap()), V1);
    assert!(
        Api::<Ingress>::namespaced(client.clone(), "shop")
            .get_opt("api")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        jobs(&client)
            .await
            .iter()
            .all(|j| j.annotations()[resources::IMAGE_ANNOTATION] == V1),
        "no migration while paused"
    );
    assert_eq!(condition(&after, "Paused").status, "True");
    assert_eq!(condition(&after, "Progressing").reason, "Paused");

    // Unpausing applies what was asked for meanwhile (through the migration gate).
    update_spec(&client, "api", |s| s.spec.paused = false).await;
    reconcile_stored(&client, "api").await;
    assert!(
        Api::<Ingress>::namespaced(client.clone(), "shop")
            .get_opt("api")
            .await
            .unwrap()
            .is_some()
    );
    job_for(&client, "ghcr.io/stoa-dev/stoa-api:9.9.9", "expand").await;
}

#[tokio::test]
async fn the_key_secret_survives_reconciles_and_is_recreated_with_a_warning_when_deleted() {
    let (client, log) = converged().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "shop");
    let original = secrets.get("api-jwt-keys").await.unwrap().data.unwrap();
    for i in 0..3 {
        update_spec(&client, "api", |s| s.spec.replicas = 3 + i).await;
        reconcile_stored(&client, "api").await;
    }
    assert_eq!(
        secrets.get("api-jwt-keys").await.unwrap().data.unwrap(),
        original
    );

    secrets
        .delete("api-jwt-keys", &DeleteParams::default())
        .await
        .unwrap();
    let from = mark(&log);
    reconcile_stored(&client, "api").await;
    assert_ne!(
        secrets.get("api-jwt-keys").await.unwrap().data.unwrap(),
        original
    );
    let events = calls_since(&log, from)
        .into_iter()
        .filter(|c| c.method == "POST" && c.path.contains("/events"))
        .filter_map(|c| c.body)
        .find(|b| b["reason"] == "KeySetRecreated")
        .expect("a KeySetRecreated event");
    assert_eq!(events["type"], "Warning");
    assert!(events["note"].as_str().unwrap().contains("now invalid"));
}

/// The MFA key set (second-factor secrets at rest): created once in its own Secret,
/// owned by the Stoa, in the format stoa-api reads, mounted read-only where the ConfigMap
/// says; a rotation done by hand (`stoa-api mfa-keys rotate` on the Secret's file) is
/// never reverted by a reconcile.
#[tokio::test]
async fn the_mfa_key_secret_is_created_once_mounted_and_never_rewritten() {
    use stoa_contract::mfa_keys::{MFA_KEYS_FILE, MfaKeySetFile};
    let (client, _log) = converged().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "shop");
    let secret = secrets.get("api-mfa-keys").await.unwrap();
    assert!(
        secret
            .metadata
            .owner_references
            .as_ref()
            .unwrap()
            .iter()
            .any(|o| o.kind == "Stoa" && o.name == "api")
    );
    let file = &secret.data.as_ref().unwrap()[MFA_KEYS_FILE].0;
    let mut set = MfaKeySetFile::from_slice(file).unwrap();
    assert_eq!(set.parse().unwrap().len(), 1);

    let d = deployment(&client).await.unwrap();
    let pod = d.spec.unwrap().template.spec.unwrap();
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "mfa-keys")
        .expect("an mfa-keys volume");
    assert_eq!(
        volume.secret.unwrap().secret_name.as_deref(),
        Some("api-mfa-keys")
    );
    let api = &pod.containers[0];
    let mount = api
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "mfa-keys")
        .expect("mounted in the API container");
    assert_eq!(mount.mount_path, stoa_contract::paths::MFA_KEYS_MOUNT);
    assert_eq!(mount.read_only, Some(true));
    let config = Api::<ConfigMap>::namespaced(client.clone(), "shop")
        .get("api-config")
        .await
        .unwrap();
    assert_eq!(
        config.data.unwrap()[stoa_contract::env::MFA_KEYS_DIR],
        stoa_contract::paths::MFA_KEYS_MOUNT
    );

    // Rotated by hand: reconciles leave it as it is.
    set.rotate();
    let mut rotated = secret.clone();
    rotated
        .data
        .as_mut()
        .unwrap()
        .insert(MFA_KEYS_FILE.into(), k8s_openapi::ByteString(set.to_json()));
    rotated.metadata.managed_fields = None;
    secrets
        .replace("api-mfa-keys", &Default::default(), &rotated)
        .await
        .unwrap();
    for i in 0..2 {
        update_spec(&client, "api", |s| s.spec.replicas = 3 + i).await;
        reconcile_stored(&client, "api").await;
    }
    let after = secrets.get("api-mfa-keys").await.unwrap();
    assert_eq!(after.data.unwrap()[MFA_KEYS_FILE].0, set.to_json());
}

#[tokio::test]
async fn optional_objects_are_removed_when_the_spec_drops_them() {
    let (client, log) = converged().await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "shop");
    let uid = pdbs.get("api").await.unwrap().uid().unwrap();
    update_spec(&client, "api", |s| {
        s.spec.pod_disruption_budget.enabled = false
    })
    .await;
    let from = mark(&log);
    reconcile_stored(&client, "api").await;
    assert!(pdbs.get_opt("api").await.unwrap().is_none());
    let delete = calls_since(&log, from)
        .into_iter()
        .find(|c| c.method == "DELETE")
        .unwrap();
    // Deleted with the owned object's UID as precondition.
    assert_eq!(delete.body.unwrap()["preconditions"]["uid"], uid);
}

#[tokio::test]
async fn every_request_is_granted_by_the_declared_rbac_rules() {
    let (client, log) = converged().await;
    // Exercise the remaining paths: rollout, HPA, optional objects and their removal.
    update_spec(&client, "api", |s| {
        s.spec.image = V2.into();
        s.spec.autoscaling.mode = AutoscalingMode::Hpa;
        s.spec.ingress = Some(IngressSpec {
            host: "a.example.com".into(),
            class_name: None,
            tls_secret_name: None,
            annotations: Default::default(),
        });
        s.spec.network_policy.enabled = true;
    })
    .await;
    reconcile_stored(&client, "api").await;
    succeed(&client, V2, "expand", 3).await;
    reconcile_stored(&client, "api").await;
    update_spec(&client, "api", |s| {
        s.spec.autoscaling.mode = AutoscalingMode::Disabled;
        s.spec.ingress = None;
        s.spec.network_policy.enabled = false;
    })
    .await;
    reconcile_stored(&client, "api").await;
    // The tests' own requests (reading and replacing the Stoa, playing controllers) are
    // made through the same client; only the operator's are checked.
    let test_only = |c: &Call| {
        (c.path.contains("/stoas/") && (c.method == "GET" || c.method == "PUT"))
            || (c.method == "PATCH" && c.query.is_empty())
            || (c.method == "POST" && c.path.ends_with("/pods"))
            || (c.path.ends_with("/jobs")
                && c.method == "GET"
                && !c.query.contains("labelSelector"))
    };
    for call in calls_since(&log, 0).iter().filter(|c| !test_only(c)) {
        let (group, resource, verb) = call.rbac();
        assert!(
            stoa_operator::rbac::allows(&group, &resource, &verb),
            "{verb} {group}/{resource} is not granted: {call:?}"
        );
    }
}

#[tokio::test]
async fn the_service_monitor_follows_the_spec_where_its_crd_exists() {
    let (client, _log) = cluster::with_monitoring(&stoa("api")).await;
    let monitoring = Arc::new(
        Context::new(client.clone(), Arc::new(Metrics::new())).with_service_monitors(true),
    );
    let stoas: Api<Stoa> = Api::namespaced(client.clone(), "shop");
    reconcile(
        Arc::new(stoas.get("api").await.unwrap()),
        monitoring.clone(),
    )
    .await
    .unwrap();
    let monitors: Api<cluster::ServiceMonitor> = Api::namespaced(client.clone(), "shop");
    let monitor = monitors.get("api").await.unwrap();
    assert_eq!(monitor.spec.rest["endpoints"][0]["port"], "metrics");
    assert!(monitor.owner_references().iter().any(|o| o.kind == "Stoa"));

    update_spec(&client, "api", |s| {
        s.spec.monitoring.service_monitor = false
    })
    .await;
    reconcile(Arc::new(stoas.get("api").await.unwrap()), monitoring)
        .await
        .unwrap();
    assert!(
        monitors.get_opt("api").await.unwrap().is_none(),
        "removed when turned off"
    );
}

async fn worker_deployment(client: &Client) -> Option<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), "shop")
        .get_opt("api-worker")
        .await
        .unwrap()
}

#[tokio::test]
async fn workers_run_the_approved_image_beside_the_api_and_go_when_disabled() {
    let (fresh, _fresh_log) = cluster::with(&stoa("api")).await;
    reconcile_stored(&fresh, "api").await;
    // Like the API pods, no worker runs before the first migration succeeded.
    assert!(worker_deployment(&fresh).await.is_none());
    let (client, _log) = converged().await;
    let worker = worker_deployment(&client).await.unwrap();
    assert_eq!(image(&worker), V1);
    assert_eq!(worker.spec.as_ref().unwrap().replicas, Some(1));
    let after = reconcile_stored(&client, "api").await;
    let status = after.status.as_ref().unwrap().worker.clone().unwrap();
    // No worker pod reports yet: the count holds at the minimum.
    assert_eq!(
        (status.desired_replicas, status.reason.as_str()),
        (1, "NoMetrics")
    );

    // A new image reaches the workers with the API, after its expand migration.
    update_spec(&client, "api", |s| s.spec.image = V2.into()).await;
    reconcile_stored(&client, "api").await;
    assert_eq!(image(&worker_deployment(&client).await.unwrap()), V1);
    succeed(&client, V2, "expand", 3).await;
    reconcile_stored(&client, "api").await;
    assert_eq!(image(&worker_deployment(&client).await.unwrap()), V2);

    update_spec(&client, "api", |s| s.spec.worker.enabled = false).await;
    let after = reconcile_stored(&client, "api").await;
    assert!(worker_deployment(&client).await.is_none());
    assert_eq!(after.status.unwrap().worker.unwrap().reason, "Disabled");
}

#[tokio::test]
async fn a_contract_step_also_waits_for_workers_of_the_old_revision() {
    let (client, _log) = converged().await;
    update_spec(&client, "api", |s| s.spec.image = V2.into()).await;
    reconcile_stored(&client, "api").await;
    succeed(&client, V2, "expand", 3).await;
    reconcile_stored(&client, "api").await;
    let pods = old_pod(&client, "api-worker-old", resources::Component::Worker, V1).await;
    roll_out(&client).await;
    reconcile_stored(&client, "api").await;
    assert_eq!(
        contract_jobs(&client, V2).await,
        0,
        "an old worker still runs"
    );
    pods.delete("api-worker-old", &DeleteParams::default())
        .await
        .unwrap();
    reconcile_stored(&client, "api").await;
    assert_eq!(contract_jobs(&client, V2).await, 1);
}

/// Istio's injector: its proxy container first, ours pinned to the digest of its tag (as
/// an image-policy webhook such as Kyverno's `mutateDigest` does).
fn mesh_and_digest_webhook(pod: &mut serde_json::Value) {
    let containers = pod["spec"]["containers"].as_array_mut().unwrap();
    for container in containers.iter_mut() {
        let image = container["image"].as_str().unwrap().to_owned();
        container["image"] = json!(format!("{image}@sha256:{}", "ab".repeat(32)));
    }
    containers.insert(
        0,
        json!({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0"}),
    );
}

/// A converged Stoa on a meshed cluster, rolled out to `V2` (its expand step done): the
/// contract step waits only for the pods.
async fn meshed_and_rolled_out_to_v2() -> Client {
    let (client, _log, rules) = converged_from(&stoa("api")).await;
    rules.set_pod_webhook(mesh_and_digest_webhook);
    update_spec(&client, "api", |s| s.spec.image = V2.into()).await;
    reconcile_stored(&client, "api").await;
    succeed(&client, V2, "expand", 3).await;
    reconcile_stored(&client, "api").await;
    roll_out(&client).await;
    client
}

#[tokio::test]
async fn meshed_digest_pinned_pods_and_evicted_pods_do_not_hold_back_the_contract_step() {
    let client = meshed_and_rolled_out_to_v2().await;
    // The new revision's pods as the webhook left them, and an old pod the kubelet evicted
    // (phase Failed) that pod garbage collection has not removed yet.
    old_pod(&client, "api-new", resources::Component::Api, V2).await;
    old_pod(&client, "api-worker-new", resources::Component::Worker, V2).await;
    let labels = resources::component_selector_labels(&stoa("api"), resources::Component::Api);
    let evicted: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "api-evicted", "namespace": "shop", "labels": labels},
        "spec": {"containers": [{"name": "api", "image": V1}]},
        "status": {"phase": "Failed", "reason": "Evicted"}}))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &evicted)
        .await
        .unwrap();
    let stored = Api::<Pod>::namespaced(client.clone(), "shop")
        .get("api-new")
        .await
        .unwrap();
    assert_eq!(
        stored.spec.unwrap().containers[0].name,
        "istio-proxy",
        "the webhook ran"
    );

    reconcile_stored(&client, "api").await;
    assert_eq!(
        contract_jobs(&client, V2).await,
        1,
        "only Stoa's own container counts, digest-pinned or not, and finished pods run nothing"
    );
}

#[tokio::test]
async fn a_pod_still_running_the_old_image_under_a_sidecar_holds_back_the_contract_step() {
    let client = meshed_and_rolled_out_to_v2().await;
    old_pod(&client, "api-old", resources::Component::Api, V1).await;
    reconcile_stored(&client, "api").await;
    assert_eq!(contract_jobs(&client, V2).await, 0);
}

#[tokio::test]
async fn quantities_and_empty_values_as_users_write_them_cost_no_writes() {
    let spelled = fixtures::from_yaml(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555, generation: 1}
spec:
  image: ghcr.io/stoa-dev/stoa-api:0.1.0
  database: {urlSecretRef: {name: api-db}}
  resources:
    requests: {cpu: 1000m, memory: 1024Mi}
    limits: {cpu: '0.5', memory: 2048Mi}
  env:
    - {name: STOA_EMPTY_ON_PURPOSE, value: ''}
",
    );
    let (client, log, _rules) = converged_from(&spelled).await;
    let stored = deployment(&client).await.unwrap();
    let requests = container(&stored)
        .resources
        .clone()
        .unwrap()
        .requests
        .unwrap();
    assert_eq!(
        requests["cpu"].0, "1",
        "the API server stores the canonical form"
    );
    // And fills in its defaults for what the operator left out.
    assert_eq!(
        stored.spec.as_ref().unwrap().progress_deadline_seconds,
        Some(600)
    );
    assert_eq!(
        container(&stored).termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    let from = mark(&log);
    reconcile_stored(&client, "api").await;
    let writes: Vec<_> = calls_since(&log, from)
        .into_iter()
        .filter(Call::is_write)
        .collect();
    assert!(writes.is_empty(), "{writes:#?}");
}

#[tokio::test]
async fn every_owned_object_blocks_a_foreground_deletion_with_the_permission_it_needs() {
    let (client, _log) = converged().await;
    let owned = [
        serde_json::to_value(deployment(&client).await.unwrap()).unwrap(),
        serde_json::to_value(
            Api::<Service>::namespaced(client.clone(), "shop")
                .get("api")
                .await
                .unwrap(),
        )
        .unwrap(),
        serde_json::to_value(
            Api::<ConfigMap>::namespaced(client.clone(), "shop")
                .get("api-config")
                .await
                .unwrap(),
        )
        .unwrap(),
    ];
    for object in owned {
        assert_eq!(
            object["metadata"]["ownerReferences"][0]["blockOwnerDeletion"], true,
            "{}",
            object["metadata"]["name"]
        );
    }
    // The strict API refuses such writes without it, as OwnerReferencesPermissionEnforcement
    // does; the Role must grant it.
    assert!(stoa_operator::rbac::allows(
        "stoa.dev",
        "stoas/finalizers",
        "update"
    ));
}

#[tokio::test]
async fn a_retried_migration_job_is_judged_by_its_succeeded_pod() {
    let (client, _log) = cluster::with(&stoa("api")).await;
    reconcile_stored(&client, "api").await;
    let job = job_for(&client, V1, "expand").await;
    finish_job(
        &client,
        &job,
        ("Complete", "Completed"),
        &report(Outcome::Applied, 2, vec![]),
        0,
    )
    .await;
    // The Job's first attempt failed in a pod of its own (backoffLimit), with a report of
    // its own, and that pod is listed after the one that succeeded.
    let name = job.name_any();
    let mut labels = job.labels().clone();
    labels.insert(resources::MIGRATION_JOB_LABEL.into(), name.clone());
    // It stopped before applying anything: its report says schema 1.
    let mut refused = report(Outcome::Applied, 1, vec![]);
    refused.message = "connection reset".into();
    let attempt: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{name}-zz-first-attempt"), "namespace": "shop", "labels": labels},
        "spec": {"containers": [{"name": "migrate", "image": "x"}]},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "migrate", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "message": refused.to_line()}}}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &attempt)
        .await
        .unwrap();
    let after = reconcile_stored(&client, "api").await;
    let status = after.status.as_ref().unwrap();
    assert_eq!(status.approved_image.as_deref(), Some(V1));
    assert_eq!(
        status.schema_version,
        Some(2),
        "the completed Job's report is its succeeded pod's"
    );
}

#[tokio::test]
async fn an_optional_object_someone_else_named_is_reported_and_the_rest_still_applies() {
    let s = with_spec(stoa("api"), |spec| {
        spec.ingress = Some(IngressSpec {
            host: "api.example.com".into(),
            class_name: None,
            tls_secret_name: None,
            annotations: Default::default(),
        });
    });
    let (client, log) = cluster::with(&s).await;
    // A user's Ingress already has the name the Stoa's would take.
    let theirs: Ingress = serde_json::from_value(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "api", "namespace": "shop"}, "spec": {"defaultBackend": {"service": {"name": "x", "port": {"number": 80}}}}})).unwrap();
    Api::<Ingress>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let after = reconcile_stored(&client, "api").await;
    let degraded = condition(&after, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "NameConflict")
    );
    assert!(
        degraded.message.contains("Ingress api"),
        "{}",
        degraded.message
    );
    // Everything else went on: the objects after the Ingress, and the status.
    assert!(
        Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(client.clone(), "shop")
            .get_opt("api")
            .await
            .unwrap()
            .is_some()
            || !after.spec.network_policy.enabled,
    );
    assert_eq!(
        after.status.as_ref().unwrap().observed_generation,
        after.metadata.generation
    );
    // Theirs is untouched.
    assert!(
        !calls_since(&log, 0)
            .iter()
            .any(|c| c.is_write() && c.path.ends_with("/ingresses/api"))
    );
}
