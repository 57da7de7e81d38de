//! The settings reference (`stoa-api reference settings`, `docs/reference/settings.md`):
//! each setting's variable, default and bounds come from its declaration in `Config::build`;
//! what it means comes from the table below. Tests hold the two together, so a new setting
//! without a meaning, or a meaning left behind by a removed setting, fails the build.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Config, ConfigError, Declared, Env};

/// What a setting is for, in the reference's words.
struct Meaning {
    name: &'static str,
    /// Replaces the declared default where that depends on the machine it was read on
    /// (CPU count, memory limit) or on another setting.
    default: Option<&'static str>,
    meaning: &'static str,
}

const MEANINGS: &[Meaning] = &[
    Meaning {
        name: "STOA_DATABASE_URL",
        default: Some(r#"required (`--dev`: `postgres://postgres@127.0.0.1:5432/stoa_dev`)"#),
        meaning: r#"PostgreSQL URL; TLS with `?sslmode=verify-full&sslrootcert=/path/ca.pem` (see [TLS](../running/tls-and-replicas.md#tls-to-postgresql-and-redis))"#,
    },
    Meaning {
        name: "STOA_DB_MAX_CONNECTIONS",
        default: Some(r#"4 × CPUs, at least 4"#),
        meaning: r#"pool size (measured: [Benchmarks](../benchmarks.md))"#,
    },
    Meaning {
        name: "STOA_DB_MIN_CONNECTIONS",
        default: None,
        meaning: r#"connections kept open"#,
    },
    Meaning {
        name: "STOA_DB_ACQUIRE_TIMEOUT",
        default: None,
        meaning: r#"wait for a pooled connection before answering 503"#,
    },
    Meaning {
        name: "STOA_DB_STATEMENT_TIMEOUT",
        default: None,
        meaning: r#"PostgreSQL `statement_timeout`"#,
    },
    Meaning {
        name: "STOA_DATABASE_POOLER_URL",
        default: None,
        meaning: r#"a transaction-mode pooler in front of PostgreSQL, such as PgBouncer (see [Scaling the data tier](../running/data-tier.md)): requests go through it, each statement unnamed inside a transaction; `STOA_DATABASE_URL` stays the direct connection for migrations and `LISTEN`. Without a user name in it, it is logged into with `STOA_DATABASE_URL`'s credentials and follows their rotation. The read replica's pool is run the same way"#,
    },
    Meaning {
        name: "STOA_DATABASE_READ_URL",
        default: None,
        meaning: r#"a streaming replica for content reads (see [Read replicas](../running/tls-and-replicas.md#read-replicas)); without a user name in it, it is logged into with `STOA_DATABASE_URL`'s credentials and follows their rotation"#,
    },
    Meaning {
        name: "STOA_DB_READ_MAX_CONNECTIONS",
        default: Some(r#"`STOA_DB_MAX_CONNECTIONS`"#),
        meaning: r#"the replica's pool size"#,
    },
    Meaning {
        name: "STOA_DB_READ_MAX_LAG",
        default: None,
        meaning: r#"a replica that may be further behind than this serves nothing until it catches up"#,
    },
    Meaning {
        name: "STOA_DB_READ_LAG_CHECK_INTERVAL",
        default: None,
        meaning: r#"how often the replica's replay position is compared with the primary's (two tiny queries)"#,
    },
    Meaning {
        name: "STOA_REDIS_URL",
        default: None,
        meaning: r#"Redis (optional): cache, shared rate limits, revocation mirror; `rediss://user:password@host:port` for TLS and an ACL user"#,
    },
    Meaning {
        name: "STOA_REDIS_SENTINELS",
        default: None,
        meaning: r#"Redis behind Sentinel, instead of `STOA_REDIS_URL`: `redis[s]://[user:password@]sentinel-0:26379,sentinel-1:26379,…/<master name>`; the credentials and TLS are the data nodes', the primary is followed across failovers (see [Scaling the data tier](../running/data-tier.md))"#,
    },
    Meaning {
        name: "STOA_REDIS_SENTINEL_PASSWORD",
        default: None,
        meaning: r#"the sentinels' own password (`requirepass` in sentinel.conf), when they ask for one"#,
    },
    Meaning {
        name: "STOA_REDIS_CLUSTER",
        default: None,
        meaning: r#"a Redis Cluster, instead of `STOA_REDIS_URL`: `redis[s]://[user:password@]node-0:6379,node-1:6379,…`, some of its nodes (the rest are discovered)"#,
    },
    Meaning {
        name: "STOA_REDIS_CA_FILE",
        default: None,
        meaning: r#"PEM of the CA that signed Redis's certificate, for `rediss://` to a private CA"#,
    },
    Meaning {
        name: "STOA_REDIS_TIMEOUT",
        default: None,
        meaning: r#"per-operation Redis deadline; past it Redis counts as down"#,
    },
    Meaning {
        name: "STOA_CACHE_TTL",
        default: None,
        meaning: r#"lifetime of cached anonymous reads (`0s` disables the cache)"#,
    },
    Meaning {
        name: "STOA_CACHE_LOCAL_BYTES",
        default: None,
        meaning: r#"each replica's own copy of hot cache entries in front of Redis, used while it follows the invalidation channel (`0` disables it)"#,
    },
    Meaning {
        name: "STOA_RATE_LIMIT_ENABLED",
        default: None,
        meaning: r#"master switch for all rate limits"#,
    },
    Meaning {
        name: "STOA_RATE_LIMIT_PER_IP",
        default: None,
        meaning: r#"every request, per client address (`N/period`)"#,
    },
    Meaning {
        name: "STOA_RATE_LIMIT_PER_USER",
        default: None,
        meaning: r#"every authenticated request, per user"#,
    },
    Meaning {
        name: "STOA_RATE_LIMIT_AUTH",
        default: None,
        meaning: r#"login, register and refresh, per client address"#,
    },
    Meaning {
        name: "STOA_RATE_LIMIT_LOGIN_PER_ACCOUNT",
        default: None,
        meaning: r#"login attempts (and current-password checks) per email (existing or not) and client address: a guesser elsewhere cannot lock the owner out"#,
    },
    Meaning {
        name: "STOA_RATE_LIMIT_LOGIN_ACCOUNT_CEILING",
        default: None,
        meaning: r#"login attempts per email from all addresses together (bounds guessing spread over many addresses; a client past its own budget does not spend it)"#,
    },
    Meaning {
        name: "STOA_RATE_LIMIT_MFA",
        default: None,
        meaning: r#"second-factor codes per account (sign-in, confirmation, turning MFA off)"#,
    },
    Meaning {
        name: "STOA_RATE_LIMIT_LEASE_MAX",
        default: None,
        meaning: r#"the most cells of a shared budget a replica takes from Redis at once for a busy key (never more than 1/16 of the budget's burst, so it only binds budgets above 16,384 per period; `1`: every request asks Redis)"#,
    },
    Meaning {
        name: "STOA_TRUSTED_PROXY_HOPS",
        default: None,
        meaning: r#"proxies in front that append to `X-Forwarded-For` (the operator sets 1 behind an Ingress)"#,
    },
    Meaning {
        name: "STOA_RELOAD_INTERVAL",
        default: None,
        meaning: r#"how often the key sets and database URL files are checked for changes"#,
    },
    Meaning {
        name: "STOA_DB_APPLICATION_NAME",
        default: None,
        meaning: r#"session name in `pg_stat_activity` (the operator sets the pod name, so a credential rotation can name the pods still on the old role)"#,
    },
    Meaning {
        name: "STOA_DB_DRAIN_GRACE",
        default: None,
        meaning: r#"after a credential change, how long the old pool serves requests that already hold it"#,
    },
    Meaning {
        name: "STOA_LISTEN_ADDR",
        default: None,
        meaning: r#"API listener (the operator sets `0.0.0.0:8080`)"#,
    },
    Meaning {
        name: "STOA_ADMIN_ADDR",
        default: None,
        meaning: r#"`/metrics` listener"#,
    },
    Meaning {
        name: "STOA_JWT_KEYS_DIR",
        default: Some(r#"required (`--dev`: generated at start)"#),
        meaning: r#"directory with `keyset.json`"#,
    },
    Meaning {
        name: "STOA_MFA_KEYS_DIR",
        default: Some(r#"required (`--dev`: a fixed development key)"#),
        meaning: r#"directory with `mfa-keys.json`, the keys that encrypt second-factor secrets ([MFA keys](../running/configuration.md#mfa-keys))"#,
    },
    Meaning {
        name: "STOA_JWT_ISSUER",
        default: None,
        meaning: r#"the `iss` claim of every token, validated"#,
    },
    Meaning {
        name: "STOA_JWT_AUDIENCE",
        default: None,
        meaning: r#"the `aud` claim of every token, validated"#,
    },
    Meaning {
        name: "STOA_ACCESS_TOKEN_TTL",
        default: None,
        meaning: r#"access token lifetime"#,
    },
    Meaning {
        name: "STOA_REFRESH_TOKEN_TTL",
        default: None,
        meaning: r#"refresh token lifetime"#,
    },
    Meaning {
        name: "STOA_SESSION_MAX_LIFETIME",
        default: None,
        meaning: r#"a session ends this long after sign-in, however often it is refreshed"#,
    },
    Meaning {
        name: "STOA_MFA_CHALLENGE_TTL",
        default: None,
        meaning: r#"how long a sign-in that passed the password waits for its second factor"#,
    },
    Meaning {
        name: "STOA_MFA_CHALLENGE_ATTEMPTS",
        default: None,
        meaning: r#"codes tried against one sign-in challenge before it is void"#,
    },
    Meaning {
        name: "STOA_AUTH_PROVIDERS",
        default: None,
        meaning: r#"identity providers for sign-in, as a JSON array: each `{"name", "type": "google" | "microsoft" | "github" | "oidc", "clientId", "clientSecretFile"}`, with `issuer` for `oidc`, `tenant` for `microsoft` (default `common`), optional `displayName`, `scopes`, `enabled` (see [Sign-in with identity providers](../running/identity-providers.md)). The client secret is read from its file at each sign-in, so a rotated Secret is used at once"#,
    },
    Meaning {
        name: "STOA_AUTH_RETURN_TO",
        default: Some(r#"none (required with providers)"#),
        meaning: r#"comma-separated front-end addresses a provider sign-in may return to, compared exactly (`returnTo`); the first is the default"#,
    },
    Meaning {
        name: "STOA_AUTH_FLOW_TTL",
        default: None,
        meaning: r#"how long a browser has to come back from the provider (the flow's state, nonce and PKCE verifier live that long)"#,
    },
    Meaning {
        name: "STOA_AUTH_HANDOFF_TTL",
        default: None,
        meaning: r#"how long the one-time `stoa_code` a sign-in returns with may be exchanged"#,
    },
    Meaning {
        name: "STOA_AUTH_RECENT_SIGN_IN",
        default: None,
        meaning: r#"an account without a password may set one, change its email or manage MFA only from a session started by a provider sign-in this recent"#,
    },
    Meaning {
        name: "STOA_AUTH_PROVIDER_TIMEOUT",
        default: None,
        meaning: r#"each call to a provider (discovery, keys, token, user info)"#,
    },
    Meaning {
        name: "STOA_AUTH_PROVIDER_METADATA_TTL",
        default: None,
        meaning: r#"how long a provider's discovery document and keys are reused; an ID token signed with a key not among them fetches them again at once"#,
    },
    Meaning {
        name: "STOA_SECURITY_EVENT_RETENTION",
        default: None,
        meaning: r#"how long security events are kept for the admin console (the `purge_expired` job deletes older ones; `stoa_security_events_total` counts them regardless)"#,
    },
    Meaning {
        name: "STOA_CONSOLE_SESSION_IDLE",
        default: None,
        meaning: r#"an admin console session unused this long ends (the admin signs in again)"#,
    },
    Meaning {
        name: "STOA_CONSOLE_SESSION_LIFETIME",
        default: None,
        meaning: r#"an admin console session ends this long after sign-in, however busy"#,
    },
    Meaning {
        name: "STOA_REFRESH_REUSE_GRACE",
        default: None,
        meaning: r#"a refresh token spent this recently, whose successor is unused, yields that same successor (two tabs refreshing at once); `0s` turns it off"#,
    },
    Meaning {
        name: "STOA_PURGE_INTERVAL",
        default: None,
        meaning: r#"schedule of the `purge_expired` job: expired refresh tokens, revocations, sign-in challenges and finished jobs past `STOA_JOB_RETENTION` are deleted"#,
    },
    Meaning {
        name: "STOA_RECOUNT_INTERVAL",
        default: None,
        meaning: r#"schedule of the `recount_counters` job, which checks favorites counts, tag counts, per-author article counts, the article total and the tag lists' entries (`article_tags`) against what they count and repairs drift"#,
    },
    Meaning {
        name: "STOA_WORKER_IN_PROCESS",
        default: None,
        meaning: r#"`serve` also runs a job worker (development, or a one-process deployment); on Kubernetes the worker is its own Deployment"#,
    },
    Meaning {
        name: "STOA_WORKER_CONCURRENCY",
        default: None,
        meaning: r#"jobs one worker runs at once (each holds a database connection while it runs)"#,
    },
    Meaning {
        name: "STOA_WORKER_POLL_INTERVAL",
        default: None,
        meaning: r#"how often an idle worker looks for due jobs and ticks the schedules (a new job also wakes it at once through `LISTEN`)"#,
    },
    Meaning {
        name: "STOA_WORKER_LEASE",
        default: None,
        meaning: r#"a job whose worker vanished (killed, node lost) runs again this long after it was claimed"#,
    },
    Meaning {
        name: "STOA_JOB_TIMEOUT",
        default: None,
        meaning: r#"one job attempt's deadline (its transaction's `statement_timeout` too)"#,
    },
    Meaning {
        name: "STOA_JOB_MAX_ATTEMPTS",
        default: None,
        meaning: r#"attempts before a job is dead (kept; `stoa-api jobs list --dead`, `stoa-api jobs retry ID`)"#,
    },
    Meaning {
        name: "STOA_JOB_BACKOFF_BASE",
        default: None,
        meaning: r#"wait before a job's second attempt, doubled for each later one up to `STOA_JOB_BACKOFF_MAX` (the second half of each wait drawn at random)"#,
    },
    Meaning {
        name: "STOA_JOB_BACKOFF_MAX",
        default: None,
        meaning: r#"the longest wait between two attempts of a job"#,
    },
    Meaning {
        name: "STOA_JOB_RETENTION",
        default: None,
        meaning: r#"how long finished jobs are kept (dead ones stay until retried or deleted)"#,
    },
    Meaning {
        name: "STOA_JWT_LEEWAY",
        default: None,
        meaning: r#"allowed clock skew"#,
    },
    Meaning {
        name: "STOA_TOKEN_CACHE_ENTRIES",
        default: None,
        meaning: r#"access tokens remembered as verified (by SHA-256 digest), so each is signature-checked once; expiry is checked on every use, the cache is emptied when the key set changes, revocation is checked on every request"#,
    },
    Meaning {
        name: "STOA_ARGON2_MEMORY_KIB",
        default: None,
        meaning: r#"argon2id memory cost of a password hash, in KiB (OWASP's recommendation)"#,
    },
    Meaning {
        name: "STOA_ARGON2_ITERATIONS",
        default: None,
        meaning: r#"argon2id iterations"#,
    },
    Meaning {
        name: "STOA_ARGON2_PARALLELISM",
        default: None,
        meaning: r#"argon2id lanes"#,
    },
    Meaning {
        name: "STOA_HASH_CONCURRENCY",
        default: Some(r#"the CPU count"#),
        meaning: r#"password hashes running at once (each uses the argon2 memory)"#,
    },
    Meaning {
        name: "STOA_BODY_LIMIT_BYTES",
        default: None,
        meaning: r#"largest request body (413 above); fits the largest valid article"#,
    },
    Meaning {
        name: "STOA_REQUEST_TIMEOUT",
        default: None,
        meaning: r#"per-request deadline (503 after)"#,
    },
    Meaning {
        name: "STOA_MAX_CONCURRENT_REQUESTS",
        default: None,
        meaning: r#"requests in flight before shedding load with 503"#,
    },
    Meaning {
        name: "STOA_MAX_CONNECTIONS",
        default: Some(
            r#"from the container's memory limit: (limit − 96 MiB) / 32 KiB, between 256 and 10,000 (10,000 without a limit; 1,024 at 128 MiB, 5,120 at 256 MiB)"#,
        ),
        meaning: r#"client connections open at once; past it new connections wait in the accept queue until one closes (`stoa_http_connections_open`). See [Memory budget](../benchmarks.md#memory-budget)"#,
    },
    Meaning {
        name: "STOA_LISTEN_BACKLOG",
        default: None,
        meaning: r#"connections the kernel queues before `accept` (capped by the host's `net.core.somaxconn`); a burst of new clients beyond it waits a second for a SYN retry"#,
    },
    Meaning {
        name: "STOA_CORS_ALLOWED_ORIGINS",
        default: None,
        meaning: r#"comma-separated origins, or `*`"#,
    },
    Meaning {
        name: "STOA_PUBLIC_URL",
        default: None,
        meaning: r#"where clients reach the API, e.g. `https://api.example.com` (origin only; the operator sets the Ingress's): cookie-mode requests may come from exactly this origin (scheme, host and port), and `https` turns HSTS on. Unset: the request's own host over https (plain http only on a loopback host)"#,
    },
    Meaning {
        name: "STOA_HSTS_MAX_AGE",
        default: Some(r#"`2y`"#),
        meaning: r#"`Strict-Transport-Security: max-age` when `STOA_PUBLIC_URL` is https"#,
    },
    Meaning {
        name: "STOA_SHUTDOWN_DELAY",
        default: None,
        meaning: r#"after SIGTERM, time spent reporting not-ready before closing the listener"#,
    },
    Meaning {
        name: "STOA_SHUTDOWN_TIMEOUT",
        default: None,
        meaning: r#"then, the longest wait for in-flight requests"#,
    },
    Meaning {
        name: "STOA_LOG_FORMAT",
        default: None,
        meaning: r#"log format"#,
    },
    Meaning {
        name: "STOA_LOG",
        default: Some(r#"`RUST_LOG` if set, else `info,sqlx=warn`"#),
        meaning: r#"log filter (`RUST_LOG` syntax)"#,
    },
    Meaning {
        name: "STOA_ACCESS_LOG_EVERY",
        default: None,
        meaning: r#"access-log one in N requests answered below 500 (every 5xx is always logged); raise it for very high traffic"#,
    },
    Meaning {
        name: "STOA_SENTRY_DSN",
        default: None,
        meaning: r#"error tracking with Sentry or a compatible service ([Error tracking](../security.md#error-tracking)); the operator sets it from `spec.monitoring.errorTracking.dsnSecretRef`"#,
    },
    Meaning {
        name: "STOA_SENTRY_ENVIRONMENT",
        default: None,
        meaning: r#"the environment events are filed under"#,
    },
    Meaning {
        name: "STOA_LOG_QUEUE_LINES",
        default: None,
        meaning: r#"log lines queued for the writer thread; when stdout cannot keep up, further lines are dropped (never waited for) and counted in `stoa_log_lines_dropped_total`"#,
    },
];

/// Every setting as declared, in production and in `--dev` mode.
fn declared() -> Result<(Vec<Declared>, BTreeMap<&'static str, Declared>), ConfigError> {
    // The production reads need the required settings present; their values are not shown.
    let production = Env::new(|name: &str| match name {
        "STOA_DATABASE_URL" => Some("postgres://reference@localhost/stoa".to_owned()),
        "STOA_JWT_KEYS_DIR" | "STOA_MFA_KEYS_DIR" => Some("/keys".to_owned()),
        _ => None,
    });
    let dev = Env::new(|_: &str| None);
    let (_, in_production) = Config::read_all(&production, false, true)?;
    let (_, in_dev) = Config::read_all(&dev, true, true)?;
    let in_dev = in_dev.into_iter().map(|d| (d.name, d)).collect();
    Ok((in_production, in_dev))
}

/// The settings reference as Markdown, one table per section of `Config::build`.
pub fn settings_reference() -> Result<String, ConfigError> {
    let meanings: BTreeMap<_, _> = MEANINGS.iter().map(|m| (m.name, m)).collect();
    let (production, dev) = declared()?;
    let mut out = String::from(
        "# Settings reference\n\n\
         <!-- Generated by `stoa-api reference settings` (`make docs`) from the declarations \
         in api-server/src/config. Do not edit by hand. -->\n\n\
         Every setting is an environment variable, read and validated once at start-up: a \
         value out of bounds stops the process with a message naming the variable. \
         `stoa-api check-config` prints the effective values, secrets redacted. A variable \
         that says so may instead be given as a file named by `<NAME>_FILE` (how the \
         operator mounts secrets). Defaults differ in `--dev` mode (`make run`) where an \
         entry says so.\n",
    );
    // Sections in the order they are first read; a section read in two places is one.
    let mut sections: Vec<&str> = Vec::new();
    for setting in &production {
        if !sections.contains(&setting.section) {
            sections.push(setting.section);
        }
    }
    for section in sections {
        let _ = writeln!(out, "\n## {section}");
        for setting in production.iter().filter(|s| s.section == section) {
            entry(
                &mut out,
                setting,
                meanings.get(setting.name),
                dev.get(setting.name),
            );
        }
    }
    Ok(out)
}

/// One setting: a heading (a link target: `settings.md#stoa_log_format`), what it means,
/// its default and what it accepts.
fn entry(out: &mut String, setting: &Declared, meaning: Option<&&Meaning>, dev: Option<&Declared>) {
    let default = match meaning.and_then(|m| m.default) {
        Some(text) => text.to_owned(),
        None => shown_default(setting, dev),
    };
    let _ = write!(
        out,
        "\n### `{}`\n\n{}\n\nDefault: {default}.",
        setting.name,
        sentence(meaning.map_or("", |m| m.meaning))
    );
    if !setting.bounds.is_empty() {
        let _ = write!(out, " Accepted: {}.", setting.bounds.join("; "));
    }
    if setting.file {
        let _ = write!(out, " Or as a file: `{}_FILE`.", setting.name);
    }
    out.push('\n');
}

/// A meaning as a sentence: capitalised, with a full stop.
fn sentence(meaning: &str) -> String {
    let mut chars = meaning.chars();
    let mut text: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return String::new(),
    };
    if !text.ends_with('.') {
        text.push('.');
    }
    text
}

fn shown_default(production: &Declared, dev: Option<&Declared>) -> String {
    let show = |value: &str| {
        if value.is_empty() {
            "empty".to_owned()
        } else if let Some(why) = value.strip_prefix('(') {
            let why = why
                .trim_start_matches("not set: ")
                .trim_start_matches("unset: ");
            format!("unset ({why}")
        } else {
            format!("`{value}`")
        }
    };
    match dev {
        Some(dev) if dev.default != production.default => {
            format!(
                "{} (`--dev`: {})",
                show(&production.default),
                show(&dev.default)
            )
        }
        _ => show(&production.default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_a_meaning_and_every_meaning_a_setting() {
        let (production, dev) = declared().unwrap();
        let declared: Vec<_> = production.iter().map(|d| d.name).collect();
        let missing: Vec<_> = declared
            .iter()
            .filter(|name| !MEANINGS.iter().any(|m| m.name == **name))
            .collect();
        assert!(
            missing.is_empty(),
            "settings without a meaning: {missing:?}"
        );
        let stale: Vec<_> = MEANINGS
            .iter()
            .filter(|m| !declared.contains(&m.name))
            .map(|m| m.name)
            .collect();
        assert!(stale.is_empty(), "meanings of no setting: {stale:?}");
        let mut unique = declared.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), declared.len(), "a setting is read twice");
        assert_eq!(dev.len(), declared.len(), "dev mode reads other settings");
    }

    #[test]
    fn the_reference_gives_declared_defaults_and_bounds() {
        let reference = settings_reference().unwrap();
        assert!(reference.contains(
            "### `STOA_LOG_FORMAT`\n\nLog format.\n\nDefault: `json` (`--dev`: `pretty`).\n"
        ));
        assert!(reference.contains(
            "Default: `30s`. Accepted: at most 5m (it extends every token's lifetime).\n"
        ));
        assert!(reference.contains("Or as a file: `STOA_REDIS_URL_FILE`."));
    }

    #[test]
    fn the_committed_reference_is_current() {
        let committed = include_str!("../../../docs/reference/settings.md");
        assert!(
            committed == settings_reference().unwrap(),
            "docs/reference/settings.md is out of date: run `make docs`"
        );
    }
}
