//! Where the operator mounts things in a stoa-api pod, and the file names inside.

/// The signing key Secret, mounted as a directory holding [`crate::keys::KEYSET_FILE`].
pub const KEYS_MOUNT: &str = "/var/run/stoa/keys";
/// The Secret with the key set that encrypts second-factor secrets, holding
/// [`crate::mfa_keys::MFA_KEYS_FILE`].
pub const MFA_KEYS_MOUNT: &str = "/var/run/stoa/mfa-keys";
/// The database URL Secret key, mounted as `<DATABASE_MOUNT>/<URL_FILE>`.
pub const DATABASE_MOUNT: &str = "/var/run/stoa/database";
/// The migration credential (admin URL when given), mounted only into migration Jobs.
pub const MIGRATION_DATABASE_MOUNT: &str = "/var/run/stoa/migration-database";
/// The Redis URL (or the Sentinel or Cluster node list), as `<REDIS_MOUNT>/<URL_FILE>`.
pub const REDIS_MOUNT: &str = "/var/run/stoa/redis";
/// The sentinels' password, as `<REDIS_SENTINEL_PASSWORD_MOUNT>/<PASSWORD_FILE>`.
pub const REDIS_SENTINEL_PASSWORD_MOUNT: &str = "/var/run/stoa/redis-sentinel-password";
pub const PASSWORD_FILE: &str = "password";
/// The read replica's URL Secret key (`spec.database.readUrlSecretRef`), API pods only.
pub const DATABASE_READ_MOUNT: &str = "/var/run/stoa/database-read";
/// The pooler's URL (`spec.database.pooler.urlSecretRef`).
pub const DATABASE_POOLER_MOUNT: &str = "/var/run/stoa/database-pooler";
/// Each identity provider's client secret, as `<AUTH_PROVIDERS_MOUNT>/<name>/<CLIENT_SECRET_FILE>`.
pub const AUTH_PROVIDERS_MOUNT: &str = "/var/run/stoa/auth-providers";
pub const CLIENT_SECRET_FILE: &str = "client-secret";
/// The CA certificates of PostgreSQL's and Redis's server certificates (TLS to a private
/// CA), each mounted as `<mount>/<CA_FILE>`.
pub const DATABASE_CA_MOUNT: &str = "/var/run/stoa/database-ca";
pub const REDIS_CA_MOUNT: &str = "/var/run/stoa/redis-ca";
pub const CA_FILE: &str = "ca.crt";
/// The file name each mounted URL Secret key is projected to.
pub const URL_FILE: &str = "url";
/// Where Kubernetes reads a container's termination message (the default
/// `terminationMessagePath`); `stoa-api migrate --report-file` writes its report there.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
