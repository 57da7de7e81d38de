//! What wakes the reconciler, and what its status carries, so a steady Stoa is not
//! reconciled in a loop.
//!
//! Each status write is a change to the Stoa, and so a watch event. Unfiltered, the
//! event started an immediate reconcile (its GETs, pod lists and probes of every pod),
//! whose fresh readings (queue depth, requests in flight) changed the status again: a
//! busy Stoa was reconciled back to back. The Stoa's own watch now wakes the reconciler
//! only for what a person or a controller changes — the spec (its `generation`),
//! annotations (rotation requests, the skip annotation), finalizers and deletion — and
//! fast readings reach the status rounded to two significant digits (exact values are
//! in the metrics). Owned objects still wake it on every change (drift is corrected at
//! once), and each reconcile asks to be requeued when its protocols next need a look.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::DynamicObject;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, ResourceExt};

use crate::crd::Stoa;

/// The part of a Stoa whose change needs a reconcile; status changes are not in it.
pub fn reconcile_trigger(stoa: &Stoa) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    predicates::generation(stoa).hash(&mut hasher);
    stoa.annotations().hash(&mut hasher);
    stoa.finalizers().hash(&mut hasher);
    stoa.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

/// `value` rounded to two significant digits (`1234` → `1200`, `57` → `57`), for status
/// fields that change with every reading.
pub fn two_digits(value: i64) -> i64 {
    let mut scale = 1;
    while value.abs() / scale >= 100 {
        scale *= 10;
    }
    (value + scale / 2) / scale * scale
}

/// A rate such as requests in flight, to two significant digits (`12.46` → `12`,
/// `3.27` → `3.3`, `0.046` → `0.046`).
pub fn two_digits_f64(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return "0".to_owned();
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = usize::try_from((1 - magnitude).max(0)).unwrap_or(0);
    format!("{value:.decimals$}")
}

/// The controller as `stoa-operator run` starts it: the Stoas of `namespace` (or all),
/// filtered by [`reconcile_trigger`], and every type it owns.
pub fn controller(
    client: &Client,
    namespace: Option<&str>,
    service_monitors: bool,
) -> Controller<Stoa> {
    let stoas: Api<Stoa> = scoped(client, namespace);
    let (reader, writer): (Store<Stoa>, _) = reflector::store();
    let triggers = watcher(stoas, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(reconcile_trigger, Default::default());
    watching_owned(
        Controller::for_stream(triggers, reader),
        client,
        namespace,
        service_monitors,
    )
}

/// `controller` watching every type the reconciler writes (those of `namespace`, or all),
/// so drift is corrected at once.
pub fn watching_owned(
    controller: Controller<Stoa>,
    client: &Client,
    namespace: Option<&str>,
    service_monitors: bool,
) -> Controller<Stoa> {
    let managed =
        || watcher::Config::default().labels("app.kubernetes.io/managed-by=stoa-operator");
    let mut controller = controller
        .owns(scoped::<Deployment>(client, namespace), managed())
        .owns(scoped::<Service>(client, namespace), managed())
        .owns(scoped::<ConfigMap>(client, namespace), managed())
        .owns(scoped::<ServiceAccount>(client, namespace), managed())
        .owns(scoped::<PodDisruptionBudget>(client, namespace), managed())
        .owns(scoped::<Ingress>(client, namespace), managed())
        .owns(scoped::<NetworkPolicy>(client, namespace), managed())
        .owns(
            scoped::<HorizontalPodAutoscaler>(client, namespace),
            managed(),
        )
        .owns(scoped::<Job>(client, namespace), managed())
        .owns(
            scoped::<Secret>(client, namespace),
            watcher::Config::default().labels("stoa.dev/secret=jwt-keys"),
        );
    if service_monitors {
        let resource = crate::resources::service_monitor_resource();
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        controller = controller.owns_with(api, resource, managed());
    }
    controller
}

/// An API over one namespace, or all of them.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stoa() -> Stoa {
        serde_norway::from_str(
            "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: api, namespace: shop, generation: 3}
spec:
  image: x:1
  database: {urlSecretRef: {name: db}}
",
        )
        .unwrap()
    }

    #[test]
    fn status_changes_do_not_wake_the_reconciler_and_everything_else_does() {
        let base = stoa();
        let mut status_only = base.clone();
        status_only.status = Some(crate::crd::StoaStatus {
            ready_replicas: 7,
            ..Default::default()
        });
        status_only.metadata.resource_version = Some("999".into());
        assert_eq!(reconcile_trigger(&status_only), reconcile_trigger(&base));

        let mut spec = base.clone();
        spec.metadata.generation = Some(4);
        let mut annotated = base.clone();
        annotated
            .annotations_mut()
            .insert("stoa.dev/rotate-keys".into(), "now".into());
        let mut finalized = base.clone();
        finalized
            .finalizers_mut()
            .push("stoa.dev/database-roles".into());
        let mut deleting = base.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        for changed in [spec, annotated, finalized, deleting] {
            assert_ne!(reconcile_trigger(&changed), reconcile_trigger(&base));
        }
    }

    #[test]
    fn fast_readings_keep_two_significant_digits() {
        assert_eq!(two_digits(0), 0);
        assert_eq!(two_digits(57), 57);
        assert_eq!(two_digits(1234), 1200);
        assert_eq!(two_digits(1250), 1300);
        assert_eq!(two_digits(99_999), 100_000);
        assert_eq!(two_digits_f64(12.46), "12");
        assert_eq!(two_digits_f64(3.27), "3.3");
        assert_eq!(two_digits_f64(0.046), "0.046");
        assert_eq!(two_digits_f64(0.0), "0");
    }
}
