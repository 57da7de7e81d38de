//! The Concurrency autoscaler ([`autoscale`](crate::autoscale)) applied: each reconcile
//! reads the ready pods, turns their busy time into a concurrency sample, decides, and
//! hands the count to the Deployment apply. Samples live in the operator's memory: after
//! a restart (or a leader change) the window refills, and meanwhile the count holds
//! ("no metrics" never scales down).

use crate::observe::PodReading;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;

use super::{Context, ReadyPods, event, key, notice};
use crate::autoscale::{self, Limit, PanicState, Policy, Sample};
use crate::crd::{AutoscalingMode, AutoscalingStatus, Stoa};
use crate::error::{Error, Result};
use crate::resources::Replicas;

/// How often a Concurrency-scaled Stoa is sampled.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(2);

/// What the autoscaler remembers of one Stoa between reconciles.
#[derive(Default)]
pub struct ScalerMemory {
    samples: VecDeque<Sample>,
    /// Each pod's busy seconds at its last read.
    busy: HashMap<String, (f64, Timestamp)>,
    panic: PanicState,
}

pub(super) struct ScalePass {
    pub replicas: Replicas,
    pub status: Option<AutoscalingStatus>,
    pub requeue: Duration,
}

/// The replica count for this pass. `frozen_by` names a migration or rotation in
/// progress: the count holds still until it is over.
pub(super) async fn scale(
    ctx: &Context,
    stoa: &Stoa,
    deployment: Option<&Deployment>,
    frozen_by: Option<String>,
    ready: &ReadyPods<'_>,
) -> Result<ScalePass> {
    if stoa.spec.autoscaling.mode != AutoscalingMode::Concurrency {
        ctx.scalers().remove(&key(stoa));
        return Ok(ScalePass {
            replicas: Replicas::of(stoa),
            status: None,
            requeue: Duration::from_secs(300),
        });
    }
    let policy = Policy::of(stoa).map_err(Error::InvalidSpec)?;
    let readings = ready.get().await?;
    let now = Timestamp::now();
    let current = deployment
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(match Replicas::of(stoa) {
            Replicas::Operator(n) => n,
            Replicas::Autoscaler => policy.min,
        });
    let limits: Vec<_> = readings
        .iter()
        .filter_map(|r| r.state.as_ref().and_then(|s| s.limits))
        .collect();

    let decision = {
        let mut scalers = ctx.scalers();
        let memory = scalers.entry(key(stoa)).or_default();
        memory.record(readings, now, policy.stable_window);
        let samples: Vec<Sample> = memory.samples.iter().copied().collect();
        let mut decision =
            autoscale::decide(&policy, &samples, current, &limits, memory.panic, now);
        if frozen_by.is_some() {
            decision.desired = current;
            decision.reason = "Frozen";
        } else {
            memory.panic = decision.panic;
        }
        decision
    };
    announce(ctx, stoa, &policy, &decision, current).await;
    Ok(ScalePass {
        replicas: Replicas::Operator(decision.desired),
        status: Some(AutoscalingStatus {
            desired_replicas: decision.desired,
            wanted_replicas: decision.wanted,
            effective_max_replicas: decision.effective_max,
            limited_by: decision.limited_by.as_str().to_owned(),
            // Rounded: the exact mean changes with every reading (metrics carry it).
            observed_in_flight: decision.observed.map(crate::triggers::two_digits_f64),
            reason: decision.reason.to_owned(),
            frozen_by,
        }),
        requeue: SAMPLE_PERIOD,
    })
}

impl ScalerMemory {
    /// Adds a sample from the pods' readings: each pod's busy time since its previous
    /// reading, over the time between them, is its average concurrency. Pods that are gone
    /// and samples older than the stable window are forgotten.
    fn record(&mut self, readings: &[PodReading], now: Timestamp, stable_window: Duration) {
        let mut reporting = 0;
        let mut concurrency = 0.0;
        for reading in readings {
            let Some(state) = &reading.state else {
                continue;
            };
            let previous = self
                .busy
                .insert(reading.pod.clone(), (state.busy_seconds, now));
            if let Some((busy, at)) = previous {
                let seconds = now.duration_since(at).as_secs_f64();
                if seconds > 0.0 && state.busy_seconds >= busy {
                    reporting += 1;
                    concurrency += (state.busy_seconds - busy) / seconds;
                }
            }
        }
        self.busy
            .retain(|pod, _| readings.iter().any(|r| r.pod == *pod));
        self.samples.push_back(Sample {
            at: now,
            ready: u32::try_from(readings.len()).unwrap_or(u32::MAX),
            reporting,
            concurrency,
        });
        let keep_since = now
            .checked_sub(stable_window + SAMPLE_PERIOD)
            .unwrap_or(Timestamp::MIN);
        while self.samples.front().is_some_and(|s| s.at < keep_since) {
            self.samples.pop_front();
        }
    }
}

/// Events for a change of count (`Scaled`), and a Warning when a backing store first
/// bounds what the load asks for (`ScaleBounded`).
async fn announce(
    ctx: &Context,
    stoa: &Stoa,
    policy: &Policy,
    decision: &autoscale::Decision,
    current: i32,
) {
    let previous = stoa.status.as_ref().and_then(|s| s.autoscaling.as_ref());
    if decision.desired != current {
        let observed = decision
            .observed
            .map_or_else(|| "no metrics".to_owned(), |c| format!("{c:.1} in flight"));
        let note = format!(
            "scaled from {current} to {} pods ({observed}, target {} per pod{})",
            decision.desired,
            policy.target,
            if decision.reason == "Panic" {
                ", panic mode"
            } else {
                ""
            }
        );
        event(ctx, stoa, notice(EventType::Normal, "Scaled", note)).await;
    }
    let was_bounded = previous.is_some_and(|p| p.wanted_replicas > p.effective_max_replicas);
    if decision.bound_bites && !was_bounded {
        let by = match decision.limited_by {
            Limit::Postgres => format!(
                "PostgreSQL's max_connections leaves room for {} pods of {} connections after \
                 the {} reserved",
                decision.effective_max, policy.connections_per_pod, policy.reserved_connections
            ),
            Limit::Pooler => format!(
                "the pooler's maxClientConnections leaves room for {} pods of {} connections \
                 after the workers'",
                decision.effective_max,
                policy.pooler.map_or(0, |p| p.per_pod)
            ),
            Limit::Redis => format!(
                "Redis's maxclients leaves room for {} pods",
                decision.effective_max
            ),
            Limit::Spec => String::new(),
        };
        let note = format!(
            "the load asks for {} pods, but {by}: holding at {}",
            decision.wanted, decision.effective_max
        );
        event(ctx, stoa, notice(EventType::Warning, "ScaleBounded", note)).await;
    }
}
