//! The contract between `stoa-api` and `stoa-operator`: everything one program writes and
//! the other reads. Both import it, so a change here is a change to both sides, and the
//! operator never links the API server (sqlx, redis, argon2).
//!
//! - [`keys`]: the signing key-set file (`keyset.json`), its validation and generation.
//! - [`mfa_keys`]: the key-set file that encrypts second-factor secrets (`mfa-keys.json`).
//! - [`credentials`]: database credential rotation: the roles and `stoa-api credentials`.
//! - [`env`]: the configuration variables the operator sets in stoa-api's ConfigMap.
//! - [`paths`]: where the operator mounts Secrets in the pod.
//! - [`migration`]: the `stoa-api migrate` command line, exit codes and report, and how a
//!   migration is marked as a contract step.
//! - [`pod`]: what a running pod reports about itself (loaded keys, credential, load).

pub mod credential_rotation;
pub mod env;
pub mod keys;
pub mod mfa_keys;
pub mod migration;
pub mod paths;
pub mod pod;
