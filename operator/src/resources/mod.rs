//! Pure builders: the Kubernetes objects a `Stoa` needs, as functions of its spec (same
//! spec, same objects). The reconciler applies what these return and nothing else.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use stoa_contract::env;
use stoa_contract::migration::Phase;
use stoa_contract::paths::URL_FILE;

use crate::crd::{AutoscalingMode, RedisEndpoint, Stoa};

mod credential_jobs;
mod network;
mod pod;
mod workloads;

pub use credential_jobs::*;
pub use network::*;
pub use workloads::migration_job;

pub const API_PORT: i32 = 8080;
pub const METRICS_PORT: i32 = 9090;
pub use stoa_contract::paths::{
    CA_FILE, DATABASE_CA_MOUNT, DATABASE_MOUNT, DATABASE_POOLER_MOUNT, DATABASE_READ_MOUNT,
    KEYS_MOUNT, MFA_KEYS_MOUNT, PASSWORD_FILE, REDIS_CA_MOUNT, REDIS_MOUNT,
    REDIS_SENTINEL_PASSWORD_MOUNT,
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
    /// What the CRD's rules refuse, met anyway (an API server that does not run them).
    #[error("{0}")]
    Spec(&'static str),
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
    if let Some(redis) = &spec.redis {
        let endpoint = redis.endpoint().ok_or(BuildError::Spec(
            "redis: set exactly one of urlSecretRef, sentinel and cluster",
        ))?;
        let variable = match endpoint {
            RedisEndpoint::Server(_) => env::REDIS_URL_FILE,
            RedisEndpoint::Sentinel(_) => env::REDIS_SENTINELS_FILE,
            RedisEndpoint::Cluster(_) => env::REDIS_CLUSTER_FILE,
        };
        data.insert(variable.into(), format!("{REDIS_MOUNT}/{URL_FILE}"));
        if let RedisEndpoint::Sentinel(sentinel) = endpoint
            && sentinel.password_secret_ref.is_some()
        {
            data.insert(
                env::REDIS_SENTINEL_PASSWORD_FILE.into(),
                format!("{REDIS_SENTINEL_PASSWORD_MOUNT}/{PASSWORD_FILE}"),
            );
        }
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
    workloads::api_deployment(stoa, config, image, replicas)
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
    workloads::worker_deployment(stoa, config, image, replicas)
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
    // No typed struct: the Prometheus Operator's CRD is not part of k8s-openapi.
    object.data = json!({"spec": {
        // The API's Service and the workers' (`worker_metrics_service`).
        "selector": network::both_programs(stoa),
        "endpoints": [{"port": "metrics", "path": "/metrics", "interval": stoa.spec.monitoring.interval}]
    }});
    Ok(Some(object))
}
