//! The parts every pod of a Stoa is built from, as k8s-openapi's typed structs: volumes
//! and mounts of Secret keys, environment variables, the hardened security contexts,
//! default resources, probes and the Stoa's scheduling settings.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use stoa_contract::env;
use stoa_contract::paths::URL_FILE;

use super::{CA_FILE, DATABASE_CA_MOUNT, Names, REDIS_CA_MOUNT, RUN_AS};
use crate::crd::{PullPolicy, SecretKeyRef, Stoa};

/// `Some` unless empty: an applied object claims only the fields it sets. Server-side apply
/// makes the applier the owner of every field in the object it sends, empty lists and
/// maps included (Kubernetes docs, "Server-Side Apply", "Field management"), and a field
/// the operator owns but leaves empty would be reset by its next apply if a user filled it.
pub(super) fn non_empty_map(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then(|| map.clone())
}

/// `Some` unless empty, as [`non_empty_map`].
pub(super) fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

/// A variable with a literal value.
pub(super) fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// A variable from a downward-API field of the pod.
pub(super) fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// A variable from a key of a Secret.
pub(super) fn env_secret(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// A Secret as a volume: the whole Secret, or only `key` projected to `path`.
pub(super) fn secret_volume(
    name: &str,
    secret_name: &str,
    key_to_path: Option<(&str, &str)>,
    mode: i32,
) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name.into()),
            items: key_to_path.map(|(key, path)| {
                vec![KeyToPath {
                    key: key.into(),
                    path: path.into(),
                    mode: None,
                }]
            }),
            default_mode: Some(mode),
            optional: None,
        }),
        ..Volume::default()
    }
}

pub(super) fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Volumes, mounts and variables, in the order the container gets them.
#[derive(Default)]
pub(super) struct Mounted {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    pub env: Vec<EnvVar>,
}

impl Mounted {
    /// A URL Secret key as the volume `name` (the key projected to `<mount>/<URL_FILE>`,
    /// readable by the pod's group only) and its read-only mount.
    pub fn url_secret(&mut self, name: &str, secret: &str, key: &str, mount: &str) {
        self.secret_file(name, secret, key, mount, URL_FILE);
    }

    /// A Secret key projected to `<mount>/<file>`, as [`Mounted::url_secret`] does.
    pub fn secret_file(&mut self, name: &str, secret: &str, key: &str, mount: &str, file: &str) {
        self.volumes
            .push(secret_volume(name, secret, Some((key, file)), 0o440));
        self.mounts.push(read_only_mount(name, mount));
    }
}

/// A CA certificate Secret key, mounted read-only as `<mount>/ca.crt` and named by `env`.
pub(super) struct CaMount<'a> {
    volume: &'static str,
    secret: &'a SecretKeyRef,
    mount: &'static str,
    env: &'static str,
}

impl CaMount<'_> {
    pub fn database(stoa: &Stoa) -> Option<CaMount<'_>> {
        stoa.spec
            .database
            .ca_secret_ref
            .as_ref()
            .map(|secret| CaMount {
                volume: "database-ca",
                secret,
                mount: DATABASE_CA_MOUNT,
                env: env::PG_SSL_ROOT_CERT,
            })
    }

    pub fn redis(stoa: &Stoa) -> Option<CaMount<'_>> {
        let secret = stoa.spec.redis.as_ref()?.ca_secret_ref.as_ref()?;
        Some(CaMount {
            volume: "redis-ca",
            secret,
            mount: REDIS_CA_MOUNT,
            env: env::REDIS_CA_FILE,
        })
    }

    /// Adds the volume and its mount to `to`, and returns the variable naming the file.
    pub fn add_to(&self, to: &mut Mounted) -> EnvVar {
        to.volumes.push(secret_volume(
            self.volume,
            &self.secret.name,
            Some((&self.secret.key, CA_FILE)),
            0o444,
        ));
        to.mounts.push(read_only_mount(self.volume, self.mount));
        env_value(self.env, format!("{}/{CA_FILE}", self.mount))
    }
}

/// Non-root, read-only root filesystem, no privilege escalation, every capability dropped.
pub(super) fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

pub(super) fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// `spec.resources`, or what suits a small service: 100m CPU, 64Mi–256Mi memory.
pub(super) fn default_resources(stoa: &Stoa) -> ResourceRequirements {
    stoa.spec.resources.clone().unwrap_or_else(|| {
        let quantity = |q: &str| Quantity(q.into());
        ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity("100m")),
                ("memory".into(), quantity("64Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), quantity("256Mi"))])),
            claims: None,
        }
    })
}

/// A probe that GETs `path` on the named port.
pub(super) fn http_probe(
    path: &str,
    port: &str,
    period: i32,
    timeout: Option<i32>,
    failures: i32,
) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: timeout,
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

pub(super) fn pull_policy(policy: Option<PullPolicy>) -> Option<String> {
    policy.map(|p| {
        match p {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
        .into()
    })
}

/// What every pod of the Stoa shares: its ServiceAccount (no token mounted), no service
/// links, the pod security context and the scheduling settings of `spec.pod`. Callers
/// add their containers, volumes and anything else with struct-update syntax.
pub(super) fn pod_spec(stoa: &Stoa) -> PodSpec {
    let pod = &stoa.spec.pod;
    PodSpec {
        service_account_name: Some(Names::of(stoa).base),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security()),
        node_selector: non_empty_map(&pod.node_selector),
        tolerations: non_empty(&pod.tolerations),
        affinity: pod.affinity.clone(),
        image_pull_secrets: non_empty(&pod.image_pull_secrets),
        priority_class_name: pod.priority_class_name.clone(),
        ..PodSpec::default()
    }
}
