//! The operator's one error type (its names become metric labels and condition reasons),
//! and the field managers it writes as.

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
}

impl Error {
    /// Every value [`Error::metric_label`] returns (their series start at zero).
    pub const METRIC_LABELS: [&'static str; 5] = [
        "api_error",
        "client_error",
        "invalid_spec",
        "no_identity",
        "name_conflict",
    ];

    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(_) => "client_error",
            Error::Build(_) | Error::Serialize(_) | Error::InvalidSpec(_) => "invalid_spec",
            Error::NoIdentity => "no_identity",
            Error::NotOwned { .. } => "name_conflict",
        }
    }

    /// The `Degraded` reason this error is reported under.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(e)) if e.code == 403 => "Forbidden",
            Error::Kube(_) => "KubernetesApiError",
            Error::Build(_) | Error::Serialize(_) | Error::InvalidSpec(_) => "InvalidSpec",
            Error::NoIdentity => "InvalidSpec",
            Error::NotOwned { .. } => "NameConflict",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
