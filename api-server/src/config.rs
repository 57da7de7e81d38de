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
}

/// The largest clock skew tolerated in token validation.
pub const MAX_JWT_LEEWAY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Directory holding `keyset.json` (see `keys.rs`); `None` only in `--dev`.
    pub keys_dir: Option<PathBuf>,
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
    /// Allowed clock skew when validating `exp`/`iat`.
    pub leeway: Duration,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// How many password hashes may run at once (each holds `argon2_memory_kib`).
    pub hash_concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    /// After SIGTERM, how long `/readyz` reports false before the listener stops accepting.
    pub shutdown_delay: Duration,
    /// Upper bound on draining in-flight requests after the delay.
    pub shutdown_timeout: Duration,
    /// Origins allowed to call the API from a browser; empty means no CORS headers.
    pub cors_allowed_origins: Vec<String>,
    pub max_concurrent_requests: usize,
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
    /// Login attempts per account (keyed by a hash of the email, existing or not).
    pub login_per_account: Quota,
    /// How many reverse proxies in front of the server append to `X-Forwarded-For`;
    /// 0 means use the peer address.
    pub trusted_proxy_hops: usize,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub dev: bool,
    pub database: DatabaseConfig,
    pub redis_url: Option<Secret>,
    /// Per-operation Redis deadline; past it, Redis counts as down.
    pub redis_timeout: Duration,
    /// Lifetime of cached anonymous reads; 0 disables the cache.
    pub cache_ttl: Duration,
    pub rate_limits: RateLimitConfig,
    /// How often mounted files (key set, database URL) are checked for changes.
    pub reload_interval: Duration,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub log_format: LogFormat,
    pub log_filter: String,
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

    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    fn parse<T>(
        &self,
        name: &'static str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => parse(value.trim()).map_err(|reason| ConfigError::Invalid {
                name,
                value,
                reason,
            }),
        }
    }

    fn duration(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        self.parse(name, default, |v| {
            humantime::parse_duration(v).map_err(|e| format!("{e} (examples: 15m, 7d, 500ms)"))
        })
    }

    fn number<T: std::str::FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.parse(name, default, |v| v.parse::<T>().map_err(|e| e.to_string()))
    }

    /// A secret given either directly or as `<NAME>_FILE`; returns the value and, for the
    /// file form, the path (so it can be watched).
    fn secret(&self, name: &'static str) -> Result<Option<(Secret, Option<PathBuf>)>, ConfigError> {
        let file_var = format!("{name}_FILE");
        match (self.get(name), self.get(&file_var)) {
            (Some(_), Some(_)) => Err(ConfigError::Ambiguous { name }),
            (Some(value), None) => Ok(Some((Secret::new(value.trim()), None))),
            (None, Some(path)) => {
                let value =
                    read_secret_file(&path).map_err(|reason| ConfigError::UnreadableFile {
                        name,
                        path: path.clone(),
                        reason,
                    })?;
                Ok(Some((value, Some(PathBuf::from(path)))))
            }
            (None, None) => Ok(None),
        }
    }
}

/// Reads a mounted secret file; surrounding whitespace (a trailing newline) is dropped.
pub fn read_secret_file(path: &str) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("file is empty".into());
    }
    Ok(Secret::new(trimmed))
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn socket_addr(v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|e| format!("{e} (expected host:port, e.g. 0.0.0.0:8080)"))
}

fn validate_url(name: &'static str, secret: &Secret, schemes: &[&str]) -> Result<(), ConfigError> {
    let ok = schemes
        .iter()
        .any(|scheme| secret.expose().starts_with(&format!("{scheme}://")));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            name,
            // Never echo a URL: it may carry a password.
            value: "<redacted>".into(),
            reason: format!("must start with {}", schemes.join(":// or ") + "://"),
        })
    }
}

impl Config {
    pub fn from_process_env(dev: bool) -> Result<Config, ConfigError> {
        Config::from_env(&Env::process(), dev)
    }

    /// The configuration for `migrate`, which needs the database but no signing keys.
    pub fn from_process_env_for_migrate() -> Result<Config, ConfigError> {
        Config::build(&Env::process(), false, false)
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
        let (url, url_file) = match env.secret("STOA_DATABASE_URL")? {
            Some(found) => found,
            None if dev => (Secret::new(DEV_DATABASE_URL), None),
            None => {
                return Err(ConfigError::Missing {
                    name: "STOA_DATABASE_URL",
                    hint: " (or STOA_DATABASE_URL_FILE), e.g. postgres://user:pass@host:5432/stoa",
                });
            }
        };
        validate_url("STOA_DATABASE_URL", &url, &["postgres", "postgresql"])?;
        let url_source = match url_file {
            Some(path) => DatabaseUrlSource::File(path),
            None => DatabaseUrlSource::Value(url.clone()),
        };
        // Small pools win on small machines: more backends than cores only adds context
        // switches (measured: 4 connections beat 16 by ~10% on 2 cores).
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let max_connections = env.number("STOA_DB_MAX_CONNECTIONS", (2 * cpus as u32).max(4))?;
        let min_connections = env.number("STOA_DB_MIN_CONNECTIONS", 1u32)?;
        if max_connections == 0 || min_connections > max_connections {
            return Err(ConfigError::Invalid {
                name: "STOA_DB_MIN_CONNECTIONS",
                value: min_connections.to_string(),
                reason: format!(
                    "must be ≤ STOA_DB_MAX_CONNECTIONS ({max_connections}), which must be ≥ 1"
                ),
            });
        }
        let database = DatabaseConfig {
            url,
            url_source,
            max_connections,
            min_connections,
            acquire_timeout: env.duration("STOA_DB_ACQUIRE_TIMEOUT", Duration::from_secs(5))?,
            statement_timeout: env
                .duration("STOA_DB_STATEMENT_TIMEOUT", Duration::from_secs(10))?,
            drain_grace: env.duration("STOA_DB_DRAIN_GRACE", Duration::from_secs(5))?,
        };

        let redis_url = env.secret("STOA_REDIS_URL")?.map(|(secret, _)| secret);
        if let Some(redis) = &redis_url {
            validate_url("STOA_REDIS_URL", redis, &["redis", "rediss"])?;
        }

        let quota = |name: &'static str, default: &str| {
            env.parse(
                name,
                Quota::parse(default).unwrap_or(Quota {
                    burst: 1,
                    period: Duration::from_secs(1),
                }),
                Quota::parse,
            )
        };
        let rate_limits = RateLimitConfig {
            enabled: env.parse("STOA_RATE_LIMIT_ENABLED", true, parse_bool)?,
            per_ip: quota("STOA_RATE_LIMIT_PER_IP", "1200/1m")?,
            per_user: quota("STOA_RATE_LIMIT_PER_USER", "1200/1m")?,
            auth: quota("STOA_RATE_LIMIT_AUTH", "20/1m")?,
            login_per_account: quota("STOA_RATE_LIMIT_LOGIN_PER_ACCOUNT", "10/15m")?,
            trusted_proxy_hops: env.number("STOA_TRUSTED_PROXY_HOPS", 0usize)?,
        };

        let http = HttpConfig {
            listen_addr: env.parse(
                "STOA_LISTEN_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
                socket_addr,
            )?,
            admin_addr: env.parse(
                "STOA_ADMIN_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 9090)),
                socket_addr,
            )?,
            // Room for the largest valid article (131072 characters of up to 4 bytes each,
            // plus the other fields), so a request the API document allows always fits.
            body_limit_bytes: env.number("STOA_BODY_LIMIT_BYTES", 1024 * 1024usize)?,
            request_timeout: env.duration("STOA_REQUEST_TIMEOUT", Duration::from_secs(30))?,
            shutdown_delay: env.duration(
                "STOA_SHUTDOWN_DELAY",
                if dev {
                    Duration::ZERO
                } else {
                    Duration::from_secs(5)
                },
            )?,
            shutdown_timeout: env.duration("STOA_SHUTDOWN_TIMEOUT", Duration::from_secs(20))?,
            cors_allowed_origins: env
                .get("STOA_CORS_ALLOWED_ORIGINS")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().trim_end_matches('/').to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            max_concurrent_requests: env.number("STOA_MAX_CONCURRENT_REQUESTS", 4096usize)?,
        };
        for origin in &http.cors_allowed_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    name: "STOA_CORS_ALLOWED_ORIGINS",
                    value: origin.clone(),
                    reason: "each origin must be `*` or start with http:// or https://".into(),
                });
            }
        }
        if http.body_limit_bytes < 1024 {
            return Err(ConfigError::Invalid {
                name: "STOA_BODY_LIMIT_BYTES",
                value: http.body_limit_bytes.to_string(),
                reason: "must be at least 1024".into(),
            });
        }

        let keys_dir = env.get("STOA_JWT_KEYS_DIR").map(PathBuf::from);
        if keys_dir.is_none() && !dev && require_keys {
            return Err(ConfigError::Missing {
                name: "STOA_JWT_KEYS_DIR",
                hint: " (a directory with keyset.json; create one with `stoa-api keys generate --dir DIR`)",
            });
        }
        let auth = AuthConfig {
            keys_dir,
            issuer: env.get("STOA_JWT_ISSUER").unwrap_or_else(|| "stoa".into()),
            audience: env
                .get("STOA_JWT_AUDIENCE")
                .unwrap_or_else(|| "stoa-api".into()),
            access_token_ttl: env
                .duration("STOA_ACCESS_TOKEN_TTL", Duration::from_secs(15 * 60))?,
            refresh_token_ttl: env
                .duration("STOA_REFRESH_TOKEN_TTL", Duration::from_secs(7 * 24 * 3600))?,
            session_max_lifetime: env.duration(
                "STOA_SESSION_MAX_LIFETIME",
                Duration::from_secs(30 * 24 * 3600),
            )?,
            refresh_reuse_grace: env
                .duration("STOA_REFRESH_REUSE_GRACE", Duration::from_secs(10))?,
            purge_interval: env.duration("STOA_PURGE_INTERVAL", Duration::from_secs(3600))?,
            leeway: env.duration("STOA_JWT_LEEWAY", Duration::from_secs(30))?,
            argon2_memory_kib: env
                .number("STOA_ARGON2_MEMORY_KIB", argon2::Params::DEFAULT_M_COST)?,
            argon2_iterations: env
                .number("STOA_ARGON2_ITERATIONS", argon2::Params::DEFAULT_T_COST)?,
            argon2_parallelism: env
                .number("STOA_ARGON2_PARALLELISM", argon2::Params::DEFAULT_P_COST)?,
            hash_concurrency: env.number("STOA_HASH_CONCURRENCY", cpus)?.max(1),
        };
        // Tokens verify until `exp` + leeway: a long leeway quietly extends every token
        // (and every revocation the mirror must keep).
        if auth.refresh_reuse_grace > Duration::from_secs(60) {
            return Err(ConfigError::Invalid {
                name: "STOA_REFRESH_REUSE_GRACE",
                value: humantime::format_duration(auth.refresh_reuse_grace).to_string(),
                reason: "must be at most 1m (a replayed token is honoured that long)".into(),
            });
        }
        if auth.session_max_lifetime < auth.access_token_ttl {
            return Err(ConfigError::Invalid {
                name: "STOA_SESSION_MAX_LIFETIME",
                value: humantime::format_duration(auth.session_max_lifetime).to_string(),
                reason: "must be at least STOA_ACCESS_TOKEN_TTL".into(),
            });
        }
        if auth.purge_interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                name: "STOA_PURGE_INTERVAL",
                value: humantime::format_duration(auth.purge_interval).to_string(),
                reason: "must be at least 1s".into(),
            });
        }
        if auth.leeway > MAX_JWT_LEEWAY {
            return Err(ConfigError::Invalid {
                name: "STOA_JWT_LEEWAY",
                value: humantime::format_duration(auth.leeway).to_string(),
                reason: "must be at most 5m (it extends every token's lifetime)".into(),
            });
        }
        if auth.access_token_ttl < Duration::from_secs(10) {
            return Err(ConfigError::Invalid {
                name: "STOA_ACCESS_TOKEN_TTL",
                value: humantime::format_duration(auth.access_token_ttl).to_string(),
                reason: "must be at least 10s".into(),
            });
        }
        if let Err(e) = argon2::Params::new(
            auth.argon2_memory_kib,
            auth.argon2_iterations,
            auth.argon2_parallelism,
            None,
        ) {
            return Err(ConfigError::Invalid {
                name: "STOA_ARGON2_MEMORY_KIB",
                value: format!(
                    "m={} t={} p={}",
                    auth.argon2_memory_kib, auth.argon2_iterations, auth.argon2_parallelism
                ),
                reason: e.to_string(),
            });
        }

        let log_format = env.parse(
            "STOA_LOG_FORMAT",
            if dev {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            },
            |v| match v {
                "json" => Ok(LogFormat::Json),
                "pretty" | "text" => Ok(LogFormat::Pretty),
                _ => Err("expected json or pretty".into()),
            },
        )?;
        let log_filter = env
            .get("STOA_LOG")
            .or_else(|| env.get("RUST_LOG"))
            .unwrap_or_else(|| "info,sqlx=warn".into());

        Ok(Config {
            dev,
            database,
            redis_url,
            redis_timeout: env.duration("STOA_REDIS_TIMEOUT", Duration::from_millis(250))?,
            cache_ttl: env.duration("STOA_CACHE_TTL", Duration::from_secs(30))?,
            rate_limits,
            reload_interval: env.duration("STOA_RELOAD_INTERVAL", Duration::from_secs(1))?,
            http,
            auth,
            log_format,
            log_filter,
        })
    }

    /// The effective configuration as printable key/value pairs, secrets redacted.
    pub fn redacted(&self) -> BTreeMap<&'static str, String> {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let mut out = BTreeMap::new();
        out.insert(
            "mode",
            if self.dev { "dev" } else { "production" }.to_owned(),
        );
        out.insert(
            "STOA_DATABASE_URL",
            match &self.database.url_source {
                DatabaseUrlSource::Value(_) => redact_url(self.database.url.expose()),
                DatabaseUrlSource::File(p) => format!(
                    "{} (from file {})",
                    redact_url(self.database.url.expose()),
                    p.display()
                ),
            },
        );
        out.insert(
            "STOA_DB_MAX_CONNECTIONS",
            self.database.max_connections.to_string(),
        );
        out.insert(
            "STOA_DB_MIN_CONNECTIONS",
            self.database.min_connections.to_string(),
        );
        out.insert("STOA_DB_ACQUIRE_TIMEOUT", d(self.database.acquire_timeout));
        out.insert(
            "STOA_DB_STATEMENT_TIMEOUT",
            d(self.database.statement_timeout),
        );
        out.insert(
            "STOA_REDIS_URL",
            self.redis_url.as_ref().map_or_else(
                || "(not set: in-process fallbacks)".into(),
                |u| redact_url(u.expose()),
            ),
        );
        out.insert("STOA_DB_DRAIN_GRACE", d(self.database.drain_grace));
        out.insert("STOA_REDIS_TIMEOUT", d(self.redis_timeout));
        out.insert("STOA_CACHE_TTL", d(self.cache_ttl));
        out.insert("STOA_RELOAD_INTERVAL", d(self.reload_interval));
        let q = |q: Quota| format!("{}/{}", q.burst, humantime::format_duration(q.period));
        out.insert(
            "STOA_RATE_LIMIT_ENABLED",
            self.rate_limits.enabled.to_string(),
        );
        out.insert("STOA_RATE_LIMIT_PER_IP", q(self.rate_limits.per_ip));
        out.insert("STOA_RATE_LIMIT_PER_USER", q(self.rate_limits.per_user));
        out.insert("STOA_RATE_LIMIT_AUTH", q(self.rate_limits.auth));
        out.insert(
            "STOA_RATE_LIMIT_LOGIN_PER_ACCOUNT",
            q(self.rate_limits.login_per_account),
        );
        out.insert(
            "STOA_TRUSTED_PROXY_HOPS",
            self.rate_limits.trusted_proxy_hops.to_string(),
        );
        out.insert("STOA_LISTEN_ADDR", self.http.listen_addr.to_string());
        out.insert("STOA_ADMIN_ADDR", self.http.admin_addr.to_string());
        out.insert(
            "STOA_BODY_LIMIT_BYTES",
            self.http.body_limit_bytes.to_string(),
        );
        out.insert("STOA_REQUEST_TIMEOUT", d(self.http.request_timeout));
        out.insert("STOA_SHUTDOWN_DELAY", d(self.http.shutdown_delay));
        out.insert("STOA_SHUTDOWN_TIMEOUT", d(self.http.shutdown_timeout));
        out.insert(
            "STOA_CORS_ALLOWED_ORIGINS",
            self.http.cors_allowed_origins.join(","),
        );
        out.insert(
            "STOA_MAX_CONCURRENT_REQUESTS",
            self.http.max_concurrent_requests.to_string(),
        );
        out.insert(
            "STOA_JWT_KEYS_DIR",
            self.auth.keys_dir.as_ref().map_or_else(
                || "(dev: generated at start)".into(),
                |p| p.display().to_string(),
            ),
        );
        out.insert("STOA_JWT_ISSUER", self.auth.issuer.clone());
        out.insert("STOA_JWT_AUDIENCE", self.auth.audience.clone());
        out.insert("STOA_JWT_LEEWAY", d(self.auth.leeway));
        out.insert("STOA_ACCESS_TOKEN_TTL", d(self.auth.access_token_ttl));
        out.insert("STOA_REFRESH_TOKEN_TTL", d(self.auth.refresh_token_ttl));
        out.insert(
            "STOA_SESSION_MAX_LIFETIME",
            d(self.auth.session_max_lifetime),
        );
        out.insert("STOA_REFRESH_REUSE_GRACE", d(self.auth.refresh_reuse_grace));
        out.insert("STOA_PURGE_INTERVAL", d(self.auth.purge_interval));
        out.insert(
            "STOA_ARGON2_MEMORY_KIB",
            self.auth.argon2_memory_kib.to_string(),
        );
        out.insert(
            "STOA_ARGON2_ITERATIONS",
            self.auth.argon2_iterations.to_string(),
        );
        out.insert(
            "STOA_ARGON2_PARALLELISM",
            self.auth.argon2_parallelism.to_string(),
        );
        out.insert(
            "STOA_HASH_CONCURRENCY",
            self.auth.hash_concurrency.to_string(),
        );
        out.insert(
            "STOA_LOG_FORMAT",
            match self.log_format {
                LogFormat::Json => "json",
                LogFormat::Pretty => "pretty",
            }
            .into(),
        );
        out.insert("STOA_LOG", self.log_filter.clone());
        out
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
