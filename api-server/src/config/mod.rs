//! Configuration: read from `STOA_*` environment variables once at start-up, validated,
//! and then passed around as plain typed values.
//!
//! Every secret can also be given as a file (`STOA_<NAME>_FILE`), which is how the operator
//! mounts them. Secrets are wrapped in [`Secret`] so they never print.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod container;
mod providers;
mod redis_target;
mod reference;
mod settings;

pub use providers::{EmailTrust, Protocol, ProviderConfig, SignInConfig};
pub use redis_target::{Nodes, RedisTarget, SentinelTarget};
pub use reference::settings_reference;
pub use settings::PublicOrigin;
pub use settings::read_secret_file;
use settings::{Declared, EnvReader, Origins, Setting};

/// A value that must never appear in logs, errors or `check-config` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{name} is required{hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("{name} and {name}_FILE are both set; set only one")]
    Ambiguous { name: &'static str },
    #[error("cannot read {name}_FILE ({path}): {reason}")]
    UnreadableFile {
        name: &'static str,
        path: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Where the database URL comes from: a literal value, or a file that may change at run
/// time (credential rotation swaps the mounted Secret).
#[derive(Debug, Clone)]
pub enum DatabaseUrlSource {
    Value(Secret),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub url_source: DatabaseUrlSource,
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
    /// After a credential swap, how long the old pool keeps serving requests that already
    /// hold it before it is closed.
    pub drain_grace: Duration,
    /// How sessions name themselves in `pg_stat_activity` (the operator sets the pod name,
    /// so a credential rotation can tell which pods still hold the old role).
    pub application_name: String,
    /// A streaming replica for reads (`crate::reads`); `None`: every read on the primary.
    pub read: Option<ReadReplicaConfig>,
    /// A transaction-mode pooler in front of PostgreSQL (`crate::db::pooler`): requests go
    /// through it, `url` stays the direct connection for migrations and `LISTEN`. Without a
    /// user name in it, it is logged into with `url`'s credentials (and follows their
    /// rotation). `None`: requests connect directly.
    pub pooler: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct ReadReplicaConfig {
    /// The standby's URL as given. Without a user name in it, the replica is logged into
    /// with the primary URL's credentials, and so follows their rotation.
    pub url: Secret,
    pub max_connections: u32,
    /// Further behind than this, the replica serves nothing (every read on the primary).
    pub max_lag: Duration,
    /// How often the replica's replay position is compared with the primary's.
    pub lag_check_interval: Duration,
}

/// The largest clock skew tolerated in token validation (the operator keeps retiring keys
/// this long past the access-token lifetime).
pub use stoa_contract::env::MAX_JWT_LEEWAY;

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Directory holding `keyset.json` (see `keys.rs`); `None` only in `--dev`.
    pub keys_dir: Option<PathBuf>,
    /// Directory holding `mfa-keys.json`, which encrypts second-factor secrets
    /// (`auth::sealing`); `None` only in `--dev` (a fixed development key).
    pub mfa_keys_dir: Option<PathBuf>,
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// A session (refresh-token family) ends this long after sign-in, however often it is
    /// refreshed.
    pub session_max_lifetime: Duration,
    /// How long after a refresh the previous refresh token still yields the same successor
    /// (two tabs refreshing at once), instead of counting as reuse.
    pub refresh_reuse_grace: Duration,
    /// How often expired refresh tokens and revocations are deleted.
    pub purge_interval: Duration,
    /// How long a sign-in waits for its second factor.
    pub mfa_challenge_ttl: Duration,
    /// Codes tried against one sign-in challenge before it is void.
    pub mfa_challenge_attempts: u32,
    /// Allowed clock skew when validating `exp`/`iat`.
    pub leeway: Duration,
    /// Verified access tokens remembered (by digest) so a token is verified once, not on
    /// every request.
    pub token_cache_entries: usize,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// How many password hashes may run at once (each holds `argon2_memory_kib`).
    pub hash_concurrency: usize,
}

/// The admin console's sessions (`crate::http::console`).
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after sign-in, however busy.
    pub session_lifetime: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen_addr: SocketAddr,
    /// Connections the kernel queues for `accept` (capped by `net.core.somaxconn`).
    pub listen_backlog: u32,
    pub admin_addr: SocketAddr,
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    /// After SIGTERM, how long `/readyz` reports false before the listener stops accepting.
    pub shutdown_delay: Duration,
    /// Upper bound on draining in-flight requests after the delay.
    pub shutdown_timeout: Duration,
    /// Origins allowed to call the API from a browser; empty means no CORS headers.
    pub cors_allowed_origins: Vec<String>,
    /// Where clients reach the API: the origin cookie-mode requests may also come from,
    /// and, when https, the reason to send HSTS.
    pub public_origin: Option<PublicOrigin>,
    /// `Strict-Transport-Security: max-age` when the public URL is https.
    pub hsts_max_age: Duration,
    pub max_concurrent_requests: usize,
    /// Client connections open at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Access-log one in this many requests answered below 500 (every 5xx is logged).
    pub access_log_every: u64,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Every request, per client IP.
    pub per_ip: Quota,
    /// Every authenticated request, per user.
    pub per_user: Quota,
    /// Login, register and refresh, per client IP.
    pub auth: Quota,
    /// Login attempts per (account, client address); the account is a hash of the email,
    /// existing or not.
    pub login_per_account: Quota,
    /// Login attempts per account from all clients together (`login_per_account` is per
    /// account and client address).
    pub login_account_ceiling: Quota,
    /// Second-factor codes per account (sign-in, enrolment, disabling).
    pub mfa_per_account: Quota,
    /// How many reverse proxies in front of the server append to `X-Forwarded-For`;
    /// 0 means use the peer address.
    pub trusted_proxy_hops: usize,
    /// The most cells of a shared (Redis) budget a replica leases at once; 1 sends every
    /// decision to Redis.
    pub lease_max: u32,
}

/// `stoa-api worker`: how it drains the job queue and how often it schedules maintenance.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `serve` also runs a worker (development, or a single-process deployment).
    pub in_process: bool,
    /// Jobs one worker runs at once (each holds a database connection while it runs).
    pub concurrency: usize,
    /// How often an idle worker looks for due jobs (new jobs also wake it at once).
    pub poll_interval: Duration,
    /// How long a claimed job is its worker's: a job whose worker vanished runs again once
    /// this has passed.
    pub lease: Duration,
    /// One attempt's deadline (its transaction and its statements).
    pub job_timeout: Duration,
    /// Attempts before a job is dead (kept, and listed by `stoa-api jobs list --dead`).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles for each later one, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long finished jobs are kept (dead ones are kept until retried or deleted).
    pub retention: Duration,
    /// How long stored security events are kept (the admin console shows them).
    pub security_event_retention: Duration,
    /// Schedule of the derived counters' check-and-repair.
    pub recount_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub dev: bool,
    pub database: DatabaseConfig,
    /// Redis, if any: one server, Sentinel or a cluster.
    pub redis: Option<RedisTarget>,
    /// PEM file of the CA that signed Redis's certificate (`rediss://` to a private CA);
    /// without it, the system's roots.
    pub redis_ca_file: Option<PathBuf>,
    /// Per-operation Redis deadline; past it, Redis counts as down.
    pub redis_timeout: Duration,
    /// Lifetime of cached anonymous reads; 0 disables the cache.
    pub cache_ttl: Duration,
    /// Capacity of each replica's own copy of hot cache entries; 0 disables it.
    pub cache_local_bytes: u64,
    pub rate_limits: RateLimitConfig,
    /// How often mounted files (key set, database URL) are checked for changes.
    pub reload_interval: Duration,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    /// Sign-in with identity providers (`crate::oauth`).
    pub sign_in: SignInConfig,
    pub console: ConsoleConfig,
    pub worker: WorkerConfig,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Sentry DSN (`STOA_SENTRY_DSN` or `_FILE`): error tracking is off without one.
    pub sentry_dsn: Option<Secret>,
    /// The environment Sentry files events under.
    pub sentry_environment: String,
    /// Log lines queued for the writer thread before new ones are dropped (and counted).
    pub log_queue_lines: usize,
    /// Every setting as resolved, secrets redacted (what `check-config` prints).
    effective: BTreeMap<&'static str, String>,
}

pub const DEV_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/stoa_dev";

/// Reads variables through `lookup` so tests can supply their own environment.
pub struct Env<F: Fn(&str) -> Option<String>> {
    lookup: F,
}

impl Env<fn(&str) -> Option<String>> {
    pub fn process() -> Self {
        Env {
            lookup: |name| std::env::var(name).ok(),
        }
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn new(lookup: F) -> Self {
        Env { lookup }
    }
}

fn invalid(name: &'static str, value: impl fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Threads the machine (or the container's CPU quota) allows: pool and hashing defaults.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `STOA_DATABASE_URL` and the pools (`STOA_DB_*`).
fn database_config<F: Fn(&str) -> Option<String>>(
    s: &mut EnvReader<'_, F>,
    dev: bool,
) -> Result<DatabaseConfig, ConfigError> {
    let secs = Duration::from_secs;
    let (url, url_file) =
        match s.secret_url("STOA_DATABASE_URL", &["postgres", "postgresql"], "")? {
            Some(found) => found,
            None if dev => {
                let url = Secret::new(DEV_DATABASE_URL);
                s.show_secret_url("STOA_DATABASE_URL", Some((&url, None)), "");
                (url, None)
            }
            None => {
                return Err(ConfigError::Missing {
                    name: "STOA_DATABASE_URL",
                    hint: " (or STOA_DATABASE_URL_FILE), e.g. postgres://user:pass@host:5432/stoa",
                });
            }
        };
    // Measured on 2 cores with PostgreSQL beside the server (the book's "Benchmarks", pool size):
    // reads are flat from 4 to 8 connections and their tails grow beyond; writes gain
    // up to 8, as a commit waits on the disk with its connection held.
    let cpus = cpus();
    let max_connections =
        s.read(Setting::new("STOA_DB_MAX_CONNECTIONS", (4 * cpus as u32).max(4)).at_least(1))?;
    let min_connections = s.read(Setting::new("STOA_DB_MIN_CONNECTIONS", 1u32))?;
    if min_connections > max_connections {
        return Err(invalid(
            "STOA_DB_MIN_CONNECTIONS",
            min_connections,
            format!("must be ≤ STOA_DB_MAX_CONNECTIONS ({max_connections})"),
        ));
    }
    let database = DatabaseConfig {
        url_source: match url_file {
            Some(path) => DatabaseUrlSource::File(path),
            None => DatabaseUrlSource::Value(url.clone()),
        },
        url,
        max_connections,
        min_connections,
        acquire_timeout: s.read(Setting::new("STOA_DB_ACQUIRE_TIMEOUT", secs(5)))?,
        statement_timeout: s.read(Setting::new("STOA_DB_STATEMENT_TIMEOUT", secs(10)))?,
        drain_grace: s.read(Setting::new("STOA_DB_DRAIN_GRACE", secs(5)))?,
        application_name: s.read(Setting::new(
            "STOA_DB_APPLICATION_NAME",
            "stoa-api".to_owned(),
        ))?,
        read: read_replica(s, max_connections)?,
        pooler: pooler_url(s)?,
    };
    Ok(database)
}

/// `STOA_SENTRY_DSN` and the environment its events are filed under.
fn error_tracking<F: Fn(&str) -> Option<String>>(
    s: &mut EnvReader<'_, F>,
    dev: bool,
) -> Result<(Option<Secret>, String), ConfigError> {
    s.section("Logs and error tracking");
    let sentry_dsn = s
        .secret_url(
            "STOA_SENTRY_DSN",
            &["https", "http"],
            "(not set: no error tracking)",
        )?
        .map(|(secret, _)| secret);
    if let Some(dsn) = &sentry_dsn
        && dsn.expose().parse::<sentry::types::Dsn>().is_err()
    {
        return Err(ConfigError::Invalid {
            name: "STOA_SENTRY_DSN",
            value: "<redacted>".into(),
            reason: "is not a Sentry DSN (https://<public key>@<host>/<project id>)".into(),
        });
    }
    let sentry_environment = s.read(Setting::new(
        "STOA_SENTRY_ENVIRONMENT",
        if dev { "development" } else { "production" }.to_owned(),
    ))?;
    Ok((sentry_dsn, sentry_environment))
}

/// `STOA_RATE_LIMIT_*` and `STOA_TRUSTED_PROXY_HOPS`.
fn rate_limit_config<F: Fn(&str) -> Option<String>>(
    s: &mut EnvReader<'_, F>,
) -> Result<RateLimitConfig, ConfigError> {
    let secs = Duration::from_secs;
    let quota =
        |s: &mut EnvReader<'_, F>, name, default: Quota| s.read(Setting::new(name, default));
    let rate_limits = RateLimitConfig {
        enabled: s.read(Setting::new("STOA_RATE_LIMIT_ENABLED", true))?,
        per_ip: quota(s, "STOA_RATE_LIMIT_PER_IP", Quota::per(1200, secs(60)))?,
        per_user: quota(s, "STOA_RATE_LIMIT_PER_USER", Quota::per(1200, secs(60)))?,
        auth: quota(s, "STOA_RATE_LIMIT_AUTH", Quota::per(20, secs(60)))?,
        login_per_account: quota(
            s,
            "STOA_RATE_LIMIT_LOGIN_PER_ACCOUNT",
            Quota::per(10, secs(15 * 60)),
        )?,
        login_account_ceiling: quota(
            s,
            "STOA_RATE_LIMIT_LOGIN_ACCOUNT_CEILING",
            Quota::per(100, secs(15 * 60)),
        )?,
        mfa_per_account: quota(s, "STOA_RATE_LIMIT_MFA", Quota::per(10, secs(15 * 60)))?,
        trusted_proxy_hops: s.read(Setting::new("STOA_TRUSTED_PROXY_HOPS", 0usize))?,
        // Binds only budgets above 16 × this per period (a lease is also at most 1/16 of
        // its budget's burst). At 64, one client's 68k cached reads a second spent a
        // lease a millisecond and waited on a Redis round trip each time (80k at 1024).
        lease_max: s.read(
            Setting::new("STOA_RATE_LIMIT_LEASE_MAX", 1024u32)
                .at_least(1)
                .at_most(4096, "leased cells unspent when a lease ends are lost"),
        )?,
    };
    Ok(rate_limits)
}

/// The listeners, limits and browser-facing settings of the public port.
fn http_config<F: Fn(&str) -> Option<String>>(
    s: &mut EnvReader<'_, F>,
    dev: bool,
) -> Result<HttpConfig, ConfigError> {
    let secs = Duration::from_secs;
    let http = HttpConfig {
        listen_addr: s.read(Setting::new(
            "STOA_LISTEN_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 8080)),
        ))?,
        // A burst of new connections beyond the queue is dropped by the kernel and the
        // clients retry their SYN after a second: tokio's default of 1024 turned the
        // first second of 10,000 connecting clients into p99 latencies over 1 s.
        listen_backlog: s.read(Setting::new("STOA_LISTEN_BACKLOG", 4096u32).at_least(1))?,
        admin_addr: s.read(Setting::new(
            "STOA_ADMIN_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 9090)),
        ))?,
        // Room for the largest valid article (131072 characters of up to 4 bytes each,
        // plus the other fields), so a request the API document allows always fits.
        body_limit_bytes: s
            .read(Setting::new("STOA_BODY_LIMIT_BYTES", 1024 * 1024usize).at_least(1024))?,
        request_timeout: s.read(Setting::new("STOA_REQUEST_TIMEOUT", secs(30)))?,
        shutdown_delay: s.read(Setting::new(
            "STOA_SHUTDOWN_DELAY",
            if dev { Duration::ZERO } else { secs(5) },
        ))?,
        shutdown_timeout: s.read(Setting::new("STOA_SHUTDOWN_TIMEOUT", secs(20)))?,
        cors_allowed_origins: s
            .read(Setting::new(
                "STOA_CORS_ALLOWED_ORIGINS",
                Origins::default(),
            ))?
            .0,
        public_origin: s.optional::<PublicOrigin>(
            "STOA_PUBLIC_URL",
            "(unset: cookie mode trusts the request's own host over https; no HSTS)",
        )?,
        hsts_max_age: s.read(Setting::new("STOA_HSTS_MAX_AGE", secs(2 * 365 * 86400)))?,
        max_concurrent_requests: s
            .read(Setting::new("STOA_MAX_CONCURRENT_REQUESTS", 4096usize).at_least(1))?,
        // As many as fit the container's memory limit beside everything else.
        max_connections: s.read(
            Setting::new(
                "STOA_MAX_CONNECTIONS",
                container::connections_within(container::memory_limit()),
            )
            .at_least(1),
        )?,
        access_log_every: s.read(Setting::new("STOA_ACCESS_LOG_EVERY", 1u64).at_least(1))?,
    };
    Ok(http)
}

/// Key sets, token lifetimes, MFA and password hashing. Longer than most: one read per
/// field of `AuthConfig`, each with its bounds beside it, and the check of the hash
/// parameters together.
fn auth_config<F: Fn(&str) -> Option<String>>(
    s: &mut EnvReader<'_, F>,
    dev: bool,
    require_keys: bool,
) -> Result<AuthConfig, ConfigError> {
    let secs = Duration::from_secs;
    let keys_dir = s.optional::<PathBuf>("STOA_JWT_KEYS_DIR", "(dev: generated at start)")?;
    if keys_dir.is_none() && !dev && require_keys {
        return Err(ConfigError::Missing {
            name: "STOA_JWT_KEYS_DIR",
            hint: " (a directory with keyset.json; create one with `stoa-api keys generate --dir DIR`)",
        });
    }
    let mfa_keys_dir =
        s.optional::<PathBuf>("STOA_MFA_KEYS_DIR", "(dev: a fixed development key)")?;
    if mfa_keys_dir.is_none() && !dev && require_keys {
        return Err(ConfigError::Missing {
            name: "STOA_MFA_KEYS_DIR",
            hint: " (a directory with mfa-keys.json; create one with `stoa-api mfa-keys generate --dir DIR`)",
        });
    }
    let access_token_ttl =
        s.read(Setting::new("STOA_ACCESS_TOKEN_TTL", secs(15 * 60)).at_least(secs(10)))?;
    let auth = AuthConfig {
        keys_dir,
        mfa_keys_dir,
        issuer: s.read(Setting::new("STOA_JWT_ISSUER", "stoa".to_owned()))?,
        audience: s.read(Setting::new("STOA_JWT_AUDIENCE", "stoa-api".to_owned()))?,
        access_token_ttl,
        refresh_token_ttl: s.read(Setting::new("STOA_REFRESH_TOKEN_TTL", secs(7 * 86400)))?,
        session_max_lifetime: s.read(
            Setting::new("STOA_SESSION_MAX_LIFETIME", secs(30 * 86400)).at_least(access_token_ttl),
        )?,
        refresh_reuse_grace: s.read(
            Setting::new("STOA_REFRESH_REUSE_GRACE", secs(10))
                .at_most(secs(60), "a replayed token is honoured that long"),
        )?,
        purge_interval: s
            .read(Setting::new("STOA_PURGE_INTERVAL", secs(3600)).at_least(secs(1)))?,
        mfa_challenge_ttl: s.read(
            Setting::new("STOA_MFA_CHALLENGE_TTL", secs(5 * 60))
                .at_least(secs(30))
                .at_most(secs(3600), "a password alone opens the challenge that long"),
        )?,
        mfa_challenge_attempts: s.read(
            Setting::new("STOA_MFA_CHALLENGE_ATTEMPTS", 5)
                .at_least(1)
                .at_most(20, "each attempt is a guess at the code"),
        )?,
        // Tokens verify until `exp` + leeway: a long leeway quietly extends every token
        // (and every revocation the mirror must keep).
        leeway: s.read(
            Setting::new("STOA_JWT_LEEWAY", secs(30))
                .at_most(MAX_JWT_LEEWAY, "it extends every token's lifetime"),
        )?,
        token_cache_entries: s.read(
            Setting::new("STOA_TOKEN_CACHE_ENTRIES", 65_536usize)
                .at_least(1)
                .at_most(16_777_216, "memory: about 200 bytes per entry"),
        )?,
        argon2_memory_kib: s.read(Setting::new(
            "STOA_ARGON2_MEMORY_KIB",
            argon2::Params::DEFAULT_M_COST,
        ))?,
        argon2_iterations: s.read(Setting::new(
            "STOA_ARGON2_ITERATIONS",
            argon2::Params::DEFAULT_T_COST,
        ))?,
        argon2_parallelism: s.read(Setting::new(
            "STOA_ARGON2_PARALLELISM",
            argon2::Params::DEFAULT_P_COST,
        ))?,
        hash_concurrency: s.read(Setting::new("STOA_HASH_CONCURRENCY", cpus()).at_least(1))?,
    };
    if let Err(e) = argon2::Params::new(
        auth.argon2_memory_kib,
        auth.argon2_iterations,
        auth.argon2_parallelism,
        None,
    ) {
        let params = format!(
            "m={} t={} p={}",
            auth.argon2_memory_kib, auth.argon2_iterations, auth.argon2_parallelism
        );
        return Err(invalid("STOA_ARGON2_MEMORY_KIB", params, e.to_string()));
    }
    Ok(auth)
}

/// The job queue's worker (`STOA_WORKER_*`, `STOA_JOB_*`).
fn worker_config<F: Fn(&str) -> Option<String>>(
    s: &mut EnvReader<'_, F>,
    dev: bool,
) -> Result<WorkerConfig, ConfigError> {
    let secs = Duration::from_secs;
    let backoff_base =
        s.read(Setting::new("STOA_JOB_BACKOFF_BASE", secs(2)).at_least(Duration::from_millis(10)))?;
    let worker = WorkerConfig {
        in_process: s.read(Setting::new("STOA_WORKER_IN_PROCESS", dev))?,
        concurrency: s.read(
            Setting::new("STOA_WORKER_CONCURRENCY", 4usize)
                .at_least(1)
                .at_most(256, "each running job holds a database connection"),
        )?,
        poll_interval: s.read(
            Setting::new("STOA_WORKER_POLL_INTERVAL", secs(1)).at_least(Duration::from_millis(10)),
        )?,
        lease: s.read(Setting::new("STOA_WORKER_LEASE", secs(30)).at_least(secs(1)))?,
        job_timeout: s.read(Setting::new("STOA_JOB_TIMEOUT", secs(300)).at_least(secs(1)))?,
        max_attempts: s.read(
            Setting::new("STOA_JOB_MAX_ATTEMPTS", 5u32)
                .at_least(1)
                .at_most(100, "a failing job is retried that many times"),
        )?,
        backoff_base,
        backoff_max: s
            .read(Setting::new("STOA_JOB_BACKOFF_MAX", secs(600)).at_least(backoff_base))?,
        retention: s.read(Setting::new("STOA_JOB_RETENTION", secs(7 * 86400)))?,
        security_event_retention: s.read(
            Setting::new("STOA_SECURITY_EVENT_RETENTION", secs(90 * 86400)).at_least(secs(3600)),
        )?,
        recount_interval: s
            .read(Setting::new("STOA_RECOUNT_INTERVAL", secs(6 * 3600)).at_least(secs(1)))?,
    };
    Ok(worker)
}

/// `url`, refused unless sqlx can connect with it (the error names the setting, never the
/// URL: it may carry a password).
fn postgres_url(name: &'static str, url: Secret) -> Result<Secret, ConfigError> {
    match url.expose().parse::<sqlx::postgres::PgConnectOptions>() {
        Ok(_) => Ok(url),
        Err(_) => Err(ConfigError::Invalid {
            name,
            value: "<redacted>".into(),
            reason: "is not a valid PostgreSQL URL".into(),
        }),
    }
}

/// `STOA_DATABASE_POOLER_URL`.
fn pooler_url<F: Fn(&str) -> Option<String>>(
    s: &mut EnvReader<'_, F>,
) -> Result<Option<Secret>, ConfigError> {
    let Some((url, _)) = s.secret_url(
        "STOA_DATABASE_POOLER_URL",
        &["postgres", "postgresql"],
        "(not set: requests connect to PostgreSQL directly)",
    )?
    else {
        return Ok(None);
    };
    postgres_url("STOA_DATABASE_POOLER_URL", url).map(Some)
}

/// `STOA_DATABASE_READ_URL` and the settings that only matter with it.
fn read_replica<F: Fn(&str) -> Option<String>>(
    s: &mut EnvReader<'_, F>,
    primary_max_connections: u32,
) -> Result<Option<ReadReplicaConfig>, ConfigError> {
    let url = s.secret_url(
        "STOA_DATABASE_READ_URL",
        &["postgres", "postgresql"],
        "(not set: every read on the primary)",
    )?;
    let max_connections =
        s.read(Setting::new("STOA_DB_READ_MAX_CONNECTIONS", primary_max_connections).at_least(1))?;
    let max_lag = s.read(
        Setting::new("STOA_DB_READ_MAX_LAG", Duration::from_secs(5))
            .at_least(Duration::from_millis(100)),
    )?;
    let lag_check_interval = s.read(
        Setting::new(
            "STOA_DB_READ_LAG_CHECK_INTERVAL",
            Duration::from_millis(100),
        )
        .at_least(Duration::from_millis(10)),
    )?;
    if lag_check_interval >= max_lag {
        return Err(invalid(
            "STOA_DB_READ_LAG_CHECK_INTERVAL",
            humantime::format_duration(lag_check_interval),
            "must be shorter than STOA_DB_READ_MAX_LAG (the replica would never look current)",
        ));
    }
    let Some((url, _)) = url else {
        return Ok(None);
    };
    Ok(Some(ReadReplicaConfig {
        url: postgres_url("STOA_DATABASE_READ_URL", url)?,
        max_connections,
        max_lag,
        lag_check_interval,
    }))
}

/// How logs are written (`STOA_LOG_*`): format, filter, and the writer's queue.
fn log_config<F: Fn(&str) -> Option<String>>(
    s: &mut EnvReader<'_, F>,
    env: &Env<F>,
    dev: bool,
) -> Result<(LogFormat, String, usize), ConfigError> {
    s.section("Logs and error tracking");
    let format = s.read(Setting::new(
        "STOA_LOG_FORMAT",
        if dev {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        },
    ))?;
    // `RUST_LOG` is the ecosystem's name for the same thing; `STOA_LOG` wins.
    let filter = s.read(Setting::new(
        "STOA_LOG",
        (env.lookup)("RUST_LOG")
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "info,sqlx=warn".into()),
    ))?;
    let queue_lines = s.read(
        Setting::new("STOA_LOG_QUEUE_LINES", 16_384usize)
            .at_least(16)
            .at_most(1_048_576, "memory: each queued line is a few hundred bytes"),
    )?;
    Ok((format, filter, queue_lines))
}

impl Config {
    pub fn from_process_env(dev: bool) -> Result<Config, ConfigError> {
        Config::from_env(&Env::process(), dev)
    }

    /// The configuration for `migrate`, which needs the database but no signing keys.
    pub fn from_process_env_for_migrate() -> Result<Config, ConfigError> {
        Config::build(&Env::process(), false, false)
    }

    /// The configuration for `seed`, whose tokens never leave the process: no signing keys.
    pub fn from_process_env_for_seed(dev: bool) -> Result<Config, ConfigError> {
        Config::build(&Env::process(), dev, false)
    }

    /// The configuration for `worker`, which signs and verifies nothing.
    pub fn from_process_env_for_worker() -> Result<Config, ConfigError> {
        Config::from_env_for_worker(&Env::process())
    }

    pub fn from_env_for_worker<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
    ) -> Result<Config, ConfigError> {
        Config::build(env, false, false)
    }

    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        dev: bool,
    ) -> Result<Config, ConfigError> {
        Config::build(env, dev, true)
    }

    fn build<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        dev: bool,
        require_keys: bool,
    ) -> Result<Config, ConfigError> {
        Config::read_all(env, dev, require_keys).map(|(config, _)| config)
    }

    /// Every setting is one `read` here: its variable, default and bounds. Checks that
    /// relate two settings follow the reads they need. Also returns every setting as
    /// declared, for the settings reference.
    fn read_all<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        dev: bool,
        require_keys: bool,
    ) -> Result<(Config, Vec<Declared>), ConfigError> {
        let mut s = EnvReader::new(&env.lookup);
        let secs = Duration::from_secs;
        s.show("mode", if dev { "dev" } else { "production" });

        s.section("Database");
        let database = database_config(&mut s, dev)?;
        s.section("Redis and caching");
        let redis = redis_target::read_target(&mut s)?;
        let redis_ca_file = s.optional::<PathBuf>("STOA_REDIS_CA_FILE", "(system roots)")?;
        let redis_timeout = s.read(Setting::new(
            "STOA_REDIS_TIMEOUT",
            Duration::from_millis(250),
        ))?;
        let cache_ttl = s.read(Setting::new("STOA_CACHE_TTL", secs(30)))?;
        let cache_local_bytes = s.read(
            Setting::new("STOA_CACHE_LOCAL_BYTES", 8u64 << 20)
                .at_most(1 << 30, "memory: the copy lives in each replica"),
        )?;
        let (sentry_dsn, sentry_environment) = error_tracking(&mut s, dev)?;
        s.section("Rate limits");
        let rate_limits = rate_limit_config(&mut s)?;
        s.section("HTTP");
        let http = http_config(&mut s, dev)?;
        s.section("Authentication");
        let auth = auth_config(&mut s, dev, require_keys)?;
        s.section("Sign-in with identity providers");
        let sign_in = providers::read(&mut s, http.public_origin.as_ref())?;
        s.section("Admin console");
        let session_idle = s.read(
            Setting::new("STOA_CONSOLE_SESSION_IDLE", secs(30 * 60))
                .at_least(secs(60))
                .at_most(
                    secs(24 * 3600),
                    "an unattended admin session stays open that long",
                ),
        )?;
        let console = ConsoleConfig {
            session_idle,
            session_lifetime: s.read(
                Setting::new("STOA_CONSOLE_SESSION_LIFETIME", secs(8 * 3600))
                    .at_least(session_idle)
                    .at_most(
                        secs(7 * 86400),
                        "an admin signs in again at least this often",
                    ),
            )?,
        };
        s.section("Background jobs");
        let worker = worker_config(&mut s, dev)?;

        let (log_format, log_filter, log_queue_lines) = log_config(&mut s, env, dev)?;
        s.section("Live reloads");
        let reload_interval = s.read(
            Setting::new("STOA_RELOAD_INTERVAL", secs(1)).at_least(Duration::from_millis(10)),
        )?;
        let (effective, declared) = s.finish();
        let config = Config {
            dev,
            database,
            sentry_dsn,
            sentry_environment,
            redis,
            redis_ca_file,
            redis_timeout,
            cache_ttl,
            cache_local_bytes,
            rate_limits,
            reload_interval,
            http,
            auth,
            sign_in,
            console,
            worker,
            log_format,
            log_filter,
            log_queue_lines,
            effective,
        };
        Ok((config, declared))
    }

    /// The effective configuration as printable key/value pairs, secrets redacted: every
    /// setting that was read, as it was resolved.
    pub fn redacted(&self) -> &BTreeMap<&'static str, String> {
        &self.effective
    }
}

/// `scheme://user:secret@host/db` → `scheme://user:<redacted>@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<redacted>".into();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{user}:<redacted>@{host}")
            } else {
                format!("{user}@{host}")
            }
        }
        None => authority.to_owned(),
    };
    // Query strings may carry passwords too (`?password=`); drop them.
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/{path}")
    }
}

/// A limit: `burst` requests at once, refilling at `burst` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub burst: u32,
    pub period: Duration,
}

impl Quota {
    pub const fn per(burst: u32, period: Duration) -> Quota {
        Quota { burst, period }
    }

    /// Parses `N/period`, e.g. `600/1m`, `10/15m`.
    pub fn parse(s: &str) -> Result<Quota, String> {
        let (n, period) = s.split_once('/').ok_or("expected N/period, e.g. 600/1m")?;
        let burst: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{n:?} is not a number"))?;
        let period = humantime::parse_duration(period.trim()).map_err(|e| e.to_string())?;
        if burst == 0 || period.is_zero() {
            return Err("both N and the period must be positive".into());
        }
        Ok(Quota { burst, period })
    }

    /// Milliseconds between two requests at the sustained rate.
    pub fn interval_ms(self) -> u64 {
        (self.period.as_millis() as u64 / u64::from(self.burst)).max(1)
    }

    /// `RateLimit-Policy` value, e.g. `600;w=60`.
    pub fn policy(self) -> String {
        format!("{};w={}", self.burst, self.period.as_secs().max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::new(move |k| map.get(k).cloned())
    }

    #[test]
    fn production_requires_database_and_keys() {
        let err = Config::from_env(&env(&[]), false).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                name: "STOA_DATABASE_URL",
                ..
            }
        ));
        let err = Config::from_env(&env(&[("STOA_DATABASE_URL", "postgres://x@h/db")]), false)
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                name: "STOA_JWT_KEYS_DIR",
                ..
            }
        ));
        let err = Config::from_env(
            &env(&[
                ("STOA_DATABASE_URL", "postgres://x@h/db"),
                ("STOA_JWT_KEYS_DIR", "/keys"),
            ]),
            false,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                name: "STOA_MFA_KEYS_DIR",
                ..
            }
        ));
    }

    #[test]
    fn a_pooler_url_is_checked_and_never_echoed() {
        let config = Config::from_env(
            &env(&[("STOA_DATABASE_POOLER_URL", "postgres://pgbouncer:6432/stoa")]),
            true,
        )
        .unwrap();
        assert_eq!(
            config.database.pooler.as_ref().map(Secret::expose),
            Some("postgres://pgbouncer:6432/stoa")
        );
        assert!(
            Config::from_env(&env(&[]), true)
                .unwrap()
                .database
                .pooler
                .is_none()
        );
        let bad = "postgres://u:hunter2@pgbouncer:notaport/stoa";
        let err = Config::from_env(&env(&[("STOA_DATABASE_POOLER_URL", bad)]), true).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("STOA_DATABASE_POOLER_URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn one_way_to_redis_is_taken_and_its_secrets_are_never_echoed() {
        let sentinels = "rediss://stoa:hunter2@s-0:26379,s-1:26379/mymaster";
        let config = Config::from_env(
            &env(&[
                ("STOA_REDIS_SENTINELS", sentinels),
                ("STOA_REDIS_SENTINEL_PASSWORD", "sentinel-hunter3"),
            ]),
            true,
        )
        .unwrap();
        match &config.redis {
            Some(RedisTarget::Sentinel(target)) => {
                assert_eq!(target.master, "mymaster");
                assert_eq!(target.nodes.addresses.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let shown = format!("{:?}", config.redacted());
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
        assert!(matches!(
            Config::from_env(
                &env(&[("STOA_REDIS_CLUSTER", "redis://a:7000,b:7001")]),
                true
            )
            .unwrap()
            .redis,
            Some(RedisTarget::Cluster(_))
        ));
        for (settings, named) in [
            (
                vec![
                    ("STOA_REDIS_URL", "redis://:hunter2@r:6379"),
                    ("STOA_REDIS_CLUSTER", "redis://:hunter2@a:7000"),
                ],
                "STOA_REDIS_URL",
            ),
            (
                vec![("STOA_REDIS_SENTINELS", "redis://:hunter2@s-0:26379")],
                "STOA_REDIS_SENTINELS",
            ),
            (
                vec![("STOA_REDIS_CLUSTER", "redis://:hunter2@a:7000/0")],
                "STOA_REDIS_CLUSTER",
            ),
            (
                vec![("STOA_REDIS_SENTINEL_PASSWORD", "hunter2")],
                "STOA_REDIS_SENTINEL_PASSWORD",
            ),
        ] {
            let err = Config::from_env(&env(&settings), true).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(named), "{settings:?}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn the_jwt_leeway_is_bounded() {
        let err = Config::from_env(&env(&[("STOA_JWT_LEEWAY", "10m")]), true).unwrap_err();
        assert!(err.to_string().contains("STOA_JWT_LEEWAY"), "{err}");
        assert!(Config::from_env(&env(&[("STOA_JWT_LEEWAY", "5m")]), true).is_ok());
    }

    #[test]
    fn dev_mode_has_working_defaults() {
        let config = Config::from_env(&env(&[]), true).unwrap();
        assert_eq!(config.database.url.expose(), DEV_DATABASE_URL);
        assert_eq!(config.http.listen_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.auth.access_token_ttl, Duration::from_secs(900));
        assert_eq!(config.log_format, LogFormat::Pretty);
    }

    #[test]
    fn invalid_values_name_the_variable_and_never_echo_secrets() {
        let err = Config::from_env(
            &env(&[("STOA_DATABASE_URL", "mysql://u:hunter2@h/db")]),
            true,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("STOA_DATABASE_URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");

        let err = Config::from_env(&env(&[("STOA_ACCESS_TOKEN_TTL", "soon")]), true).unwrap_err();
        assert!(err.to_string().contains("STOA_ACCESS_TOKEN_TTL"));
    }

    #[test]
    fn secrets_can_come_from_files_but_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url");
        std::fs::write(&path, "postgres://a:b@h/db\n").unwrap();
        let p = path.to_str().unwrap();
        let config = Config::from_env(&env(&[("STOA_DATABASE_URL_FILE", p)]), true).unwrap();
        assert_eq!(config.database.url.expose(), "postgres://a:b@h/db");
        assert!(matches!(
            config.database.url_source,
            DatabaseUrlSource::File(_)
        ));

        let err = Config::from_env(
            &env(&[
                ("STOA_DATABASE_URL_FILE", p),
                ("STOA_DATABASE_URL", "postgres://h/db"),
            ]),
            true,
        )
        .unwrap_err();
        assert_eq!(
            err,
            ConfigError::Ambiguous {
                name: "STOA_DATABASE_URL"
            }
        );
    }

    #[test]
    fn cors_origins_are_validated() {
        let config = Config::from_env(
            &env(&[(
                "STOA_CORS_ALLOWED_ORIGINS",
                "https://app.example.com/, http://localhost:3000",
            )]),
            true,
        )
        .unwrap();
        assert_eq!(
            config.http.cors_allowed_origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
        assert!(
            Config::from_env(&env(&[("STOA_CORS_ALLOWED_ORIGINS", "example.com")]), true).is_err()
        );
    }

    #[test]
    fn bounds_are_checked_where_the_setting_is_read() {
        for (name, value) in [
            ("STOA_BODY_LIMIT_BYTES", "100"),
            ("STOA_ACCESS_TOKEN_TTL", "5s"),
            ("STOA_REFRESH_REUSE_GRACE", "2m"),
            ("STOA_DB_MAX_CONNECTIONS", "0"),
            ("STOA_SESSION_MAX_LIFETIME", "1m"),
        ] {
            let err = Config::from_env(&env(&[(name, value)]), true).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { name: n, .. } if n == name),
                "{name}={value}: {err}"
            );
        }
    }

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db?password=x"),
            "postgres://u:<redacted>@h:5432/db"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        let config = Config::from_env(
            &env(&[("STOA_DATABASE_URL", "postgres://u:s3cret@h/db")]),
            true,
        )
        .unwrap();
        let printed = format!("{:?} {:?}", config, config.redacted());
        assert!(!printed.contains("s3cret"), "{printed}");
    }
}
