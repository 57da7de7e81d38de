//! Configuration variables of stoa-api that the operator sets (the complete list is in
//! stoa-api's README; these are the ones both programs name).

pub const LISTEN_ADDR: &str = "STOA_LISTEN_ADDR";
pub const ADMIN_ADDR: &str = "STOA_ADMIN_ADDR";
pub const LOG_FORMAT: &str = "STOA_LOG_FORMAT";
pub const JWT_KEYS_DIR: &str = "STOA_JWT_KEYS_DIR";
/// The directory holding `mfa-keys.json` (second-factor secrets are encrypted under it).
pub const MFA_KEYS_DIR: &str = "STOA_MFA_KEYS_DIR";
pub const DATABASE_URL: &str = "STOA_DATABASE_URL";
/// `<var>_FILE` names a file holding the secret value (a mounted Secret key).
pub const DATABASE_URL_FILE: &str = "STOA_DATABASE_URL_FILE";
pub const DB_MAX_CONNECTIONS: &str = "STOA_DB_MAX_CONNECTIONS";
/// A streaming replica for content reads, as a mounted file.
pub const DATABASE_READ_URL_FILE: &str = "STOA_DATABASE_READ_URL_FILE";
/// A transaction-mode pooler in front of PostgreSQL, as a mounted file.
pub const DATABASE_POOLER_URL_FILE: &str = "STOA_DATABASE_POOLER_URL_FILE";
/// The session name in `pg_stat_activity`; the operator sets the pod's name.
pub const DB_APPLICATION_NAME: &str = "STOA_DB_APPLICATION_NAME";
pub const REDIS_URL: &str = "STOA_REDIS_URL";
pub const REDIS_URL_FILE: &str = "STOA_REDIS_URL_FILE";
/// Redis behind Sentinel (`spec.redis.sentinel`): the sentinels and the primary's name.
pub const REDIS_SENTINELS_FILE: &str = "STOA_REDIS_SENTINELS_FILE";
/// The sentinels' own password.
pub const REDIS_SENTINEL_PASSWORD_FILE: &str = "STOA_REDIS_SENTINEL_PASSWORD_FILE";
/// A Redis Cluster's seed nodes (`spec.redis.cluster`).
pub const REDIS_CLUSTER_FILE: &str = "STOA_REDIS_CLUSTER_FILE";
pub const ACCESS_TOKEN_TTL: &str = "STOA_ACCESS_TOKEN_TTL";
pub const REFRESH_TOKEN_TTL: &str = "STOA_REFRESH_TOKEN_TTL";
pub const SHUTDOWN_DELAY: &str = "STOA_SHUTDOWN_DELAY";
pub const SHUTDOWN_TIMEOUT: &str = "STOA_SHUTDOWN_TIMEOUT";
pub const TRUSTED_PROXY_HOPS: &str = "STOA_TRUSTED_PROXY_HOPS";
/// Where clients reach the API (`https://host`): the operator sets the Ingress's.
pub const PUBLIC_URL: &str = "STOA_PUBLIC_URL";
/// Error tracking: the DSN (from `spec.monitoring.errorTracking.dsnSecretRef`) and the
/// environment events are filed under.
pub const SENTRY_DSN: &str = "STOA_SENTRY_DSN";
pub const SENTRY_ENVIRONMENT: &str = "STOA_SENTRY_ENVIRONMENT";
/// libpq's (and sqlx's) default CA file for `sslmode=verify-ca|verify-full` when the URL
/// names no `sslrootcert`: the operator points it at the mounted `database.caSecretRef`.
pub const PG_SSL_ROOT_CERT: &str = "PGSSLROOTCERT";
/// The CA of Redis's certificate (`rediss://`); the operator points it at `redis.caSecretRef`.
pub const REDIS_CA_FILE: &str = "STOA_REDIS_CA_FILE";
/// Jobs one worker runs at once; the operator sets it from `spec.worker.concurrency`.
pub const WORKER_CONCURRENCY: &str = "STOA_WORKER_CONCURRENCY";

/// Identity providers for sign-in (JSON; each entry names its client secret's file), and
/// the front-end addresses a sign-in may return to. API pods only.
pub const AUTH_PROVIDERS: &str = "STOA_AUTH_PROVIDERS";
pub const AUTH_RETURN_TO: &str = "STOA_AUTH_RETURN_TO";

/// The suffix of the file form of a secret variable.
pub const FILE_SUFFIX: &str = "_FILE";

/// The largest clock leeway stoa-api accepts for token validation (`STOA_JWT_LEEWAY`):
/// a token verifies until `exp` plus at most this, so a retiring key must outlive the
/// access-token lifetime by this much.
pub const MAX_JWT_LEEWAY: std::time::Duration = std::time::Duration::from_secs(300);
