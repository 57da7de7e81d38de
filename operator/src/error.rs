//! The operator's one error type (its names become metric labels and condition reasons),
//! and the field managers it writes as.

use crate::conditions::degraded;
use crate::resources::BuildError;

pub const FIELD_MANAGER: &str = "stoa-operator";
/// The field manager that holds `spec.replicas` while it passes to an autoscaler.
pub const HANDOVER_MANAGER: &str = "stoa-operator-handover";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot serialize an object: {0}")]
    Serialize(serde_json::Error),
    #[error("{0}")]
    InvalidSpec(String),
    #[error("the Stoa has no namespace or uid")]
    NoIdentity,
    #[error(
        "{kind} {name} already exists and is not owned by this Stoa; the operator does not take \
         over objects it did not create: rename or delete it"
    )]
    NotOwned { kind: &'static str, name: String },
    #[error(
        "the reconcile step {step} ran before the step that gives it {input} (an operator bug)"
    )]
    OutOfOrder { step: String, input: &'static str },
}

impl Error {
    /// Every value [`Error::metric_label`] returns (their series start at zero).
    pub const METRIC_LABELS: [&'static str; 6] = [
        "api_error",
        "client_error",
        "invalid_spec",
        "no_identity",
        "name_conflict",
        "internal",
    ];

    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(_) => "client_error",
            Error::Build(_) | Error::Serialize(_) | Error::InvalidSpec(_) => "invalid_spec",
            Error::NoIdentity => "no_identity",
            Error::NotOwned { .. } => "name_conflict",
            Error::OutOfOrder { .. } => "internal",
        }
    }

    /// The `Degraded` reason this error is reported under.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(e)) if e.code == 403 => degraded::FORBIDDEN.name,
            Error::Kube(_) => degraded::KUBERNETES_API_ERROR.name,
            Error::Build(_) | Error::Serialize(_) | Error::InvalidSpec(_) => {
                degraded::INVALID_SPEC.name
            }
            Error::NoIdentity => degraded::INVALID_SPEC.name,
            Error::NotOwned { .. } => degraded::NAME_CONFLICT.name,
            Error::OutOfOrder { .. } => degraded::INTERNAL_ERROR.name,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
