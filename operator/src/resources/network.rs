//! How the Stoa is reached and kept available: its Services, PodDisruptionBudget, Ingress,
//! NetworkPolicy and HorizontalPodAutoscaler, as k8s-openapi's typed structs.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyIngressRule,
    NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    API_PORT, COMPONENT_LABEL, Component, METRICS_PORT, Names, Result, component_selector_labels,
    meta, selector_labels,
};
use crate::crd::{AutoscalingMode, Stoa};

/// A LabelSelector for the pods (and Services) of both programs, API and worker.
pub(super) fn both_programs(stoa: &Stoa) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([
            ("app.kubernetes.io/name".into(), "stoa".into()),
            ("app.kubernetes.io/instance".into(), stoa.name_any()),
        ])),
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: COMPONENT_LABEL.into(),
            operator: "In".into(),
            values: Some(vec!["api".into(), "worker".into()]),
        }]),
    }
}

/// A TCP port of a Service, forwarded to the pods' port of the same name.
fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

pub fn service(stoa: &Stoa) -> Result<Service> {
    Ok(Service {
        metadata: meta(stoa, &Names::of(stoa).base)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(stoa)),
            ports: Some(vec![
                service_port("http", 80),
                service_port("metrics", METRICS_PORT),
            ]),
            ..ServiceSpec::default()
        }),
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
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(component_selector_labels(stoa, Component::Worker)),
            ports: Some(vec![service_port("metrics", METRICS_PORT)]),
            ..ServiceSpec::default()
        }),
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
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(min_available)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(stoa)),
                match_expressions: None,
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
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
    let path = HTTPIngressPath {
        path: Some("/".into()),
        path_type: "Prefix".into(),
        backend: IngressBackend {
            service: Some(IngressServiceBackend {
                name: Names::of(stoa).base,
                port: Some(ServiceBackendPort {
                    name: Some("http".into()),
                    number: None,
                }),
            }),
            resource: None,
        },
    };
    Ok(Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue { paths: vec![path] }),
            }]),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            default_backend: None,
        }),
        status: None,
    }))
}

fn tcp(port: i32) -> Option<Vec<NetworkPolicyPort>> {
    Some(vec![NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        end_port: None,
    }])
}

/// Pods of the namespaces named.
fn from_namespaces(names: &[String]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "In".into(),
                values: Some(names.to_vec()),
            }]),
        }),
        ..NetworkPolicyPeer::default()
    }
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
    let api_rule = NetworkPolicyIngressRule {
        ports: tcp(API_PORT),
        from: (!policy.allowed_namespaces.is_empty())
            .then(|| vec![from_namespaces(&policy.allowed_namespaces)]),
    };
    // Same-namespace pods (or the listed namespaces) scrape; the operator confirms.
    let mut metrics_from = if policy.metrics_namespaces.is_empty() {
        vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        }]
    } else {
        vec![from_namespaces(&policy.metrics_namespaces)]
    };
    if let Some(namespace) = operator_namespace
        && !policy.metrics_namespaces.iter().any(|n| n == namespace)
    {
        metrics_from.push(from_namespaces(&[namespace.to_owned()]));
    }
    Ok(Some(NetworkPolicy {
        metadata: meta(stoa, &Names::of(stoa).base)?,
        spec: Some(NetworkPolicySpec {
            // Workers too: they serve only the admin port, open to the same peers.
            pod_selector: Some(both_programs(stoa)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                api_rule,
                NetworkPolicyIngressRule {
                    ports: tcp(METRICS_PORT),
                    from: Some(metrics_from),
                },
            ]),
            egress: None,
        }),
    }))
}

fn scaling_policy(type_: &str, value: i32, period_seconds: i32) -> HPAScalingPolicy {
    HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds,
    }
}

pub fn horizontal_pod_autoscaler(stoa: &Stoa) -> Result<Option<HorizontalPodAutoscaler>> {
    let scaling = &stoa.spec.autoscaling;
    if scaling.mode != AutoscalingMode::Hpa {
        return Ok(None);
    }
    Ok(Some(HorizontalPodAutoscaler {
        metadata: meta(stoa, &Names::of(stoa).base)?,
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: Names::of(stoa).base,
            },
            min_replicas: Some(scaling.min_replicas),
            max_replicas: scaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(scaling.target_cpu_utilization),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(scaling.scale_down_stabilization_seconds),
                    policies: Some(vec![scaling_policy("Percent", 50, 60)]),
                    ..HPAScalingRules::default()
                }),
                scale_up: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(0),
                    policies: Some(vec![
                        scaling_policy("Percent", 100, 30),
                        scaling_policy("Pods", 4, 30),
                    ]),
                    select_policy: Some("Max".into()),
                }),
            }),
        }),
        status: None,
    }))
}
