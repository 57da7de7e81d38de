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

pub struct Metrics {
    registry: Registry,
    reconciles: Family<OutcomeLabels, Counter>,
    duration: Family<OutcomeLabels, Histogram>,
    errors: Family<ErrorLabels, Counter>,
    pub leader: Gauge,
}

fn histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
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
        Metrics {
            registry,
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
