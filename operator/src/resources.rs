//! Pure builders: the Kubernetes objects a `Stoa` needs, as functions of its spec (same
//! spec, same objects). The reconciler applies what these return and nothing else.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::crd::{AutoscalingMode, Stoa};

pub const API_PORT: i32 = 8080;
pub const METRICS_PORT: i32 = 9090;
pub const KEYS_MOUNT: &str = "/var/run/stoa/keys";
pub const DATABASE_MOUNT: &str = "/var/run/stoa/database";
pub const REDIS_MOUNT: &str = "/var/run/stoa/redis";
pub const CONFIG_HASH_ANNOTATION: &str = "stoa.dev/config-hash";
pub const RUN_AS: i64 = 65532;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the Stoa has no {0}")]
    MissingMetadata(&'static str),
    #[error("built an invalid {kind}: {source}")]
    Invalid {
        kind: &'static str,
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, BuildError>;

/// Names of everything a Stoa owns.
pub struct Names {
    pub base: String,
    pub config: String,
    pub keys: String,
}

impl Names {
    pub fn of(stoa: &Stoa) -> Names {
        let base = stoa.name_any();
        Names {
            config: format!("{base}-config"),
            keys: format!("{base}-jwt-keys"),
            base,
        }
    }
}

/// Labels on every object, and the subset that selects the pods.
pub fn labels(stoa: &Stoa) -> BTreeMap<String, String> {
    let mut labels = selector_labels(stoa);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "stoa-operator".into(),
    );
    labels.insert("app.kubernetes.io/part-of".into(), "stoa".into());
    labels
}

pub fn selector_labels(stoa: &Stoa) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "stoa".into()),
        ("app.kubernetes.io/instance".into(), stoa.name_any()),
        ("app.kubernetes.io/component".into(), "api".into()),
    ])
}

/// `a=b,c=d`: the selector string for the scale subresource.
pub fn selector_string(stoa: &Stoa) -> String {
    selector_labels(stoa)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn owner(stoa: &Stoa) -> Result<OwnerReference> {
    stoa.controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))
}

fn meta(stoa: &Stoa, name: &str) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(
            stoa.namespace()
                .ok_or(BuildError::MissingMetadata("namespace"))?,
        ),
        labels: Some(labels(stoa)),
        owner_references: Some(vec![owner(stoa)?]),
        ..ObjectMeta::default()
    })
}

fn typed<T: serde::de::DeserializeOwned>(kind: &'static str, value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|source| BuildError::Invalid { kind, source })
}

pub fn service_account(stoa: &Stoa) -> Result<ServiceAccount> {
    Ok(ServiceAccount {
        metadata: meta(stoa, &Names::of(stoa).base)?,
        // stoa-api never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    })
}

/// Non-secret settings of stoa-api (see its README for each variable).
pub fn config_map(stoa: &Stoa) -> Result<ConfigMap> {
    let spec = &stoa.spec;
    let mut data = BTreeMap::from([
        ("STOA_LISTEN_ADDR".to_owned(), format!("0.0.0.0:{API_PORT}")),
        (
            "STOA_ADMIN_ADDR".to_owned(),
            format!("0.0.0.0:{METRICS_PORT}"),
        ),
        ("STOA_LOG_FORMAT".to_owned(), "json".to_owned()),
        ("STOA_JWT_KEYS_DIR".to_owned(), KEYS_MOUNT.to_owned()),
        (
            "STOA_DATABASE_URL_FILE".to_owned(),
            format!("{DATABASE_MOUNT}/url"),
        ),
        (
            "STOA_DB_MAX_CONNECTIONS".to_owned(),
            spec.database.max_connections.to_string(),
        ),
        (
            "STOA_ACCESS_TOKEN_TTL".to_owned(),
            spec.auth.access_token_ttl.clone(),
        ),
        (
            "STOA_REFRESH_TOKEN_TTL".to_owned(),
            spec.auth.refresh_token_ttl.clone(),
        ),
        // The preStop pause already keeps traffic flowing while endpoints update.
        ("STOA_SHUTDOWN_DELAY".to_owned(), "2s".to_owned()),
        ("STOA_SHUTDOWN_TIMEOUT".to_owned(), "20s".to_owned()),
        // Behind an Ingress controller, the client address is the last X-Forwarded-For hop.
        (
            "STOA_TRUSTED_PROXY_HOPS".to_owned(),
            if spec.ingress.is_some() { "1" } else { "0" }.to_owned(),
        ),
    ]);
    if spec.redis.is_some() {
        data.insert("STOA_REDIS_URL_FILE".into(), format!("{REDIS_MOUNT}/url"));
    }
    Ok(ConfigMap {
        metadata: meta(stoa, &Names::of(stoa).config)?,
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The signing-key Secret, holding `keyset.json` in the format stoa-api reads
/// (`stoa_api::keys`). Created once with a fresh key set; never overwritten.
pub fn key_secret(stoa: &Stoa, keyset: &stoa_api::keys::KeySetFile) -> Result<Secret> {
    let json = serde_json::to_vec_pretty(keyset).map_err(|source| BuildError::Invalid {
        kind: "Secret",
        source,
    })?;
    let mut metadata = meta(stoa, &Names::of(stoa).keys)?;
    metadata
        .labels
        .get_or_insert_default()
        .insert("stoa.dev/secret".into(), "jwt-keys".into());
    Ok(Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            stoa_api::keys::KEYSET_FILE.to_owned(),
            ByteString(json),
        )])),
        ..Secret::default()
    })
}

/// A digest of everything that must restart the pods when it changes.
pub fn config_hash(stoa: &Stoa, config: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&config.data).unwrap_or_default());
    hasher.update(serde_json::to_vec(&stoa.spec.env).unwrap_or_default());
    hasher.update(serde_json::to_vec(&stoa.spec.database.url_secret_ref).unwrap_or_default());
    hasher.update(serde_json::to_vec(&stoa.spec.redis).unwrap_or_default());
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

pub fn deployment(stoa: &Stoa, config: &ConfigMap) -> Result<Deployment> {
    let spec = &stoa.spec;
    let names = Names::of(stoa);
    let selector = selector_labels(stoa);
    let mut pod_labels = labels(stoa);
    pod_labels.extend(spec.pod.labels.clone());
    // User labels never override the selector.
    pod_labels.extend(selector.clone());
    let mut annotations = spec.pod.annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash(stoa, config));

    let resources = spec.resources.clone().map_or_else(
        || json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}),
        |r| json!(r),
    );
    let mut volumes = vec![
        json!({"name": "keys", "secret": {"secretName": names.keys, "defaultMode": 0o440}}),
        json!({"name": "database", "secret": {
            "secretName": spec.database.url_secret_ref.name,
            "items": [{"key": spec.database.url_secret_ref.key, "path": "url"}],
            "defaultMode": 0o440}}),
        json!({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}),
    ];
    let mut mounts = vec![
        json!({"name": "keys", "mountPath": KEYS_MOUNT, "readOnly": true}),
        json!({"name": "database", "mountPath": DATABASE_MOUNT, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    if let Some(redis) = &spec.redis {
        volumes.push(json!({"name": "redis", "secret": {
            "secretName": redis.url_secret_ref.name,
            "items": [{"key": redis.url_secret_ref.key, "path": "url"}],
            "defaultMode": 0o440}}));
        mounts.push(json!({"name": "redis", "mountPath": REDIS_MOUNT, "readOnly": true}));
    }
    let container_security = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "privileged": false,
        "capabilities": {"drop": ["ALL"]}
    });
    let spread = |key: &str| {
        json!({"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": selector}})
    };

    let mut deployment_spec = json!({
        "selector": {"matchLabels": selector},
        "revisionHistoryLimit": 5,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
        "template": {
            "metadata": {"labels": pod_labels, "annotations": annotations},
            "spec": {
                "serviceAccountName": names.base,
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "terminationGracePeriodSeconds": 30,
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": RUN_AS,
                    "runAsGroup": RUN_AS,
                    "fsGroup": RUN_AS,
                    "seccompProfile": {"type": "RuntimeDefault"}
                },
                "topologySpreadConstraints": [spread("topology.kubernetes.io/zone"), spread("kubernetes.io/hostname")],
                "nodeSelector": spec.pod.node_selector,
                "tolerations": spec.pod.tolerations,
                "affinity": spec.pod.affinity,
                "imagePullSecrets": spec.pod.image_pull_secrets,
                "priorityClassName": spec.pod.priority_class_name,
                "volumes": volumes,
                // Until migrations run as gated Jobs, each pod brings the schema up to date
                // before it starts (under PostgreSQL's advisory lock, so concurrent pods are safe).
                "initContainers": [{
                    "name": "migrate",
                    "image": spec.image,
                    "imagePullPolicy": spec.image_pull_policy,
                    "args": ["migrate"],
                    "envFrom": [{"configMapRef": {"name": names.config}}],
                    "resources": resources,
                    "volumeMounts": [{"name": "database", "mountPath": DATABASE_MOUNT, "readOnly": true}],
                    "securityContext": container_security
                }],
                "containers": [{
                    "name": "api",
                    "image": spec.image,
                    "imagePullPolicy": spec.image_pull_policy,
                    "args": ["serve"],
                    "ports": [
                        {"name": "http", "containerPort": API_PORT, "protocol": "TCP"},
                        {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}
                    ],
                    "envFrom": [{"configMapRef": {"name": names.config}}],
                    "env": spec.env,
                    "resources": resources,
                    "volumeMounts": mounts,
                    "securityContext": container_security,
                    "startupProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 30},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 2},
                    // Keep serving while endpoints and load balancers drop this pod.
                    "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}
                }]
            }
        }
    });
    // With an autoscaler, the replica count is not ours: leaving it out of the applied
    // object means server-side apply never fights the scaler over it.
    if spec.autoscaling.mode == AutoscalingMode::Disabled {
        deployment_spec["replicas"] = json!(spec.replicas);
    }
    strip_nulls(&mut deployment_spec);
    Ok(Deployment {
        metadata: meta(stoa, &names.base)?,
        spec: Some(typed("Deployment", deployment_spec)?),
        status: None,
    })
}

/// Drops `null` and empty-collection fields so the applied object only claims what it sets.
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| {
                !(v.is_null()
                    || v.as_array().is_some_and(Vec::is_empty)
                    || v.as_object().is_some_and(|o| o.is_empty()))
            });
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

pub fn service(stoa: &Stoa) -> Result<Service> {
    Ok(Service {
        metadata: meta(stoa, &Names::of(stoa).base)?,
        spec: Some(typed(
            "Service",
            json!({
                "type": "ClusterIP",
                "selector": selector_labels(stoa),
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                    {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}
                ]
            }),
        )?),
        status: None,
    })
}

pub fn pod_disruption_budget(stoa: &Stoa) -> Result<Option<PodDisruptionBudget>> {
    let pdb = &stoa.spec.pod_disruption_budget;
    if !pdb.enabled {
        return Ok(None);
    }
    // With an autoscaler, keep at least its minimum minus one available.
    let min_available = match stoa.spec.autoscaling.mode {
        AutoscalingMode::Disabled => pdb.min_available,
        _ => pdb
            .min_available
            .min(stoa.spec.autoscaling.min_replicas - 1)
            .max(0),
    };
    Ok(Some(PodDisruptionBudget {
        metadata: meta(stoa, &Names::of(stoa).base)?,
        spec: Some(typed(
            "PodDisruptionBudget",
            json!({"minAvailable": min_available, "selector": {"matchLabels": selector_labels(stoa)},
                   "unhealthyPodEvictionPolicy": "AlwaysAllow"}),
        )?),
        status: None,
    }))
}

pub fn ingress(stoa: &Stoa) -> Result<Option<Ingress>> {
    let Some(spec) = &stoa.spec.ingress else {
        return Ok(None);
    };
    let mut metadata = meta(stoa, &Names::of(stoa).base)?;
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    let mut ingress_spec = json!({
        "ingressClassName": spec.class_name,
        "rules": [{"host": spec.host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": Names::of(stoa).base, "port": {"name": "http"}}}}
        ]}}]
    });
    if let Some(tls) = &spec.tls_secret_name {
        ingress_spec["tls"] = json!([{"hosts": [spec.host], "secretName": tls}]);
    }
    strip_nulls(&mut ingress_spec);
    Ok(Some(Ingress {
        metadata,
        spec: Some(typed("Ingress", ingress_spec)?),
        status: None,
    }))
}

pub fn network_policy(stoa: &Stoa) -> Result<Option<NetworkPolicy>> {
    let policy = &stoa.spec.network_policy;
    if !policy.enabled {
        return Ok(None);
    }
    let from_namespaces = |names: &[String]| {
        json!([{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": names}
        ]}}])
    };
    let api_rule = if policy.allowed_namespaces.is_empty() {
        json!({"ports": [{"port": API_PORT, "protocol": "TCP"}]})
    } else {
        json!({"ports": [{"port": API_PORT, "protocol": "TCP"}], "from": from_namespaces(&policy.allowed_namespaces)})
    };
    let metrics_from = if policy.metrics_namespaces.is_empty() {
        json!([{"podSelector": {}}])
    } else {
        from_namespaces(&policy.metrics_namespaces)
    };
    Ok(Some(NetworkPolicy {
        metadata: meta(stoa, &Names::of(stoa).base)?,
        spec: Some(typed(
            "NetworkPolicy",
            json!({
                "podSelector": {"matchLabels": selector_labels(stoa)},
                "policyTypes": ["Ingress"],
                "ingress": [api_rule, {"ports": [{"port": METRICS_PORT, "protocol": "TCP"}], "from": metrics_from}]
            }),
        )?),
    }))
}

pub fn horizontal_pod_autoscaler(stoa: &Stoa) -> Result<Option<HorizontalPodAutoscaler>> {
    let scaling = &stoa.spec.autoscaling;
    if scaling.mode != AutoscalingMode::Hpa {
        return Ok(None);
    }
    Ok(Some(HorizontalPodAutoscaler {
        metadata: meta(stoa, &Names::of(stoa).base)?,
        spec: Some(typed(
            "HorizontalPodAutoscaler",
            json!({
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": Names::of(stoa).base},
                "minReplicas": scaling.min_replicas,
                "maxReplicas": scaling.max_replicas,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization}}}],
                "behavior": {
                    "scaleDown": {"stabilizationWindowSeconds": 300,
                        "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}]},
                    "scaleUp": {"stabilizationWindowSeconds": 0,
                        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 30},
                                     {"type": "Pods", "value": 4, "periodSeconds": 30}],
                        "selectPolicy": "Max"}
                }
            }),
        )?),
        status: None,
    }))
}

pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

pub const SERVICE_MONITOR_CRD: &str = "servicemonitors.monitoring.coreos.com";

/// The Prometheus Operator ServiceMonitor (only applied when its CRD exists).
pub fn service_monitor(stoa: &Stoa) -> Result<Option<DynamicObject>> {
    if !stoa.spec.monitoring.service_monitor {
        return Ok(None);
    }
    let resource = service_monitor_resource();
    let mut object = DynamicObject::new(&Names::of(stoa).base, &resource);
    object.metadata = meta(stoa, &Names::of(stoa).base)?;
    object.data = json!({"spec": {
        "selector": {"matchLabels": selector_labels(stoa)},
        "endpoints": [{"port": "metrics", "path": "/metrics", "interval": stoa.spec.monitoring.interval}]
    }});
    Ok(Some(object))
}
