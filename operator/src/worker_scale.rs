//! How many workers (`stoa-api worker`) the queue needs: a pure function of the queue the
//! workers report (`/state`, `queue`), the current count and the bounds.
//!
//! - wanted = ⌈(due + running jobs) / `jobsPerReplica`⌉, within `[minReplicas, maxReplicas]`
//!   and no more than PostgreSQL's connections leave room for (each worker holds
//!   `concurrency + 3`);
//! - up at once; down one worker per decision and only while no job waits, so a burst
//!   drains before its workers go (a leaving worker finishes its jobs first: SIGTERM);
//! - no report (no ready worker): the count holds, never below the minimum;
//! - a migration or rotation in progress: the count holds.

use stoa_contract::pod::QueueDepth;

use crate::crd::Stoa;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerPolicy {
    pub min: i32,
    pub max: i32,
    pub jobs_per_replica: i32,
}

impl WorkerPolicy {
    pub fn of(stoa: &Stoa) -> WorkerPolicy {
        let worker = &stoa.spec.worker;
        WorkerPolicy {
            min: worker.min_replicas.max(1),
            max: worker.max_replicas.max(worker.min_replicas.max(1)),
            jobs_per_replica: worker.jobs_per_replica.max(1),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerDecision {
    pub desired: i32,
    /// `Queue`, `NoMetrics`, `Frozen` or `Bounded`.
    pub reason: &'static str,
}

/// `room`: worker pods PostgreSQL's connections leave room for, when known.
pub fn decide(
    policy: &WorkerPolicy,
    current: i32,
    depth: Option<QueueDepth>,
    room: Option<i32>,
    frozen: bool,
) -> WorkerDecision {
    let held = current.clamp(policy.min, policy.max);
    if frozen {
        return WorkerDecision {
            desired: held,
            reason: "Frozen",
        };
    }
    let Some(depth) = depth else {
        return WorkerDecision {
            desired: held,
            reason: "NoMetrics",
        };
    };
    let work = depth.queued.saturating_add(depth.running);
    let per = u64::try_from(policy.jobs_per_replica).unwrap_or(1);
    let needed = i32::try_from(work.div_ceil(per)).unwrap_or(i32::MAX);
    let mut wanted = needed.clamp(policy.min, policy.max);
    let mut reason = "Queue";
    if let Some(room) = room
        && wanted > room.max(policy.min)
    {
        wanted = room.max(policy.min);
        reason = "Bounded";
    }
    let desired = if wanted >= held {
        wanted
    } else if depth.queued == 0 {
        (held - 1).max(wanted)
    } else {
        held
    };
    WorkerDecision { desired, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: WorkerPolicy = WorkerPolicy {
        min: 1,
        max: 6,
        jobs_per_replica: 10,
    };

    fn queue(queued: u64, running: u64) -> Option<QueueDepth> {
        Some(QueueDepth {
            queued,
            running,
            oldest_due_seconds: 0.0,
        })
    }

    #[test]
    fn a_backlog_scales_up_at_once_within_the_maximum() {
        assert_eq!(decide(&POLICY, 1, queue(35, 4), None, false).desired, 4);
        assert_eq!(decide(&POLICY, 1, queue(5000, 4), None, false).desired, 6);
        assert_eq!(decide(&POLICY, 2, queue(0, 0), None, false).desired, 1);
    }

    #[test]
    fn workers_leave_one_at_a_time_and_only_when_nothing_waits() {
        // Running jobs only: one fewer per decision.
        assert_eq!(decide(&POLICY, 5, queue(0, 8), None, false).desired, 4);
        // Jobs still waiting: hold, even above what the count asks for.
        assert_eq!(decide(&POLICY, 5, queue(12, 8), None, false).desired, 5);
    }

    #[test]
    fn without_reports_or_during_a_rotation_the_count_holds() {
        let held = decide(&POLICY, 3, None, None, false);
        assert_eq!((held.desired, held.reason), (3, "NoMetrics"));
        let frozen = decide(&POLICY, 3, queue(500, 0), None, true);
        assert_eq!((frozen.desired, frozen.reason), (3, "Frozen"));
        // A new Deployment starts at the minimum.
        assert_eq!(decide(&POLICY, 0, None, None, false).desired, 1);
    }

    #[test]
    fn postgres_connections_bound_the_count_but_never_below_the_minimum() {
        let bounded = decide(&POLICY, 1, queue(500, 0), Some(2), false);
        assert_eq!((bounded.desired, bounded.reason), (2, "Bounded"));
        assert_eq!(decide(&POLICY, 1, queue(500, 0), Some(0), false).desired, 1);
    }
}
