#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Protocol 1 with both sides real: the `stoa-api migrate` binary, run with exactly the
//! arguments the operator's Job carries, meets a PostgreSQL database that holds a
//! migration it does not know (what a newer release leaves behind). Its exit code and
//! report are then read the way the operator reads a finished Job, and the operator's
//! decision is checked; a real stoa-api server checks readiness on the same database.

mod common;

use common::{stoa_api_binary, url_of};

use std::collections::BTreeMap;
use std::process::Command;

use k8s_openapi::api::batch::v1::Job;
use serde_json::json;
use sqlx::PgPool;
use stoa_contract::migration::{EXIT_NEWER_CONTRACT, MigrationReport, Outcome};
use stoa_operator::crd::Stoa;
use stoa_operator::resources::{self, JobRequest, Step};
use stoa_operator::rollout::{self, Activity, Observed};

const NEWER: i64 = 29_990_101_000_000;
const NEWER_IMAGE: &str = "ghcr.io/stoa-dev/stoa-api:9.0.0";
const OLD_IMAGE: &str = "ghcr.io/stoa-dev/stoa-api:0.1.0";

/// What a newer release's migrator leaves in `_sqlx_migrations`.
async fn newer_release_applied(pool: &PgPool, description: &str) {
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, $2, true, '\\x00', 1)",
    )
    .bind(NEWER)
    .bind(description)
    .execute(pool)
    .await
    .unwrap();
}

fn stoa(image: &str) -> Stoa {
    serde_norway::from_str(&format!(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {{name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555}}
spec:
  image: {image}
  database: {{urlSecretRef: {{name: api-db}}}}
"
    ))
    .unwrap()
}

struct Run {
    code: i32,
    stderr: String,
    report: String,
}

/// Runs the migrator with the arguments of the operator's expand Job, the report written
/// where the Job's termination message would be.
fn run_expand_job(url: &str, allow_newer_contract: bool) -> Run {
    let s = stoa(OLD_IMAGE);
    let job = resources::migration_job(
        &s,
        &JobRequest {
            name: "api-migrate-0123abcd".into(),
            step: Step::Expand,
            image: OLD_IMAGE.into(),
            allow_newer_contract,
            attempt: 1,
            key: "expand-0123abcd".into(),
        },
    )
    .unwrap();
    let container = job.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut args = container.args.unwrap();
    let path = args.iter().position(|a| a == "--report-file").unwrap() + 1;
    args[path] = report.path().to_str().unwrap().to_owned();
    let mut command = Command::new(stoa_api_binary());
    for (key, _) in std::env::vars() {
        if key.starts_with("STOA_") {
            command.env_remove(key);
        }
    }
    let output = command
        .args(&args)
        .env("STOA_DATABASE_URL", url)
        .env("STOA_LOG", "warn")
        .output()
        .unwrap();
    Run {
        code: output.status.code().unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
        report: std::fs::read_to_string(report.path()).unwrap(),
    }
}

/// The Job as Kubernetes reports it when it ended the way `run` did: the only `FailJob`
/// rule of the pod failure policy matches the refusal exit code.
fn finished_job(run: &Run, allow: bool) -> Job {
    let (type_, reason) = if run.code == 0 {
        ("Complete", "Completed")
    } else if run.code == EXIT_NEWER_CONTRACT {
        ("Failed", "PodFailurePolicy")
    } else {
        ("Failed", "BackoffLimitExceeded")
    };
    let s = stoa(OLD_IMAGE);
    let mut job = resources::migration_job(
        &s,
        &JobRequest {
            name: "api-migrate-0123abcd".into(),
            step: Step::Expand,
            image: OLD_IMAGE.into(),
            allow_newer_contract: allow,
            attempt: 1,
            key: String::new(),
        },
    )
    .unwrap();
    job.status = Some(
        serde_json::from_value(json!({"conditions": [{"type": type_, "status": "True",
            "reason": reason, "message": "from the test", "lastTransitionTime": "2026-11-25T00:00:00Z"}]}))
        .unwrap(),
    );
    job
}

/// The operator's decision for a rollback from the newer image to `OLD_IMAGE`, given the
/// finished Job and its termination message.
fn decide(run: &Run, allow: bool) -> rollout::Plan {
    let mut s = stoa(OLD_IMAGE);
    if allow {
        s.spec.migrations.allow_rollback_to = Some(OLD_IMAGE.into());
    }
    // The Job the plan itself asks for, as it ended in the real run.
    let request = rollout::plan(
        &s,
        &Observed {
            approved_image: Some(NEWER_IMAGE.into()),
            contracted_image: Some(NEWER_IMAGE.into()),
            ..Observed::default()
        },
    )
    .create
    .unwrap();
    let mut job = finished_job(run, allow);
    job.metadata.name = Some(request.name.clone());
    job.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(resources::MIGRATION_KEY_LABEL.into(), request.key.clone());
    let observed =
        rollout::observe_job(&job, Some(&run.report), k8s_openapi::jiff::Timestamp::now()).unwrap();
    rollout::plan(
        &s,
        &Observed {
            approved_image: Some(NEWER_IMAGE.into()),
            contracted_image: Some(NEWER_IMAGE.into()),
            jobs: vec![observed],
            ..Observed::default()
        },
    )
}

async fn readiness(pool: PgPool) -> serde_json::Value {
    let keys = tempfile::tempdir().unwrap();
    stoa_contract::keys::generate_keyset()
        .write_dir(keys.path())
        .unwrap();
    let served = common::serve(pool, keys.path()).await;
    // The detail (schema versions) is on the admin port.
    let response = reqwest::get(format!("{}/readyz", served.admin))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let mut body: serde_json::Value = response.json().await.unwrap();
    body["httpStatus"] = json!(status);
    body
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn an_older_binary_migrates_and_serves_a_database_with_newer_expand_steps(pool: PgPool) {
    newer_release_applied(&pool, "add profile pronouns").await;
    let run = run_expand_job(&url_of(&pool), false);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = MigrationReport::parse(&run.report).expect("a report");
    assert_eq!(report.outcome, Outcome::Applied);
    assert_eq!(report.unknown_expand, [NEWER]);
    assert_eq!(report.schema_version, Some(NEWER));

    // The operator approves the image; the Deployment moves to it.
    let plan = decide(&run, false);
    assert_eq!(plan.deploy_image.as_deref(), Some(OLD_IMAGE));
    assert_eq!(plan.schema_version, Some(NEWER));

    // And its pods are ready on that schema.
    let ready = readiness(pool).await;
    assert_eq!(ready["httpStatus"], 200, "{ready}");
    assert_eq!(ready["checks"]["schema"]["status"], "ahead");
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn an_older_binary_refuses_a_database_with_a_newer_contract_step_until_approved(
    pool: PgPool,
) {
    newer_release_applied(&pool, "contract drop legacy bio").await;
    let run = run_expand_job(&url_of(&pool), false);
    assert_eq!(run.code, EXIT_NEWER_CONTRACT, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("contract migration(s) [29990101000000]")
            && run.stderr.contains("allowRollbackTo"),
        "a clear message: {}",
        run.stderr
    );
    let report = MigrationReport::parse(&run.report).expect("a report");
    assert_eq!(report.outcome, Outcome::NewerContract);
    assert_eq!(report.unknown_contract, [NEWER]);

    // The operator turns it into RollbackBlocked and keeps the newer image.
    let plan = decide(&run, false);
    assert_eq!(plan.deploy_image.as_deref(), Some(NEWER_IMAGE));
    assert!(plan.create.is_none(), "a refusal is not retried");
    let Activity::Blocked { message, .. } = &plan.activity else {
        panic!("{:?}", plan.activity)
    };
    assert!(message.contains("[29990101000000]"), "{message}");

    // Approved: the same binary, run as the approval Job runs it, succeeds.
    let run = run_expand_job(&url_of(&pool), true);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan = decide(&run, true);
    assert_eq!(plan.deploy_image.as_deref(), Some(OLD_IMAGE));
}
