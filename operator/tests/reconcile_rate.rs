#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! How often a steady, busy Stoa is reconciled, with the controller run as
//! `stoa-operator run` runs it (watches included) on the in-memory API.
//!
//! Busy: Concurrency autoscaling over API pods whose requests in flight change with every
//! read, and workers reporting a job queue that changes with every read, both in the
//! status. Steady: nothing in the spec changes, and both replica counts are pinned
//! (min = max), so no owned object changes either: what remains is the autoscaler's own
//! sampling. Before the trigger filter, each status write
//! (a new reading) was a watch event that started the next reconcile at once.
mod fixtures;

use std::sync::Arc;
use std::time::Duration;

use fixtures::from_yaml;
use fixtures::pods::ScriptedPods;
use fixtures::strict::{Rules, Strict};
use fixtures::watching::Watching;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::{Controller, watcher};
use stoa_operator::controller::{Context, error_policy, reconcile};
use stoa_operator::crd::Stoa;
use stoa_operator::metrics::Metrics;

const RUN: Duration = Duration::from_secs(10);

fn busy() -> Stoa {
    from_yaml(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555, generation: 1}
spec:
  image: ghcr.io/stoa-dev/stoa-api:0.1.0
  database: {urlSecretRef: {name: api-db}, maxConnections: 8}
  migrations: {mode: Disabled}
  worker: {minReplicas: 2, maxReplicas: 2}
  autoscaling:
    mode: Concurrency
    minReplicas: 2
    maxReplicas: 2
    reservedConnections: 10
    concurrency: {target: 10, stableWindow: 60s}
",
    )
}

async fn cluster() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = kube_fake_client::ClientBuilder::new()
        .with_resource::<Stoa>()
        .with_status_subresource::<Stoa>()
        .with_status_subresource::<Deployment>()
        .with_status_subresource::<Job>()
        .with_object(busy())
        .build()
        .await
        .unwrap();
    let strict = Client::new(
        Strict {
            inner: fake,
            rules: Arc::new(Rules::default()),
        },
        "shop",
    );
    Client::new(Watching { inner: strict }, "shop")
}

/// The controller as `stoa-operator run` built it before the trigger filter: the Stoa
/// watched unfiltered, the same owned types.
fn unfiltered(client: &Client) -> Controller<Stoa> {
    stoa_operator::triggers::watching_owned(
        Controller::new(
            Api::<Stoa>::namespaced(client.clone(), "shop"),
            watcher::Config::default(),
        ),
        client,
        Some("shop"),
        false,
    )
}

/// Reconciles of the one Stoa in `RUN`, after it settled, with two busy pods.
async fn reconciles(filtered: bool) -> usize {
    let client = cluster().await;
    let pods = Arc::new(ScriptedPods::default());
    let busy_pods = [
        ("api-0", "api"),
        ("api-1", "api"),
        ("api-worker-0", "worker"),
        ("api-worker-1", "worker"),
    ];
    for (i, (name, component)) in busy_pods.iter().enumerate() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {
                "app.kubernetes.io/name": "stoa", "app.kubernetes.io/instance": "api",
                "app.kubernetes.io/component": component}},
            "spec": {"containers": [{"name": component, "image": "x"}]},
            "status": {"podIP": format!("10.0.0.{i}"), "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        Api::<Pod>::namespaced(client.clone(), "shop")
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        pods.set(name, &[]);
    }
    // Requests in flight swing between 5 and 35 per pod, and the queue between 0 and
    // 900 jobs, changing every 50 ms.
    let swinging = pods.clone();
    let load = tokio::spawn(async move {
        let mut n: u64 = 0;
        loop {
            n += 1;
            *swinging.concurrency.lock().unwrap() = 5.0 + ((n * 7919) % 31) as f64;
            *swinging.queue.lock().unwrap() = Some(stoa_contract::pod::QueueDepth {
                queued: (n * 104_729) % 900,
                running: (n * 13) % 8,
                oldest_due_seconds: 1.0,
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let context =
        Arc::new(Context::new(client.clone(), Arc::new(Metrics::new())).with_probe(pods.clone()));
    let controller = if filtered {
        stoa_operator::triggers::controller(&client, Some("shop"), false)
    } else {
        unfiltered(&client)
    };
    let started = tokio::time::Instant::now();
    let counted = std::sync::atomic::AtomicUsize::new(0);
    let settle = Duration::from_secs(2);
    let _ = tokio::time::timeout(
        settle + RUN,
        controller
            .run(reconcile, error_policy, context)
            .for_each(|_| {
                if started.elapsed() >= settle {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                std::future::ready(())
            }),
    )
    .await;
    load.abort();
    counted.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_busy_stoa_is_reconciled_when_it_needs_to_be_not_in_a_loop() {
    let before = reconciles(false).await;
    let after = reconciles(true).await;
    let per_minute = |n: usize| n as f64 * 60.0 / RUN.as_secs_f64();
    println!(
        "reconciles of a steady busy Stoa: unfiltered {before} in {RUN:?} ({:.0}/min), filtered {after} ({:.0}/min)",
        per_minute(before),
        per_minute(after)
    );
    // What remains is deliberate: the Concurrency autoscaler samples every 2 s.
    let samples = (RUN.as_secs_f64()
        / stoa_operator::controller::scaling::SAMPLE_PERIOD.as_secs_f64())
    .ceil() as usize;
    assert!(
        after <= samples + 1,
        "{after} reconciles in {RUN:?}: more than the autoscaler's {samples} samples"
    );
    // Without the filter every status write (a new reading) woke it again at once.
    assert!(
        before >= 3 * after,
        "status writes must not wake the reconciler: {before} unfiltered, {after} filtered"
    );
}
