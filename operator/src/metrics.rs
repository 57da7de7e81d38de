//! Operator metrics (prefix `stoa_operator_`), served on `/metrics`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::crd::StoaStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleDropLabels {
    /// `dropped`; `abandoned` (it could not succeed: the namespace is being deleted, the
    /// admin Secret is gone, or every attempt failed); `skipped` (the annotation asked).
    pub outcome: &'static str,
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

/// One Stoa. Bounded by the number of Stoa resources the operator manages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoaLabels {
    pub namespace: String,
    pub stoa: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub namespace: String,
    pub stoa: String,
    /// `Ready`, `Progressing`, `Degraded`, `RollbackBlocked`, `Paused`.
    pub condition: String,
    /// The condition's reason (a CamelCase word from a fixed set, never a message).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub namespace: String,
    pub stoa: String,
    /// `maxReplicas`, `postgres` or `redis`.
    pub limited_by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub namespace: String,
    pub stoa: String,
    pub kid: String,
    pub state: String,
}

/// The series last published for one Stoa, so a changed reason, limit or key replaces
/// its old series instead of leaving it behind.
#[derive(Default)]
struct Published {
    conditions: Vec<ConditionLabels>,
    /// Set while the Stoa has an autoscaler decision (its replica gauges exist too).
    limit: Option<LimitLabels>,
    keys: Vec<KeyLabels>,
}

/// Each Stoa's status as gauges: what dashboards and alerts read about the resources
/// (conditions, replicas, autoscaler decisions, signing keys).
#[derive(Default)]
struct StatusGauges {
    conditions: Family<ConditionLabels, Gauge>,
    ready_replicas: Family<StoaLabels, Gauge>,
    desired_replicas: Family<StoaLabels, Gauge>,
    wanted_replicas: Family<StoaLabels, Gauge>,
    max_replicas: Family<LimitLabels, Gauge>,
    key_created: Family<KeyLabels, Gauge<f64, AtomicU64>>,
    published: Mutex<HashMap<StoaLabels, Published>>,
}

pub struct Metrics {
    registry: Registry,
    status: StatusGauges,
    rotation_steps: Family<RotationLabels, Counter>,
    role_drops: Family<RoleDropLabels, Counter>,
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
    /// Over ~80 lines: one registration per metric, in the order `/metrics` lists them.
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
        let role_drops = Family::<RoleDropLabels, Counter>::default();
        registry.register(
            "database_role_drops",
            "Deleted Stoas whose database roles were dropped, abandoned (left in the \
             database: see the DatabaseRolesLeft event) or skipped on request",
            role_drops.clone(),
        );
        for outcome in ["dropped", "abandoned", "skipped"] {
            role_drops
                .get_or_create(&RoleDropLabels { outcome })
                .inc_by(0);
        }
        let rotation_confirm = Family::<ProtocolLabels, Histogram>::new_with_constructor(
            confirmation_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "rotation_confirmation",
            "Time from publishing a new key or credential until every ready pod had loaded it",
            Unit::Seconds,
            rotation_confirm.clone(),
        );
        let status = StatusGauges::default();
        status.register(&mut registry);
        for outcome in ["success", "error"] {
            reconciles
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        // Every step at zero from the start: a dashboard shows 0, and `increase()` sees
        // the first step.
        for (protocol, steps) in [
            ("keys", &["started", "promoted", "retired", "stalled"][..]),
            (
                "credentials",
                &["started", "published", "expired", "stalled"][..],
            ),
        ] {
            for step in steps {
                rotation_steps
                    .get_or_create(&RotationLabels { protocol, step })
                    .inc_by(0);
            }
        }
        for error in crate::error::Error::METRIC_LABELS {
            errors.get_or_create(&ErrorLabels { error }).inc_by(0);
        }
        for protocol in ["keys", "credentials"] {
            // An empty histogram: its series exist before the first rotation completes.
            drop(rotation_confirm.get_or_create(&ProtocolLabels { protocol }));
        }
        Metrics {
            registry,
            status,
            rotation_steps,
            role_drops,
            rotation_confirm,
            reconciles,
            duration,
            errors,
            leader,
        }
    }

    /// Publishes what this status says about the Stoa (called on every reconcile, written
    /// or not, so a restarted operator shows it at once).
    pub fn observe_status(&self, namespace: &str, name: &str, status: &StoaStatus) {
        self.status.observe(namespace, name, status);
    }

    /// Removes a deleted Stoa's series.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.status.forget(&StoaLabels {
            namespace: namespace.to_owned(),
            stoa: name.to_owned(),
        });
    }

    pub fn observe_reconcile(&self, outcome: &'static str, elapsed: Duration) {
        let labels = OutcomeLabels { outcome };
        self.reconciles.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_role_drop(&self, outcome: &'static str) {
        self.role_drops
            .get_or_create(&RoleDropLabels { outcome })
            .inc();
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

impl StatusGauges {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "stoa_condition",
            "A Stoa's status conditions: 1 while True, 0 while False, with the reason",
            self.conditions.clone(),
        );
        registry.register(
            "ready_replicas",
            "Ready pods of each Stoa's Deployment",
            self.ready_replicas.clone(),
        );
        registry.register(
            "autoscaler_desired_replicas",
            "Replicas the Concurrency autoscaler set (what the load asks for, within the bounds)",
            self.desired_replicas.clone(),
        );
        registry.register(
            "autoscaler_wanted_replicas",
            "Replicas the load asks for before the bounds (Concurrency autoscaler)",
            self.wanted_replicas.clone(),
        );
        registry.register(
            "autoscaler_max_replicas",
            "The effective maximum: the least of maxReplicas and what PostgreSQL and Redis \
             can take, labelled with what sets it",
            self.max_replicas.clone(),
        );
        registry.register_with_unit(
            "signing_key_created_timestamp",
            "When each signing key in a Stoa's key set was created, by kid and state",
            Unit::Seconds,
            self.key_created.clone(),
        );
    }

    fn published(&self) -> std::sync::MutexGuard<'_, HashMap<StoaLabels, Published>> {
        match self.published.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn observe(&self, namespace: &str, name: &str, status: &StoaStatus) {
        let stoa = StoaLabels {
            namespace: namespace.to_owned(),
            stoa: name.to_owned(),
        };
        let mut published = self.published();
        let mut now = Published::default();

        for condition in &status.conditions {
            let labels = ConditionLabels {
                namespace: stoa.namespace.clone(),
                stoa: stoa.stoa.clone(),
                condition: condition.type_.clone(),
                reason: condition.reason.clone(),
            };
            self.conditions
                .get_or_create(&labels)
                .set(i64::from(condition.status == "True"));
            now.conditions.push(labels);
        }
        self.ready_replicas
            .get_or_create(&stoa)
            .set(i64::from(status.ready_replicas));
        if let Some(scaling) = &status.autoscaling {
            self.desired_replicas
                .get_or_create(&stoa)
                .set(i64::from(scaling.desired_replicas));
            self.wanted_replicas
                .get_or_create(&stoa)
                .set(i64::from(scaling.wanted_replicas));
            let limit = LimitLabels {
                namespace: stoa.namespace.clone(),
                stoa: stoa.stoa.clone(),
                limited_by: scaling.limited_by.clone(),
            };
            self.max_replicas
                .get_or_create(&limit)
                .set(i64::from(scaling.effective_max_replicas));
            now.limit = Some(limit);
        }
        for key in &status.keys {
            let Some(created) = key
                .created_at
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok())
            else {
                continue;
            };
            let labels = KeyLabels {
                namespace: stoa.namespace.clone(),
                stoa: stoa.stoa.clone(),
                kid: key.kid.clone(),
                state: key.state.clone(),
            };
            // Milliseconds as f64 seconds: exact to well past the year 200,000.
            #[allow(clippy::cast_precision_loss)]
            let seconds = created.as_millisecond() as f64 / 1000.0;
            self.key_created.get_or_create(&labels).set(seconds);
            now.keys.push(labels);
        }
        // Removed only after the new values are set: a scrape never sees a gap.
        if let Some(previous) = published.insert(stoa.clone(), now) {
            self.remove(&stoa, &previous, published.get(&stoa));
        }
    }

    fn forget(&self, stoa: &StoaLabels) {
        if let Some(previous) = self.published().remove(stoa) {
            self.remove(stoa, &previous, None);
        }
        self.ready_replicas.remove(stoa);
    }

    /// Removes the series of `previous` that `current` no longer publishes.
    fn remove(&self, stoa: &StoaLabels, previous: &Published, current: Option<&Published>) {
        let empty = Published::default();
        let current = current.unwrap_or(&empty);
        for labels in previous
            .conditions
            .iter()
            .filter(|l| !current.conditions.contains(l))
        {
            self.conditions.remove(labels);
        }
        if let Some(limit) = previous
            .limit
            .as_ref()
            .filter(|l| current.limit.as_ref() != Some(l))
        {
            self.max_replicas.remove(limit);
        }
        if previous.limit.is_some() && current.limit.is_none() {
            self.desired_replicas.remove(stoa);
            self.wanted_replicas.remove(stoa);
        }
        for labels in previous.keys.iter().filter(|l| !current.keys.contains(l)) {
            self.key_created.remove(labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::crd::{AutoscalingStatus, KeyStatus};

    fn condition(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn a_stoa_status_becomes_gauges_and_a_changed_reason_replaces_its_series() {
        let metrics = Metrics::new();
        let mut status = StoaStatus {
            conditions: vec![
                condition("Ready", "True", "Available"),
                condition("Degraded", "True", "MigrationFailed"),
            ],
            ready_replicas: 2,
            autoscaling: Some(AutoscalingStatus {
                desired_replicas: 3,
                wanted_replicas: 5,
                effective_max_replicas: 3,
                limited_by: "postgres".into(),
                reason: "Stable".into(),
                ..AutoscalingStatus::default()
            }),
            keys: vec![KeyStatus {
                kid: "k1".into(),
                state: "active".into(),
                created_at: Some("2026-11-26T10:00:00Z".into()),
                since: None,
            }],
            ..StoaStatus::default()
        };
        metrics.observe_status("shop", "api", &status);
        let text = metrics.encode().unwrap();
        for series in [
            r#"stoa_operator_stoa_condition{namespace="shop",stoa="api",condition="Degraded",reason="MigrationFailed"} 1"#,
            r#"stoa_operator_ready_replicas{namespace="shop",stoa="api"} 2"#,
            r#"stoa_operator_autoscaler_wanted_replicas{namespace="shop",stoa="api"} 5"#,
            r#"stoa_operator_autoscaler_max_replicas{namespace="shop",stoa="api",limited_by="postgres"} 3"#,
            r#"stoa_operator_signing_key_created_timestamp_seconds{namespace="shop",stoa="api",kid="k1",state="active"} 1795687200.0"#,
            r#"stoa_operator_rotation_steps_total{protocol="credentials",step="stalled"} 0"#,
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }

        status.conditions[1] = condition("Degraded", "False", "AsExpected");
        status.autoscaling = None;
        metrics.observe_status("shop", "api", &status);
        let text = metrics.encode().unwrap();
        assert!(!text.contains("MigrationFailed"), "{text}");
        assert!(!text.contains("autoscaler_wanted_replicas{"), "{text}");
        assert!(
            text.contains(r#"condition="Degraded",reason="AsExpected"} 0"#),
            "{text}"
        );

        metrics.forget("shop", "api");
        let text = metrics.encode().unwrap();
        assert!(!text.contains(r#"stoa="api""#), "{text}");
    }
}
