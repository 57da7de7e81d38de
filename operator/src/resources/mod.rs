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

use k8s_openapi::api::batch::v1::Job;
use stoa_contract::env;
use stoa_contract::migration::{EXIT_NEWER_CONTRACT, MigrateCommand, Phase};
use stoa_contract::paths::{MIGRATION_DATABASE_MOUNT, TERMINATION_LOG, URL_FILE};

use crate::crd::{AutoscalingMode, Stoa};

mod credential_jobs;

pub use credential_jobs::*;

pub const API_PORT: i32 = 8080;
pub const METRICS_PORT: i32 = 9090;
pub use stoa_contract::paths::{
    CA_FILE, DATABASE_CA_MOUNT, DATABASE_MOUNT, DATABASE_READ_MOUNT, KEYS_MOUNT, MFA_KEYS_MOUNT,
    REDIS_CA_MOUNT, REDIS_MOUNT,
};
pub const CONFIG_HASH_ANNOTATION: &str = "stoa.dev/config-hash";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Groups the attempts of one (step, image, approval): `<step>-<hash>`.
pub const MIGRATION_KEY_LABEL: &str = "stoa.dev/migration";
pub const MIGRATION_STEP_LABEL: &str = "stoa.dev/migration-step";
/// On a migration Job's pods: the Job's name (to find its termination message).
pub const MIGRATION_JOB_LABEL: &str = "stoa.dev/migration-job";
pub const IMAGE_ANNOTATION: &str = "stoa.dev/image";
/// On the Deployment: who sets `spec.replicas` (`operator`, or `autoscaler` once handed over).
pub const REPLICAS_OWNER_ANNOTATION: &str = "stoa.dev/replicas-owner";
pub const REPLICAS_OWNER_AUTOSCALER: &str = "autoscaler";
pub const REPLICAS_OWNER_OPERATOR: &str = "operator";
pub const ATTEMPT_ANNOTATION: &str = "stoa.dev/attempt";
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

/// The longest generated name: a Job's name is also the `job-name` label of its pods, and
/// a label value holds at most 63 characters (Kubernetes docs, "Labels and Selectors").
pub const NAME_LIMIT: usize = 63;

/// `<base><suffix>` within [`NAME_LIMIT`]: as is when it fits; otherwise `base` is cut
/// and an 8-digit hash of the whole base keeps two long names that share a prefix apart.
/// Every generated Job name goes through here.
pub fn bounded_name(base: &str, suffix: &str) -> String {
    if base.len() + suffix.len() <= NAME_LIMIT {
        return format!("{base}{suffix}");
    }
    let hash: String = Sha256::digest(base.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let room = NAME_LIMIT.saturating_sub(suffix.len() + hash.len() + 1);
    let mut cut: String = base.chars().take(room).collect();
    while cut.ends_with('-') || cut.ends_with('.') {
        cut.pop();
    }
    format!("{cut}-{hash}{suffix}")
}

/// The longest Stoa name: the worker's Service, `<name>-worker`, is a DNS-1035 label of
/// at most 63 characters. The CRD refuses longer names (its CEL rule on `metadata.name`).
pub const STOA_NAME_LIMIT: usize = NAME_LIMIT - "-worker".len();

/// Names of everything a Stoa owns.
pub struct Names {
    pub base: String,
    /// The worker Deployment.
    pub worker: String,
    pub config: String,
    pub keys: String,
    /// The key set that encrypts second-factor secrets at rest.
    pub mfa_keys: String,
    /// The connection Secret of the credential rotation.
    pub credentials: String,
}

impl Names {
    pub fn of(stoa: &Stoa) -> Names {
        let base = stoa.name_any();
        Names {
            worker: format!("{base}-worker"),
            config: format!("{base}-config"),
            keys: format!("{base}-jwt-keys"),
            mfa_keys: format!("{base}-mfa-keys"),
            credentials: format!("{base}-db-credentials"),
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
    component_selector_labels(stoa, Component::Api)
}

/// Which program a Deployment runs: the API (`serve`) or the job worker (`worker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Api,
    Worker,
}

impl Component {
    pub fn label(self) -> &'static str {
        match self {
            Component::Api => "api",
            Component::Worker => "worker",
        }
    }
}

pub fn component_selector_labels(stoa: &Stoa, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "stoa".into()),
        ("app.kubernetes.io/instance".into(), stoa.name_any()),
        (COMPONENT_LABEL.into(), component.label().into()),
    ])
}

/// A LabelSelector for the pods (and Services) of both programs, API and worker.
fn both_programs(stoa: &Stoa) -> Value {
    json!({
        "matchLabels": {"app.kubernetes.io/name": "stoa", "app.kubernetes.io/instance": stoa.name_any()},
        "matchExpressions": [{"key": COMPONENT_LABEL, "operator": "In", "values": ["api", "worker"]}]
    })
}

/// The worker pods.
pub fn worker_selector(stoa: &Stoa) -> String {
    format!(
        "app.kubernetes.io/name=stoa,app.kubernetes.io/instance={},{COMPONENT_LABEL}=worker",
        stoa.name_any()
    )
}

/// Every pod of this Stoa (API, workers, migration and credential Jobs); filter with
/// [`runs_the_service`]. (Equality only: the set-based `component in (api,worker)` is not
/// understood by the in-memory API server the tests use.)
pub fn instance_selector(stoa: &Stoa) -> String {
    format!(
        "app.kubernetes.io/name=stoa,app.kubernetes.io/instance={}",
        stoa.name_any()
    )
}

/// Whether `pod` runs stoa-api against the database for good, API or worker: what a
/// contract migration waits out, and what a credential's expiry waits for.
pub fn runs_the_service(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    matches!(
        pod.labels().get(COMPONENT_LABEL).map(String::as_str),
        Some("api" | "worker")
    )
}

/// Stoa's own container in a pod spec (`api` or `worker`), found by name: a mutating
/// webhook may add containers anywhere in the list (a mesh sidecar, a secrets agent).
pub fn stoa_container(
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Option<&k8s_openapi::api::core::v1::Container> {
    let ours = [Component::Api.label(), Component::Worker.label()];
    spec.containers
        .iter()
        .find(|c| ours.contains(&c.name.as_str()))
}

/// Whether a container's `image` is `approved`, as given or pinned to a digest by an
/// admission webhook (`<approved>@sha256:…`, the form image-policy webhooks such as
/// Kyverno's `mutateDigest` write). A bare `<repository>@sha256:…` is not accepted: it
/// could be the digest of any tag, including the previous release's.
pub fn runs_image(image: &str, approved: &str) -> bool {
    image == approved
        || image
            .strip_prefix(approved)
            .and_then(|rest| rest.strip_prefix("@sha256:"))
            .is_some_and(|digest| {
                digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())
            })
}

/// `a=b,c=d`: the selector string for the scale subresource.
pub fn selector_string(stoa: &Stoa) -> String {
    selector_labels(stoa)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The Stoa as controller of an object it owns. `blockOwnerDeletion`: a foreground deletion
/// of the Stoa (`kubectl delete --cascade=foreground`) waits until this object is gone
/// (Kubernetes docs, "Garbage Collection: Foreground cascading deletion").
fn owner(stoa: &Stoa) -> Result<OwnerReference> {
    let mut owner = stoa
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    owner.block_owner_deletion = Some(true);
    Ok(owner)
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

/// Non-secret settings of stoa-api (docs/reference/settings.md has each variable).
pub fn config_map(stoa: &Stoa) -> Result<ConfigMap> {
    let spec = &stoa.spec;
    let mut data = BTreeMap::from([
        (env::LISTEN_ADDR.to_owned(), format!("0.0.0.0:{API_PORT}")),
        (
            env::ADMIN_ADDR.to_owned(),
            format!("0.0.0.0:{METRICS_PORT}"),
        ),
        (env::LOG_FORMAT.to_owned(), "json".to_owned()),
        (env::JWT_KEYS_DIR.to_owned(), KEYS_MOUNT.to_owned()),
        (env::MFA_KEYS_DIR.to_owned(), MFA_KEYS_MOUNT.to_owned()),
        (
            env::DATABASE_URL_FILE.to_owned(),
            format!("{DATABASE_MOUNT}/{URL_FILE}"),
        ),
        (
            env::DB_MAX_CONNECTIONS.to_owned(),
            spec.database.max_connections.to_string(),
        ),
        (
            env::ACCESS_TOKEN_TTL.to_owned(),
            spec.auth.access_token_ttl.clone(),
        ),
        (
            env::REFRESH_TOKEN_TTL.to_owned(),
            spec.auth.refresh_token_ttl.clone(),
        ),
        // The preStop pause already keeps traffic flowing while endpoints update.
        (env::SHUTDOWN_DELAY.to_owned(), "2s".to_owned()),
        (env::SHUTDOWN_TIMEOUT.to_owned(), "20s".to_owned()),
        // Behind an Ingress controller, the client address is the last X-Forwarded-For hop.
        (
            env::TRUSTED_PROXY_HOPS.to_owned(),
            if spec.ingress.is_some() { "1" } else { "0" }.to_owned(),
        ),
    ]);
    // Where browsers reach the API: the origin its session cookie may be used from, and
    // HSTS once it is https.
    if let Some(ingress) = &spec.ingress {
        let scheme = if ingress.tls_secret_name.is_some() {
            "https"
        } else {
            "http"
        };
        data.insert(
            env::PUBLIC_URL.into(),
            format!("{scheme}://{}", ingress.host),
        );
    }
    if spec.redis.is_some() {
        data.insert(
            env::REDIS_URL_FILE.into(),
            format!("{REDIS_MOUNT}/{URL_FILE}"),
        );
    }
    Ok(ConfigMap {
        metadata: meta(stoa, &Names::of(stoa).config)?,
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The signing-key Secret, holding `keyset.json` in the format stoa-api reads
/// (`stoa_contract::keys`). Created once with a fresh key set; never overwritten.
pub fn key_secret(stoa: &Stoa, keyset: &stoa_contract::keys::KeySetFile) -> Result<Secret> {
    let json = serde_json::to_vec_pretty(keyset).map_err(|source| BuildError::Invalid {
        kind: "Secret",
        source,
    })?;
    one_file_secret(
        stoa,
        &Names::of(stoa).keys,
        "jwt-keys",
        stoa_contract::keys::KEYSET_FILE,
        json,
    )
}

/// The Secret with the key set that encrypts second-factor secrets (`mfa-keys.json`,
/// `stoa_contract::mfa_keys`). Created once; never overwritten or rotated by the operator:
/// a key may only go once no secret is sealed under it, which only the database knows
/// (rotation is `stoa-api mfa-keys rotate`, docs/operations.md).
pub fn mfa_key_secret(
    stoa: &Stoa,
    keyset: &stoa_contract::mfa_keys::MfaKeySetFile,
) -> Result<Secret> {
    one_file_secret(
        stoa,
        &Names::of(stoa).mfa_keys,
        "mfa-keys",
        stoa_contract::mfa_keys::MFA_KEYS_FILE,
        keyset.to_json(),
    )
}

/// An Opaque Secret `name` owned by the Stoa, labelled `stoa.dev/secret: <kind>`, holding
/// one file.
fn one_file_secret(
    stoa: &Stoa,
    name: &str,
    kind: &str,
    file: &str,
    contents: Vec<u8>,
) -> Result<Secret> {
    let mut metadata = meta(stoa, name)?;
    metadata
        .labels
        .get_or_insert_default()
        .insert("stoa.dev/secret".into(), kind.into());
    Ok(Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(file.to_owned(), ByteString(contents))])),
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

/// Who sets the Deployment's replica count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicas {
    /// The operator applies this count (`spec.replicas`, or its Concurrency autoscaler's).
    Operator(i32),
    /// An HPA owns the field; the applied object leaves it out.
    Autoscaler,
}

impl Replicas {
    /// The count the spec asks for; in Concurrency mode the last decision, else the
    /// autoscaler's minimum.
    pub fn of(stoa: &Stoa) -> Replicas {
        match stoa.spec.autoscaling.mode {
            AutoscalingMode::Disabled => Replicas::Operator(stoa.spec.replicas),
            AutoscalingMode::Hpa => Replicas::Autoscaler,
            AutoscalingMode::Concurrency => Replicas::Operator(
                stoa.status
                    .as_ref()
                    .and_then(|s| s.autoscaling.as_ref())
                    .map_or(stoa.spec.autoscaling.min_replicas, |a| a.desired_replicas),
            ),
        }
    }
}

/// The API Deployment, running `image` (the image the migration protocol approved, which
/// is `spec.image` once its migrations succeeded: see `crate::rollout`).
pub fn deployment(stoa: &Stoa, config: &ConfigMap, image: &str) -> Result<Deployment> {
    scaled_deployment(stoa, config, image, Replicas::of(stoa))
}

/// [`deployment`] with the replica count decided by the caller.
pub fn scaled_deployment(
    stoa: &Stoa,
    config: &ConfigMap,
    image: &str,
    replicas: Replicas,
) -> Result<Deployment> {
    program_deployment(stoa, config, image, replicas, Component::Api)
}

/// The worker Deployment (`stoa-api worker`), running the same approved `image` as the API
/// with `replicas` decided by the operator from the queue (`crate::worker_scale`). It
/// mounts no signing keys (a worker signs nothing) and serves only its admin port.
pub fn worker_deployment(
    stoa: &Stoa,
    config: &ConfigMap,
    image: &str,
    replicas: i32,
) -> Result<Deployment> {
    program_deployment(
        stoa,
        config,
        image,
        Replicas::Operator(replicas),
        Component::Worker,
    )
}

/// A URL Secret key as the volume `name` (the key projected to `<mount>/<URL_FILE>`,
/// readable by the pod's group only) and its read-only mount.
fn url_secret(name: &str, secret: &str, key: &str, mount: &str) -> (Value, Value) {
    (
        json!({"name": name, "secret": {
            "secretName": secret,
            "items": [{"key": key, "path": URL_FILE}],
            "defaultMode": 0o440}}),
        json!({"name": name, "mountPath": mount, "readOnly": true}),
    )
}

/// A CA certificate Secret key, mounted read-only as `<mount>/ca.crt` and named by `env`.
struct CaMount<'a> {
    volume: &'static str,
    secret: &'a crate::crd::SecretKeyRef,
    mount: &'static str,
    env: &'static str,
}

impl CaMount<'_> {
    fn database(stoa: &Stoa) -> Option<CaMount<'_>> {
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

    fn redis(stoa: &Stoa) -> Option<CaMount<'_>> {
        let secret = stoa.spec.redis.as_ref()?.ca_secret_ref.as_ref()?;
        Some(CaMount {
            volume: "redis-ca",
            secret,
            mount: REDIS_CA_MOUNT,
            env: env::REDIS_CA_FILE,
        })
    }

    /// Adds the volume, its mount and the variable that names the file.
    fn add_to(
        &self,
        volumes: &mut Vec<Value>,
        mounts: &mut Vec<Value>,
        container_env: &mut Vec<Value>,
    ) {
        volumes.push(json!({"name": self.volume, "secret": {
            "secretName": self.secret.name,
            "items": [{"key": self.secret.key, "path": CA_FILE}],
            "defaultMode": 0o444}}));
        mounts.push(json!({"name": self.volume, "mountPath": self.mount, "readOnly": true}));
        container_env.push(json!({"name": self.env, "value": format!("{}/{CA_FILE}", self.mount)}));
    }
}

/// PostgreSQL connections one worker pod holds: a connection per job running, one for
/// the schedules and queue reads, one to listen for new jobs.
pub fn worker_connections(stoa: &Stoa) -> i32 {
    stoa.spec.worker.concurrency + 3
}

/// PostgreSQL connections the workers' minimum holds (kept from the API's autoscaler).
pub fn worker_reserve(stoa: &Stoa) -> i32 {
    if stoa.spec.worker.enabled {
        stoa.spec.worker.min_replicas.max(1) * worker_connections(stoa)
    } else {
        0
    }
}

fn program_deployment(
    stoa: &Stoa,
    config: &ConfigMap,
    image: &str,
    replicas: Replicas,
    component: Component,
) -> Result<Deployment> {
    let spec = &stoa.spec;
    let names = Names::of(stoa);
    let worker = component == Component::Worker;
    let selector = component_selector_labels(stoa, component);
    let mut pod_labels = labels(stoa);
    pod_labels.extend(spec.pod.labels.clone());
    // User labels never override the selector.
    pod_labels.extend(selector.clone());
    let mut annotations = spec.pod.annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash(stoa, config));

    let resources = match (&spec.worker.resources, worker) {
        (Some(own), true) => json!(own),
        _ => default_resources(stoa),
    };
    // With credential rotation the pods mount the operator's connection Secret.
    let database_secret = if rotation_enabled(stoa) {
        (names.credentials.clone(), URL_KEY.to_owned())
    } else {
        (
            spec.database.url_secret_ref.name.clone(),
            spec.database.url_secret_ref.key.clone(),
        )
    };
    // Sessions carry the pod's name, so a credential rotation can tell which pods still
    // hold the old role; user settings come after and win.
    let mut container_env = vec![json!({"name": env::DB_APPLICATION_NAME,
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})];
    // Before the user's settings, which win over them.
    if let Some(tracking) = &spec.monitoring.error_tracking {
        let dsn = &tracking.dsn_secret_ref;
        container_env.push(json!({"name": env::SENTRY_DSN,
            "valueFrom": {"secretKeyRef": {"name": dsn.name, "key": dsn.key}}}));
        if let Some(environment) = &tracking.environment {
            container_env.push(json!({"name": env::SENTRY_ENVIRONMENT, "value": environment}));
        }
    }
    // A worker's pool and concurrency follow spec.worker (set here, so user env cannot
    // repeat them: Kubernetes keeps only the last of duplicate names).
    let worker_env = [
        (env::WORKER_CONCURRENCY, spec.worker.concurrency.to_string()),
        (
            env::DB_MAX_CONNECTIONS,
            (spec.worker.concurrency + 2).to_string(),
        ),
    ];
    container_env.extend(
        spec.env
            .iter()
            .filter(|e| !worker || worker_env.iter().all(|(name, _)| e.name != *name))
            .map(|e| json!(e)),
    );
    if worker {
        container_env.extend(
            worker_env
                .iter()
                .map(|(name, value)| json!({"name": name, "value": value})),
        );
    }
    let (database_volume, database_mount) = url_secret(
        "database",
        &database_secret.0,
        &database_secret.1,
        DATABASE_MOUNT,
    );
    let mut volumes = vec![
        database_volume,
        json!({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}),
    ];
    let mut mounts = vec![database_mount, json!({"name": "tmp", "mountPath": "/tmp"})];
    if !worker {
        volumes.splice(
            0..0,
            [
                json!({"name": "keys", "secret": {"secretName": names.keys, "defaultMode": 0o440}}),
                json!({"name": "mfa-keys", "secret": {"secretName": names.mfa_keys, "defaultMode": 0o440}}),
            ],
        );
        mounts.splice(
            0..0,
            [
                json!({"name": "keys", "mountPath": KEYS_MOUNT, "readOnly": true}),
                json!({"name": "mfa-keys", "mountPath": MFA_KEYS_MOUNT, "readOnly": true}),
            ],
        );
    }
    if let Some(read) = spec
        .database
        .read_url_secret_ref
        .as_ref()
        .filter(|_| !worker)
    {
        let (volume, mount) =
            url_secret("database-read", &read.name, &read.key, DATABASE_READ_MOUNT);
        volumes.push(volume);
        mounts.push(mount);
        container_env.push(json!({"name": env::DATABASE_READ_URL_FILE,
            "value": format!("{DATABASE_READ_MOUNT}/{URL_FILE}")}));
    }
    if let Some(redis) = &spec.redis {
        let secret = &redis.url_secret_ref;
        let (volume, mount) = url_secret("redis", &secret.name, &secret.key, REDIS_MOUNT);
        volumes.push(volume);
        mounts.push(mount);
    }
    // Before the user's settings (index 0 is the session name), which win over them.
    let mut ca_env = Vec::new();
    for ca in [CaMount::database(stoa), CaMount::redis(stoa)]
        .into_iter()
        .flatten()
    {
        ca.add_to(&mut volumes, &mut mounts, &mut ca_env);
    }
    container_env.splice(1..1, ca_env);
    let container_security = container_security();
    let spread = |key: &str| {
        json!({"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": selector}})
    };

    // The API serves on `http` and probes there; a worker has only its admin port.
    let (args, probe_port) = if worker {
        ("worker", "metrics")
    } else {
        ("serve", "http")
    };
    let mut ports =
        vec![json!({"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"})];
    if !worker {
        ports.insert(
            0,
            json!({"name": "http", "containerPort": API_PORT, "protocol": "TCP"}),
        );
    }
    let mut container = json!({
        "name": component.label(),
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "args": [args],
        "ports": ports,
        "envFrom": [{"configMapRef": {"name": names.config}}],
        "env": container_env,
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": container_security,
        "startupProbe": {"httpGet": {"path": "/healthz", "port": probe_port}, "periodSeconds": 2, "failureThreshold": 30},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": probe_port}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": probe_port}, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 2}
    });
    if !worker {
        // Keep serving while endpoints and load balancers drop this pod.
        container["lifecycle"] = json!({"preStop": {"sleep": {"seconds": 5}}});
    }

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
                "securityContext": pod_security(),
                "topologySpreadConstraints": [spread("topology.kubernetes.io/zone"), spread("kubernetes.io/hostname")],
                "nodeSelector": spec.pod.node_selector,
                "tolerations": spec.pod.tolerations,
                "affinity": spec.pod.affinity,
                "imagePullSecrets": spec.pod.image_pull_secrets,
                "priorityClassName": spec.pod.priority_class_name,
                "volumes": volumes,
                "containers": [container]
            }
        }
    });
    // With an HPA, the replica count is not ours: leaving it out of the applied object
    // means server-side apply never fights the scaler over it.
    let replicas_owner = match replicas {
        Replicas::Operator(count) => {
            deployment_spec["replicas"] = json!(count);
            REPLICAS_OWNER_OPERATOR
        }
        Replicas::Autoscaler => REPLICAS_OWNER_AUTOSCALER,
    };
    strip_nulls(&mut deployment_spec);
    let mut metadata = meta(stoa, if worker { &names.worker } else { &names.base })?;
    if worker {
        metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPONENT_LABEL.into(), component.label().into());
    }
    metadata.annotations = Some(BTreeMap::from([(
        REPLICAS_OWNER_ANNOTATION.to_owned(),
        replicas_owner.to_owned(),
    )]));
    Ok(Deployment {
        metadata,
        spec: Some(typed("Deployment", deployment_spec)?),
        status: None,
    })
}

fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "privileged": false,
        "capabilities": {"drop": ["ALL"]}
    })
}

fn pod_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"}
    })
}

fn default_resources(stoa: &Stoa) -> Value {
    stoa.spec.resources.clone().map_or_else(
        || json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}),
        |r| json!(r),
    )
}

/// Which half of a release's migrations a Job applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Before the rollout: additive steps only.
    Expand,
    /// After the rollout: contract steps too.
    Contract,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Expand => "Expand",
            Step::Contract => "Contract",
        }
    }

    /// The label value (lower case) and the word in the Job's name.
    pub fn label(self) -> &'static str {
        match self {
            Step::Expand => "expand",
            Step::Contract => "contract",
        }
    }

    pub fn phase(self) -> Phase {
        match self {
            Step::Expand => Phase::Expand,
            Step::Contract => Phase::All,
        }
    }

    pub fn job_word(self) -> &'static str {
        match self {
            Step::Expand => "migrate",
            Step::Contract => "contract",
        }
    }
}

/// A migration Job to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRequest {
    pub name: String,
    pub step: Step,
    pub image: String,
    /// Run with `--allow-newer-contract` (an approved rollback).
    pub allow_newer_contract: bool,
    pub attempt: i32,
    /// The label that groups every attempt of one (step, image, approval).
    pub key: String,
}

/// Labels of migration Jobs (and their pods): the Stoa's labels with component `migration`.
pub fn migration_labels(stoa: &Stoa) -> BTreeMap<String, String> {
    let mut labels = labels(stoa);
    labels.insert(COMPONENT_LABEL.into(), "migration".into());
    labels
}

/// `instance=<name>,component=migration`: every migration Job of this Stoa.
pub fn migration_selector(stoa: &Stoa) -> String {
    format!(
        "app.kubernetes.io/instance={},{COMPONENT_LABEL}=migration",
        stoa.name_any()
    )
}

/// A Job that runs `stoa-api migrate` for one step of the rollout protocol.
///
/// - The pod failure policy fails the Job at once when the migrator refuses (exit code
///   [`EXIT_NEWER_CONTRACT`]): retrying cannot help. It is the only `FailJob` rule, so a
///   Job failed with reason `PodFailurePolicy` means exactly that (Kubernetes docs,
///   "Handling retriable and non-retriable pod failures with Pod failure policy").
///   Disruptions (`DisruptionTarget`, e.g. a drained node) do not count as attempts.
/// - `backoffLimit: 2` retries a crashed pod within the attempt; the operator retries
///   failed attempts with its own capped backoff under a new Job name.
/// - The migrator writes its report to the termination-message path; on a crash,
///   `FallbackToLogsOnError` puts the last log lines there instead.
/// - Finished Jobs (and their pods, with the logs) are removed by the TTL controller a
///   day after they finish; the Stoa's status keeps the outcome.
pub fn migration_job(stoa: &Stoa, request: &JobRequest) -> Result<Job> {
    let spec = &stoa.spec;
    let credential = spec
        .database
        .admin_secret_ref
        .as_ref()
        .unwrap_or(&spec.database.url_secret_ref);
    let command = MigrateCommand {
        phase: request.step.phase(),
        allow_newer_contract: request.allow_newer_contract,
        report_file: Some(TERMINATION_LOG.to_owned()),
    };
    let mut job_labels = migration_labels(stoa);
    job_labels.insert(MIGRATION_KEY_LABEL.into(), request.key.clone());
    job_labels.insert(MIGRATION_STEP_LABEL.into(), request.step.label().into());
    let mut pod_labels = job_labels.clone();
    pod_labels.insert(MIGRATION_JOB_LABEL.into(), request.name.clone());
    let mut metadata = meta(stoa, &request.name)?;
    metadata.labels = Some(job_labels);
    metadata.annotations = Some(BTreeMap::from([
        (IMAGE_ANNOTATION.to_owned(), request.image.clone()),
        (ATTEMPT_ANNOTATION.to_owned(), request.attempt.to_string()),
    ]));
    let failure_policy = json!({"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "migrate", "operator": "In",
            "values": [EXIT_NEWER_CONTRACT]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]});
    one_shot_job(
        stoa,
        metadata,
        OneShot {
            pod_labels,
            container: "migrate",
            image: &request.image,
            args: command.args(),
            deadline_seconds: spec.migrations.deadline_seconds,
            failure_policy: Some(failure_policy),
            volumes: vec![json!({"name": "database", "secret": {
                "secretName": credential.name,
                "items": [{"key": credential.key, "path": URL_FILE}],
                "defaultMode": 0o440}})],
            mounts: vec![
                json!({"name": "database", "mountPath": MIGRATION_DATABASE_MOUNT, "readOnly": true}),
            ],
            env: vec![
                json!({"name": env::DATABASE_URL_FILE, "value": format!("{MIGRATION_DATABASE_MOUNT}/{URL_FILE}")}),
                json!({"name": env::LOG_FORMAT, "value": "json"}),
            ],
        },
    )
}

/// What differs between the operator's one-shot Jobs (migrations, credential steps).
struct OneShot<'a> {
    pod_labels: BTreeMap<String, String>,
    container: &'static str,
    image: &'a str,
    args: Vec<String>,
    deadline_seconds: i64,
    failure_policy: Option<Value>,
    volumes: Vec<Value>,
    mounts: Vec<Value>,
    env: Vec<Value>,
}

/// A Job that runs one stoa-api command to completion, with the pod settings of the Stoa,
/// its report as the termination message, kept a day for its logs.
fn one_shot_job(stoa: &Stoa, metadata: ObjectMeta, mut job: OneShot<'_>) -> Result<Job> {
    let spec = &stoa.spec;
    // Every one-shot Job connects to PostgreSQL.
    if let Some(ca) = CaMount::database(stoa) {
        ca.add_to(&mut job.volumes, &mut job.mounts, &mut job.env);
    }
    let mut job_spec = json!({
        "backoffLimit": 2,
        "activeDeadlineSeconds": job.deadline_seconds,
        "ttlSecondsAfterFinished": 86400,
        "podFailurePolicy": job.failure_policy,
        "template": {
            "metadata": {"labels": job.pod_labels},
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": Names::of(stoa).base,
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "securityContext": pod_security(),
                "nodeSelector": spec.pod.node_selector,
                "tolerations": spec.pod.tolerations,
                "affinity": spec.pod.affinity,
                "imagePullSecrets": spec.pod.image_pull_secrets,
                "priorityClassName": spec.pod.priority_class_name,
                "volumes": job.volumes,
                "containers": [{
                    "name": job.container,
                    "image": job.image,
                    "imagePullPolicy": spec.image_pull_policy,
                    "args": job.args,
                    "env": job.env,
                    "resources": default_resources(stoa),
                    "volumeMounts": job.mounts,
                    "securityContext": container_security(),
                    "terminationMessagePath": TERMINATION_LOG,
                    "terminationMessagePolicy": "FallbackToLogsOnError"
                }]
            }
        }
    });
    strip_nulls(&mut job_spec);
    Ok(Job {
        metadata,
        spec: Some(typed("Job", job_spec)?),
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

/// A headless Service over the workers' admin port: what a ServiceMonitor scrapes them
/// through (they serve no traffic).
pub fn worker_metrics_service(stoa: &Stoa) -> Result<Option<Service>> {
    if !stoa.spec.worker.enabled {
        return Ok(None);
    }
    let mut metadata = meta(stoa, &Names::of(stoa).worker)?;
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(COMPONENT_LABEL.into(), Component::Worker.label().into());
    Ok(Some(Service {
        metadata,
        spec: Some(typed(
            "Service",
            json!({
                "clusterIP": "None",
                "selector": component_selector_labels(stoa, Component::Worker),
                "ports": [
                    {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}
                ]
            }),
        )?),
        status: None,
    }))
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

/// `operator_namespace`: where the operator runs; it reads each pod's admin port to confirm
/// rotations, so that namespace may always reach it.
pub fn network_policy(
    stoa: &Stoa,
    operator_namespace: Option<&str>,
) -> Result<Option<NetworkPolicy>> {
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
    // Same-namespace pods (or the listed namespaces) scrape; the operator confirms.
    let mut metrics_from = if policy.metrics_namespaces.is_empty() {
        json!([{"podSelector": {}}])
    } else {
        from_namespaces(&policy.metrics_namespaces)
    };
    if let (Some(namespace), Some(peers)) = (operator_namespace, metrics_from.as_array_mut())
        && !policy.metrics_namespaces.iter().any(|n| n == namespace)
    {
        peers.extend(
            from_namespaces(&[namespace.to_owned()])
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    Ok(Some(NetworkPolicy {
        metadata: meta(stoa, &Names::of(stoa).base)?,
        spec: Some(typed(
            "NetworkPolicy",
            json!({
                // Workers too: they serve only the admin port, open to the same peers.
                "podSelector": both_programs(stoa),
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
                    "scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds,
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
        // The API's Service and the workers' (`worker_metrics_service`).
        "selector": both_programs(stoa),
        "endpoints": [{"port": "metrics", "path": "/metrics", "interval": stoa.spec.monitoring.interval}]
    }});
    Ok(Some(object))
}
