//! The kubelet's part: running a pod template's container as a real process, projecting
//! the pod's Secret volumes into its directory, and reporting what ran.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodTemplateSpec, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::NAMESPACE;
use crate::common::stoa_api_binary;

/// How long after a Secret changes each pod sees it: pods differ (the kubelet syncs each
/// pod on its own period), so a rotation meets pods that are behind.
fn propagation_delay(ordinal: u8) -> Duration {
    Duration::from_millis(300 * u64::from(ordinal % 4 + 1))
}

pub fn template_hash(template: &PodTemplateSpec) -> String {
    let digest = Sha256::digest(serde_json::to_vec(template).unwrap());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// A Secret volume of the pod: which Secret, which keys (all when `None`), where.
#[derive(Clone, Debug)]
struct SecretMount {
    secret: String,
    items: Option<Vec<(String, String)>>,
    path: PathBuf,
}

fn secret_mounts(
    template: &PodTemplateSpec,
    container: &Container,
    root: &Path,
) -> Vec<SecretMount> {
    let volumes = template
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .clone()
        .unwrap_or_default();
    container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|mount| {
            let volume = volumes.iter().find(|v| v.name == mount.name)?;
            let secret = volume.secret.as_ref()?;
            Some(SecretMount {
                secret: secret.secret_name.clone()?,
                items: secret.items.as_ref().map(|items| {
                    items
                        .iter()
                        .map(|i| (i.key.clone(), i.path.clone()))
                        .collect()
                }),
                path: in_root(root, &mount.mount_path),
            })
        })
        .collect()
}

/// Projects `secrets` into every Secret volume that `container` mounts, as the kubelet
/// does before the container starts (for tests that render a pod without an API server).
pub fn project_secrets(
    template: &PodTemplateSpec,
    container: &Container,
    root: &Path,
    secrets: &[Secret],
) {
    for mount in secret_mounts(template, container, root) {
        let secret = secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(mount.secret.as_str()));
        if let Some(data) = secret.and_then(|s| s.data.as_ref()) {
            project(&mount.path, data, mount.items.as_deref());
        }
    }
}

/// Where a path inside the pod (`/var/run/…`) is under the harness's `root`.
pub fn in_root(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

/// Writes `data` into `dir` as the kubelet's atomic writer does: a new timestamped
/// directory, a `..data_tmp` symlink to it renamed over `..data` (one atomic step), file
/// names as symlinks through `..data`, then the old directory removed.
pub fn project(
    dir: &Path,
    data: &BTreeMap<String, ByteString>,
    items: Option<&[(String, String)]>,
) {
    std::fs::create_dir_all(dir).unwrap();
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let generation = dir.join(&stamp);
    std::fs::create_dir(&generation).unwrap();
    let files: Vec<(String, String)> = match items {
        Some(items) => items.to_vec(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in &files {
        if let Some(bytes) = data.get(key) {
            std::fs::write(generation.join(path), &bytes.0).unwrap();
        }
    }
    let previous = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (_, path) in &files {
        let link = dir.join(path);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(path), &link).unwrap();
        }
    }
    if let Some(previous) = previous {
        let _ = std::fs::remove_dir_all(dir.join(previous));
    }
}

/// Projects every Secret volume as it is now (before the container starts); returns the
/// resourceVersion projected per mount path, so the projection loop starts from there.
async fn mount_all(client: &Client, mounts: &[SecretMount]) -> HashMap<String, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let mut projected = HashMap::new();
    for mount in mounts {
        let secret = secrets.get(&mount.secret).await.unwrap();
        projected.insert(
            mount.path.display().to_string(),
            secret.resource_version().unwrap_or_default(),
        );
        project(
            &mount.path,
            &secret.data.unwrap_or_default(),
            mount.items.as_deref(),
        );
    }
    projected
}

/// Keeps a pod's Secret volumes current, each change after the pod's propagation delay.
pub struct Projection {
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Projection {
    /// `seen`: what was projected before the container started (a Secret unchanged since
    /// is not projected again, so the first change is not queued behind every mount).
    fn start(
        client: Client,
        mounts: Vec<SecretMount>,
        delay: Duration,
        mut seen: HashMap<String, String>,
    ) -> Projection {
        let frozen = Arc::new(AtomicBool::new(false));
        let stop_when_frozen = frozen.clone();
        let task = tokio::spawn(async move {
            let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                for mount in &mounts {
                    let Ok(secret) = secrets.get(&mount.secret).await else {
                        continue;
                    };
                    let version = secret.resource_version().unwrap_or_default();
                    let key = mount.path.display().to_string();
                    if seen.get(&key) == Some(&version) || stop_when_frozen.load(Ordering::SeqCst) {
                        continue;
                    }
                    tokio::time::sleep(delay).await;
                    if stop_when_frozen.load(Ordering::SeqCst) {
                        continue;
                    }
                    // What the API holds now (it may have moved on during the delay).
                    let Ok(secret) = secrets.get(&mount.secret).await else {
                        continue;
                    };
                    project(
                        &mount.path,
                        &secret.data.clone().unwrap_or_default(),
                        mount.items.as_deref(),
                    );
                    seen.insert(key, secret.resource_version().unwrap_or_default());
                }
            }
        });
        Projection { frozen, task }
    }

    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

impl Drop for Projection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The container's environment as the kubelet would set it (`envFrom` ConfigMaps, then
/// `env` values), with mounted paths moved under the pod's directory.
async fn environment(
    client: &Client,
    container: &Container,
    root: &Path,
    pod_name: &str,
) -> Vec<(String, String)> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let mut env = Vec::new();
    for source in container.env_from.iter().flatten() {
        if let Some(reference) = &source.config_map_ref {
            let map = config_maps.get(&reference.name).await.unwrap();
            env.extend(map.data.unwrap_or_default());
        }
    }
    for var in container.env.iter().flatten() {
        // The downward API, as far as the operator uses it: the pod's name.
        let from_field = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        let value = match from_field {
            Some("metadata.name") => pod_name.to_owned(),
            Some(other) => panic!("the harness does not provide fieldRef {other}"),
            None => var.value.clone().unwrap_or_default(),
        };
        env.push((var.name.clone(), value));
    }
    env.into_iter()
        .map(|(name, value)| {
            let value = if value.starts_with("/var/run/") || value.starts_with("/dev/") {
                in_root(root, &value).display().to_string()
            } else if value.starts_with('[') || value.starts_with('{') {
                // A JSON setting naming mounted files (`STOA_AUTH_PROVIDERS`'s
                // `clientSecretFile`): each such path, under the root too.
                let under = in_root(root, "/var/run/").display().to_string();
                value.replace("\"/var/run/", &format!("\"{under}"))
            } else {
                value
            };
            (name, value)
        })
        .collect()
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A pod of the Deployment: a `stoa-api` process on its own loopback address.
pub struct PodProcess {
    pub name: String,
    pub ip: String,
    pub api_port: u16,
    pub admin_port: u16,
    pub template_hash: String,
    pub projection: Projection,
    child: tokio::process::Child,
}

impl PodProcess {
    /// `network`: the third octet of the pod's loopback address (API pods and workers
    /// each have their own, so their names and addresses never collide).
    pub async fn start(
        client: &Client,
        cluster_root: &Path,
        name: &str,
        (network, ordinal): (u8, u8),
        template: &PodTemplateSpec,
        hash: &str,
    ) -> PodProcess {
        let ip = format!("127.0.{network}.{}", ordinal + 1);
        let root = cluster_root.join(name);
        let container = template.spec.as_ref().unwrap().containers[0].clone();
        let mounts = secret_mounts(template, &container, &root);
        let projected = mount_all(client, &mounts).await;
        let (api_port, admin_port) = (free_port(&ip), free_port(&ip));
        let mut env = environment(client, &container, &root, name).await;
        env.push(("STOA_LISTEN_ADDR".into(), format!("{ip}:{api_port}")));
        env.push(("STOA_ADMIN_ADDR".into(), format!("{ip}:{admin_port}")));
        let child = tokio::process::Command::new(stoa_api_binary())
            .args(container.args.clone().unwrap_or_default())
            .env_clear()
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pod = PodProcess {
            name: name.to_owned(),
            ip: ip.clone(),
            api_port,
            admin_port,
            template_hash: hash.to_owned(),
            projection: Projection::start(
                client.clone(),
                mounts,
                propagation_delay(ordinal),
                projected,
            ),
            child,
        };
        pod.wait_ready(container.name == "worker").await;
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let object: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
            "spec": {"containers": [{
                "name": container.name,
                "image": container.image,
                "ports": [
                    {"name": "http", "containerPort": api_port},
                    {"name": "metrics", "containerPort": admin_port}
                ]
            }]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        Api::<Pod>::namespaced(client.clone(), NAMESPACE)
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
        pod
    }

    pub fn base_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.api_port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.admin_port)
    }

    async fn wait_ready(&self, worker: bool) {
        let client = reqwest::Client::new();
        // A worker serves only its admin port.
        let url = if worker {
            self.admin_url()
        } else {
            self.base_url()
        };
        for _ in 0..200 {
            if let Ok(res) = client.get(format!("{url}/readyz")).send().await
                && res.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pod {} never became ready", self.name);
    }

    /// What the pod reports about itself (the operator's view).
    pub async fn state(&self) -> stoa_contract::pod::PodState {
        reqwest::get(format!(
            "{}{}",
            self.admin_url(),
            stoa_contract::pod::STATE_PATH
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
    }

    /// Deletion as Kubernetes does it: the pod leaves the endpoints (the caller removed it
    /// from the load balancer), then gets SIGTERM and drains.
    pub async fn stop(mut self, client: &Client) {
        let _ = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
            .delete(&self.name, &DeleteParams::default())
            .await;
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// The Job controller and kubelet for one Job: runs its container to completion, then
/// records the pod (with its termination message) and the Job's condition.
pub async fn run_job(client: &Client, cluster_root: &Path, job: &Job) {
    let name = job.name_any();
    let template = job.spec.as_ref().unwrap().template.clone();
    let root = cluster_root.join(&name);
    let container = template.spec.as_ref().unwrap().containers[0].clone();
    let mounts = secret_mounts(&template, &container, &root);
    mount_all(client, &mounts).await;
    let env = environment(client, &container, &root, &name).await;
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            if a.starts_with("/dev/") || a.starts_with("/var/run/") {
                in_root(&root, &a).display().to_string()
            } else {
                a
            }
        })
        .collect();
    let status = tokio::process::Command::new(stoa_api_binary())
        .args(args)
        .env_clear()
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    let message = std::fs::read_to_string(root.join("dev/termination-log")).unwrap_or_default();
    let code = status.code().unwrap_or(-1);
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-pod"), "namespace": NAMESPACE, "labels": labels},
        "spec": {"containers": [{"name": container.name, "image": container.image}]},
        "status": {"containerStatuses": [{
            "name": container.name, "image": container.image.clone().unwrap_or_default(),
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "message": message}}
        }]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let condition = if status.success() {
        "Complete"
    } else {
        "Failed"
    };
    let mut finished = job.clone();
    finished.status = Some(
        serde_json::from_value(json!({
            "succeeded": i32::from(status.success()),
            "failed": i32::from(!status.success()),
            "conditions": [{"type": condition, "status": "True",
                "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}]
        }))
        .unwrap(),
    );
    Api::<Job>::namespaced(client.clone(), NAMESPACE)
        .replace_status(&name, &PostParams::default(), &finished)
        .await
        .unwrap();
}
