//! Protocol 4, `autoscaling.mode: Concurrency`: the replica count from requests in flight,
//! bounded by what PostgreSQL and Redis can take.
//!
//! Each pod reports the total time it has spent serving requests (`busySeconds`); between
//! two reads its rate is the pod's average concurrency (as Knative's queue-proxy measures
//! it, rather than an instantaneous in-flight count that short requests would miss). The
//! controller keeps the recent samples per Stoa and calls [`decide`], a pure function:
//!
//! - **stable window** (default 60 s): the mean total concurrency over the window, divided
//!   by the per-pod target, is the replica count wanted;
//! - **panic window** (a tenth of it): when the short-window demand is at least
//!   `panicThreshold` times the ready pods, scale up on it at once and do not scale down
//!   until the stable window has passed without panic (Knative's KPA);
//! - scale-down is rate limited (at most halve per decision by default); a window without
//!   any report holds the count (missing metrics never scale down);
//! - the result is clamped to `[minReplicas, effective maximum]`, where the effective
//!   maximum is the least of `maxReplicas`, what PostgreSQL's `max_connections` allows at
//!   this pool size (plus the revocation listener's connection without Redis) after the
//!   reserve and the minimum of workers' connections, and what Redis's `maxclients` allows.
//!   With a pooler in front (`spec.database.pooler`), the pools count against the pooler's
//!   client limit instead, and PostgreSQL only against the direct `LISTEN` sessions.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use stoa_contract::pod::ServerLimits;

use crate::crd::{self, Stoa};

/// Redis connections one stoa-api pod holds (its multiplexed connection, and one more
/// while it reconnects).
pub const REDIS_CONNECTIONS_PER_POD: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Requests in flight per pod the count aims at.
    pub target: f64,
    pub stable_window: Duration,
    pub panic_window: Duration,
    /// Panic when the short-window demand is this many times the ready pods.
    pub panic_threshold: f64,
    /// Scale down to no less than `current / max_scale_down_rate` per decision.
    pub max_scale_down_rate: f64,
    pub min: i32,
    pub max: i32,
    /// PostgreSQL connections left for migrations and admin sessions.
    pub reserved_connections: u32,
    /// PostgreSQL connections per pod: its pool (`spec.database.maxConnections`) unless
    /// it goes through a pooler, plus, without Redis, the one its revocation feed listens
    /// on (stoa-api's `auth::revocations_listen`, always direct).
    pub connections_per_pod: u32,
    /// With a pooler in front: what its client-connection limit allows.
    pub pooler: Option<PoolerBound>,
}

/// The pooler's share of the bound: pods' pools count against its client limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolerBound {
    /// `spec.database.pooler.maxClientConnections` less the workers' minimum pools.
    pub usable: u32,
    /// Pool connections per API pod (`spec.database.maxConnections`).
    pub per_pod: u32,
}

impl Policy {
    pub fn of(stoa: &Stoa) -> Result<Policy, String> {
        let scaling = &stoa.spec.autoscaling;
        let concurrency = &scaling.concurrency;
        let stable_window = crd::duration(
            "autoscaling.concurrency.stableWindow",
            &concurrency.stable_window,
        )?;
        if concurrency.target < 1 {
            return Err("autoscaling.concurrency.target must be at least 1".into());
        }
        let pool = u32::try_from(stoa.spec.database.max_connections)
            .unwrap_or(1)
            .max(1);
        let workers = u32::try_from(crate::resources::worker_reserve(stoa)).unwrap_or(0);
        let listener = u32::from(stoa.spec.redis.is_none());
        let pooler = stoa
            .spec
            .database
            .pooler
            .as_ref()
            .map(|pooler| PoolerBound {
                usable: u32::try_from(pooler.max_client_connections)
                    .unwrap_or(0)
                    .saturating_sub(workers),
                per_pod: pool,
            });
        let reserved = u32::try_from(scaling.reserved_connections).unwrap_or(0);
        Ok(Policy {
            target: f64::from(concurrency.target),
            stable_window,
            panic_window: (stable_window / 10).max(Duration::from_secs(1)),
            panic_threshold: f64::from(concurrency.panic_threshold_percent) / 100.0,
            max_scale_down_rate: f64::from(concurrency.max_scale_down_rate.max(1)),
            min: scaling.min_replicas,
            max: scaling.max_replicas,
            // The workers' minimum always runs: its connections are not the API's to take
            // (behind a pooler they are the pooler's clients instead).
            reserved_connections: reserved + if pooler.is_some() { 0 } else { workers },
            connections_per_pod: if pooler.is_some() { 0 } else { pool } + listener,
            pooler,
        })
    }
}

/// One read of the Stoa's ready pods.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub at: Timestamp,
    pub ready: u32,
    /// Pods whose concurrency since their previous read is known.
    pub reporting: u32,
    /// Their summed average concurrency since their previous read.
    pub concurrency: f64,
}

impl Sample {
    /// Total concurrency across the ready pods, the silent ones assumed average.
    fn total(&self) -> Option<f64> {
        (self.reporting > 0)
            .then(|| self.concurrency / f64::from(self.reporting) * f64::from(self.ready.max(1)))
    }
}

/// Carried from one decision to the next.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PanicState {
    pub since: Option<Timestamp>,
    /// The most pods panic mode has asked for (never scaled below while panicking).
    pub peak: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Spec,
    Postgres,
    Pooler,
    Redis,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Spec => "maxReplicas",
            Limit::Postgres => "postgres",
            Limit::Pooler => "pooler",
            Limit::Redis => "redis",
        }
    }
}

/// The most pods the backing stores can serve, and which limit sets it.
pub fn effective_max(policy: &Policy, limits: &[ServerLimits]) -> (i32, Limit) {
    let mut bound = (policy.max, Limit::Spec);
    let pods_of = |usable: u32, per_pod: u32| {
        i32::try_from(usable / per_pod.max(1))
            .unwrap_or(i32::MAX)
            .max(1)
    };
    if let Some(pooler) = policy.pooler {
        let pods = pods_of(pooler.usable, pooler.per_pod);
        if pods < bound.0 {
            bound = (pods, Limit::Pooler);
        }
    }
    // The strictest limit any pod reports (they share the servers).
    for limit in limits {
        // Behind a pooler with Redis, a pod holds no direct connection at all.
        if policy.connections_per_pod > 0 {
            let usable = limit
                .postgres_max_connections
                .saturating_sub(limit.postgres_reserved_connections)
                .saturating_sub(policy.reserved_connections);
            let pods = pods_of(usable, policy.connections_per_pod);
            if pods < bound.0 {
                bound = (pods, Limit::Postgres);
            }
        }
        if let Some(clients) = limit.redis_max_clients {
            let pods = i32::try_from(clients / REDIS_CONNECTIONS_PER_POD)
                .unwrap_or(i32::MAX)
                .max(1);
            if pods < bound.0 {
                bound = (pods, Limit::Redis);
            }
        }
    }
    bound
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub desired: i32,
    /// What the load asks for before the bounds.
    pub wanted: i32,
    pub effective_max: i32,
    pub limited_by: Limit,
    /// `wanted` exceeds `effective_max` because of a backing store.
    pub bound_bites: bool,
    pub panic: PanicState,
    pub observed: Option<f64>,
    pub reason: &'static str,
}

fn mean_total(samples: &[Sample], since: Timestamp) -> Option<f64> {
    let totals: Vec<f64> = samples
        .iter()
        .filter(|s| s.at >= since)
        .filter_map(Sample::total)
        .collect();
    (!totals.is_empty()).then(|| totals.iter().sum::<f64>() / totals.len() as f64)
}

/// Demand this close above a whole number of pods does not start another one (the
/// measurement itself is that noisy: two clocks, two reads).
const SLACK: f64 = 0.02;

fn pods_for(concurrency: f64, target: f64) -> i32 {
    let pods = (concurrency / target - SLACK).ceil().max(0.0);
    if pods >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        pods as i32
    }
}

/// The replica count for these samples (oldest first), given the current count.
pub fn decide(
    policy: &Policy,
    samples: &[Sample],
    current: i32,
    limits: &[ServerLimits],
    panic: PanicState,
    now: Timestamp,
) -> Decision {
    let (effective_max, limited_by) = effective_max(policy, limits);
    let clamp = |n: i32| n.max(policy.min).min(effective_max).max(1);
    let since = |d: Duration| now.checked_sub(d).unwrap_or(Timestamp::MIN);
    let ready = samples.last().map_or(0, |s| s.ready).max(1);
    let Some(stable) = mean_total(samples, since(policy.stable_window)) else {
        // No pod reported in the whole window: hold (never scale on missing data).
        return Decision {
            desired: clamp(current),
            wanted: current,
            effective_max,
            limited_by,
            bound_bites: false,
            panic,
            observed: None,
            reason: "NoMetrics",
        };
    };
    let quick = mean_total(samples, since(policy.panic_window)).unwrap_or(stable);
    let stable_pods = pods_for(stable, policy.target);
    let panic_pods = pods_for(quick, policy.target);

    let bursting = f64::from(panic_pods) / f64::from(ready) >= policy.panic_threshold;
    let mut panic = panic;
    match panic.since {
        None if bursting => {
            panic = PanicState {
                since: Some(now),
                peak: panic_pods,
            };
        }
        Some(started)
            if !bursting
                && now
                    >= started
                        .checked_add(policy.stable_window)
                        .unwrap_or(Timestamp::MAX) =>
        {
            panic = PanicState::default();
        }
        Some(_) if bursting => {
            panic.since = Some(now);
            panic.peak = panic.peak.max(panic_pods);
        }
        _ => {}
    }
    let (wanted, reason) = if panic.since.is_some() {
        (panic_pods.max(panic.peak).max(current), "Panic")
    } else {
        (stable_pods, "Stable")
    };
    // Scale down gradually: at most by the rate per decision.
    let floor = (f64::from(current) / policy.max_scale_down_rate).ceil() as i32;
    let rate_limited = wanted.max(floor);
    Decision {
        desired: clamp(rate_limited),
        wanted,
        effective_max,
        limited_by,
        bound_bites: wanted > effective_max && limited_by != Limit::Spec,
        panic,
        observed: Some(stable),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            target: 10.0,
            stable_window: 60 * S,
            panic_window: 6 * S,
            panic_threshold: 2.0,
            max_scale_down_rate: 2.0,
            min: 2,
            max: 20,
            reserved_connections: 10,
            connections_per_pod: 8,
            pooler: None,
        }
    }

    /// One sample per 2 s from `from` to `to` (seconds) at total concurrency `c`.
    fn load(from: i64, to: i64, ready: u32, c: f64) -> Vec<Sample> {
        (from..to)
            .step_by(2)
            .map(|s| Sample {
                at: t(s),
                ready,
                reporting: ready,
                concurrency: c,
            })
            .collect()
    }

    fn run(samples: &[Sample], current: i32, now: i64) -> Decision {
        decide(
            &policy(),
            samples,
            current,
            &[],
            PanicState::default(),
            t(now),
        )
    }

    #[test]
    fn measurement_noise_at_a_whole_number_of_pods_adds_none() {
        assert_eq!(pods_for(60.001, 10.0), 6);
        assert_eq!(pods_for(60.5, 10.0), 7);
        assert_eq!(pods_for(0.0, 10.0), 0);
    }

    #[test]
    fn steady_load_keeps_the_count_that_serves_it() {
        // 40 in flight at 10 per pod: 4 pods, whatever the count was.
        let samples = load(0, 60, 4, 40.0);
        assert_eq!(run(&samples, 4, 60).desired, 4);
        assert_eq!(run(&samples, 4, 60).reason, "Stable");
    }

    #[test]
    fn a_burst_panics_and_scales_up_at_once() {
        let mut samples = load(0, 54, 2, 20.0);
        samples.extend(load(54, 60, 2, 120.0));
        let d = run(&samples, 2, 60);
        assert_eq!(d.reason, "Panic");
        assert_eq!(d.desired, 12, "the short window decides: 120 / 10");
        assert!(d.panic.since.is_some());
    }

    #[test]
    fn panic_holds_the_peak_until_a_calm_stable_window_has_passed() {
        let peak = PanicState {
            since: Some(t(60)),
            peak: 12,
        };
        let calm = load(60, 100, 12, 20.0);
        let held = decide(&policy(), &calm, 12, &[], peak, t(100));
        assert_eq!((held.desired, held.reason), (12, "Panic"));
        let calm = load(60, 121, 12, 20.0);
        let released = decide(&policy(), &calm, 12, &[], peak, t(121));
        assert_eq!(released.reason, "Stable");
        assert_eq!(released.desired, 6, "down by at most half per decision");
    }

    #[test]
    fn a_drop_scales_down_gradually_to_the_minimum() {
        let samples = load(0, 60, 10, 0.0);
        let mut current = 10;
        let mut steps = vec![];
        while current > 2 {
            current = run(&samples, current, 60).desired;
            steps.push(current);
        }
        assert_eq!(steps, [5, 3, 2]);
    }

    #[test]
    fn flapping_load_around_the_target_does_not_flap_the_count() {
        // Alternating 35 and 45 in flight: the window mean (40) decides.
        let samples: Vec<Sample> = (0..30)
            .map(|i| Sample {
                at: t(i * 2),
                ready: 4,
                reporting: 4,
                concurrency: if i % 2 == 0 { 35.0 } else { 45.0 },
            })
            .collect();
        for now in [58, 59, 60] {
            assert_eq!(run(&samples, 4, now).desired, 4);
        }
    }

    #[test]
    fn pods_that_do_not_answer_count_as_average_and_missing_metrics_hold() {
        // 2 of 4 pods report 10 each: 40 in total is assumed.
        let partial: Vec<Sample> = load(0, 60, 4, 20.0)
            .into_iter()
            .map(|s| Sample { reporting: 2, ..s })
            .collect();
        assert_eq!(run(&partial, 4, 60).desired, 4);
        // Nobody reported in the window: hold 7, do not fall to the minimum.
        let silent: Vec<Sample> = load(0, 60, 7, 0.0)
            .into_iter()
            .map(|s| Sample { reporting: 0, ..s })
            .collect();
        let d = run(&silent, 7, 60);
        assert_eq!((d.desired, d.reason), (7, "NoMetrics"));
        assert_eq!(run(&[], 7, 60).desired, 7);
    }

    #[test]
    fn without_redis_each_pod_counts_its_revocation_listener_connection() {
        let stoa = |redis: &str| -> Stoa {
            serde_norway::from_str(&format!(
                "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {{name: api}}
spec:
  image: stoa-api
  database: {{urlSecretRef: {{name: db}}, maxConnections: 9}}
  {redis}
  autoscaling: {{mode: Concurrency, reservedConnections: 7}}
  worker: {{enabled: false}}"
            ))
            .unwrap()
        };
        let limits = ServerLimits {
            postgres_max_connections: 100,
            postgres_reserved_connections: 3,
            redis_max_clients: None,
        };
        let with_redis = Policy::of(&stoa("redis: {urlSecretRef: {name: r}}")).unwrap();
        assert_eq!(with_redis.connections_per_pod, 9);
        // (100 - 3 - 7) / 9 = 10 pods; / 10 = 9 pods.
        assert_eq!(effective_max(&with_redis, &[limits]).0, 10);
        let without = Policy::of(&stoa("")).unwrap();
        assert_eq!(without.connections_per_pod, 10);
        assert_eq!(effective_max(&without, &[limits]).0, 9);
    }

    /// Behind a pooler the pools are the pooler's clients: its limit bounds the count, and
    /// PostgreSQL only the direct `LISTEN` sessions (none with Redis).
    #[test]
    fn behind_a_pooler_its_client_limit_bounds_the_count() {
        let stoa = |redis: &str| -> Stoa {
            serde_norway::from_str(&format!(
                "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {{name: api}}
spec:
  image: stoa-api
  database:
    urlSecretRef: {{name: db}}
    maxConnections: 9
    pooler: {{urlSecretRef: {{name: pooler}}, maxClientConnections: 500}}
  {redis}
  autoscaling: {{mode: Concurrency, reservedConnections: 7, maxReplicas: 100}}
  worker: {{minReplicas: 2, concurrency: 4}}"
            ))
            .unwrap()
        };
        // PostgreSQL's limit alone would allow (100 - 3 - 7) / 9 = 10 pods.
        let limits = ServerLimits {
            postgres_max_connections: 100,
            postgres_reserved_connections: 3,
            redis_max_clients: None,
        };
        let with_redis = Policy::of(&stoa("redis: {urlSecretRef: {name: r}}")).unwrap();
        assert_eq!(with_redis.connections_per_pod, 0);
        // Two workers of 4 + 3 connections: (500 - 14) / 9 = 54 pods.
        assert_eq!(
            with_redis.pooler,
            Some(PoolerBound {
                usable: 486,
                per_pod: 9
            })
        );
        assert_eq!(effective_max(&with_redis, &[limits]), (54, Limit::Pooler));
        // Without Redis each pod listens on one direct connection: (100 - 3 - 7) / 1 = 90
        // pods, still above the pooler's 54.
        let without = Policy::of(&stoa("")).unwrap();
        assert_eq!(without.connections_per_pod, 1);
        assert_eq!(effective_max(&without, &[limits]), (54, Limit::Pooler));
        let small = ServerLimits {
            postgres_max_connections: 50,
            ..limits
        };
        assert_eq!(effective_max(&without, &[small]), (40, Limit::Postgres));
    }

    #[test]
    fn the_workers_minimum_is_kept_out_of_the_api_bound() {
        let stoa: Stoa = serde_norway::from_str(
            "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: api}
spec:
  image: stoa-api
  database: {urlSecretRef: {name: db}, maxConnections: 9}
  redis: {urlSecretRef: {name: r}}
  autoscaling: {mode: Concurrency, reservedConnections: 7}
  worker: {minReplicas: 2, concurrency: 4}",
        )
        .unwrap();
        let limits = ServerLimits {
            postgres_max_connections: 100,
            postgres_reserved_connections: 3,
            redis_max_clients: None,
        };
        let policy = Policy::of(&stoa).unwrap();
        // Two workers of 4 + 3 connections: (100 - 3 - 7 - 14) / 9 = 8 pods.
        assert_eq!(policy.reserved_connections, 21);
        assert_eq!(effective_max(&policy, &[limits]).0, 8);
    }

    #[test]
    fn the_backing_stores_bound_the_count_and_say_which() {
        let samples = load(0, 60, 4, 400.0);
        let postgres = ServerLimits {
            postgres_max_connections: 100,
            postgres_reserved_connections: 3,
            redis_max_clients: Some(10_000),
        };
        // (100 - 3 - 10) / 8 = 10 pods.
        let d = decide(
            &policy(),
            &samples,
            4,
            &[postgres],
            PanicState::default(),
            t(60),
        );
        assert_eq!(
            (d.desired, d.effective_max, d.limited_by),
            (10, 10, Limit::Postgres)
        );
        assert!(d.bound_bites);
        let redis = ServerLimits {
            redis_max_clients: Some(12),
            ..postgres
        };
        let d = decide(
            &policy(),
            &samples,
            4,
            &[redis],
            PanicState::default(),
            t(60),
        );
        assert_eq!((d.desired, d.limited_by), (6, Limit::Redis));
        // Below the bound, nothing bites.
        let light = load(0, 60, 4, 40.0);
        let d = decide(
            &policy(),
            &light,
            4,
            &[postgres],
            PanicState::default(),
            t(60),
        );
        assert!(!d.bound_bites);
        // maxReplicas is not a backing store.
        let d = run(&load(0, 60, 4, 4000.0), 4, 60);
        assert_eq!(
            (d.desired, d.limited_by, d.bound_bites),
            (20, Limit::Spec, false)
        );
    }
}
