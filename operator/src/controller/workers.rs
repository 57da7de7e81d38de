//! The worker Deployment: applied beside the API's with the same approved image, its
//! replica count decided by [`worker_scale`](crate::worker_scale) from the queue the
//! workers report, or removed when `spec.worker.enabled` is false.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::events::EventType;
use stoa_contract::pod::QueueDepth;

use super::{Context, ReadyPods, Target, event, notice};
use crate::apply;
use crate::crd::{AutoscalingMode, Stoa, WorkerStatus};
use crate::error::Result;
use crate::resources::{self, Replicas};
use crate::worker_scale::{self, WorkerPolicy};

/// How often a Stoa with workers is looked at again (the queue changes without any
/// Kubernetes event).
pub const WORKER_PERIOD: Duration = Duration::from_secs(15);

pub(super) struct WorkerPass {
    pub status: WorkerStatus,
    pub requeue: Duration,
}

/// Applies (or removes) the worker Deployment for this pass. `image`: the approved image
/// the API runs (`None` before the first migration: nothing runs yet). `frozen`: a
/// migration or rotation holds the count.
pub(super) async fn reconcile_workers(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
    config: &ConfigMap,
    image: Option<&str>,
    frozen: bool,
    ready: &ReadyPods<'_>,
) -> Result<WorkerPass> {
    let api: Api<Deployment> = target.api(&ctx.client);
    let existing = api.get_opt(&target.names.worker).await?;
    if !stoa.spec.worker.enabled {
        apply::remove(&api, existing, &target.uid).await?;
        return Ok(WorkerPass {
            status: WorkerStatus {
                reason: "Disabled".into(),
                ..WorkerStatus::default()
            },
            requeue: Duration::from_secs(300),
        });
    }
    let policy = WorkerPolicy::of(stoa);
    let current = existing
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let readings = ready.workers().await?;
    // Every worker reads the whole queue; the largest report is the freshest backlog.
    let depth = readings
        .iter()
        .filter_map(|r| r.state.as_ref().and_then(|s| s.queue))
        .reduce(|a, b| QueueDepth {
            queued: a.queued.max(b.queued),
            running: a.running.max(b.running),
            oldest_due_seconds: a.oldest_due_seconds.max(b.oldest_due_seconds),
        });
    let room = worker_room(stoa, ready).await?;
    let decision = worker_scale::decide(&policy, current, depth, room, frozen);
    if let Some(image) = image {
        if current != 0 && decision.desired != current {
            let note = format!(
                "workers scaled from {current} to {} ({} jobs due, {} running, {} per worker)",
                decision.desired,
                depth.map_or(0, |d| d.queued),
                depth.map_or(0, |d| d.running),
                policy.jobs_per_replica
            );
            event(ctx, stoa, notice(EventType::Normal, "WorkersScaled", note)).await;
        }
        let desired = resources::worker_deployment(stoa, config, image, decision.desired)?;
        apply::ensure(&api, existing, desired, &target.uid, "Deployment").await?;
    }
    Ok(WorkerPass {
        status: WorkerStatus {
            desired_replicas: decision.desired,
            ready_replicas: i32::try_from(readings.len()).unwrap_or(i32::MAX),
            // Rounded: the exact counts change with every reading (metrics carry them).
            queued: depth.map(|d| {
                crate::triggers::two_digits(i64::try_from(d.queued).unwrap_or(i64::MAX / 2))
            }),
            running: depth.map(|d| {
                crate::triggers::two_digits(i64::try_from(d.running).unwrap_or(i64::MAX / 2))
            }),
            reason: decision.reason.into(),
        },
        requeue: WORKER_PERIOD,
    })
}

/// Worker pods PostgreSQL's connections leave room for, once an API pod has read the
/// server's limits: `max_connections` less the superuser reserve, the Stoa's
/// `reservedConnections` and the API pods' pools at their most (the API's autoscaler keeps
/// the workers' minimum out of its own bound, so the two never overlap).
async fn worker_room(stoa: &Stoa, ready: &ReadyPods<'_>) -> Result<Option<i32>> {
    let api = ready.get().await?;
    let Some(limits) = api
        .iter()
        .filter_map(|r| r.state.as_ref().and_then(|s| s.limits))
        .next()
    else {
        return Ok(None);
    };
    let api_pods = match stoa.spec.autoscaling.mode {
        AutoscalingMode::Disabled => match Replicas::of(stoa) {
            Replicas::Operator(n) => n,
            Replicas::Autoscaler => stoa.spec.autoscaling.max_replicas,
        },
        _ => stoa.spec.autoscaling.max_replicas,
    }
    .max(i32::try_from(api.len()).unwrap_or(i32::MAX));
    let per_api_pod = stoa.spec.database.max_connections + i32::from(stoa.spec.redis.is_none());
    let free = i64::from(limits.postgres_max_connections)
        - i64::from(limits.postgres_reserved_connections)
        - i64::from(stoa.spec.autoscaling.reserved_connections)
        - i64::from(api_pods) * i64::from(per_api_pod);
    let room = free.max(0) / i64::from(resources::worker_connections(stoa).max(1));
    Ok(Some(i32::try_from(room).unwrap_or(i32::MAX)))
}
