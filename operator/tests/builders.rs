#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Unit tests of the pure builders, and golden files of the full object set.
mod fixtures;

use fixtures::{container, full, stoa, with_spec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use stoa_operator::crd::{AutoscalingMode, Stoa};
use stoa_operator::resources;

#[test]
fn builders_are_pure_functions_of_the_spec() {
    let a = stoa("api");
    let cm = resources::config_map(&a).unwrap();
    assert_eq!(
        resources::deployment(&a, &cm, &a.spec.image).unwrap(),
        resources::deployment(&a, &cm, &a.spec.image).unwrap()
    );
    assert_eq!(
        resources::service(&a).unwrap(),
        resources::service(&a).unwrap()
    );
    assert_eq!(resources::config_map(&a).unwrap(), cm);
}

#[test]
fn every_object_is_labelled_and_owned_by_the_stoa() {
    let s = full("api");
    let cm = resources::config_map(&s).unwrap();
    let metas = [
        resources::service_account(&s).unwrap().metadata,
        cm.metadata.clone(),
        resources::deployment(&s, &cm, &s.spec.image)
            .unwrap()
            .metadata,
        resources::service(&s).unwrap().metadata,
        resources::pod_disruption_budget(&s)
            .unwrap()
            .unwrap()
            .metadata,
        resources::ingress(&s).unwrap().unwrap().metadata,
        resources::network_policy(&s, Some("stoa-system"))
            .unwrap()
            .unwrap()
            .metadata,
        resources::horizontal_pod_autoscaler(&s)
            .unwrap()
            .unwrap()
            .metadata,
        resources::service_monitor(&s).unwrap().unwrap().metadata,
        resources::key_secret(&s, &stoa_contract::keys::generate_keyset())
            .unwrap()
            .metadata,
    ];
    for meta in metas {
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("Stoa", "api", Some(true))
        );
        let labels = meta.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "stoa");
        assert_eq!(labels["app.kubernetes.io/instance"], "api");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "stoa-operator");
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
    }
}

#[test]
fn the_deployment_is_hardened_probed_and_drains() {
    let s = stoa("api");
    let d = resources::deployment(&s, &resources::config_map(&s).unwrap(), &s.spec.image).unwrap();
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let pod_security = pod.security_context.as_ref().unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let c = container(&d);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert_eq!(
        c.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    assert!(
        c.lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .sleep
            .is_some()
    );
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    assert_eq!(pod.topology_spread_constraints.as_ref().unwrap().len(), 2);
    // The key Secret is mounted as a directory (so kubelet can swap it atomically).
    let keys = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "keys")
        .unwrap();
    assert_eq!(keys.mount_path, resources::KEYS_MOUNT);
    assert!(keys.sub_path.is_none());
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    // Pods never migrate: only the gated migration Job does, with its own credential.
    assert!(pod.init_containers.is_none());
}

#[test]
fn the_worker_deployment_runs_the_worker_apart_from_the_api_pods() {
    let s = with_spec(stoa("api"), |spec| {
        spec.worker.concurrency = 6;
        spec.env.push(
            serde_json::from_value(json!({"name": "STOA_DB_MAX_CONNECTIONS", "value": "50"}))
                .unwrap(),
        );
        spec.env
            .push(serde_json::from_value(json!({"name": "STOA_LOG", "value": "debug"})).unwrap());
    });
    let cm = resources::config_map(&s).unwrap();
    let api = resources::deployment(&s, &cm, "img:2").unwrap();
    let worker = resources::worker_deployment(&s, &cm, "img:2", 3).unwrap();
    assert_eq!(worker.metadata.name.as_deref(), Some("api-worker"));
    assert_eq!(
        worker.metadata.labels.as_ref().unwrap()[resources::COMPONENT_LABEL],
        "worker"
    );
    let spec = worker.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    // Disjoint selectors: neither Deployment (nor the Service) adopts the other's pods.
    let selector = spec.selector.match_labels.as_ref().unwrap();
    let api_selector = api
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(selector[resources::COMPONENT_LABEL], "worker");
    assert_eq!(api_selector[resources::COMPONENT_LABEL], "api");
    let pod = spec.template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("img:2"));
    assert_eq!(container.args.as_deref(), Some(&["worker".to_owned()][..]));
    let ports: Vec<_> = container
        .ports
        .iter()
        .flatten()
        .map(|p| p.name.clone().unwrap())
        .collect();
    assert_eq!(ports, ["metrics"], "a worker serves no API");
    for probe in [
        &container.liveness_probe,
        &container.readiness_probe,
        &container.startup_probe,
    ] {
        let port = &probe.as_ref().unwrap().http_get.as_ref().unwrap().port;
        assert_eq!(*port, IntOrString::String("metrics".into()));
    }
    // No signing keys: a worker signs nothing.
    assert!(pod.volumes.iter().flatten().all(|v| v.name != "keys"));
    let env: Vec<(String, Option<String>)> = container
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    let value = |name: &str| -> Vec<Option<String>> {
        env.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(value("STOA_WORKER_CONCURRENCY"), [Some("6".into())]);
    assert_eq!(
        value("STOA_DB_MAX_CONNECTIONS"),
        [Some("8".into())],
        "the pool follows the concurrency, once"
    );
    assert_eq!(value("STOA_LOG"), [Some("debug".into())]);
    assert_eq!(resources::worker_connections(&s), 9);
}

#[test]
fn the_migration_job_runs_the_new_image_with_the_migration_credential_and_fails_fast_on_refusal() {
    use stoa_operator::resources::{JobRequest, Step};
    let mut s = full("api");
    s.spec.database.admin_secret_ref = Some(stoa_operator::crd::SecretKeyRef {
        name: "api-db-admin".into(),
        key: "url".into(),
    });
    let request = JobRequest {
        name: "api-migrate-0123abcd".into(),
        step: Step::Expand,
        image: "ghcr.io/stoa-dev/stoa-api:0.3.0".into(),
        allow_newer_contract: false,
        attempt: 1,
        key: "expand-0123abcd".into(),
    };
    let job = resources::migration_job(&s, &request).unwrap();
    let labels = job.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/component"], "migration");
    assert_eq!(labels[resources::MIGRATION_KEY_LABEL], "expand-0123abcd");
    assert!(job.metadata.owner_references.is_some());
    let spec = job.spec.unwrap();
    assert_eq!(spec.ttl_seconds_after_finished, Some(86400));
    assert_eq!(spec.active_deadline_seconds, Some(600));
    // The migrator's refusal (exit 3) fails the Job at once: retrying cannot help.
    let rules = spec.pod_failure_policy.unwrap().rules;
    assert_eq!(rules[0].action, "FailJob");
    let on_exit = rules[0].on_exit_codes.as_ref().unwrap();
    assert_eq!(
        on_exit.values,
        vec![stoa_contract::migration::EXIT_NEWER_CONTRACT]
    );
    assert_eq!(
        rules.iter().filter(|r| r.action == "FailJob").count(),
        1,
        "PodFailurePolicy as the failure reason must mean the refusal"
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/stoa-dev/stoa-api:0.3.0"));
    assert_eq!(
        c.args.clone().unwrap(),
        [
            "migrate",
            "--phase",
            "expand",
            "--report-file",
            "/dev/termination-log"
        ]
    );
    assert_eq!(
        c.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    // The admin credential, mounted into the Job only.
    let volume = &pod.volumes.unwrap()[0];
    assert_eq!(
        volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("api-db-admin")
    );
    let env: Vec<_> = c.env.clone().unwrap();
    assert!(env.iter().any(|e| e.name == "STOA_DATABASE_URL_FILE"
        && e.value.as_deref() == Some("/var/run/stoa/migration-database/url")));
    assert_eq!(
        c.security_context
            .as_ref()
            .unwrap()
            .read_only_root_filesystem,
        Some(true)
    );
    // The API pods never see the admin credential.
    let d = resources::deployment(&s, &resources::config_map(&s).unwrap(), &s.spec.image).unwrap();
    let yaml = serde_norway::to_string(&d).unwrap();
    assert!(!yaml.contains("api-db-admin"));
}

#[test]
fn configuration_changes_change_the_checksum_and_roll_the_pods() {
    let base = stoa("api");
    let hash = |s: &stoa_operator::crd::Stoa| {
        let d =
            resources::deployment(s, &resources::config_map(s).unwrap(), &s.spec.image).unwrap();
        d.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[resources::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let ttl = with_spec(base.clone(), |s| s.auth.access_token_ttl = "5m".into());
    let env = with_spec(base.clone(), |s| {
        s.env.push(k8s_openapi::api::core::v1::EnvVar {
            name: "X".into(),
            value: Some("1".into()),
            value_from: None,
        })
    });
    let replicas = with_spec(base.clone(), |s| s.replicas = 5);
    assert_ne!(hash(&base), hash(&ttl));
    assert_ne!(hash(&base), hash(&env));
    assert_eq!(
        hash(&base),
        hash(&replicas),
        "scaling is not a configuration change"
    );
}

#[test]
fn with_an_autoscaler_the_deployment_does_not_claim_replicas() {
    let s = full("api");
    assert_eq!(s.spec.autoscaling.mode, AutoscalingMode::Hpa);
    let d = resources::deployment(&s, &resources::config_map(&s).unwrap(), &s.spec.image).unwrap();
    assert_eq!(d.spec.unwrap().replicas, None);
    let hpa = resources::horizontal_pod_autoscaler(&s)
        .unwrap()
        .unwrap()
        .spec
        .unwrap();
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(3), 12));
    assert_eq!(
        hpa.behavior
            .unwrap()
            .scale_down
            .unwrap()
            .stabilization_window_seconds,
        Some(300)
    );
    // The PDB follows the autoscaler's minimum.
    let pdb = resources::pod_disruption_budget(&s)
        .unwrap()
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(
        pdb.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2))
    );
}

#[test]
fn optional_objects_follow_the_spec() {
    let s = stoa("api");
    assert!(resources::ingress(&s).unwrap().is_none());
    assert!(
        resources::network_policy(&s, Some("stoa-system"))
            .unwrap()
            .is_none()
    );
    assert!(resources::horizontal_pod_autoscaler(&s).unwrap().is_none());
    assert!(resources::pod_disruption_budget(&s).unwrap().is_some());
    let off = with_spec(s, |spec| spec.pod_disruption_budget.enabled = false);
    assert!(resources::pod_disruption_budget(&off).unwrap().is_none());
    let ingress = resources::ingress(&full("api"))
        .unwrap()
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(
        ingress.tls.unwrap()[0].secret_name.as_deref(),
        Some("api-example-com-tls")
    );
}

#[test]
fn the_key_secret_holds_a_key_set_stoa_api_accepts() {
    let s = stoa("api");
    let secret = resources::key_secret(&s, &stoa_contract::keys::generate_keyset()).unwrap();
    assert_eq!(secret.metadata.name.as_deref(), Some("api-jwt-keys"));
    let bytes = &secret.data.unwrap()[stoa_contract::keys::KEYSET_FILE].0;
    let file: stoa_contract::keys::KeySetFile = serde_json::from_slice(bytes).unwrap();
    // The shared validation stoa-api runs at start-up and on reload (a real stoa-api
    // serving with this Secret mounted is tests/tests/operator_api_contract.rs).
    let keys = file.parse().unwrap();
    assert_eq!(keys.len(), 1);
}

#[test]
fn config_map_carries_the_api_settings() {
    let data = resources::config_map(&full("api")).unwrap().data.unwrap();
    assert_eq!(data["STOA_LISTEN_ADDR"], "0.0.0.0:8080");
    assert_eq!(data["STOA_JWT_KEYS_DIR"], resources::KEYS_MOUNT);
    assert_eq!(data["STOA_DATABASE_URL_FILE"], "/var/run/stoa/database/url");
    assert_eq!(data["STOA_REDIS_URL_FILE"], "/var/run/stoa/redis/url");
    assert_eq!(data["STOA_ACCESS_TOKEN_TTL"], "10m");
    assert_eq!(data["STOA_TRUSTED_PROXY_HOPS"], "1");
    assert_eq!(data["STOA_MFA_KEYS_DIR"], resources::MFA_KEYS_MOUNT);
    // The Ingress's host, https with its TLS Secret.
    assert_eq!(data["STOA_PUBLIC_URL"], "https://api.example.com");
    // No secret values (connection URLs) in the ConfigMap.
    assert!(
        data.iter()
            .filter(|(k, _)| *k != "STOA_PUBLIC_URL")
            .all(|(_, v)| !v.contains("://"))
    );
}

/// The full rendered object set (minus the random key material).
fn render(s: &stoa_operator::crd::Stoa) -> String {
    let cm = resources::config_map(s).unwrap();
    let mut docs: Vec<serde_json::Value> = vec![
        serde_json::to_value(resources::service_account(s).unwrap()).unwrap(),
        serde_json::to_value(&cm).unwrap(),
        serde_json::to_value(resources::deployment(s, &cm, &s.spec.image).unwrap()).unwrap(),
        serde_json::to_value(resources::worker_deployment(s, &cm, &s.spec.image, 1).unwrap())
            .unwrap(),
        serde_json::to_value(resources::service(s).unwrap()).unwrap(),
    ];
    docs.extend(
        resources::worker_metrics_service(s)
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    docs.extend(
        resources::pod_disruption_budget(s)
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    docs.extend(
        resources::ingress(s)
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    docs.extend(
        resources::network_policy(s, Some("stoa-system"))
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    docs.extend(
        resources::horizontal_pod_autoscaler(s)
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    docs.push(
        serde_json::to_value(
            resources::migration_job(
                s,
                &stoa_operator::resources::JobRequest {
                    name: format!("{}-migrate-0123abcd", s.metadata.name.as_deref().unwrap()),
                    step: stoa_operator::resources::Step::Expand,
                    image: s.spec.image.clone(),
                    allow_newer_contract: false,
                    attempt: 1,
                    key: "expand-0123abcd".into(),
                },
            )
            .unwrap(),
        )
        .unwrap(),
    );
    docs.extend(
        resources::service_monitor(s)
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    docs.iter()
        .map(|d| serde_norway::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn golden(name: &str, rendered: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == rendered,
        "{} is stale; run `UPDATE_GOLDEN=1 cargo test -p stoa-operator --test builders` and review the diff",
        path.display()
    );
}

#[test]
fn golden_minimal() {
    golden("minimal", &render(&stoa("api")));
}

#[test]
fn golden_full() {
    golden("full", &render(&full("api")));
}

#[test]
fn golden_no_pdb_no_monitoring() {
    let s = with_spec(stoa("quiet"), |spec| {
        spec.pod_disruption_budget.enabled = false;
        spec.monitoring.service_monitor = false;
        spec.replicas = 1;
    });
    golden("quiet", &render(&s));
}

#[test]
fn the_checked_in_crds_are_current() {
    let generated = stoa_operator::crd_yaml().unwrap();
    // The CRD ships in three places: crds/, the kustomize base, and the Helm chart (as a
    // template, checked below).
    for copy in ["../crds", "../manifests/operator/crds"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(copy)
            .join("stoa.dev_stoas.yaml");
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            expected == generated,
            "{} is stale; run `make crds`",
            path.display()
        );
    }
    let template = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../helm/stoa-operator/templates/crd.yaml");
    assert!(
        std::fs::read_to_string(&template).unwrap_or_default()
            == stoa_operator::crd_helm_template().unwrap(),
        "{} is stale; run `make crds`",
        template.display()
    );
    assert!(
        !std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../helm/stoa-operator/crds")
            .exists(),
        "Helm never upgrades crds/: the chart ships the CRD as a template"
    );
}

#[test]
fn private_cas_are_mounted_where_the_clients_look_for_them() {
    let s = with_spec(stoa("api"), |spec| {
        spec.database.ca_secret_ref =
            Some(serde_json::from_value(json!({"name": "db-ca", "key": "ca.pem"})).unwrap());
        spec.redis = Some(
            serde_json::from_value(json!({
                "urlSecretRef": {"name": "api-redis"},
                "caSecretRef": {"name": "redis-ca", "key": "ca.pem"}
            }))
            .unwrap(),
        );
    });
    let cm = resources::config_map(&s).unwrap();
    let job = resources::migration_job(
        &s,
        &stoa_operator::resources::JobRequest {
            name: "api-migrate-0123abcd".into(),
            step: stoa_operator::resources::Step::Expand,
            image: s.spec.image.clone(),
            allow_newer_contract: false,
            attempt: 1,
            key: "expand-0123abcd".into(),
        },
    )
    .unwrap();
    let pod_of =
        |template: &k8s_openapi::api::core::v1::PodTemplateSpec| template.spec.clone().unwrap();
    let api = pod_of(
        &resources::deployment(&s, &cm, "img")
            .unwrap()
            .spec
            .unwrap()
            .template,
    );
    let worker = pod_of(
        &resources::worker_deployment(&s, &cm, "img", 1)
            .unwrap()
            .spec
            .unwrap()
            .template,
    );
    let migration = pod_of(&job.spec.unwrap().template);
    for pod in [&api, &worker, &migration] {
        assert_eq!(
            env_of(pod, "PGSSLROOTCERT").as_deref(),
            Some("/var/run/stoa/database-ca/ca.crt")
        );
        assert_eq!(
            secret_of(pod, "database-ca"),
            Some(("db-ca".into(), "ca.pem".into(), "ca.crt".into()))
        );
        assert!(mounted_read_only(pod, "/var/run/stoa/database-ca"));
    }
    for pod in [&api, &worker] {
        assert_eq!(
            env_of(pod, "STOA_REDIS_CA_FILE").as_deref(),
            Some("/var/run/stoa/redis-ca/ca.crt")
        );
        assert_eq!(
            secret_of(pod, "redis-ca").map(|s| s.0),
            Some("redis-ca".into())
        );
    }
    // A migration talks to PostgreSQL only.
    assert_eq!(env_of(&migration, "STOA_REDIS_CA_FILE"), None);
    // Without a CA, nothing is mounted.
    let plain = stoa("api");
    let cm = resources::config_map(&plain).unwrap();
    let pod = pod_of(
        &resources::deployment(&plain, &cm, "img")
            .unwrap()
            .spec
            .unwrap()
            .template,
    );
    assert_eq!(env_of(&pod, "PGSSLROOTCERT"), None);
}

#[test]
fn a_read_replica_url_is_mounted_into_api_pods_only() {
    let s = with_spec(stoa("api"), |spec| {
        spec.database.read_url_secret_ref =
            Some(serde_json::from_value(json!({"name": "db-standby", "key": "url"})).unwrap());
    });
    let cm = resources::config_map(&s).unwrap();
    let pod_of = |deployment: k8s_openapi::api::apps::v1::Deployment| {
        deployment.spec.unwrap().template.spec.unwrap()
    };
    let api = pod_of(resources::deployment(&s, &cm, "img").unwrap());
    let worker = pod_of(resources::worker_deployment(&s, &cm, "img", 1).unwrap());
    assert_eq!(
        env_of(&api, "STOA_DATABASE_READ_URL_FILE").as_deref(),
        Some("/var/run/stoa/database-read/url")
    );
    assert_eq!(
        secret_of(&api, "database-read"),
        Some(("db-standby".into(), "url".into(), "url".into()))
    );
    assert!(mounted_read_only(&api, "/var/run/stoa/database-read"));
    // The worker writes: it neither needs nor gets the replica.
    assert_eq!(env_of(&worker, "STOA_DATABASE_READ_URL_FILE"), None);
    assert_eq!(secret_of(&worker, "database-read"), None);
    // The variable stoa-api reads and the path the operator mounts agree.
    assert_eq!(
        stoa_contract::env::DATABASE_READ_URL_FILE,
        "STOA_DATABASE_READ_URL_FILE"
    );
}

/// Error tracking: the DSN reaches the API and the worker from its Secret (never through
/// the ConfigMap), with the environment; the user's own `env` still wins.
#[test]
fn the_error_tracking_dsn_comes_from_its_secret_into_both_programs() {
    let s = with_spec(stoa("api"), |spec| {
        spec.monitoring.error_tracking = Some(
            serde_json::from_value(json!({
                "dsnSecretRef": {"name": "sentry", "key": "dsn"},
                "environment": "staging"
            }))
            .unwrap(),
        );
    });
    let cm = resources::config_map(&s).unwrap();
    assert!(
        cm.data
            .as_ref()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("STOA_SENTRY"))
    );
    let pod_of = |deployment: k8s_openapi::api::apps::v1::Deployment| {
        deployment.spec.unwrap().template.spec.unwrap()
    };
    for pod in [
        pod_of(resources::deployment(&s, &cm, "img").unwrap()),
        pod_of(resources::worker_deployment(&s, &cm, "img", 1).unwrap()),
    ] {
        let env = pod.containers[0].env.clone().unwrap();
        let dsn = env.iter().find(|e| e.name == "STOA_SENTRY_DSN").unwrap();
        let from = dsn
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((from.name.as_str(), from.key.as_str()), ("sentry", "dsn"));
        assert_eq!(dsn.value, None);
        assert_eq!(
            env_of(&pod, "STOA_SENTRY_ENVIRONMENT").as_deref(),
            Some("staging")
        );
    }
    assert_eq!(stoa_contract::env::SENTRY_DSN, "STOA_SENTRY_DSN");
    // Without it, nothing is set.
    let plain = resources::deployment(&stoa("api"), &cm, "img").unwrap();
    assert!(
        pod_of(plain).containers[0]
            .env
            .iter()
            .flatten()
            .all(|e| !e.name.starts_with("STOA_SENTRY"))
    );
}

/// The value of the first container's environment variable `name`.
fn env_of(pod: &k8s_openapi::api::core::v1::PodSpec, name: &str) -> Option<String> {
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// (Secret, key, file name) of the Secret volume `volume`.
fn secret_of(
    pod: &k8s_openapi::api::core::v1::PodSpec,
    volume: &str,
) -> Option<(String, String, String)> {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .map(|v| {
            let secret = v.secret.clone().unwrap();
            let item = &secret.items.unwrap()[0];
            (
                secret.secret_name.unwrap(),
                item.key.clone(),
                item.path.clone(),
            )
        })
}

/// Whether the first container mounts something read-only at `path`.
fn mounted_read_only(pod: &k8s_openapi::api::core::v1::PodSpec, path: &str) -> bool {
    pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == path && m.read_only == Some(true))
}

/// The CRD's rules on the Stoa itself, evaluated with a CEL interpreter as the API server
/// does at `kubectl apply` (rules at the schema's root may read `metadata.name`).
#[test]
fn the_crd_refuses_a_name_its_service_and_labels_could_not_carry() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(stoa_operator::crd::Stoa::crd()).unwrap();
    let rules: Vec<String> = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/x-kubernetes-validations")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|r| r["rule"].as_str())
        .filter(|r| r.contains("metadata.name"))
        .map(str::to_owned)
        .collect();
    assert_eq!(rules.len(), 1, "{rules:?}");
    let program = cel::Program::compile(&rules[0]).unwrap();
    let admits = |name: &str| {
        let mut context = cel::Context::default();
        context
            .add_variable("self", serde_json::json!({"metadata": {"name": name}}))
            .unwrap();
        program.execute(&context).unwrap() == cel::Value::Bool(true)
    };
    let longest = resources::STOA_NAME_LIMIT;
    for good in [
        "api",
        "payments-api",
        &format!("a{}", "b".repeat(longest - 1)),
    ] {
        assert!(admits(good), "{good}");
    }
    for bad in [
        "1api",
        "api.v2",
        "api-",
        "Api",
        &format!("a{}", "b".repeat(longest)),
    ] {
        assert!(!admits(bad), "{bad}");
    }
}

/// A pooler's URL reaches both programs (the worker's job transactions go through it too),
/// and the Stoa's status names the tier.
#[test]
fn a_pooler_url_is_mounted_into_api_and_worker_pods() {
    let s = with_spec(stoa("api"), |spec| {
        spec.database.pooler = Some(
            serde_json::from_value(json!({
                "urlSecretRef": {"name": "db-pooler", "key": "url"},
                "maxClientConnections": 400
            }))
            .unwrap(),
        );
    });
    let cm = resources::config_map(&s).unwrap();
    let pod_of = |deployment: k8s_openapi::api::apps::v1::Deployment| {
        deployment.spec.unwrap().template.spec.unwrap()
    };
    let api = pod_of(resources::deployment(&s, &cm, "img").unwrap());
    let worker = pod_of(resources::worker_deployment(&s, &cm, "img", 1).unwrap());
    for pod in [&api, &worker] {
        assert_eq!(
            env_of(pod, stoa_contract::env::DATABASE_POOLER_URL_FILE).as_deref(),
            Some("/var/run/stoa/database-pooler/url")
        );
        assert_eq!(
            secret_of(pod, "database-pooler"),
            Some(("db-pooler".into(), "url".into(), "url".into()))
        );
        assert!(mounted_read_only(pod, "/var/run/stoa/database-pooler"));
    }
    assert_eq!(
        stoa_contract::env::DATABASE_POOLER_URL_FILE,
        "STOA_DATABASE_POOLER_URL_FILE"
    );
    assert_eq!(
        stoa_operator::status::data_tier(&s),
        "PostgreSQL via pooler, no Redis"
    );
    assert_eq!(
        stoa_operator::status::data_tier(&stoa("api")),
        "PostgreSQL, no Redis"
    );
}

/// `spec.redis` names one Redis: a server, Sentinel or a cluster. The CRD's rule, run by a
/// CEL interpreter as the API server runs it at `kubectl apply`.
#[test]
fn the_crd_takes_exactly_one_kind_of_redis() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(stoa_operator::crd::Stoa::crd()).unwrap();
    let redis = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/redis")
        .unwrap();
    let rules: Vec<&str> = redis["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .collect();
    assert_eq!(rules.len(), 1, "{rules:?}");
    let program = cel::Program::compile(rules[0]).unwrap();
    let admits = |redis: serde_json::Value| {
        let mut context = cel::Context::default();
        context.add_variable("self", redis).unwrap();
        program.execute(&context).unwrap() == cel::Value::Bool(true)
    };
    let secret = serde_json::json!({"name": "r", "key": "url"});
    assert!(admits(serde_json::json!({"urlSecretRef": secret})));
    assert!(admits(
        serde_json::json!({"sentinel": {"urlSecretRef": secret}, "caSecretRef": secret})
    ));
    assert!(admits(
        serde_json::json!({"cluster": {"urlSecretRef": secret}})
    ));
    assert!(!admits(serde_json::json!({})));
    assert!(!admits(serde_json::json!({"caSecretRef": secret})));
    assert!(!admits(
        serde_json::json!({"urlSecretRef": secret, "cluster": {"urlSecretRef": secret}})
    ));
    assert!(!admits(serde_json::json!({
        "urlSecretRef": secret,
        "sentinel": {"urlSecretRef": secret},
        "cluster": {"urlSecretRef": secret}
    })));
}

/// Sentinel: the list and the sentinels' password are mounted from their Secrets and named
/// by the variables stoa-api reads; `kubectl get st` names the tier. A spec that names no
/// Redis (an API server without the CRD's rules let it through) is refused, not guessed.
#[test]
fn a_sentinel_redis_is_mounted_and_named_and_an_empty_one_is_refused() {
    let s: Stoa = serde_norway::from_str(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555}
spec:
  image: stoa-api:test
  database: {urlSecretRef: {name: api-db}}
  redis:
    sentinel:
      urlSecretRef: {name: redis-sentinels, key: list}
      passwordSecretRef: {name: redis-sentinels, key: sentinel-password}
",
    )
    .unwrap();
    let cm = resources::config_map(&s).unwrap();
    let data = cm.data.clone().unwrap();
    assert_eq!(data["STOA_REDIS_SENTINELS_FILE"], "/var/run/stoa/redis/url");
    assert_eq!(
        data["STOA_REDIS_SENTINEL_PASSWORD_FILE"],
        "/var/run/stoa/redis-sentinel-password/password"
    );
    assert!(!data.contains_key("STOA_REDIS_URL_FILE"));
    let d = resources::deployment(&s, &cm, &s.spec.image).unwrap();
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert!(mounted_read_only(&pod, "/var/run/stoa/redis"));
    assert!(mounted_read_only(
        &pod,
        "/var/run/stoa/redis-sentinel-password"
    ));
    let projected: Vec<(String, String)> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref())
        .flat_map(|s| {
            s.items.iter().flatten().map(|i| {
                (
                    format!("{}/{}", s.secret_name.as_deref().unwrap(), i.key),
                    i.path.clone(),
                )
            })
        })
        .collect();
    assert!(projected.contains(&("redis-sentinels/list".into(), "url".into())));
    assert!(projected.contains(&(
        "redis-sentinels/sentinel-password".into(),
        "password".into()
    )));
    assert_eq!(
        stoa_operator::status::data_tier(&s),
        "PostgreSQL, Redis Sentinel"
    );

    let mut empty = s.clone();
    empty.spec.redis = Some(stoa_operator::crd::RedisSpec {
        url_secret_ref: None,
        sentinel: None,
        cluster: None,
        ca_secret_ref: None,
    });
    let refused = resources::config_map(&empty).unwrap_err();
    assert!(refused.to_string().contains("exactly one"), "{refused}");
}

/// Identity providers: each client secret is mounted from its Secret into API pods only
/// (a worker signs nobody in), and `STOA_AUTH_PROVIDERS` names each mounted file; a
/// disabled provider is neither mounted nor listed.
#[test]
fn identity_providers_are_mounted_into_api_pods_only_and_named_in_the_setting() {
    let s = with_spec(stoa("api"), |spec| {
        spec.ingress = Some(serde_json::from_value(json!({"host": "api.example.com"})).unwrap());
        spec.auth = serde_json::from_value(json!({
            "providers": [
                {"name": "google", "type": "google", "clientId": "g-id.apps.googleusercontent.com",
                 "clientSecretRef": {"name": "oauth-google", "key": "client-secret"}},
                {"name": "github", "type": "github", "clientId": "Iv1.abc",
                 "clientSecretRef": {"name": "oauth-github", "key": "secret"}},
                {"name": "corp", "type": "oidc", "issuer": "https://sso.corp.example", "clientId": "stoa",
                 "clientSecretRef": {"name": "oauth-corp", "key": "secret"}, "enabled": false}
            ],
            "returnTo": ["https://app.example.com/oauth", "https://app.example.com/settings"]
        }))
        .unwrap();
    });
    let cm = resources::config_map(&s).unwrap();
    assert!(
        cm.data
            .as_ref()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("STOA_AUTH_"))
    );
    let pod_of = |deployment: k8s_openapi::api::apps::v1::Deployment| {
        deployment.spec.unwrap().template.spec.unwrap()
    };
    let api = pod_of(resources::deployment(&s, &cm, "img").unwrap());
    let worker = pod_of(resources::worker_deployment(&s, &cm, "img", 1).unwrap());

    let providers: serde_json::Value =
        serde_json::from_str(&env_of(&api, "STOA_AUTH_PROVIDERS").unwrap()).unwrap();
    assert_eq!(
        providers,
        json!([
            {"name": "google", "type": "google", "clientId": "g-id.apps.googleusercontent.com",
             "clientSecretFile": "/var/run/stoa/auth-providers/google/client-secret"},
            {"name": "github", "type": "github", "clientId": "Iv1.abc",
             "clientSecretFile": "/var/run/stoa/auth-providers/github/client-secret"}
        ])
    );
    assert_eq!(
        env_of(&api, "STOA_AUTH_RETURN_TO").as_deref(),
        Some("https://app.example.com/oauth,https://app.example.com/settings")
    );
    assert_eq!(
        secret_of(&api, "auth-provider-google"),
        Some((
            "oauth-google".into(),
            "client-secret".into(),
            "client-secret".into()
        ))
    );
    assert_eq!(
        secret_of(&api, "auth-provider-github"),
        Some((
            "oauth-github".into(),
            "secret".into(),
            "client-secret".into()
        ))
    );
    assert_eq!(secret_of(&api, "auth-provider-corp"), None);
    assert!(mounted_read_only(
        &api,
        "/var/run/stoa/auth-providers/google"
    ));
    // The whole directory, never a subPath: the kubelet then replaces the file when the
    // Secret changes, and stoa-api reads it at each sign-in.
    assert!(
        api.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.sub_path.is_none())
    );
    assert_eq!(env_of(&worker, "STOA_AUTH_PROVIDERS"), None);
    assert_eq!(secret_of(&worker, "auth-provider-google"), None);
    assert_eq!(stoa_contract::env::AUTH_PROVIDERS, "STOA_AUTH_PROVIDERS");
    // Without providers, nothing is set.
    let plain = pod_of(resources::deployment(&stoa("api"), &cm, "img").unwrap());
    assert_eq!(env_of(&plain, "STOA_AUTH_PROVIDERS"), None);
}

/// The CRD's rules for providers, run by a CEL interpreter as the API server runs them at
/// `kubectl apply`: a provider needs the Ingress (its callback host) and `returnTo`;
/// names are unique; `issuer` goes with `oidc` only, `tenant` with `microsoft` only.
#[test]
fn the_crd_checks_identity_providers_at_admission() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(stoa_operator::crd::Stoa::crd()).unwrap();
    let schema = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
        .unwrap();
    let rules_at = |node: &serde_json::Value| -> Vec<cel::Program> {
        node["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| cel::Program::compile(r["rule"].as_str().unwrap()).unwrap())
            .collect()
    };
    let admits = |programs: &[cel::Program], value: serde_json::Value| {
        programs.iter().all(|program| {
            let mut context = cel::Context::default();
            context.add_variable("self", value.clone()).unwrap();
            program.execute(&context).unwrap() == cel::Value::Bool(true)
        })
    };
    let spec_rules = rules_at(schema);
    let secret = json!({"name": "s", "key": "k"});
    let google =
        json!({"name": "google", "type": "google", "clientId": "c", "clientSecretRef": secret});
    let base = json!({"image": "i", "replicas": 2, "autoscaling": {"mode": "Disabled", "minReplicas": 1, "maxReplicas": 2}});
    let with = |extra: serde_json::Value| {
        let mut spec = base.clone();
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    };
    assert!(admits(&spec_rules, with(json!({"auth": {}}))));
    assert!(admits(
        &spec_rules,
        with(json!({
            "auth": {"providers": [google], "returnTo": ["https://app.example.com/oauth"]},
            "ingress": {"host": "api.example.com"}
        }))
    ));
    assert!(!admits(
        &spec_rules,
        with(json!({
            "auth": {"providers": [google], "returnTo": ["https://app.example.com/oauth"]}
        }))
    ));
    assert!(!admits(
        &spec_rules,
        with(json!({
            "auth": {"providers": [google]}, "ingress": {"host": "api.example.com"}
        }))
    ));

    let providers = &schema["properties"]["auth"]["properties"]["providers"];
    let list_rules = rules_at(providers);
    assert!(admits(&list_rules, json!([google])));
    assert!(!admits(&list_rules, json!([google, google])));
    let provider_rules = rules_at(&providers["items"]);
    let provider = |extra: serde_json::Value| {
        let mut p = google.clone();
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };
    assert!(admits(&provider_rules, provider(json!({}))));
    assert!(admits(
        &provider_rules,
        provider(json!({"type": "oidc", "issuer": "https://sso.example"}))
    ));
    assert!(!admits(&provider_rules, provider(json!({"type": "oidc"}))));
    assert!(!admits(
        &provider_rules,
        provider(json!({"issuer": "https://sso.example"}))
    ));
    assert!(admits(
        &provider_rules,
        provider(json!({"type": "microsoft", "tenant": "organizations"}))
    ));
    assert!(!admits(
        &provider_rules,
        provider(json!({"tenant": "organizations"}))
    ));
    assert!(admits(
        &provider_rules,
        provider(json!({"type": "github", "apiUrl": "https://ghe.example/api/v3"}))
    ));
    assert!(!admits(
        &provider_rules,
        provider(json!({"apiUrl": "https://ghe.example/api/v3"}))
    ));
}
