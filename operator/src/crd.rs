//! The `Stoa` custom resource (group `stoa.dev`, version `v1alpha1`).
//!
//! `stoa-operator crd` prints the CRD generated from these types; `crds/stoa.dev_stoas.yaml`
//! is that output, and a test fails when it is stale.

// Each `printcolumn(...)` repeats `type_ = "string"`; clippy reads that as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Stoa API service: the operator runs it as a Deployment with its configuration,
/// signing keys, Service, disruption budget and optional Ingress, NetworkPolicy and
/// ServiceMonitor, and reports its state in `status`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stoa.dev",
    version = "v1alpha1",
    kind = "Stoa",
    plural = "stoas",
    singular = "stoa",
    shortname = "st",
    category = "stoa",
    namespaced,
    status = "StoaStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A Stoa API service managed by stoa-operator.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Image", type_ = "string", json_path = ".status.currentImage"),
    printcolumn(
        name = "Schema",
        type_ = "integer",
        json_path = ".status.schemaVersion"
    ),
    printcolumn(
        name = "Key Age",
        type_ = "date",
        json_path = ".status.keyRotation.activeSince"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(name = "Data Tier", type_ = "string", json_path = ".status.dataTier"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // The Services are named `<name>` and `<name>-worker` (DNS-1035 labels: Kubernetes
    // docs, "Object Names and IDs"), so a name that cannot be both is refused at apply
    // time: at most 56 characters (`resources::STOA_NAME_LIMIT`; a test holds them equal).
    validation = Rule::new("self.metadata.name.size() <= 56 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label of at most 56 characters (lowercase letters, digits and '-', starting with a letter): the Services <name> and <name>-worker are named after it")
)]
#[x_kube(validation = Rule::new("self.autoscaling.mode == 'Disabled' || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas").message("autoscaling.minReplicas must be ≤ autoscaling.maxReplicas"))]
#[x_kube(validation = Rule::new("!has(self.podDisruptionBudget) || !self.podDisruptionBudget.enabled || self.autoscaling.mode != 'Disabled' || self.podDisruptionBudget.minAvailable < self.replicas || self.replicas == 0").message("podDisruptionBudget.minAvailable must be below replicas, or no pod could ever be evicted"))]
// Providers call back to the Ingress's host, and send browsers back to `returnTo`.
#[x_kube(validation = Rule::new("!has(self.auth) || !has(self.auth.providers) || size(self.auth.providers) == 0 || (has(self.ingress) && has(self.auth.returnTo) && size(self.auth.returnTo) > 0)").message("auth.providers needs spec.ingress (providers call back to its host) and auth.returnTo"))]
#[serde(rename_all = "camelCase")]
pub struct StoaSpec {
    /// The stoa-api container image, e.g. `ghcr.io/stoa-dev/stoa-api:0.1.0`.
    #[x_kube(validation = Rule::new("self.size() > 0").message("image must not be empty"))]
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never` (Kubernetes default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Desired replicas when autoscaling is disabled (the scale subresource writes this).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Container resources; defaults suit a small service (100m CPU, 64Mi–256Mi memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The PostgreSQL database: its URL Secret, pool size, TLS, read replica and credential rotation.
    pub database: DatabaseSpec,
    /// Redis (optional): cache, shared rate limits, revocation mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// Token lifetimes and signing-key rotation.
    #[serde(default)]
    pub auth: AuthSpec,
    /// An Ingress for the API (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// How migrations gate each rollout.
    #[serde(default)]
    pub migrations: MigrationsSpec,
    /// How the replica count is decided: `Disabled` (spec.replicas), `Hpa` or `Concurrency`.
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
    /// The API pods' PodDisruptionBudget.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
    /// ServiceMonitor, dashboards and error tracking.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// A NetworkPolicy that admits only the ingress controller and the operator (optional).
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// The job worker (`stoa-api worker`): its own Deployment, scaled on the queue.
    #[serde(default)]
    pub worker: WorkerSpec,
    /// Settings passed to stoa-api as environment (the book's settings reference); for secrets use
    /// `valueFrom.secretKeyRef`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// What the API and worker pods get beyond the operator's own settings (labels, scheduling, pull secrets).
    #[serde(default)]
    pub pod: PodSpecOverrides,
    /// Stop all changes to this service's objects (status is still reported).
    #[serde(default)]
    pub paused: bool,
}

fn default_replicas() -> i32 {
    2
}

/// An empty spec with the same defaults the CRD schema applies (needed by tooling that
/// builds blank objects; a real Stoa always names an image and a database Secret).
impl Default for StoaSpec {
    fn default() -> Self {
        StoaSpec {
            image: String::new(),
            image_pull_policy: None,
            replicas: default_replicas(),
            resources: None,
            database: DatabaseSpec {
                url_secret_ref: SecretKeyRef {
                    name: String::new(),
                    key: default_url_key(),
                },
                admin_secret_ref: None,
                ca_secret_ref: None,
                read_url_secret_ref: None,
                pooler: None,
                max_connections: default_pool(),
                credential_rotation: CredentialRotationSpec::default(),
            },
            redis: None,
            auth: AuthSpec::default(),
            ingress: None,
            migrations: MigrationsSpec::default(),
            autoscaling: AutoscalingSpec::default(),
            pod_disruption_budget: PodDisruptionBudgetSpec::default(),
            monitoring: MonitoringSpec::default(),
            network_policy: NetworkPolicySpec::default(),
            worker: WorkerSpec::default(),
            env: Vec::new(),
            pod: PodSpecOverrides::default(),
            paused: false,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// A key of a Secret in the Stoa's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// Defaults to `url`.
    #[serde(default = "default_url_key")]
    pub key: String,
}

fn default_url_key() -> String {
    "url".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Secret key holding the PostgreSQL connection URL (mounted as a file, so credential
    /// changes reach the pods without a restart).
    pub url_secret_ref: SecretKeyRef,
    /// Optional admin credential (a Secret key holding a PostgreSQL URL with DDL rights).
    /// Migration Jobs use it instead of `urlSecretRef`, so the application's own role
    /// needs no DDL rights; it is mounted into migration Jobs only, never into API pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_secret_ref: Option<SecretKeyRef>,
    /// The CA that signed PostgreSQL's certificate (a Secret key holding PEM), for TLS to a
    /// private CA: mounted into every pod and Job that connects, and named by
    /// `PGSSLROOTCERT`, so a URL with `sslmode=verify-full` verifies against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Optional streaming replica (a Secret key holding its PostgreSQL URL) for the API's
    /// content reads; writes and the security paths stay on the primary, and a caller who
    /// wrote reads the primary until the replica has their write (the book: "Read
    /// replicas"). A URL without a user name logs in with the primary's credential and so
    /// follows its rotation. Mounted into API pods only (the worker writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_url_secret_ref: Option<SecretKeyRef>,
    /// A connection pooler in front of PostgreSQL in transaction (or session) mode:
    /// PgBouncer, CloudNativePG's Pooler, Zalando's connection pooler. The pods' requests
    /// go through it; migrations and the pods' `LISTEN` sessions stay on `urlSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler: Option<PoolerSpec>,
    /// Connections per pod (to the pooler, when there is one).
    #[serde(default = "default_pool")]
    #[schemars(range(min = 1, max = 500))]
    pub max_connections: i32,
    /// Rotation of the application's database credential. It needs `adminSecretRef`
    /// (the operator's Jobs create and alter roles with it); without one it is off and
    /// `status.credentialRotation` says so.
    #[serde(default)]
    pub credential_rotation: CredentialRotationSpec,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolerSpec {
    /// Secret key holding the pooler's PostgreSQL URL (e.g.
    /// `postgres://stoa-pooler-rw:5432/stoa?sslmode=require`). Without a user name in it,
    /// pods log in with `urlSecretRef`'s credentials and follow their rotation; the pooler
    /// must then authenticate against PostgreSQL's roles (PgBouncer's `auth_query`, as
    /// CloudNativePG's Pooler does).
    pub url_secret_ref: SecretKeyRef,
    /// The pooler's limit on client connections for Stoa (PgBouncer's `max_client_conn`,
    /// less what other clients of the pooler use): autoscaling keeps API pods ×
    /// `maxConnections` (plus the workers' pools) under it, instead of PostgreSQL's
    /// `max_connections`.
    #[schemars(range(min = 1))]
    pub max_client_connections: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRotationSpec {
    /// Rotate the credential on schedule (needs `adminSecretRef`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long one login role's password lives before the other role takes over, e.g.
    /// `720h`. Annotate the Stoa with `stoa.dev/rotate-credentials=<any new value>` to
    /// rotate now.
    #[serde(default = "default_rotation")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub every: String,
    /// How long a new credential may wait for every ready pod to switch to it before the
    /// rotation is reported as stalled. The old password is never expired before.
    #[serde(default = "default_confirm_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub confirm_timeout: String,
}

impl Default for CredentialRotationSpec {
    fn default() -> Self {
        CredentialRotationSpec {
            enabled: true,
            every: default_rotation(),
            confirm_timeout: default_confirm_timeout(),
        }
    }
}

fn default_pool() -> i32 {
    8
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum MigrationMode {
    /// A Job runs `stoa-api migrate` with each new image before the Deployment moves to it.
    #[default]
    Auto,
    /// The Deployment follows `image` at once; you migrate the database yourself (pods
    /// report not ready until the schema has what they need).
    Disabled,
}

/// How database migrations gate rollouts (the book: "Rollouts and migrations").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationsSpec {
    /// `Auto` (default): a migration Job for each new image runs before the Deployment gets it; `Disabled`: you migrate yourself.
    #[serde(default)]
    pub mode: MigrationMode,
    /// Approve a rollback to this image although the database holds contract migrations
    /// it does not know (condition `RollbackBlocked` names them). The older binary may fail
    /// on what those migrations removed; set this only after checking that it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_rollback_to: Option<String>,
    /// How long one migration attempt may run before it counts as failed (seconds).
    #[serde(default = "default_migration_deadline")]
    #[schemars(range(min = 30, max = 86400))]
    pub deadline_seconds: i64,
}

impl Default for MigrationsSpec {
    fn default() -> Self {
        MigrationsSpec {
            mode: MigrationMode::Auto,
            allow_rollback_to: None,
            deadline_seconds: default_migration_deadline(),
        }
    }
}

fn default_migration_deadline() -> i64 {
    600
}

// The API server evaluates this rule when the Stoa is created or updated (Kubernetes
// docs, "Extend the Kubernetes API with CustomResourceDefinitions", "Validation rules":
// `x-kubernetes-validations`, GA in 1.29). A test runs it with a CEL interpreter; a spec
// that reaches the operator without it (an older API server) is refused as InvalidSpec
// by `RedisSpec::endpoint`'s callers, never guessed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("[has(self.urlSecretRef), has(self.sentinel), has(self.cluster)].filter(x, x).size() == 1").message("redis: set exactly one of urlSecretRef (one server), sentinel and cluster"))]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// One Redis server: a Secret key holding its URL (`rediss://user:password@host:port`
    /// for TLS and an ACL user). Set exactly one of `urlSecretRef`, `sentinel` and
    /// `cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// Redis behind Sentinel: the pods follow the primary the sentinels name across
    /// failovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<RedisSentinelSpec>,
    /// A Redis Cluster (cluster mode enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<RedisClusterSpec>,
    /// The CA that signed Redis's certificate (a Secret key holding PEM), for `rediss://`
    /// to a private CA: mounted into the pods and named by `STOA_REDIS_CA_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSentinelSpec {
    /// Secret key holding the sentinels and the primary's name:
    /// `redis[s]://[user:password@]sentinel-0:26379,sentinel-1:26379,…/<master name>`. The
    /// user, password and TLS are the data nodes' (`STOA_REDIS_SENTINELS`).
    pub url_secret_ref: SecretKeyRef,
    /// Secret key holding the sentinels' own password (`requirepass` in sentinel.conf),
    /// when they ask for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisClusterSpec {
    /// Secret key holding some of the cluster's nodes (the rest are discovered):
    /// `redis[s]://[user:password@]node-0:6379,node-1:6379,…` (`STOA_REDIS_CLUSTER`).
    pub url_secret_ref: SecretKeyRef,
}

/// Which Redis the pods are given, from [`RedisSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisEndpoint<'a> {
    Server(&'a SecretKeyRef),
    Sentinel(&'a RedisSentinelSpec),
    Cluster(&'a RedisClusterSpec),
}

impl RedisEndpoint<'_> {
    /// The Secret key the pods read the Redis URL (or list) from.
    pub fn url_secret_ref(&self) -> &SecretKeyRef {
        match self {
            RedisEndpoint::Server(secret) => secret,
            RedisEndpoint::Sentinel(sentinel) => &sentinel.url_secret_ref,
            RedisEndpoint::Cluster(cluster) => &cluster.url_secret_ref,
        }
    }

    /// How `kubectl get st` names it.
    pub fn describe(&self) -> &'static str {
        match self {
            RedisEndpoint::Server(_) => "Redis",
            RedisEndpoint::Sentinel(_) => "Redis Sentinel",
            RedisEndpoint::Cluster(_) => "Redis Cluster",
        }
    }
}

impl RedisSpec {
    /// The one endpoint set; `None` when the CRD's rule was bypassed (none or several).
    pub fn endpoint(&self) -> Option<RedisEndpoint<'_>> {
        match (&self.url_secret_ref, &self.sentinel, &self.cluster) {
            (Some(url), None, None) => Some(RedisEndpoint::Server(url)),
            (None, Some(sentinel), None) => Some(RedisEndpoint::Sentinel(sentinel)),
            (None, None, Some(cluster)) => Some(RedisEndpoint::Cluster(cluster)),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Access token lifetime (Go-style duration, e.g. `15m`).
    #[serde(default = "default_access_ttl")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub access_token_ttl: String,
    /// Refresh token lifetime, e.g. `168h` or `7d`.
    #[serde(default = "default_refresh_ttl")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub refresh_token_ttl: String,
    /// When the active signing key is replaced.
    #[serde(default)]
    pub key_rotation: KeyRotationSpec,
    /// Identity providers users may sign in with (Google, Microsoft, GitHub, any OpenID
    /// Connect issuer). Each calls back to `https://<ingress.host>/api/auth/oauth/<name>/callback`,
    /// so providers need `spec.ingress` and `returnTo`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.name == p.name))").message("auth.providers: each name once"))]
    #[schemars(length(max = 16))]
    pub providers: Vec<IdentityProviderSpec>,
    /// The front-end addresses a provider sign-in may send the browser back to, compared
    /// exactly (no prefixes or patterns); the first is the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub return_to: Vec<String>,
}

/// One identity provider (stoa-api's `STOA_AUTH_PROVIDERS` entry). Its client secret is
/// mounted as a file and read at each sign-in, so a changed Secret is used without a
/// restart.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'oidc' ? has(self.issuer) : !has(self.issuer)").message("issuer is required for type oidc and only used with it"))]
#[x_kube(validation = Rule::new("self.type == 'microsoft' || !has(self.tenant)").message("tenant is only used with type microsoft"))]
#[x_kube(validation = Rule::new("self.type == 'github' || (!has(self.authorizationUrl) && !has(self.tokenUrl) && !has(self.apiUrl))").message("authorizationUrl, tokenUrl and apiUrl are only used with type github"))]
pub struct IdentityProviderSpec {
    /// In URLs (`/api/auth/oauth/<name>/…`) and stored with each linked account: keep it
    /// stable.
    #[schemars(regex(pattern = r"^[a-z0-9-]{1,32}$"))]
    pub name: String,
    /// `google`, `microsoft` (its `common` tenant unless `tenant` says otherwise), `github`,
    /// or `oidc` (any OpenID Connect issuer, set up by discovery from `issuer`).
    #[serde(rename = "type")]
    pub kind: IdentityProviderType,
    /// The OAuth client id registered with the provider.
    #[schemars(length(min = 1))]
    pub client_id: String,
    /// The Secret key holding the client secret.
    pub client_secret_ref: SecretKeyRef,
    /// Shown on "Sign in with …" buttons; the provider's name for the presets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// `type: oidc` only: the issuer URL (https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// `type: microsoft` only: `common` (default), `organizations`, `consumers` or a tenant id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Scopes to ask for; `openid email profile` (GitHub: `read:user user:email`) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// `false` keeps the provider configured but off.
    #[serde(default = "enabled", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// `type: github` only, for GitHub Enterprise Server: its endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
}

fn enabled() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IdentityProviderType {
    Google,
    Microsoft,
    #[serde(rename = "github")]
    GitHub,
    Oidc,
}

impl IdentityProviderType {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityProviderType::Google => "google",
            IdentityProviderType::Microsoft => "microsoft",
            IdentityProviderType::GitHub => "github",
            IdentityProviderType::Oidc => "oidc",
        }
    }
}

impl Default for AuthSpec {
    fn default() -> Self {
        AuthSpec {
            access_token_ttl: default_access_ttl(),
            refresh_token_ttl: default_refresh_ttl(),
            key_rotation: KeyRotationSpec::default(),
            providers: Vec::new(),
            return_to: Vec::new(),
        }
    }
}

fn default_access_ttl() -> String {
    "15m".into()
}
fn default_refresh_ttl() -> String {
    "7d".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotationSpec {
    /// How long the active signing key signs before a new one replaces it, e.g. `720h`
    /// (30 days). Must exceed `accessTokenTtl` plus 5m. Annotate the Stoa with
    /// `stoa.dev/rotate-keys=<any new value>` to rotate now.
    #[serde(default = "default_rotation")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub every: String,
    /// How long a new key may wait for every ready pod to load it before the rotation is
    /// reported as stalled (`Degraded`, reason `RotationStalled`). It is never promoted
    /// before every pod has it.
    #[serde(default = "default_confirm_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub confirm_timeout: String,
}

impl Default for KeyRotationSpec {
    fn default() -> Self {
        KeyRotationSpec {
            every: default_rotation(),
            confirm_timeout: default_confirm_timeout(),
        }
    }
}

fn default_confirm_timeout() -> String {
    "5m".into()
}

fn default_rotation() -> String {
    "720h".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// The host name the Ingress serves.
    pub host: String,
    /// IngressClass; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// A Secret with the TLS certificate for `host`; plain HTTP when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Annotations for the Ingress (e.g. the ingress controller's settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AutoscalingMode {
    /// `spec.replicas` is the replica count.
    #[default]
    Disabled,
    /// A HorizontalPodAutoscaler on CPU (needs metrics-server).
    Hpa,
    /// The operator scales on requests in flight read from each pod, bounded by what
    /// PostgreSQL and Redis can take; needs nothing else in the cluster.
    Concurrency,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    #[serde(default)]
    /// `Disabled` (default: `spec.replicas`), `Hpa` (a HorizontalPodAutoscaler on CPU) or
    /// `Concurrency` (the operator scales on requests in flight).
    pub mode: AutoscalingMode,
    /// The fewest replicas the autoscaler keeps.
    #[serde(default = "default_min")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// The most replicas the autoscaler asks for (the database and Redis may bound it lower).
    #[serde(default = "default_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// `Hpa`: target average CPU utilization, percent of requests.
    #[serde(default = "default_cpu")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// `Hpa`: how long a lower recommendation must hold before the HPA scales down.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
    /// `Concurrency`: how the replica count follows requests in flight.
    #[serde(default)]
    pub concurrency: ConcurrencySpec,
    /// `Concurrency`: PostgreSQL connections kept free for migrations and admin
    /// sessions; the rest, divided by `database.maxConnections` (plus one without Redis:
    /// each pod then listens for revocations on a connection of its own), bounds the replicas.
    #[serde(default = "default_reserved_connections")]
    #[schemars(range(min = 0))]
    pub reserved_connections: i32,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        AutoscalingSpec {
            mode: AutoscalingMode::Disabled,
            min_replicas: default_min(),
            max_replicas: default_max(),
            target_cpu_utilization: default_cpu(),
            scale_down_stabilization_seconds: default_stabilization(),
            concurrency: ConcurrencySpec::default(),
            reserved_connections: default_reserved_connections(),
        }
    }
}

fn default_stabilization() -> i32 {
    300
}
fn default_reserved_connections() -> i32 {
    10
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrencySpec {
    /// Requests in flight per pod to aim at (averaged over time).
    #[serde(default = "default_target_in_flight")]
    #[schemars(range(min = 1))]
    pub target: i32,
    /// The window whose mean decides, e.g. `60s`; the panic window is a tenth of it.
    #[serde(default = "default_stable_window")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub stable_window: String,
    /// Panic (scale up on the short window, no scale-down) when it asks for this percent
    /// of the ready pods or more.
    #[serde(default = "default_panic_threshold")]
    #[schemars(range(min = 110, max = 1000))]
    pub panic_threshold_percent: i32,
    /// Scale down to no less than the current count divided by this, per decision.
    #[serde(default = "default_scale_down_rate")]
    #[schemars(range(min = 1, max = 100))]
    pub max_scale_down_rate: i32,
}

impl Default for ConcurrencySpec {
    fn default() -> Self {
        ConcurrencySpec {
            target: default_target_in_flight(),
            stable_window: default_stable_window(),
            panic_threshold_percent: default_panic_threshold(),
            max_scale_down_rate: default_scale_down_rate(),
        }
    }
}

fn default_target_in_flight() -> i32 {
    10
}
fn default_stable_window() -> String {
    "60s".into()
}
fn default_panic_threshold() -> i32 {
    200
}
fn default_scale_down_rate() -> i32 {
    2
}

fn default_min() -> i32 {
    2
}
fn default_max() -> i32 {
    10
}
fn default_cpu() -> i32 {
    70
}

/// The worker Deployment (`app.kubernetes.io/component: worker`). Its replica count follows
/// the queue: enough workers for `jobsPerReplica` due or running jobs each, within
/// `[minReplicas, maxReplicas]` and what PostgreSQL's `max_connections` leaves.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("worker.minReplicas must be ≤ worker.maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Run workers (without them, nothing builds exports or purges expired sessions).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// At least one: a worker also reports the queue the count is decided on.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// The most worker replicas.
    #[serde(default = "default_worker_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Due or running jobs one worker should have to itself.
    #[serde(default = "default_jobs_per_replica")]
    #[schemars(range(min = 1))]
    pub jobs_per_replica: i32,
    /// Jobs one worker runs at once (`STOA_WORKER_CONCURRENCY`); its pool is this plus 2.
    #[serde(default = "default_worker_concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: i32,
    /// Container resources of the workers; defaults as for the API pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for WorkerSpec {
    fn default() -> Self {
        WorkerSpec {
            enabled: true,
            min_replicas: 1,
            max_replicas: default_worker_max(),
            jobs_per_replica: default_jobs_per_replica(),
            concurrency: default_worker_concurrency(),
            resources: None,
        }
    }
}

fn default_worker_max() -> i32 {
    4
}
fn default_jobs_per_replica() -> i32 {
    20
}
fn default_worker_concurrency() -> i32 {
    4
}

/// The worker Deployment's last scaling decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// The worker replicas decided.
    pub desired_replicas: i32,
    /// Worker replicas ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Jobs due and waiting, and running, as the workers last read the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<i64>,
    /// Jobs running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<i64>,
    /// `Queue` (following it), `NoMetrics` (no worker reported: the count holds),
    /// `Frozen` (a migration or rotation is in progress), `Bounded` (PostgreSQL's
    /// connections) or `Disabled`.
    pub reason: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Create the PodDisruptionBudget.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Pods kept available during voluntary disruptions (lowered to minReplicas − 1 under an autoscaler, so nodes can drain).
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub min_available: i32,
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        PodDisruptionBudgetSpec {
            enabled: true,
            min_available: 1,
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a ServiceMonitor (only when the Prometheus Operator's CRD is installed).
    #[serde(default = "yes")]
    pub service_monitor: bool,
    /// Scrape interval for the ServiceMonitor.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Error tracking with Sentry (or any Sentry-compatible service): panics and 5xx
    /// answers, scrubbed of tokens, passwords, cookies and bodies. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_tracking: Option<ErrorTrackingSpec>,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        MonitoringSpec {
            service_monitor: true,
            interval: default_interval(),
            error_tracking: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorTrackingSpec {
    /// The Secret key holding the DSN (`https://<key>@<host>/<project>`; `key` defaults to
    /// `url`). Read by the pods from the Secret; never copied into a ConfigMap.
    pub dsn_secret_ref: SecretKeyRef,
    /// The environment events are filed under; stoa-api's default is `production`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

fn default_interval() -> String {
    "30s".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Restrict ingress to the API port (from anywhere, or from `allowedNamespaces`) and the
    /// metrics port (from `metricsNamespaces`).
    #[serde(default)]
    pub enabled: bool,
    /// Namespaces (by name) allowed to call the API; empty means any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
    /// Namespaces allowed to scrape metrics (e.g. `monitoring`); empty means same namespace only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_namespaces: Vec<String>,
}

/// Pod template knobs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecOverrides {
    /// Annotations for the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Labels for the pods (the operator's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Node selector for the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity for the pods (topology spread across nodes is set either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Secrets to pull the image with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// The pods' PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// What the operator observed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoaStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `RollbackBlocked`, `Paused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The image the Deployment runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_image: Option<String>,
    /// The newest image whose migrations succeeded: the Deployment runs it (with
    /// `migrations.mode: Auto`, `spec.image` reaches the pods only through here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_image: Option<String>,
    /// The image whose contract migrations have run (after its rollout completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contracted_image: Option<String>,
    /// The newest migration applied to the database, as the last migration Job reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// The current or last migration Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
    /// API pods (the Deployment's `status.replicas`).
    #[serde(default)]
    pub replicas: i32,
    /// API pods ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// API pods running the current template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Label selector of the pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Signing keys in the key Secret, by kid and state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    /// Where the signing-key rotation stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rotation: Option<KeyRotationStatus>,
    /// Where the database credential rotation stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_rotation: Option<CredentialRotationStatus>,
    /// The Concurrency autoscaler's last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
    /// The job workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerStatus>,
    /// The data tier the pods use, e.g. `PostgreSQL via pooler, Redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_tier: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// The replica count decided.
    pub desired_replicas: i32,
    /// What the load asks for before the bounds.
    pub wanted_replicas: i32,
    /// The least of `maxReplicas` and what PostgreSQL and Redis can take.
    pub effective_max_replicas: i32,
    /// `maxReplicas`, `postgres` or `redis`.
    pub limited_by: String,
    /// Requests in flight across the ready pods (stable-window mean), e.g. `12.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_in_flight: Option<String>,
    /// `Stable`, `Panic`, `NoMetrics` or `Frozen`.
    pub reason: String,
    /// Why scaling holds still (a migration or a rotation in progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_by: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRotationStatus {
    /// `Disabled` (no `adminSecretRef`, or `enabled: false`), `Idle`, `Publishing` (a Job
    /// sets the idle role's new password), `Confirming` (waiting for every ready pod to use
    /// it), `Stalled` (past `confirmTimeout`), `Expiring` (a Job removes the previous
    /// role's password once none of its sessions remain) or `Failed` (retried).
    pub phase: String,
    /// The login role in the published connection Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// When the connection Secret last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<String>,
    /// The next scheduled rotation (`Idle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_step_at: Option<String>,
    /// Ready pods that do not use the published credential yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    /// What the rotation waits for, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotationStatus {
    /// `Idle` (the active key signs until `nextStepAt`), `Confirming` (a new key waits for
    /// every ready pod to load it), `Stalled` (past `confirmTimeout`; see `waitingFor`) or
    /// `Retiring` (the previous key verifies until `nextStepAt`).
    pub phase: String,
    /// The kid of the key that signs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_kid: Option<String>,
    /// Since when the active key signs (its age is the `Key Age` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_since: Option<String>,
    /// The next scheduled rotation (`Idle`) or removal of the retiring key (`Retiring`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_step_at: Option<String>,
    /// Ready pods that have not loaded the new key yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    /// What the rotation waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// The Job's name (its logs: `kubectl logs job/<job>`).
    pub job: String,
    /// The image the Job migrates for.
    pub image: String,
    /// `Expand` (before the rollout) or `Contract` (after it).
    pub phase: String,
    /// `Running`, `Succeeded`, `Failed` (retried with backoff) or `Blocked`.
    pub state: String,
    /// Attempts for this image and phase so far.
    pub attempts: i32,
    /// The last failure's message (from the Job's termination message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// The key's id (`kid` in token headers).
    pub kid: String,
    /// `next` (verifies only), `active` (signs) or `retiring` (verifies only).
    pub state: String,
    /// When the key was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When the key entered its state (`active`, `retiring`: the last promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// A duration field of the spec (the `^([0-9]+(ms|s|m|h|d))+$` strings), parsed; the
/// error names the field and its value.
pub fn duration(field: &str, value: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{field}={value:?}: {e}"))
}
