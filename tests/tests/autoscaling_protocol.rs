#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Protocol 4 end to end: the operator scales real stoa-api pods on the concurrency they
//! report, up under a load step and back down (each leaving pod drains first), and never
//! past what PostgreSQL can serve. No request may fail. See `harness`.

mod common;
mod harness;

use std::time::{Duration, Instant};

use harness::Cluster;
use harness::load::Load;
use sqlx::PgPool;
use stoa_operator::crd::Stoa;

/// Steps the cluster until `done` (or `timeout`), recording each change of the pod count.
async fn run_until(
    cluster: &mut Cluster,
    timeline: &mut Vec<(f64, usize)>,
    started: Instant,
    timeout: Duration,
    done: impl Fn(usize, &Stoa) -> bool,
) -> Stoa {
    let reached = cluster
        .step_until(timeout, |cluster, stoa| {
            let pods = cluster.pods().len();
            if timeline.last().is_none_or(|(_, n)| *n != pods) {
                timeline.push((started.elapsed().as_secs_f64(), pods));
            }
            done(pods, stoa)
        })
        .await;
    reached.unwrap_or_else(|stoa| {
        panic!(
            "timeline {timeline:?}, autoscaling {:?}",
            stoa.status.as_ref().and_then(|s| s.autoscaling.clone())
        )
    })
}

async fn cluster(pool: &PgPool, pool_size: u32, reserved: i64) -> Cluster {
    harness::install(
        &harness::autoscaled_stoa(pool_size, reserved, 1, 4),
        vec![harness::database_secret("api-db", &common::url_of(pool))],
    )
    .await
}

#[sqlx::test(migrations = false)]
async fn a_load_step_scales_the_pods_up_and_back_down_with_no_failed_request(pool: PgPool) {
    let mut cluster = cluster(&pool, 4, 10).await;
    assert_eq!(cluster.pods().len(), 1);
    let started = Instant::now();
    let mut timeline = vec![(0.0, 1)];

    // The step: 6 clients keep about 6 requests in flight; at 1 per pod, up to maxReplicas.
    let heavy = Load::start(cluster.endpoints.clone(), 6, Duration::from_millis(300)).await;
    let light = Load::start(cluster.endpoints.clone(), 1, Duration::from_millis(300)).await;
    let up = run_until(
        &mut cluster,
        &mut timeline,
        started,
        Duration::from_secs(60),
        |pods, _| pods >= 3,
    )
    .await;
    let status = up.status.unwrap().autoscaling.unwrap();
    assert!(status.wanted_replicas >= 3, "{status:?}");
    let heavy = heavy.finish().await;

    // The step ends; one client remains while pods leave (each drains first).
    let down = run_until(
        &mut cluster,
        &mut timeline,
        started,
        Duration::from_secs(90),
        |pods, _| pods <= 2,
    )
    .await;
    let light = light.finish().await;
    eprintln!("replica timeline (seconds, pods): {timeline:?}");
    eprintln!("load step: {heavy:?}; during scale-down: {light:?}");
    eprintln!("last decision: {:?}", down.status.unwrap().autoscaling);
    assert_eq!(heavy.failures + light.failures, 0, "{heavy:?} {light:?}");
    assert!(
        heavy.requests > 100 && light.requests > 20,
        "{heavy:?} {light:?}"
    );
    cluster.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn the_count_never_exceeds_what_postgres_can_serve(pool: PgPool) {
    let (max, reserved): (String, String) = sqlx::query_as(
        "SELECT current_setting('max_connections'), current_setting('superuser_reserved_connections')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let usable = max.parse::<i64>().unwrap() - reserved.parse::<i64>().unwrap();
    // Pools of 30: keep back all but room for 2 pods (and a little), beside the one
    // worker's 7 connections (concurrency 4 + 3), which the API's bound leaves alone.
    let keep = usable - 2 * 30 - 5 - 7;
    assert!(
        keep >= 0,
        "this PostgreSQL allows too few connections for the test"
    );
    let mut cluster = cluster(&pool, 30, keep).await;
    let started = Instant::now();
    let mut timeline = vec![(0.0, 1)];
    let load = Load::start(cluster.endpoints.clone(), 6, Duration::from_millis(300)).await;
    let bounded = run_until(
        &mut cluster,
        &mut timeline,
        started,
        Duration::from_secs(60),
        |_, s| {
            s.status
                .as_ref()
                .and_then(|st| st.autoscaling.as_ref())
                .is_some_and(|a| a.wanted_replicas > 2 && a.limited_by == "postgres")
        },
    )
    .await;
    // Keep going a while: the bound holds.
    for _ in 0..15 {
        cluster.step().await;
        assert!(cluster.pods().len() <= 2, "{timeline:?}");
    }
    let tally = load.finish().await;
    let status = bounded.status.unwrap().autoscaling.unwrap();
    eprintln!("bounded: {status:?}; timeline {timeline:?}; load {tally:?}");
    assert_eq!(status.effective_max_replicas, 2);
    assert_eq!(tally.failures, 0, "{tally:?}");
    cluster.shutdown().await;
}
