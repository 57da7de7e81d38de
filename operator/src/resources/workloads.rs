//! The Stoa's Deployments (the API and the worker) and its one-shot Jobs (migrations,
//! credential steps), built from the typed parts in `pod`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource,
    EnvVar, Lifecycle, LifecycleHandler, PodSpec, PodTemplateSpec, SleepAction,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use stoa_contract::env;
use stoa_contract::migration::{EXIT_NEWER_CONTRACT, MigrateCommand};
use stoa_contract::paths::{
    AUTH_PROVIDERS_MOUNT, CLIENT_SECRET_FILE, MIGRATION_DATABASE_MOUNT, TERMINATION_LOG, URL_FILE,
};

use super::pod::{
    CaMount, Mounted, container_security, default_resources, env_field, env_secret, env_value,
    http_probe, pod_spec, pull_policy, read_only_mount, secret_volume,
};
use super::{
    API_PORT, ATTEMPT_ANNOTATION, COMPONENT_LABEL, CONFIG_HASH_ANNOTATION, Component,
    DATABASE_MOUNT, DATABASE_POOLER_MOUNT, DATABASE_READ_MOUNT, IMAGE_ANNOTATION, JobRequest,
    KEYS_MOUNT, METRICS_PORT, MFA_KEYS_MOUNT, MIGRATION_JOB_LABEL, MIGRATION_KEY_LABEL,
    MIGRATION_STEP_LABEL, Names, PASSWORD_FILE, REDIS_MOUNT, REDIS_SENTINEL_PASSWORD_MOUNT,
    REPLICAS_OWNER_ANNOTATION, REPLICAS_OWNER_AUTOSCALER, REPLICAS_OWNER_OPERATOR, Replicas,
    Result, URL_KEY, component_selector_labels, config_hash, labels, meta, migration_labels,
    rotation_enabled,
};
use crate::crd::{RedisEndpoint, RedisSpec, Stoa};

/// What the API and the worker Deployments differ in.
struct Program {
    component: Component,
    /// The object's name.
    name: String,
    /// `stoa-api <args>`.
    args: &'static str,
    ports: Vec<ContainerPort>,
    /// The port the probes ask.
    probe_port: &'static str,
    /// The program's own volumes and variables, after the ones every pod has.
    mounted: Mounted,
    resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    lifecycle: Option<Lifecycle>,
    replicas: Replicas,
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// The API Deployment with `replicas`: it serves on `http`, mounts the signing and MFA
/// key sets and the read replica's URL, and pauses before it stops.
pub(super) fn api_deployment(
    stoa: &Stoa,
    config: &ConfigMap,
    image: &str,
    replicas: Replicas,
) -> Result<Deployment> {
    let names = Names::of(stoa);
    let mut mounted = Mounted::default();
    mounted
        .volumes
        .push(secret_volume("keys", &names.keys, None, 0o440));
    mounted
        .volumes
        .push(secret_volume("mfa-keys", &names.mfa_keys, None, 0o440));
    mounted.mounts.push(read_only_mount("keys", KEYS_MOUNT));
    mounted
        .mounts
        .push(read_only_mount("mfa-keys", MFA_KEYS_MOUNT));
    let program = Program {
        component: Component::Api,
        name: names.base,
        args: "serve",
        ports: vec![port("http", API_PORT), port("metrics", METRICS_PORT)],
        probe_port: "http",
        mounted,
        resources: Some(default_resources(stoa)),
        // Keep serving while endpoints and load balancers drop this pod.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: 5 }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        replicas,
    };
    program_deployment(stoa, config, image, program)
}

/// The worker Deployment: `stoa-api worker`, with its pool and concurrency from
/// `spec.worker`, no signing keys (a worker signs nothing) and only its admin port.
pub(super) fn worker_deployment(
    stoa: &Stoa,
    config: &ConfigMap,
    image: &str,
    replicas: i32,
) -> Result<Deployment> {
    let worker = &stoa.spec.worker;
    let program = Program {
        component: Component::Worker,
        name: Names::of(stoa).worker,
        args: "worker",
        ports: vec![port("metrics", METRICS_PORT)],
        probe_port: "metrics",
        mounted: Mounted::default(),
        resources: Some(
            worker
                .resources
                .clone()
                .unwrap_or_else(|| default_resources(stoa)),
        ),
        lifecycle: None,
        replicas: Replicas::Operator(replicas),
    };
    program_deployment(stoa, config, image, program)
}

/// The variables every pod gets, in order: its session name, the CA files, error
/// tracking, then the user's `spec.env` (which wins over what comes before it:
/// Kubernetes keeps the last of duplicate names), then what the program sets itself.
fn container_env(stoa: &Stoa, component: Component, ca_env: Vec<EnvVar>) -> Vec<EnvVar> {
    let spec = &stoa.spec;
    // Sessions carry the pod's name, so a credential rotation can tell which pods still
    // hold the old role.
    let mut vars = vec![env_field(env::DB_APPLICATION_NAME, "metadata.name")];
    vars.extend(ca_env);
    // Both programs' requests go through the pooler (the worker's job transactions too).
    if spec.database.pooler.is_some() {
        vars.push(env_value(
            env::DATABASE_POOLER_URL_FILE,
            format!("{DATABASE_POOLER_MOUNT}/{URL_FILE}"),
        ));
    }
    if let Some(tracking) = &spec.monitoring.error_tracking {
        vars.push(env_secret(env::SENTRY_DSN, &tracking.dsn_secret_ref));
        if let Some(environment) = &tracking.environment {
            vars.push(env_value(env::SENTRY_ENVIRONMENT, environment.clone()));
        }
    }
    match component {
        Component::Api => {
            vars.extend(spec.env.iter().cloned());
            if spec.database.read_url_secret_ref.is_some() {
                vars.push(env_value(
                    env::DATABASE_READ_URL_FILE,
                    format!("{DATABASE_READ_MOUNT}/{URL_FILE}"),
                ));
            }
            // Only API pods sign users in: a worker neither reads nor mounts the secrets.
            if let Some(providers) = identity_providers(stoa) {
                vars.push(env_value(env::AUTH_PROVIDERS, providers));
                vars.push(env_value(
                    env::AUTH_RETURN_TO,
                    spec.auth.return_to.join(","),
                ));
            }
        }
        Component::Worker => {
            // A worker's pool and concurrency follow spec.worker; the user's env cannot
            // repeat them.
            let own = [
                (env::WORKER_CONCURRENCY, spec.worker.concurrency.to_string()),
                (
                    env::DB_MAX_CONNECTIONS,
                    (spec.worker.concurrency + 2).to_string(),
                ),
            ];
            vars.extend(
                spec.env
                    .iter()
                    .filter(|e| own.iter().all(|(name, _)| e.name != *name))
                    .cloned(),
            );
            vars.extend(own.into_iter().map(|(name, value)| env_value(name, value)));
        }
    }
    vars
}

/// Volumes and mounts in the order the pods get them: the program's own, the database URL,
/// `/tmp`, the pooler's URL, the read replica's URL (API), Redis's URL (and the sentinels'
/// password), the CA files.
fn volumes(stoa: &Stoa, program: &mut Program) -> Vec<EnvVar> {
    let spec = &stoa.spec;
    let names = Names::of(stoa);
    let mounted = &mut program.mounted;
    // With credential rotation the pods mount the operator's connection Secret.
    let (secret, key) = if rotation_enabled(stoa) {
        (names.credentials.clone(), URL_KEY.to_owned())
    } else {
        (
            spec.database.url_secret_ref.name.clone(),
            spec.database.url_secret_ref.key.clone(),
        )
    };
    mounted.url_secret("database", &secret, &key, DATABASE_MOUNT);
    mounted.volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity("16Mi".into())),
        }),
        ..Volume::default()
    });
    mounted.mounts.push(VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    });
    if let Some(pooler) = &spec.database.pooler {
        let secret = &pooler.url_secret_ref;
        mounted.url_secret(
            "database-pooler",
            &secret.name,
            &secret.key,
            DATABASE_POOLER_MOUNT,
        );
    }
    if let (Component::Api, Some(read)) = (program.component, &spec.database.read_url_secret_ref) {
        mounted.url_secret("database-read", &read.name, &read.key, DATABASE_READ_MOUNT);
    }
    if program.component == Component::Api {
        for provider in spec.auth.providers.iter().filter(|p| p.enabled) {
            let secret = &provider.client_secret_ref;
            mounted.secret_file(
                &format!("auth-provider-{}", provider.name),
                &secret.name,
                &secret.key,
                &format!("{AUTH_PROVIDERS_MOUNT}/{}", provider.name),
                CLIENT_SECRET_FILE,
            );
        }
    }
    if let Some(endpoint) = spec.redis.as_ref().and_then(RedisSpec::endpoint) {
        let secret = endpoint.url_secret_ref();
        mounted.url_secret("redis", &secret.name, &secret.key, REDIS_MOUNT);
        if let RedisEndpoint::Sentinel(sentinel) = endpoint
            && let Some(password) = &sentinel.password_secret_ref
        {
            mounted.secret_file(
                "redis-sentinel-password",
                &password.name,
                &password.key,
                REDIS_SENTINEL_PASSWORD_MOUNT,
                PASSWORD_FILE,
            );
        }
    }
    [CaMount::database(stoa), CaMount::redis(stoa)]
        .into_iter()
        .flatten()
        .map(|ca| ca.add_to(mounted))
        .collect()
}

/// `STOA_AUTH_PROVIDERS` for `spec.auth.providers` (the enabled ones), each naming its
/// mounted client secret; `None` without any.
///
/// The secret is a projected Secret volume, not a `subPath` mount, so the kubelet
/// replaces the file when the Secret changes (Kubernetes docs, "Secrets", "Mounted Secrets
/// are updated automatically"), and stoa-api reads it at each sign-in: a rotated client
/// secret is used without a rollout.
pub(super) fn identity_providers(stoa: &Stoa) -> Option<String> {
    let providers: Vec<serde_json::Value> = stoa
        .spec
        .auth
        .providers
        .iter()
        .filter(|p| p.enabled)
        .map(|p| {
            let mut entry = serde_json::json!({
                "name": p.name,
                "type": p.kind.as_str(),
                "clientId": p.client_id,
                "clientSecretFile": format!("{AUTH_PROVIDERS_MOUNT}/{}/{CLIENT_SECRET_FILE}", p.name),
            });
            let optional = [
                ("displayName", p.display_name.clone().map(serde_json::Value::from)),
                ("issuer", p.issuer.clone().map(serde_json::Value::from)),
                ("tenant", p.tenant.clone().map(serde_json::Value::from)),
                ("scopes", p.scopes.clone().map(serde_json::Value::from)),
                ("authorizationUrl", p.authorization_url.clone().map(serde_json::Value::from)),
                ("tokenUrl", p.token_url.clone().map(serde_json::Value::from)),
                ("apiUrl", p.api_url.clone().map(serde_json::Value::from)),
            ];
            if let Some(entry) = entry.as_object_mut() {
                entry.extend(
                    optional
                        .into_iter()
                        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))),
                );
            }
            entry
        })
        .collect();
    (!providers.is_empty()).then(|| serde_json::Value::from(providers).to_string())
}

/// The program's one container: `stoa-api <args>` with the ConfigMap's settings, `env`,
/// the program's mounts, the hardened security context and the health probes.
fn container(stoa: &Stoa, image: &str, program: &mut Program, env: Vec<EnvVar>) -> Container {
    let probe_port = program.probe_port;
    Container {
        name: program.component.label().into(),
        image: Some(image.into()),
        image_pull_policy: pull_policy(stoa.spec.image_pull_policy),
        args: Some(vec![program.args.into()]),
        ports: Some(std::mem::take(&mut program.ports)),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: Names::of(stoa).config,
                optional: None,
            }),
            ..EnvFromSource::default()
        }]),
        env: Some(env),
        resources: program.resources.take(),
        volume_mounts: Some(std::mem::take(&mut program.mounted.mounts)),
        security_context: Some(container_security()),
        startup_probe: Some(http_probe("/healthz", probe_port, 2, None, 30)),
        liveness_probe: Some(http_probe("/healthz", probe_port, 10, Some(2), 3)),
        readiness_probe: Some(http_probe("/readyz", probe_port, 5, Some(3), 2)),
        lifecycle: program.lifecycle.take(),
        ..Container::default()
    }
}

/// The Deployment's own metadata: the Stoa's labels (and the worker's component), and who
/// owns its replica count.
fn deployment_meta(stoa: &Stoa, program: &Program, replicas_owner: &str) -> Result<ObjectMeta> {
    let mut metadata = meta(stoa, &program.name)?;
    if program.component == Component::Worker {
        metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPONENT_LABEL.into(), program.component.label().into());
    }
    metadata.annotations = Some(BTreeMap::from([(
        REPLICAS_OWNER_ANNOTATION.to_owned(),
        replicas_owner.to_owned(),
    )]));
    Ok(metadata)
}

fn program_deployment(
    stoa: &Stoa,
    config: &ConfigMap,
    image: &str,
    mut program: Program,
) -> Result<Deployment> {
    let spec = &stoa.spec;
    let selector = component_selector_labels(stoa, program.component);
    let mut pod_labels = labels(stoa);
    pod_labels.extend(spec.pod.labels.clone());
    // User labels never override the selector.
    pod_labels.extend(selector.clone());
    let mut annotations = spec.pod.annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash(stoa, config));

    let ca_env = volumes(stoa, &mut program);
    let mut env = container_env(stoa, program.component, ca_env);
    env.append(&mut program.mounted.env);
    let container = container(stoa, image, &mut program, env);
    let spread = |key: &str| TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector.clone()),
            match_expressions: None,
        }),
        ..TopologySpreadConstraint::default()
    };
    // With an HPA, the replica count is not ours: leaving it out of the applied object
    // means server-side apply never fights the scaler over it.
    let (replicas, replicas_owner) = match program.replicas {
        Replicas::Operator(count) => (Some(count), REPLICAS_OWNER_OPERATOR),
        Replicas::Autoscaler => (None, REPLICAS_OWNER_AUTOSCALER),
    };
    let metadata = deployment_meta(stoa, &program, replicas_owner)?;
    let deployment_spec = DeploymentSpec {
        replicas,
        selector: LabelSelector {
            match_labels: Some(selector.clone()),
            match_expressions: None,
        },
        revision_history_limit: Some(5),
        strategy: Some(DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_unavailable: Some(IntOrString::Int(0)),
                max_surge: Some(IntOrString::String("25%".into())),
            }),
        }),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(pod_labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                termination_grace_period_seconds: Some(30),
                topology_spread_constraints: Some(vec![
                    spread("topology.kubernetes.io/zone"),
                    spread("kubernetes.io/hostname"),
                ]),
                volumes: Some(program.mounted.volumes),
                containers: vec![container],
                ..pod_spec(stoa)
            }),
        },
        ..DeploymentSpec::default()
    };
    Ok(Deployment {
        metadata,
        spec: Some(deployment_spec),
        status: None,
    })
}

/// What differs between the operator's one-shot Jobs (migrations, credential steps).
pub(super) struct OneShot<'a> {
    pub pod_labels: BTreeMap<String, String>,
    pub container: &'static str,
    pub image: &'a str,
    pub args: Vec<String>,
    pub deadline_seconds: i64,
    pub failure_policy: Option<PodFailurePolicy>,
    pub mounted: Mounted,
}

/// The admin (or application) database URL every one-shot Job reads, and its log format.
pub(super) fn database_job_mounts(secret: &crate::crd::SecretKeyRef, volume: &str) -> Mounted {
    Mounted {
        volumes: vec![secret_volume(
            volume,
            &secret.name,
            Some((&secret.key, URL_FILE)),
            0o440,
        )],
        mounts: vec![read_only_mount(volume, MIGRATION_DATABASE_MOUNT)],
        env: vec![
            env_value(
                env::DATABASE_URL_FILE,
                format!("{MIGRATION_DATABASE_MOUNT}/{URL_FILE}"),
            ),
            env_value(env::LOG_FORMAT, "json"),
        ],
    }
}

/// A Job that runs one stoa-api command to completion, with the pod settings of the Stoa,
/// its report as the termination message, kept a day for its logs.
pub(super) fn one_shot_job(stoa: &Stoa, metadata: ObjectMeta, mut job: OneShot<'_>) -> Result<Job> {
    // Every one-shot Job connects to PostgreSQL.
    if let Some(ca) = CaMount::database(stoa) {
        let variable = ca.add_to(&mut job.mounted);
        job.mounted.env.push(variable);
    }
    let container = Container {
        name: job.container.into(),
        image: Some(job.image.into()),
        image_pull_policy: pull_policy(stoa.spec.image_pull_policy),
        args: Some(job.args),
        env: Some(job.mounted.env),
        resources: Some(default_resources(stoa)),
        volume_mounts: Some(job.mounted.mounts),
        security_context: Some(container_security()),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let job_spec = JobSpec {
        backoff_limit: Some(2),
        active_deadline_seconds: Some(job.deadline_seconds),
        ttl_seconds_after_finished: Some(86400),
        pod_failure_policy: job.failure_policy,
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(job.pod_labels),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                volumes: Some(job.mounted.volumes),
                containers: vec![container],
                ..pod_spec(stoa)
            }),
        },
        ..JobSpec::default()
    };
    Ok(Job {
        metadata,
        spec: Some(job_spec),
        status: None,
    })
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
    let failure_policy = PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some("migrate".into()),
                    operator: "In".into(),
                    values: vec![EXIT_NEWER_CONTRACT],
                }),
                on_pod_conditions: None,
            },
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_exit_codes: None,
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                }]),
            },
        ],
    };
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
            mounted: database_job_mounts(credential, "database"),
        },
    )
}
