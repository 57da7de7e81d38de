//! Objects of the credential rotation (`crate::credential_rotation`): the connection
//! Secret the pods mount, and the Jobs that run `stoa-api credentials` with the admin
//! credential.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use stoa_contract::credential_rotation::CredentialCommand;
use stoa_contract::paths::TERMINATION_LOG;

use super::pod::{read_only_mount, secret_volume};
use super::workloads::{OneShot, database_job_mounts, one_shot_job};
use super::{
    ATTEMPT_ANNOTATION, BuildError, COMPONENT_LABEL, IMAGE_ANNOTATION, Names, Result, labels, meta,
};
use crate::crd::Stoa;

/// Keys of the connection Secret.
pub const URL_KEY: &str = "url";
pub const PASSWORD_KEY: &str = "password";

/// Whether this Stoa's credential rotates (it needs the admin credential).
pub fn rotation_enabled(stoa: &Stoa) -> bool {
    stoa.spec.database.admin_secret_ref.is_some() && stoa.spec.database.credential_rotation.enabled
}

/// The two kinds of per-rotation credential Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Publish,
    Expire,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Publish => "publish",
            JobKind::Expire => "expire",
        }
    }
}

pub const CREDENTIAL_GENERATION_LABEL: &str = "stoa.dev/credential-generation";
pub const CREDENTIAL_STEP_LABEL: &str = "stoa.dev/credential-step";
pub const CREDENTIAL_JOB_LABEL: &str = "stoa.dev/credential-job";
/// Where a publish Job finds the new password.
pub const PASSWORD_MOUNT: &str = "/var/run/stoa/credential";
const COMPONENT: &str = "credentials";

/// `instance=<name>,component=credentials`: every credential Job of this Stoa.
pub fn credential_selector(stoa: &Stoa) -> String {
    format!(
        "app.kubernetes.io/instance={},{COMPONENT_LABEL}={COMPONENT}",
        stoa.name_any()
    )
}

/// The connection Secret as first created: the URL the user gave, until the first
/// rotation replaces it with a managed role's.
pub fn connection_secret(stoa: &Stoa, url: Vec<u8>) -> Result<Secret> {
    let mut metadata = meta(stoa, &Names::of(stoa).credentials)?;
    metadata
        .labels
        .get_or_insert_default()
        .insert("stoa.dev/secret".into(), "database".into());
    Ok(Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(URL_KEY.to_owned(), ByteString(url))])),
        ..Secret::default()
    })
}

/// One credential step to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialJobRequest {
    pub generation: u32,
    pub kind: JobKind,
    pub attempt: i32,
    pub command: CredentialCommand,
    pub image: String,
}

impl CredentialJobRequest {
    pub fn name(&self, stoa: &Stoa) -> String {
        let mut suffix = format!("-cred-{}-{}", self.generation, self.kind.as_str());
        if self.attempt > 1 {
            suffix.push_str(&format!("-{}", self.attempt));
        }
        super::bounded_name(&stoa.name_any(), &suffix)
    }
}

pub fn credential_job(stoa: &Stoa, request: &CredentialJobRequest) -> Result<Job> {
    let admin = stoa
        .spec
        .database
        .admin_secret_ref
        .as_ref()
        .ok_or(BuildError::MissingMetadata("spec.database.adminSecretRef"))?;
    let name = request.name(stoa);
    let mut job_labels = labels(stoa);
    job_labels.insert(COMPONENT_LABEL.into(), COMPONENT.into());
    job_labels.insert(
        CREDENTIAL_GENERATION_LABEL.into(),
        request.generation.to_string(),
    );
    job_labels.insert(CREDENTIAL_STEP_LABEL.into(), request.kind.as_str().into());
    let mut pod_labels = job_labels.clone();
    pod_labels.insert(CREDENTIAL_JOB_LABEL.into(), name.clone());
    let mut metadata = meta(stoa, &name)?;
    metadata.labels = Some(job_labels);
    metadata.annotations = Some(BTreeMap::from([
        (IMAGE_ANNOTATION.to_owned(), request.image.clone()),
        (ATTEMPT_ANNOTATION.to_owned(), request.attempt.to_string()),
    ]));
    let mut mounted = database_job_mounts(admin, "admin");
    if let CredentialCommand::Publish { .. } = request.command {
        mounted.volumes.push(secret_volume(
            "password",
            &Names::of(stoa).credentials,
            Some((PASSWORD_KEY, PASSWORD_KEY)),
            0o440,
        ));
        mounted
            .mounts
            .push(read_only_mount("password", PASSWORD_MOUNT));
    }
    one_shot_job(
        stoa,
        metadata,
        OneShot {
            pod_labels,
            container: "credentials",
            image: &request.image,
            args: request.command.args(TERMINATION_LOG),
            // Expiry waits for sessions to end (up to its own bound) before this.
            deadline_seconds: 600,
            failure_policy: None,
            mounted,
        },
    )
}

/// The Job that drops the roles when the Stoa is deleted. It has no owner: the Stoa's
/// deletion must not take it with it (foreground deletion removes dependents first:
/// Kubernetes docs, "Garbage Collection"); it removes itself a day after finishing.
pub fn drop_roles_job(stoa: &Stoa, group: &str, image: &str, attempt: i32) -> Result<Job> {
    let request = CredentialJobRequest {
        generation: 0,
        kind: JobKind::Expire,
        attempt,
        command: CredentialCommand::Drop {
            group: group.to_owned(),
        },
        image: image.to_owned(),
    };
    let mut job = credential_job(stoa, &request)?;
    let name = drop_job_name(stoa, attempt);
    job.metadata.name = Some(name.clone());
    job.metadata.owner_references = None;
    // The Stoa's own ServiceAccount may be gone already: foreground deletion removes the
    // owner's dependents first (Kubernetes docs, "Garbage Collection"), and a pod naming a
    // missing ServiceAccount is refused at admission, so the Job would never start. The
    // pod needs no API access (its token is not mounted): the namespace's default account
    // serves.
    if let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pod.service_account_name = None;
    }
    for labels in [
        job.metadata.labels.as_mut(),
        job.spec
            .as_mut()
            .and_then(|s| s.template.metadata.as_mut())
            .and_then(|m| m.labels.as_mut()),
    ]
    .into_iter()
    .flatten()
    {
        labels.insert(CREDENTIAL_STEP_LABEL.into(), "drop".into());
        labels.remove(CREDENTIAL_GENERATION_LABEL);
        if labels.contains_key(CREDENTIAL_JOB_LABEL) {
            labels.insert(CREDENTIAL_JOB_LABEL.into(), name.clone());
        }
    }
    Ok(job)
}

pub fn drop_job_name(stoa: &Stoa, attempt: i32) -> String {
    let suffix = if attempt > 1 {
        format!("-cred-drop-{attempt}")
    } else {
        "-cred-drop".to_owned()
    };
    super::bounded_name(&stoa.name_any(), &suffix)
}
