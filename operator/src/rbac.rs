//! The permissions the operator's code uses, by API group and resource. The Helm chart's
//! and the kustomize base's Role must grant exactly these (a test compares them, and the
//! reconcile tests check every request they make against this list).
//!
//! Server-side apply of an object that does not exist yet creates it, and the API server
//! admits that request as a create: applied types are granted `create` besides `patch`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// The namespaced rules (a ClusterRole when watching every namespace). Leader election's
/// Lease and the discovery of the ServiceMonitor CRD have their own narrow rules.
pub const RULES: &[Rule] = &[
    // Patch: the finalizer that drops the database roles on deletion.
    Rule {
        group: "stoa.dev",
        resources: &["stoas"],
        verbs: &["get", "list", "watch", "patch"],
    },
    Rule {
        group: "stoa.dev",
        resources: &["stoas/status"],
        verbs: &["patch"],
    },
    // Every owned object's owner reference sets `blockOwnerDeletion`, so a foreground
    // deletion of the Stoa waits for it. With the OwnerReferencesPermissionEnforcement
    // admission plugin (on by default on OpenShift), setting it needs `update` on the
    // owner's finalizers subresource (Kubernetes docs, "Admission Controllers Reference").
    Rule {
        group: "stoa.dev",
        resources: &["stoas/finalizers"],
        verbs: &["update"],
    },
    Rule {
        group: "apps",
        resources: &["deployments"],
        // Delete: before dropping the database roles on deletion, no pod may use them.
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    // Delete: the workers' metrics Service goes when `spec.worker` is turned off.
    Rule {
        group: "",
        resources: &["services"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    Rule {
        group: "",
        resources: &["configmaps", "serviceaccounts"],
        verbs: &["get", "list", "watch", "create", "patch"],
    },
    // The signing-key Secret: created once, watched by label so a deletion is noticed, and
    // replaced (conditioned on its resourceVersion) at each key-rotation step.
    // Kubernetes RBAC cannot restrict list/watch to a label, so this grants reading the
    // Secrets of the watched namespaces; run with `--namespace` to narrow it.
    Rule {
        group: "",
        resources: &["secrets"],
        verbs: &["get", "list", "watch", "create", "update"],
    },
    // Pods: rollout completeness (no pod of an older revision left) and migration reports
    // (a Job pod's termination message). Listed on demand, never watched.
    Rule {
        group: "",
        resources: &["pods"],
        verbs: &["list"],
    },
    // Migration Jobs: created, watched; finished ones are removed by their TTL.
    Rule {
        group: "batch",
        resources: &["jobs"],
        verbs: &["get", "list", "watch", "create"],
    },
    Rule {
        group: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    Rule {
        group: "networking.k8s.io",
        resources: &["ingresses", "networkpolicies"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    Rule {
        group: "autoscaling",
        resources: &["horizontalpodautoscalers"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    Rule {
        group: "monitoring.coreos.com",
        resources: &["servicemonitors"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    Rule {
        group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
];

/// Whether the rules grant `verb` on `group`/`resource` (e.g. `stoas/status`).
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    RULES.iter().any(|rule| {
        rule.group == group && rule.resources.contains(&resource) && rule.verbs.contains(&verb)
    })
}

/// Every (group, resource, verb) granted, sorted (for comparing with the shipped Roles).
pub fn grants() -> Vec<(String, String, String)> {
    let mut all: Vec<_> = RULES
        .iter()
        .flat_map(|rule| {
            rule.resources.iter().flat_map(move |resource| {
                rule.verbs.iter().map(move |verb| {
                    (
                        rule.group.to_owned(),
                        (*resource).to_owned(),
                        (*verb).to_owned(),
                    )
                })
            })
        })
        .collect();
    all.sort();
    all
}
