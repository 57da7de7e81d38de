//! Reading what each ready stoa-api pod has loaded (`stoa_contract::pod`), so a rotation
//! step is taken only when every pod has followed the previous one.
//!
//! The pods are found through the API server (the Deployment's selector); each is asked on
//! its admin port, by pod IP, with a deadline and bounded concurrency. A pod that does not
//! answer in time, or answers something else, counts as not confirmed.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use stoa_contract::pod::{PodState, STATE_PATH};

use crate::resources::METRICS_PORT;

/// A ready pod and where its admin port answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTarget {
    pub name: String,
    pub ip: String,
    pub port: i32,
}

/// What one pod answered; `None` when it did not (in time, or validly).
#[derive(Clone, Debug, PartialEq)]
pub struct PodReading {
    pub pod: String,
    pub state: Option<PodState>,
}

/// Asks pods what they have loaded. Tests substitute their own.
pub trait PodProbe: Send + Sync {
    fn read<'a>(&'a self, pods: &'a [PodTarget]) -> BoxFuture<'a, Vec<PodReading>>;
}

/// The pods that take traffic: Ready, not terminating, with an IP. A pod that is not ready
/// receives no requests, and one that starts later loads the current Secrets at start-up,
/// so neither needs to confirm anything.
pub fn ready_targets(pods: &[Pod]) -> Vec<PodTarget> {
    pods.iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            let ready = status
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = status.pod_ip.clone().filter(|_| ready)?;
            Some(PodTarget {
                name: pod.name_any(),
                ip,
                port: admin_port(pod),
            })
        })
        .collect()
}

/// The container port named `metrics` (the admin listener), else the default.
fn admin_port(pod: &Pod) -> i32 {
    pod.spec
        .iter()
        .flat_map(|spec| &spec.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("metrics"))
        .map_or(METRICS_PORT, |p| p.container_port)
}

/// Reads `GET http://<pod IP>:<admin port>/state` from each pod over plain HTTP (the admin
/// port is cluster-internal, opened by the NetworkPolicy only to the operator's and the
/// monitoring namespaces).
pub struct HttpProbe {
    client: reqwest::Client,
    concurrency: usize,
}

impl HttpProbe {
    pub fn new(timeout: Duration, concurrency: usize) -> Self {
        // Without TLS features the builder has nothing that can fail; the default client
        // keeps the probe working (with reqwest's own timeouts) if it ever did.
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .unwrap_or_default();
        HttpProbe {
            client,
            concurrency: concurrency.max(1),
        }
    }

    async fn read_one(&self, pod: &PodTarget) -> PodReading {
        let host = if pod.ip.contains(':') {
            format!("[{}]", pod.ip)
        } else {
            pod.ip.clone()
        };
        let url = format!("http://{host}:{}{STATE_PATH}", pod.port);
        let state = match self.client.get(&url).send().await {
            Ok(response) if response.status().is_success() => response.json().await.ok(),
            Ok(_) | Err(_) => None,
        };
        if state.is_none() {
            tracing::debug!(pod = %pod.name, %url, "pod did not report its state");
        }
        PodReading {
            pod: pod.name.clone(),
            state,
        }
    }
}

impl PodProbe for HttpProbe {
    fn read<'a>(&'a self, pods: &'a [PodTarget]) -> BoxFuture<'a, Vec<PodReading>> {
        Box::pin(
            stream::iter(pods)
                .map(|pod| self.read_one(pod))
                .buffer_unordered(self.concurrency)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: &str, ip: Option<&str>, terminating: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "api", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "metrics", "containerPort": 9191}
            ]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}
        }))
        .unwrap();
        if terminating {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
        }
        pod
    }

    #[test]
    fn only_ready_pods_with_an_ip_that_are_not_terminating_are_asked() {
        let pods = [
            pod("ready", "True", Some("10.0.0.1"), false),
            pod("starting", "False", Some("10.0.0.2"), false),
            pod("pending", "True", None, false),
            pod("leaving", "True", Some("10.0.0.4"), true),
        ];
        assert_eq!(
            ready_targets(&pods),
            [PodTarget {
                name: "ready".into(),
                ip: "10.0.0.1".into(),
                port: 9191
            }]
        );
    }

    #[tokio::test]
    async fn a_pod_that_does_not_answer_in_time_is_not_confirmed() {
        // A listener that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = i32::from(silent.local_addr().unwrap().port());
        let probe = HttpProbe::new(Duration::from_millis(200), 4);
        let started = std::time::Instant::now();
        let readings = probe
            .read(&[PodTarget {
                name: "p".into(),
                ip: "127.0.0.1".into(),
                port,
            }])
            .await;
        assert_eq!(
            readings,
            [PodReading {
                pod: "p".into(),
                state: None
            }]
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
