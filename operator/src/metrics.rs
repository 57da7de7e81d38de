//! Operator metrics (prefix `stoa_operator_`), served on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    /// `keys` or `credentials`.
    pub protocol: &'static str,
    /// `started`, `promoted`, `retired`, `stalled`.
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

pub struct Metrics {
    registry: Registry,
    rotation_steps: Family<RotationLabels, Counter>,
    rotation_confirm: Family<ProtocolLabels, Histogram>,
    reconciles: Family<OutcomeLabels, Counter>,
    duration: Family<OutcomeLabels, Histogram>,
    errors: Family<ErrorLabels, Counter>,
    pub leader: Gauge,
}

fn histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

/// Pods pick up a changed Secret on the kubelet's sync (about a minute, up to a few).
fn confirmation_histogram() -> Histogram {
    Histogram::new([1.0, 5.0, 15.0, 30.0, 60.0, 90.0, 120.0, 300.0, 600.0])
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stoa_operator");
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by outcome (success, error)",
            reconciles.clone(),
        );
        let duration = Family::<OutcomeLabels, Histogram>::new_with_constructor(
            histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Reconcile duration by outcome",
            Unit::Seconds,
            duration.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile failures by kind",
            errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let rotation_steps = Family::<RotationLabels, Counter>::default();
        registry.register(
            "rotation_steps",
            "Rotation protocol steps taken, by protocol and step (stalled: a new key or \
             credential not confirmed by every ready pod within its timeout)",
            rotation_steps.clone(),
        );
        let rotation_confirm = Family::<ProtocolLabels, Histogram>::new_with_constructor(
            confirmation_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "rotation_confirmation",
            "Time from publishing a new key or credential until every ready pod had loaded it",
            Unit::Seconds,
            rotation_confirm.clone(),
        );
        Metrics {
            registry,
            rotation_steps,
            rotation_confirm,
            reconciles,
            duration,
            errors,
            leader,
        }
    }

    pub fn observe_reconcile(&self, outcome: &'static str, elapsed: Duration) {
        let labels = OutcomeLabels { outcome };
        self.reconciles.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_rotation(&self, protocol: &'static str, step: &'static str) {
        self.rotation_steps
            .get_or_create(&RotationLabels { protocol, step })
            .inc();
    }

    pub fn observe_confirmation(&self, protocol: &'static str, waited: Duration) {
        self.rotation_confirm
            .get_or_create(&ProtocolLabels { protocol })
            .observe(waited.as_secs_f64());
    }

    pub fn observe_error(&self, error: &'static str) {
        self.errors.get_or_create(&ErrorLabels { error }).inc();
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
