#![allow(dead_code)] // each test crate uses part of it
//! A process-level stand-in for the parts of a Kubernetes cluster the operator relies on,
//! so the lifecycle protocols run end to end on a machine without containers:
//!
//! - the API server: an in-memory one (kube-fake-client), driven by the real reconciler;
//! - the Job controller and kubelet: each migration Job's container command runs as a
//!   real `stoa-api` process, and its exit code and termination message become the Job's
//!   status and its pod's `containerStatuses` ([`kubelet`]);
//! - the Deployment controller: pods follow the Deployment's template and replicas,
//!   rolled one at a time (surge one, then retire one), each a real `stoa-api serve`
//!   process on its own loopback address (its pod IP);
//! - the kubelet's volume manager: Secrets are projected into each pod's directory in the
//!   kubelet's layout (timestamped directory, atomic `..data` symlink swap), after a
//!   per-pod propagation delay ([`kubelet::Projection`]);
//! - kube-proxy: [`load::Endpoints`] holds the ready pods a client may reach.
//!
//! The operator itself reads each pod's admin port over HTTP with its real probe.

pub mod kubelet;
pub mod load;
/// The strict in-memory API layer the operator's own tests use (one file, shared).
#[path = "../../../operator/tests/fixtures/strict.rs"]
pub mod strict;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use stoa_operator::controller::{Context, reconcile};
use stoa_operator::crd::Stoa;
use stoa_operator::metrics::Metrics;

pub const NAMESPACE: &str = "shop";

pub struct Cluster {
    pub client: Client,
    /// The Stoa's Redis (its URL is the Secret `<name>-redis`).
    redis: RedisProcess,
    pub context: Arc<Context>,
    pub metrics: Arc<Metrics>,
    pub endpoints: load::Endpoints,
    name: String,
    root: tempfile::TempDir,
    pods: Vec<kubelet::PodProcess>,
    started: u8,
    /// The worker Deployment's pods (`stoa-api worker` processes).
    workers: Vec<kubelet::PodProcess>,
    started_workers: u8,
}

impl Cluster {
    /// A cluster holding `stoa` and `secrets` (its database URL Secret, ...), with a Redis
    /// of its own whose URL is in the Secret `<name>-redis`.
    pub async fn start(stoa: &Stoa, secrets: Vec<Secret>) -> Cluster {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let redis = RedisProcess::start().await;
        let mut secrets = secrets;
        secrets.push(database_secret(
            &format!("{}-redis", stoa.name_any()),
            &redis.url(),
        ));
        let mut builder = kube_fake_client::ClientBuilder::new()
            .with_resource::<Stoa>()
            .with_status_subresource::<Stoa>()
            .with_status_subresource::<Deployment>()
            .with_status_subresource::<Job>()
            .with_object(stoa.clone());
        for secret in secrets {
            builder = builder.with_object(secret);
        }
        let client = Client::new(
            strict::Strict {
                inner: builder.build().await.unwrap(),
                rules: Arc::default(),
            },
            NAMESPACE,
        );
        let metrics = Arc::new(Metrics::new());
        let context = Arc::new(
            Context::new(client.clone(), metrics.clone()).with_operator_namespace("stoa-system"),
        );
        Cluster {
            client,
            redis,
            context,
            metrics,
            endpoints: load::Endpoints::default(),
            name: stoa.name_any(),
            root: tempfile::tempdir().unwrap(),
            pods: Vec::new(),
            started: 0,
            workers: Vec::new(),
            started_workers: 0,
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    pub async fn stoa(&self) -> Stoa {
        self.api::<Stoa>().get(&self.name).await.unwrap()
    }

    /// One reconcile of the stored Stoa, as after a watch event.
    pub async fn reconcile(&self) -> Stoa {
        let current = self.stoa().await;
        reconcile(Arc::new(current), self.context.clone())
            .await
            .unwrap();
        self.stoa().await
    }

    /// Lets the cluster act on what the operator wrote: runs new Jobs to completion and
    /// moves the pods to the Deployment's template and replica count.
    pub async fn sync(&mut self) {
        let jobs = self
            .api::<Job>()
            .list(&ListParams::default())
            .await
            .unwrap();
        for job in jobs.items {
            if job
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_none()
            {
                kubelet::run_job(&self.client, self.root.path(), &job).await;
            }
        }
        let workers = self.worker_name();
        match self.api::<Deployment>().get_opt(&workers).await.unwrap() {
            Some(deployment) => self.roll(&deployment, true).await,
            None => {
                for pod in self.workers.drain(..) {
                    pod.stop(&self.client).await;
                }
            }
        }
        let Some(deployment) = self.api::<Deployment>().get_opt(&self.name).await.unwrap() else {
            // Deleted: its pods go.
            for pod in self.pods.drain(..) {
                self.endpoints.remove(&pod.base_url());
                pod.stop(&self.client).await;
            }
            return;
        };
        self.roll(&deployment, false).await;
    }

    fn worker_name(&self) -> String {
        format!("{}-worker", self.name)
    }

    /// One beat of the cluster: a reconcile, then the cluster acts on it.
    pub async fn step(&mut self) -> Stoa {
        let stoa = self.reconcile().await;
        self.sync().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        stoa
    }

    /// Steps until `done` holds for the cluster and the Stoa: `Ok` with the Stoa then, or
    /// `Err` with the last one once `timeout` has passed (the caller says what it waited
    /// for).
    pub async fn step_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Cluster, &Stoa) -> bool,
    ) -> Result<Stoa, Stoa> {
        let deadline = Instant::now() + timeout;
        loop {
            let stoa = self.step().await;
            if done(self, &stoa) {
                return Ok(stoa);
            }
            if Instant::now() >= deadline {
                return Err(stoa);
            }
        }
    }

    /// Whether the cluster has acted on everything the operator wrote: no Job left to
    /// run, and the pods are the Deployment's template in its replica count.
    async fn converged(&self) -> bool {
        let jobs = self
            .api::<Job>()
            .list(&ListParams::default())
            .await
            .unwrap();
        if jobs.items.iter().any(|j| {
            j.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_none()
        }) {
            return false;
        }
        for (name, pods) in [
            (self.name.clone(), &self.pods),
            (self.worker_name(), &self.workers),
        ] {
            let Some(deployment) = self.api::<Deployment>().get_opt(&name).await.unwrap() else {
                continue;
            };
            let spec = deployment.spec.unwrap();
            let hash = kubelet::template_hash(&spec.template);
            if pods.len() != usize::try_from(spec.replicas.unwrap_or(1)).unwrap()
                || pods.iter().any(|p| p.template_hash != hash)
            {
                return false;
            }
        }
        true
    }

    /// Reconciles and syncs until `done` holds for the Stoa and the cluster has converged
    /// (or panics after `timeout`).
    pub async fn settle(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Stoa) -> bool,
    ) -> Stoa {
        let deadline = Instant::now() + timeout;
        loop {
            let stoa = self.reconcile().await;
            if done(&stoa) && self.converged().await {
                return stoa;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached; status {:#?}",
                stoa.status
            );
            self.sync().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The Deployment controller: one new pod at a time (maxSurge 1, maxUnavailable 0, as
    /// the operator's Deployment asks), then one old pod leaves; finally the status. The
    /// API's pods join the endpoints; workers serve no traffic.
    async fn roll(&mut self, deployment: &Deployment, workers: bool) {
        let spec = deployment.spec.clone().unwrap();
        let template = spec.template;
        let hash = kubelet::template_hash(&template);
        let desired = usize::try_from(spec.replicas.unwrap_or(1)).unwrap();
        let name = deployment.name_any();
        let (pods, started, network) = if workers {
            (&mut self.workers, &mut self.started_workers, 1)
        } else {
            (&mut self.pods, &mut self.started, 0)
        };
        let endpoints = (!workers).then_some(&self.endpoints);
        loop {
            let current = pods.iter().filter(|p| p.template_hash == hash).count();
            let old = pods.iter().position(|p| p.template_hash != hash);
            let leaving = if current < desired {
                *started += 1;
                let pod = kubelet::PodProcess::start(
                    &self.client,
                    self.root.path(),
                    &format!("{name}-{started}"),
                    (network, *started),
                    &template,
                    &hash,
                )
                .await;
                if let Some(endpoints) = endpoints {
                    endpoints.add(&pod.base_url());
                }
                pods.push(pod);
                None
            } else if let Some(index) = old {
                Some(pods.remove(index))
            } else if current > desired {
                pods.pop()
            } else {
                break;
            };
            if let Some(pod) = leaving {
                if let Some(endpoints) = endpoints {
                    endpoints.remove(&pod.base_url());
                }
                pod.stop(&self.client).await;
            }
        }
        let count = i32::try_from(pods.len()).unwrap();
        let mut status = deployment.clone();
        status.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            observed_generation: deployment.metadata.generation.or(Some(1)),
            replicas: Some(count),
            ready_replicas: Some(count),
            updated_replicas: Some(count),
            available_replicas: Some(count),
            ..Default::default()
        });
        self.api::<Deployment>()
            .replace_status(&name, &PostParams::default(), &status)
            .await
            .unwrap();
    }

    pub fn pods(&self) -> &[kubelet::PodProcess] {
        &self.pods
    }

    pub fn workers(&self) -> &[kubelet::PodProcess] {
        &self.workers
    }

    /// Stops `pod`'s kubelet from projecting Secret changes (as if its node lost touch).
    pub fn freeze_projection(&self, pod: &str, frozen: bool) {
        for p in &self.pods {
            if p.name == pod {
                p.projection.freeze(frozen);
            }
        }
    }

    /// Deletes the Stoa the way the API server does with finalizers: while any remain,
    /// the object stays and is presented with `metadata.deletionTimestamp` set; once the
    /// operator has removed them, it goes (with what it owns). kube-fake-client deletes at
    /// once, ignoring finalizers, so the harness plays this part of the API server.
    pub async fn delete_stoa(&mut self) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut stoa = self.stoa().await;
            if stoa.finalizers().is_empty() {
                self.api::<Stoa>()
                    .delete(&self.name, &kube::api::DeleteParams::default())
                    .await
                    .unwrap();
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never finalized: {:?}",
                stoa.status
            );
            stoa.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
            reconcile(Arc::new(stoa), self.context.clone())
                .await
                .unwrap();
            self.sync().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn shutdown(mut self) {
        for pod in self.pods.drain(..) {
            self.endpoints.remove(&pod.base_url());
            pod.stop(&self.client).await;
        }
        for pod in self.workers.drain(..) {
            pod.stop(&self.client).await;
        }
    }
}

/// A redis-server of the test's own, on a free port, without persistence.
pub struct RedisProcess {
    port: u16,
    _child: tokio::process::Child,
}

impl RedisProcess {
    async fn start() -> RedisProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return RedisProcess {
                    port,
                    _child: child,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {port}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

pub const SETTLE: Duration = Duration::from_secs(60);

/// A Stoa named `api` in the test namespace: `spec` (its lines after `image`, indented
/// two spaces) and the settings every Stoa of these tests carries, then `extra_env`.
pub fn test_stoa(spec: &str, extra_env: &[(&str, &str)]) -> Stoa {
    // One machine plays every client: per-address limits would throttle the load itself
    // (the rate-limit series still exist, at zero). Cheap hashing, quick shutdowns.
    let base = [
        ("STOA_RATE_LIMIT_ENABLED", "'false'"),
        ("STOA_ARGON2_MEMORY_KIB", "'1024'"),
        ("STOA_ARGON2_ITERATIONS", "'1'"),
        ("STOA_SHUTDOWN_DELAY", "1s"),
        ("STOA_LOG", "warn"),
    ];
    let env: String = base
        .iter()
        .chain(extra_env)
        .map(|(name, value)| format!("    - {{name: {name}, value: {value}}}\n"))
        .collect();
    serde_norway::from_str(&format!(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {{name: api, namespace: {NAMESPACE}, uid: 11111111-2222-3333-4444-555555555555, generation: 1}}
spec:
  image: ghcr.io/stoa-dev/stoa-api:0.1.0
{spec}  env:
{env}"
    ))
    .unwrap()
}

pub fn stoa(replicas: i32, confirm_timeout: &str) -> Stoa {
    test_stoa(
        &format!(
            "  replicas: {replicas}
  database: {{urlSecretRef: {{name: api-db}}}}
  redis: {{urlSecretRef: {{name: api-redis}}}}
  auth: {{keyRotation: {{confirmTimeout: {confirm_timeout}}}}}
"
        ),
        &[("STOA_RELOAD_INTERVAL", "100ms")],
    )
}

/// A Stoa scaled by the operator on requests in flight: one per pod, decided over 6 s (a
/// short window keeps tests short), between `min` and `max` pods with pools of
/// `pool_size` and `reserved` PostgreSQL connections kept back.
pub fn autoscaled_stoa(pool_size: u32, reserved: i64, min: i32, max: i32) -> Stoa {
    test_stoa(
        &format!(
            "  database: {{urlSecretRef: {{name: api-db}}, maxConnections: {pool_size}}}
  redis: {{urlSecretRef: {{name: api-redis}}}}
  autoscaling:
    mode: Concurrency
    minReplicas: {min}
    maxReplicas: {max}
    reservedConnections: {reserved}
    concurrency: {{target: 1, stableWindow: 6s}}
"
        ),
        &[],
    )
}

/// A Secret holding a database URL under `url`, as a platform team provides it.
pub fn database_secret(name: &str, url: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "url".to_owned(),
            ByteString(url.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// A Stoa installed and ready: migrated by its Job, `replicas` pods serving.
pub async fn running(pool: &sqlx::PgPool, replicas: i32, confirm_timeout: &str) -> Cluster {
    install(
        &stoa(replicas, confirm_timeout),
        vec![database_secret("api-db", &crate::common::url_of(pool))],
    )
    .await
}

/// `stoa` installed with `secrets` and settled until all its replicas are ready.
pub async fn install(stoa: &Stoa, secrets: Vec<Secret>) -> Cluster {
    let replicas = match stoa_operator::resources::Replicas::of(stoa) {
        stoa_operator::resources::Replicas::Operator(n) => n,
        stoa_operator::resources::Replicas::Autoscaler => stoa.spec.autoscaling.min_replicas,
    };
    let mut cluster = Cluster::start(stoa, secrets).await;
    cluster
        .settle("installed and ready", SETTLE, |s| {
            s.status.as_ref().is_some_and(|st| {
                st.ready_replicas == replicas
                    && st
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .await;
    // Real Redis behind every pod (cache, shared limits, revocation mirror).
    for pod in cluster.pods() {
        let detail: serde_json::Value = reqwest::get(format!("{}/readyz", pod.admin_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            detail["checks"]["redis"]["status"], "up",
            "{}: {detail}",
            pod.name
        );
    }
    cluster
}
