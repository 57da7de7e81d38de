//! `stoa-operator render`: the objects the reconciler would apply for a Stoa, built by the
//! same builders and stamped with the same digest, without a cluster — so a platform team
//! can review a change, or diff it against what runs, before applying it.
//!
//! What the reconciler decides from the cluster is taken from the Stoa's `status` when the
//! file has one (as `kubectl get stoa -o yaml` prints it): the approved image, the
//! Concurrency autoscaler's count. Without it, the Stoa is treated as new. Secrets are not
//! printed: the key Secret holds a generated key set and the connection Secret a password.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::apply;
use crate::crd::{AutoscalingMode, MigrationMode, Stoa};
use crate::error::{Error, Result};
use crate::resources::{self, Names, Replicas};
use crate::rollout::{self, Observed};

pub struct Options {
    /// Whether the Prometheus Operator's ServiceMonitor type exists in the target cluster.
    pub service_monitors: bool,
    /// The operator's namespace (the NetworkPolicy admits it to the admin port).
    pub operator_namespace: Option<String>,
}

/// When the reconciler applies an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Now,
    /// Once the migration Job for the new image has succeeded.
    AfterMigration,
}

#[derive(Clone, Debug)]
pub struct Rendered {
    pub kind: String,
    pub name: String,
    pub when: When,
    pub object: Value,
}

/// How a rendered object compares with one that exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    New,
    /// Applying it would change nothing (the reconciler would not even write).
    Unchanged,
    Changed,
}

impl Comparison {
    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::New => "new",
            Comparison::Unchanged => "unchanged",
            Comparison::Changed => "changed",
        }
    }
}

fn entry<K: kube::Resource<DynamicType = ()> + Serialize>(
    object: K,
    when: When,
) -> Result<Rendered> {
    let object = apply::stamped(object)?;
    Ok(Rendered {
        kind: K::kind(&()).into_owned(),
        name: object.meta().name.clone().unwrap_or_default(),
        when,
        object: serde_json::to_value(&object).map_err(Error::Serialize)?,
    })
}

/// The objects for `stoa`, in the order the reconciler applies them, and notes on what is
/// not printed. Over ~80 lines: one push per object, in the reconcile's order, which a
/// reader compares with `controller::pass::ORDER`.
pub fn render(stoa: &Stoa, options: &Options) -> Result<(Vec<Rendered>, Vec<String>)> {
    let names = Names::of(stoa);
    let status = stoa.status.clone().unwrap_or_default();
    let mut out = Vec::new();
    let mut notes = vec![
        format!(
            "Secret {} is created once with a generated signing key set (not printed)",
            names.keys
        ),
        "ownerReferences carry the Stoa's uid as the file gives it".to_owned(),
    ];
    if resources::rotation_enabled(stoa) {
        notes.push(format!(
            "Secret {} is created once from spec.database.urlSecretRef and rotated (not printed)",
            names.credentials
        ));
    }
    out.push(entry(resources::service_account(stoa)?, When::Now)?);
    let config = resources::config_map(stoa)?;
    out.push(entry(config.clone(), When::Now)?);

    let observed = Observed {
        approved_image: status.approved_image.clone(),
        contracted_image: status.contracted_image.clone(),
        schema_version: status.schema_version,
        jobs: Vec::new(),
        rollout_complete: false,
    };
    let plan = rollout::plan(stoa, &observed);
    if let Some(request) = &plan.create {
        // Jobs are created as built (never re-applied), so they carry no digest.
        let job = resources::migration_job(stoa, request)?;
        out.push(Rendered {
            kind: "Job".into(),
            name: job.metadata.name.clone().unwrap_or_default(),
            when: When::Now,
            object: serde_json::to_value(&job).map_err(Error::Serialize)?,
        });
    }
    let replicas = Replicas::of(stoa);
    if stoa.spec.autoscaling.mode == AutoscalingMode::Hpa
        && let Some(hpa) = resources::horizontal_pod_autoscaler(stoa)?
    {
        out.push(entry(hpa, When::Now)?);
    }
    let workers = status
        .worker
        .as_ref()
        .map_or(stoa.spec.worker.min_replicas, |w| w.desired_replicas);
    // The API Deployment and, beside it, the workers', on the same image.
    let mut deployments = |image: &str, when: When| -> Result<()> {
        out.push(entry(
            resources::scaled_deployment(stoa, &config, image, replicas)?,
            when,
        )?);
        if stoa.spec.worker.enabled {
            out.push(entry(
                resources::worker_deployment(stoa, &config, image, workers)?,
                when,
            )?);
        }
        Ok(())
    };
    match (&plan.deploy_image, stoa.spec.migrations.mode) {
        (Some(image), _) => {
            deployments(image, When::Now)?;
            if image != &stoa.spec.image {
                // What they become once the new image's migration succeeded.
                deployments(&stoa.spec.image, When::AfterMigration)?;
            }
        }
        (None, MigrationMode::Auto) => deployments(&stoa.spec.image, When::AfterMigration)?,
        (None, MigrationMode::Disabled) => {}
    }
    out.push(entry(resources::service(stoa)?, When::Now)?);
    if let Some(workers) = resources::worker_metrics_service(stoa)? {
        out.push(entry(workers, When::Now)?);
    }
    if let Some(pdb) = resources::pod_disruption_budget(stoa)? {
        out.push(entry(pdb, When::Now)?);
    }
    if let Some(ingress) = resources::ingress(stoa)? {
        out.push(entry(ingress, When::Now)?);
    }
    if let Some(policy) = resources::network_policy(stoa, options.operator_namespace.as_deref())? {
        out.push(entry(policy, When::Now)?);
    }
    if options.service_monitors
        && let Some(monitor) = resources::service_monitor(stoa)?
    {
        let monitor = apply::stamped(monitor)?;
        out.push(Rendered {
            kind: "ServiceMonitor".into(),
            name: monitor.metadata.name.clone().unwrap_or_default(),
            when: When::Now,
            object: serde_json::to_value(&monitor).map_err(Error::Serialize)?,
        });
    }
    Ok((out, notes))
}

/// Compares each rendered object with the existing one of the same kind and name, the way
/// the reconciler decides whether to write (its digest and every field it sets).
pub fn compare(rendered: &[Rendered], existing: &[Value]) -> Vec<Comparison> {
    let key = |v: &Value| {
        (
            v["kind"].as_str().unwrap_or_default().to_owned(),
            v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let by_name: BTreeMap<(String, String), &Value> =
        existing.iter().map(|v| (key(v), v)).collect();
    rendered
        .iter()
        .map(|r| match by_name.get(&(r.kind.clone(), r.name.clone())) {
            None => Comparison::New,
            Some(actual) => {
                let digest = |v: &Value| {
                    v["metadata"]["annotations"][apply::APPLIED_ANNOTATION]
                        .as_str()
                        .map(str::to_owned)
                };
                // Jobs are created once and never re-applied: existing is enough.
                if digest(&r.object).is_none() {
                    return Comparison::Unchanged;
                }
                if digest(actual).is_some()
                    && digest(actual) == digest(&r.object)
                    && apply::contains(actual, &r.object)
                {
                    Comparison::Unchanged
                } else {
                    Comparison::Changed
                }
            }
        })
        .collect()
}

/// The uid given to a Stoa from a file without one (its objects' ownerReferences need one).
const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// Parses YAML documents into JSON values, flattening `kind: List` (`kubectl get -o yaml`).
pub fn documents(text: &str) -> std::result::Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| e.to_string())?;
        match value {
            Value::Null => {}
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                out.extend(
                    map.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// `stoa-operator render`: the YAML for every Stoa in `input`, each object headed by a
/// comment saying when it is applied (and, given what exists, whether it changes).
pub fn render_documents(
    input: &str,
    existing: Option<&[Value]>,
    namespace: &str,
    options: &Options,
) -> std::result::Result<String, String> {
    let stoas: Vec<Stoa> = documents(input)?
        .into_iter()
        .filter(|v| v.get("kind").and_then(Value::as_str) == Some("Stoa"))
        .map(|v| serde_json::from_value::<Stoa>(v).map_err(|e| format!("invalid Stoa: {e}")))
        .collect::<std::result::Result<_, _>>()?;
    if stoas.is_empty() {
        return Err("no Stoa in the input".into());
    }
    let mut out = String::new();
    for mut stoa in stoas {
        stoa.metadata
            .namespace
            .get_or_insert_with(|| namespace.to_owned());
        stoa.metadata
            .uid
            .get_or_insert_with(|| PLACEHOLDER_UID.to_owned());
        let (objects, notes) = render(&stoa, options).map_err(|e| e.to_string())?;
        let comparisons = existing.map(|e| compare(&objects, e));
        out.push_str(&format!(
            "# Stoa {}/{}: what stoa-operator applies\n",
            stoa.metadata.namespace.as_deref().unwrap_or_default(),
            stoa.metadata.name.as_deref().unwrap_or_default()
        ));
        for note in notes {
            out.push_str(&format!("# {note}\n"));
        }
        for (i, object) in objects.iter().enumerate() {
            let when = match object.when {
                When::Now => "applied now",
                When::AfterMigration => "applied once the migration Job succeeds",
            };
            let state = comparisons
                .as_ref()
                .map(|c| format!(", {}", c[i].as_str()))
                .unwrap_or_default();
            let yaml = serde_norway::to_string(&object.object).map_err(|e| e.to_string())?;
            out.push_str(&format!(
                "---\n# {} {}: {when}{state}\n{yaml}",
                object.kind, object.name
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stoa(yaml: &str) -> Stoa {
        serde_norway::from_str(yaml).unwrap()
    }

    const NEW: &str = "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555}
spec:
  image: ghcr.io/stoa-dev/stoa-api:0.2.0
  database: {urlSecretRef: {name: api-db}}
";

    fn options() -> Options {
        Options {
            service_monitors: false,
            operator_namespace: Some("stoa-system".into()),
        }
    }

    #[test]
    fn a_new_stoa_migrates_first_and_its_deployment_follows() {
        let (objects, notes) = render(&stoa(NEW), &options()).unwrap();
        let kinds: Vec<(&str, When)> = objects.iter().map(|o| (o.kind.as_str(), o.when)).collect();
        assert_eq!(
            kinds,
            [
                ("ServiceAccount", When::Now),
                ("ConfigMap", When::Now),
                ("Job", When::Now),
                ("Deployment", When::AfterMigration),
                ("Deployment", When::AfterMigration),
                ("Service", When::Now),
                ("Service", When::Now),
                ("PodDisruptionBudget", When::Now),
            ]
        );
        assert!(notes.iter().any(|n| n.contains("api-jwt-keys")));
        // Stamped exactly as applied (Jobs are created once, as built).
        assert!(
            objects
                .iter()
                .filter(|o| o.kind != "Job")
                .all(
                    |o| o.object["metadata"]["annotations"][apply::APPLIED_ANNOTATION].is_string()
                )
        );
    }

    #[test]
    fn an_image_change_shows_the_running_deployments_and_what_they_become() {
        let mut running = stoa(NEW);
        running.status = Some(crate::crd::StoaStatus {
            approved_image: Some("ghcr.io/stoa-dev/stoa-api:0.1.0".into()),
            contracted_image: Some("ghcr.io/stoa-dev/stoa-api:0.1.0".into()),
            ..Default::default()
        });
        let (objects, _) = render(&running, &options()).unwrap();
        let deployments: Vec<(&str, &str, When)> = objects
            .iter()
            .filter(|o| o.kind == "Deployment")
            .map(|o| {
                (
                    o.name.as_str(),
                    o.object["spec"]["template"]["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap(),
                    o.when,
                )
            })
            .collect();
        assert_eq!(
            deployments,
            [
                ("api", "ghcr.io/stoa-dev/stoa-api:0.1.0", When::Now),
                ("api-worker", "ghcr.io/stoa-dev/stoa-api:0.1.0", When::Now),
                (
                    "api",
                    "ghcr.io/stoa-dev/stoa-api:0.2.0",
                    When::AfterMigration
                ),
                (
                    "api-worker",
                    "ghcr.io/stoa-dev/stoa-api:0.2.0",
                    When::AfterMigration
                )
            ]
        );
    }

    #[test]
    fn comparing_with_what_exists_finds_new_changed_and_unchanged_objects() {
        let (objects, _) = render(&stoa(NEW), &options()).unwrap();
        let service = objects.iter().find(|o| o.kind == "Service").unwrap();
        let mut defaulted = service.object.clone();
        // The API server adds defaults; they do not count as changes.
        defaulted["spec"]["sessionAffinity"] = "None".into();
        let mut edited = objects
            .iter()
            .find(|o| o.kind == "ConfigMap")
            .unwrap()
            .object
            .clone();
        edited["data"]["STOA_LOG_FORMAT"] = "pretty".into();
        let result = compare(&objects, &[defaulted, edited]);
        let by_kind: Vec<(&str, Comparison)> = objects
            .iter()
            .map(|o| o.kind.as_str())
            .zip(result)
            .collect();
        assert!(by_kind.contains(&("Service", Comparison::Unchanged)));
        assert!(by_kind.contains(&("ConfigMap", Comparison::Changed)));
        assert!(by_kind.contains(&("ServiceAccount", Comparison::New)));
    }
}
