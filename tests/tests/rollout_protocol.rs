#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Protocol 1 end to end under load: a new image is migrated by a real `stoa-api migrate`
//! Job before any pod runs it, then the pods are replaced one at a time (each old pod
//! leaves the endpoints, then drains on SIGTERM) while clients keep calling. No request
//! may fail. See `harness` for what plays the cluster.

mod common;
mod harness;

use std::time::Duration;

use harness::load::Load;
use kube::api::{Api, PostParams};
use sqlx::PgPool;
use stoa_operator::crd::Stoa;

const V2: &str = "ghcr.io/stoa-dev/stoa-api:0.2.0";

#[sqlx::test(migrations = false)]
async fn an_image_change_migrates_first_then_rolls_out_with_no_failed_request(pool: PgPool) {
    let mut cluster = harness::running(&pool, 3, "5m").await;
    let before: Vec<String> = cluster.pods().iter().map(|p| p.name.clone()).collect();
    let load = Load::start(cluster.endpoints.clone(), 4, Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let api: Api<Stoa> = cluster.api();
    let mut stoa = api.get("api").await.unwrap();
    stoa.spec.image = V2.into();
    stoa.metadata.generation = stoa.metadata.generation.map(|g| g + 1);
    api.replace("api", &PostParams::default(), &stoa)
        .await
        .unwrap();

    let migrating = cluster.reconcile().await;
    let migration = migrating
        .status
        .as_ref()
        .unwrap()
        .migration
        .clone()
        .unwrap();
    assert_eq!(
        (migration.image.as_str(), migration.state.as_str()),
        (V2, "Running")
    );
    assert_ne!(
        migrating.status.as_ref().unwrap().current_image.as_deref(),
        Some(V2),
        "no pod runs the new image before its migration succeeded"
    );
    let done = cluster
        .settle("rolled out", harness::SETTLE, |s| {
            let st = s.status.as_ref().unwrap();
            st.current_image.as_deref() == Some(V2)
                && st.updated_replicas == 3
                && st
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .await;
    assert_eq!(
        done.status.as_ref().unwrap().approved_image.as_deref(),
        Some(V2)
    );
    let after: Vec<String> = cluster.pods().iter().map(|p| p.name.clone()).collect();
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} → {after:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let tally = load.finish().await;
    eprintln!("image change under load: {tally:?}");
    assert!(tally.requests > 200, "{tally:?}");
    assert_eq!(tally.failures, 0, "{tally:?}");
    cluster.shutdown().await;
}
