//! The Stoa's conditions and every reason each one gives. The status code builds its
//! conditions from these constants and the conditions reference
//! (`stoa-operator reference conditions`, `docs/reference/conditions.md`) is generated
//! from the same table, so a reason cannot be reported without being documented.
//!
//! Conventions (Kubernetes API conventions, "Typical status properties"): `reason` is a
//! CamelCase word a program can switch on, `message` is for humans, and each condition's
//! `status` is `True`, `False` or `Unknown`; here a reason always comes with the same
//! status, so the two are declared together.

use std::fmt::Write as _;

/// One reason a condition gives, with the status it always comes with.
#[derive(Debug, PartialEq, Eq)]
pub struct Reason {
    pub name: &'static str,
    pub status: bool,
    /// What it means and where to look, for the reference (Markdown).
    pub meaning: &'static str,
}

impl Reason {
    pub fn status(&self) -> &'static str {
        if self.status { "True" } else { "False" }
    }
}

/// A condition type and every reason it gives.
pub struct Kind {
    pub type_: &'static str,
    /// What `True` says, for the reference.
    pub meaning: &'static str,
    pub reasons: &'static [&'static Reason],
    /// The condition may also carry a reason taken from another object (Markdown).
    pub passed_through: Option<&'static str>,
}

const fn reason(name: &'static str, status: bool, meaning: &'static str) -> Reason {
    Reason {
        name,
        status,
        meaning,
    }
}

pub mod ready {
    use super::{Reason, reason};
    pub const TYPE: &str = "Ready";
    pub const AVAILABLE: Reason = reason(
        "Available",
        true,
        "every desired replica is ready (or none is desired)",
    );
    pub const UNAVAILABLE: Reason = reason(
        "Unavailable",
        false,
        "fewer replicas are ready than desired: each pod's admin `/readyz` says which check fails",
    );
    pub const MIGRATING: Reason = reason(
        "Migrating",
        false,
        "the first migration runs; no Deployment exists yet",
    );
}

pub mod progressing {
    use super::{Reason, reason};
    pub const TYPE: &str = "Progressing";
    pub const MIGRATING: Reason = reason(
        "Migrating",
        true,
        "a migration Job applies the new image's expand steps; the Deployment stays on the approved image",
    );
    pub const ROLLING_OUT: Reason = reason(
        "RollingOut",
        true,
        "the Deployment replaces its pods with the approved image",
    );
    pub const CONTRACTING: Reason = reason(
        "Contracting",
        true,
        "the rollout is complete; a Job applies the release's contract steps",
    );
    pub const COMPLETE: Reason = reason("Complete", false, "every replica runs the current image");
    pub const MIGRATION_FAILED: Reason = reason(
        "MigrationFailed",
        false,
        "the migration Job failed; the old image keeps serving ([runbook](../operations.md#stoamigrationfailed))",
    );
    pub const ROLLBACK_BLOCKED: Reason = reason(
        "RollbackBlocked",
        false,
        "the image is older than the database's contract steps ([runbook](../operations.md#stoarollbackblocked))",
    );
    pub const PROGRESS_DEADLINE_EXCEEDED: Reason = reason(
        "ProgressDeadlineExceeded",
        false,
        "the Deployment's pods did not become ready within its progress deadline",
    );
    pub const PAUSED: Reason = reason(
        "Paused",
        false,
        "`spec.paused` is true: changes are not applied",
    );
}

pub mod degraded {
    use super::{Reason, reason};
    pub const TYPE: &str = "Degraded";
    pub const AS_EXPECTED: Reason = reason("AsExpected", false, "no failure observed");
    pub const MIGRATION_FAILED: Reason = reason(
        "MigrationFailed",
        true,
        "the migration Job failed, or is retrying after a failure ([runbook](../operations.md#stoamigrationfailed))",
    );
    pub const ROTATION_STALLED: Reason = reason(
        "RotationStalled",
        true,
        "a signing-key rotation waits for pods that have not loaded the new key set ([runbook](../operations.md#stoarotationstalled))",
    );
    pub const CREDENTIAL_ROTATION_STALLED: Reason = reason(
        "CredentialRotationStalled",
        true,
        "pods still use the previous database credential after the confirmation timeout ([runbook](../operations.md#stoarotationstalled))",
    );
    pub const CREDENTIAL_ROTATION_FAILED: Reason = reason(
        "CredentialRotationFailed",
        true,
        "a credential rotation step (a Job) failed; it is retried ([runbook](../operations.md#stoarotationstalled))",
    );
    pub const NAME_CONFLICT: Reason = reason(
        "NameConflict",
        true,
        "an object of the name the Stoa needs exists and is not the Stoa's; it is never taken over",
    );
    pub const FORBIDDEN: Reason = reason(
        "Forbidden",
        true,
        "the API server refused the operator (RBAC): compare its Role with the chart's",
    );
    pub const KUBERNETES_API_ERROR: Reason = reason(
        "KubernetesApiError",
        true,
        "a request to the API server failed; the reconcile is retried with backoff",
    );
    pub const INVALID_SPEC: Reason = reason(
        "InvalidSpec",
        true,
        "the spec cannot be turned into objects; the message names the field",
    );
    pub const INTERNAL_ERROR: Reason = reason(
        "InternalError",
        true,
        "the operator met a state its own code should rule out (a bug): the message says which; please report it",
    );
}

pub mod rollback_blocked {
    use super::{Reason, reason};
    pub const TYPE: &str = "RollbackBlocked";
    pub const NOT_BLOCKED: Reason =
        reason("NotBlocked", false, "no rollback is waiting for approval");
    pub const NEWER_CONTRACT_APPLIED: Reason = reason(
        "NewerContractApplied",
        true,
        "the requested image is older than contract steps the database holds; approve with `spec.migrations.allowNewerContract` ([runbook](../operations.md#stoarollbackblocked))",
    );
}

pub mod paused {
    use super::{Reason, reason};
    pub const TYPE: &str = "Paused";
    pub const NOT_PAUSED: Reason = reason("NotPaused", false, "changes are applied");
    pub const SPEC_PAUSED: Reason = reason(
        "SpecPaused",
        true,
        "`spec.paused` is true: the operator reports status but changes nothing",
    );
}

/// Every condition the operator sets, in the order it sets them.
pub const ALL: &[Kind] = &[
    Kind {
        type_: ready::TYPE,
        meaning: "the API serves: its replicas are ready",
        reasons: &[&ready::AVAILABLE, &ready::UNAVAILABLE, &ready::MIGRATING],
        passed_through: None,
    },
    Kind {
        type_: progressing::TYPE,
        meaning: "a change is being applied (migration, rollout, contract)",
        reasons: &[
            &progressing::MIGRATING,
            &progressing::ROLLING_OUT,
            &progressing::CONTRACTING,
            &progressing::COMPLETE,
            &progressing::MIGRATION_FAILED,
            &progressing::ROLLBACK_BLOCKED,
            &progressing::PROGRESS_DEADLINE_EXCEEDED,
            &progressing::PAUSED,
        ],
        passed_through: None,
    },
    Kind {
        type_: degraded::TYPE,
        meaning: "something needs a human: the reason names the runbook",
        reasons: &[
            &degraded::AS_EXPECTED,
            &degraded::MIGRATION_FAILED,
            &degraded::ROTATION_STALLED,
            &degraded::CREDENTIAL_ROTATION_STALLED,
            &degraded::CREDENTIAL_ROTATION_FAILED,
            &degraded::NAME_CONFLICT,
            &degraded::FORBIDDEN,
            &degraded::KUBERNETES_API_ERROR,
            &degraded::INVALID_SPEC,
            &degraded::INTERNAL_ERROR,
        ],
        passed_through: Some(
            "`True` with the Deployment's own failure reason (`ProgressDeadlineExceeded`, \
             `FailedCreate`, …) when its rollout fails",
        ),
    },
    Kind {
        type_: rollback_blocked::TYPE,
        meaning: "a rollback waits for approval",
        reasons: &[
            &rollback_blocked::NOT_BLOCKED,
            &rollback_blocked::NEWER_CONTRACT_APPLIED,
        ],
        passed_through: None,
    },
    Kind {
        type_: paused::TYPE,
        meaning: "`spec.paused` is set",
        reasons: &[&paused::NOT_PAUSED, &paused::SPEC_PAUSED],
        passed_through: None,
    },
];

/// The conditions reference as Markdown.
pub fn reference() -> String {
    let mut out = String::from(
        "# Conditions reference\n\n\
         <!-- Generated by `stoa-operator reference conditions` (`make docs`) from \
         operator/src/conditions.rs. Do not edit by hand. -->\n\n\
         Every condition a Stoa's `status.conditions` holds, and every reason each one \
         gives. A reason always comes with the same status. `kubectl describe stoa NAME` \
         shows them; `stoa_operator_stoa_condition` exports them to Prometheus.\n",
    );
    for kind in ALL {
        let _ = write!(
            out,
            "\n## `{}`\n\n`True`: {}.\n\n| status | reason | meaning |\n|---|---|---|\n",
            kind.type_, kind.meaning
        );
        for reason in kind.reasons {
            let _ = writeln!(
                out,
                "| `{}` | `{}` | {} |",
                reason.status(),
                reason.name,
                reason.meaning
            );
        }
        if let Some(text) = kind.passed_through {
            let _ = writeln!(out, "\nAlso: {text}.");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_camel_case_words_and_unique_per_condition() {
        for kind in ALL {
            let mut names: Vec<_> = kind.reasons.iter().map(|r| r.name).collect();
            for name in &names {
                assert!(
                    name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                        && name.chars().all(|c| c.is_ascii_alphanumeric()),
                    "{name}"
                );
            }
            names.sort_unstable();
            let count = names.len();
            names.dedup();
            assert_eq!(names.len(), count, "{} repeats a reason", kind.type_);
            assert!(
                kind.reasons.iter().any(|r| r.status) && kind.reasons.iter().any(|r| !r.status),
                "{} can be both True and False",
                kind.type_
            );
        }
    }

    #[test]
    fn the_committed_reference_is_current() {
        let committed = include_str!("../../docs/reference/conditions.md");
        assert!(
            committed == reference(),
            "docs/reference/conditions.md is out of date: run `make docs`"
        );
    }
}
