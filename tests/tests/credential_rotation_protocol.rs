#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Protocol 3 end to end: the real reconciler rotates the database credential of real
//! stoa-api pods twice under load. Its `stoa-api credentials` Jobs (real processes, admin
//! credential) create the roles and set passwords, the connection Secret is projected into
//! the pods kubelet-style, each pod (API and worker) confirms the new URL's fingerprint, and the previous
//! role's password expires only once none of its sessions remain. No request may fail.
//! Deleting the Stoa drops the roles. See `harness` for what plays the cluster.

mod common;
mod harness;

use std::time::Duration;

use harness::load::Load;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use sqlx::PgPool;
use stoa_contract::pod::credential_fingerprint;
use stoa_operator::crd::Stoa;
use stoa_operator::credential_rotation::{ROTATE_ANNOTATION, group_role};

fn stoa() -> Stoa {
    harness::test_stoa(
        "  replicas: 2
  database:
    urlSecretRef: {name: api-db}
    adminSecretRef: {name: api-db-admin}
  redis: {urlSecretRef: {name: api-redis}}
",
        &[
            ("STOA_RELOAD_INTERVAL", "100ms"),
            ("STOA_DB_DRAIN_GRACE", "1s"),
        ],
    )
}

fn rotation(s: &Stoa) -> (String, Option<String>) {
    let r = s
        .status
        .as_ref()
        .and_then(|st| st.credential_rotation.clone())
        .unwrap_or_default();
    (r.phase, r.role)
}

async fn request_rotation(cluster: &harness::Cluster, value: &str) {
    let api: Api<Stoa> = cluster.api();
    let mut current = api.get("api").await.unwrap();
    current
        .annotations_mut()
        .insert(ROTATE_ANNOTATION.into(), value.into());
    api.replace("api", &PostParams::default(), &current)
        .await
        .unwrap();
}

async fn sessions_of(pool: &PgPool, role: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT application_name FROM pg_stat_activity WHERE usename = $1")
        .bind(role)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn has_password(pool: &PgPool, role: &str) -> bool {
    sqlx::query_scalar("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = $1")
        .bind(role)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(false)
}

#[sqlx::test(migrations = false)]
async fn two_credential_rotations_under_load_fail_no_request_and_deletion_drops_the_roles(
    pool: PgPool,
) {
    let url = common::url_of(&pool);
    let mut cluster = harness::install(
        &stoa(),
        vec![
            harness::database_secret("api-db", &url),
            harness::database_secret("api-db-admin", &url),
        ],
    )
    .await;
    let group = group_role(harness::NAMESPACE, "api");
    let (role_a, role_b) = (format!("{group}_a"), format!("{group}_b"));
    // The first rotation moves off the URL the user gave onto a managed role.
    let first = cluster
        .settle("on the first managed role", harness::SETTLE, |s| {
            rotation(s) == ("Idle".into(), Some(role_a.clone()))
        })
        .await;
    assert!(
        first
            .finalizers()
            .iter()
            .any(|f| f == "stoa.dev/database-roles")
    );
    let load = Load::start(cluster.endpoints.clone(), 4, Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    for (n, (from, to)) in [(&role_a, &role_b), (&role_b, &role_a)]
        .into_iter()
        .enumerate()
    {
        request_rotation(&cluster, &format!("rotation-{n}")).await;
        cluster
            .settle("rotated", harness::SETTLE, |s| {
                rotation(s) == ("Idle".into(), Some(to.clone()))
            })
            .await;
        // Every pod, API and worker, uses the new role; the old one has no session and no
        // password.
        let secret: k8s_openapi::api::core::v1::Secret =
            cluster.api().get("api-db-credentials").await.unwrap();
        let published = String::from_utf8(secret.data.unwrap()["url"].0.clone()).unwrap();
        assert!(!cluster.workers().is_empty());
        for pod in cluster.pods().iter().chain(cluster.workers()) {
            let state = pod.state().await;
            assert_eq!(state.database.user, *to, "{}", pod.name);
            assert_eq!(
                state.database.fingerprint,
                credential_fingerprint(&published)
            );
        }
        assert!(sessions_of(&pool, from).await.is_empty());
        assert!(
            !has_password(&pool, from).await,
            "{from} keeps its password"
        );
        assert!(has_password(&pool, to).await);
        let pods: Vec<String> = cluster
            .pods()
            .iter()
            .chain(cluster.workers())
            .map(|p| p.name.clone())
            .collect();
        for name in sessions_of(&pool, to).await {
            assert!(pods.contains(&name), "sessions are named by pod: {name}");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.finish().await;
    eprintln!("two credential rotations under load: {tally:?}");
    assert!(tally.requests > 200, "{tally:?}");
    assert_eq!(tally.failures, 0, "{tally:?}");
    let metrics = cluster.metrics.encode().unwrap();
    assert!(
        metrics.contains(
            r#"stoa_operator_rotation_steps_total{protocol="credentials",step="expired"} 2"#
        ),
        "{metrics}"
    );

    cluster.delete_stoa().await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1")
        .bind(format!("{group}%"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the roles are dropped with the Stoa");
    cluster.shutdown().await;
}
