//! Prometheus metrics (served on the admin port). Names are prefixed `stoa_`; labels are
//! bounded (route templates, never raw paths; never user data or secrets).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    /// The route template (`/api/articles/{slug}`), or `unmatched`.
    pub route: Arc<str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    version: &'static str,
    schema_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub kid: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    pub dependency: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    /// `replica` or `primary`.
    pub pool: &'static str,
    /// Why (see `crate::reads::Route`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

/// A provider flow's outcome at the callback: `provider` is a configured provider's name
/// (never a name from the request), `outcome` one of [`PROVIDER_OUTCOMES`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
    pub outcome: &'static str,
}

/// How a provider flow ends at the callback: a one-time code for a sign-in (`signed_in`),
/// a link to confirm (`link_pending`) or one already made (`already_linked`), or the
/// `stoa_error` the browser goes back with.
pub const PROVIDER_OUTCOMES: [&str; 12] = [
    "signed_in",
    "link_pending",
    "already_linked",
    "account_exists",
    "access_denied",
    "invalid_state",
    "invalid_link",
    "provider_error",
    "invalid_token",
    "email_not_verified",
    "identity_taken",
    "provider_already_linked",
];

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub http_in_flight: Gauge,
    /// Client connections open now (at most `STOA_MAX_CONNECTIONS`).
    pub http_connections: Gauge,
    /// Seconds spent serving requests (its rate is the average concurrency).
    pub http_busy: Counter<f64, AtomicU64>,
    pub db_pool_size: Gauge,
    pub db_pool_idle: Gauge,
    pub db_pool_max: Gauge,
    pub signing_keys: Family<KeyLabels, Gauge>,
    pub keyset_reload_errors: Counter,
    pub keyset_generation: Gauge<u64, AtomicU64>,
    pub dependency_up: Family<DependencyLabels, Gauge>,
    pub security_events: Family<EventLabels, Counter>,
    pub provider_sign_ins: Family<ProviderLabels, Counter>,
    /// Security events counted but not stored for the console (queue full, or a batch the
    /// database refused).
    pub security_events_dropped: Counter,
    pub cache_requests: Family<CacheLabels, Counter>,
    pub rate_limited: Family<BucketLabels, Counter>,
    pub refused: Family<RefusalLabels, Counter>,
    pub db_connection_lost: Family<ConnectionLostLabels, Counter>,
    /// Log lines dropped because the writer's queue was full (brought up to date on scrape).
    pub log_lines_dropped: Counter,
    pub db_credentials: Family<CredentialLabels, Gauge>,
    pub db_credential_reloads: Family<OutcomeLabels, Counter>,
    /// The newest migration applied to the database, as the last readiness check saw it.
    pub schema_version: Gauge,
    pub jobs: JobMetrics,
    /// Content reads with a replica configured, by the pool that served them and why.
    pub db_reads: Family<ReadLabels, Counter>,
    /// How far behind the primary the replica may be (+Inf until it has been seen caught
    /// up).
    pub db_replica_staleness: Gauge<f64, AtomicU64>,
    /// Writes whose announcement to the other pods failed (Redis unavailable).
    pub read_write_announcements_failed: Counter,
    /// Revocations Redis did not take: other pods learn of them by the catch-up.
    pub revocation_mirror_failures: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: &'static str,
    /// `queued` (due), `delayed` (waiting for a retry), `running`, `dead`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobKindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobOutcomeLabels {
    pub kind: &'static str,
    /// `done`, `retried` (failed, queued again), `dead` (failed for the last time), `lost`
    /// (the lease ran out and another worker took the job), `superseded` (failed while a
    /// newer job with its key was queued, which does the work instead).
    pub outcome: &'static str,
}

/// The job queue, as the worker sees it (`stoa-api worker`; the gauges are read from the
/// `jobs` table every few seconds).
pub struct JobMetrics {
    pub jobs: Family<JobLabels, Gauge>,
    pub oldest_due: Family<JobKindLabels, Gauge<f64, AtomicU64>>,
    pub attempts: Family<JobOutcomeLabels, Counter>,
    pub duration: Family<JobKindLabels, Histogram>,
    pub running: Gauge,
    /// Seconds spent running jobs (its rate is the average number running).
    pub busy: Counter<f64, AtomicU64>,
}

impl JobMetrics {
    fn register(registry: &mut Registry) -> JobMetrics {
        let jobs = Family::<JobLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs in the queue by kind and state (queued and due, delayed for a retry, running, dead)",
            jobs.clone(),
        );
        let oldest_due = Family::<JobKindLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "jobs_oldest_due_age",
            "Age of the oldest job that is due and waits for a worker, by kind",
            prometheus_client::registry::Unit::Seconds,
            oldest_due.clone(),
        );
        let attempts = Family::<JobOutcomeLabels, Counter>::default();
        registry.register(
            "job_attempts",
            "Job attempts this worker finished, by kind and outcome (done, retried, dead, lost, superseded)",
            attempts.clone(),
        );
        let duration = Family::<JobKindLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "job_duration",
            "Time one job attempt took, by kind",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "jobs_running_here",
            "Jobs this worker runs now",
            running.clone(),
        );
        let busy = Counter::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "job_busy",
            "Time this worker spent running jobs; its rate is the average number running",
            prometheus_client::registry::Unit::Seconds,
            busy.clone(),
        );
        JobMetrics {
            jobs,
            oldest_due,
            attempts,
            duration,
            running,
            busy,
        }
    }
}

/// Why a request was answered 503 before a handler could finish it. Set as a response
/// extension where the refusal is made, counted by the observing middleware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The concurrency limit was reached (load shedding).
    Overloaded,
    /// The request ran past `STOA_REQUEST_TIMEOUT`.
    TimedOut,
    /// No database connection became free within `STOA_DB_ACQUIRE_TIMEOUT`.
    DatabaseBusy,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [
        Refusal::Overloaded,
        Refusal::TimedOut,
        Refusal::DatabaseBusy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Overloaded => "overloaded",
            Refusal::TimedOut => "timeout",
            Refusal::DatabaseBusy => "database_busy",
        }
    }
}

/// `stoa_db_connection_lost_total`: why the connection went (`db::connection_lost`) and
/// what the request got: `retried` (a read, run again on a fresh connection) or
/// `unavailable` (a 503: a write, or a read whose second try failed too).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLostLabels {
    pub reason: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: &'static str,
}

/// A rate-limit budget: the `bucket` label of `stoa_rate_limited_requests_total` and part
/// of its counters' keys. An enum, so every value a call site can use has its series
/// created at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Every request, per client address.
    Ip,
    /// Every signed-in request, per user.
    User,
    /// Register, login and refresh, per client address.
    Auth,
    /// Login attempts, per (account, client address).
    Login,
    /// Login attempts, per account from every address (the ceiling).
    LoginAccount,
    /// Second-factor codes, per account.
    Mfa,
}

impl Bucket {
    pub const ALL: [Bucket; 6] = [
        Bucket::Ip,
        Bucket::User,
        Bucket::Auth,
        Bucket::Login,
        Bucket::LoginAccount,
        Bucket::Mfa,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Ip => "ip",
            Bucket::User => "user",
            Bucket::Auth => "auth",
            Bucket::Login => "login",
            Bucket::LoginAccount => "login_account",
            Bucket::Mfa => "mfa",
        }
    }
}

/// What `stoa_security_events_total` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityEvent {
    LoginFailed,
    CurrentPasswordRejected,
    RefreshTokenInvalid,
    RefreshTokenReuse,
    /// A spent refresh token presented again within the reuse grace by the same client
    /// (a second tab): the same successor was handed out.
    RefreshGraceUsed,
    /// The right password for a disabled account.
    DisabledAccountLogin,
    /// A signed-in caller without the admin role tried an admin route.
    AdminDenied,
    /// An admin disabled or re-enabled an account, or removed an article or a comment.
    AdminAction,
    /// A wrong, replayed or late second-factor code.
    MfaFailed,
    /// A sign-in completed with a recovery code (one fewer left).
    RecoveryCodeUsed,
    /// A sign-in with an identity provider reached Stoa's tokens or second factor.
    ProviderSignIn,
    /// A provider sign-in or link failed: wrong state, a refused code, an invalid ID
    /// token, an unverified email, an identity of another account.
    ProviderSignInFailed,
    /// A provider identity was linked to an account.
    IdentityLinked,
    /// A provider identity was unlinked from an account.
    IdentityUnlinked,
}

impl SecurityEvent {
    pub const ALL: [SecurityEvent; 14] = [
        SecurityEvent::LoginFailed,
        SecurityEvent::CurrentPasswordRejected,
        SecurityEvent::RefreshTokenInvalid,
        SecurityEvent::RefreshTokenReuse,
        SecurityEvent::RefreshGraceUsed,
        SecurityEvent::DisabledAccountLogin,
        SecurityEvent::AdminDenied,
        SecurityEvent::AdminAction,
        SecurityEvent::MfaFailed,
        SecurityEvent::RecoveryCodeUsed,
        SecurityEvent::ProviderSignIn,
        SecurityEvent::ProviderSignInFailed,
        SecurityEvent::IdentityLinked,
        SecurityEvent::IdentityUnlinked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SecurityEvent::LoginFailed => "login_failed",
            SecurityEvent::CurrentPasswordRejected => "current_password_rejected",
            SecurityEvent::RefreshTokenInvalid => "refresh_token_invalid",
            SecurityEvent::RefreshTokenReuse => "refresh_token_reuse",
            SecurityEvent::RefreshGraceUsed => "refresh_grace_used",
            SecurityEvent::DisabledAccountLogin => "disabled_account_login",
            SecurityEvent::AdminDenied => "admin_denied",
            SecurityEvent::AdminAction => "admin_action",
            SecurityEvent::MfaFailed => "mfa_failed",
            SecurityEvent::RecoveryCodeUsed => "recovery_code_used",
            SecurityEvent::ProviderSignIn => "provider_sign_in",
            SecurityEvent::ProviderSignInFailed => "provider_sign_in_failed",
            SecurityEvent::IdentityLinked => "identity_linked",
            SecurityEvent::IdentityUnlinked => "identity_unlinked",
        }
    }
}

/// Label values known in advance. Their series are created at zero on start-up, so a
/// dashboard shows 0 rather than "no data" and `rate()` sees the first increment.
pub const CACHE_KINDS: [&str; 4] = ["article", "list", "tags", "feed"];
pub const CACHE_OUTCOMES: [&str; 3] = ["hit", "miss", "unavailable"];
pub const CREDENTIAL_RELOAD_OUTCOMES: [&str; 2] = ["swapped", "rejected"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabels {
    pub bucket: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    /// The database role in use (a name, never a password).
    pub user: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~8 s: the interesting range for an API is the low milliseconds.
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Metrics {
    /// `required_schema_version`: the newest expand migration the binary embeds (passed in,
    /// so metrics stay below the schema module). Over ~80 lines: one registration per
    /// metric, in the order `/metrics` lists them, so the list can be read against the
    /// dashboard and the operations guide; a helper per metric is no shorter under rustfmt.
    pub fn new(required_schema_version: i64) -> Self {
        let mut registry = Registry::with_prefix("stoa");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by method, route template and status",
            http_requests.clone(),
        );
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request latency, by method, route template and status",
            prometheus_client::registry::Unit::Seconds,
            http_duration.clone(),
        );
        let http_in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being served now",
            http_in_flight.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections_open",
            "Client connections open now; at STOA_MAX_CONNECTIONS new ones wait to be accepted",
            http_connections.clone(),
        );
        let http_busy = Counter::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "http_busy",
            "Time spent serving requests; its rate is the average number in flight",
            prometheus_client::registry::Unit::Seconds,
            http_busy.clone(),
        );
        let db_pool_size = Gauge::default();
        registry.register(
            "db_pool_connections",
            "Open database connections",
            db_pool_size.clone(),
        );
        let db_pool_idle = Gauge::default();
        registry.register(
            "db_pool_idle_connections",
            "Idle database connections",
            db_pool_idle.clone(),
        );
        let db_pool_max = Gauge::default();
        registry.register(
            "db_pool_max_connections",
            "Configured maximum database connections",
            db_pool_max.clone(),
        );
        let signing_keys = Family::<KeyLabels, Gauge>::default();
        registry.register(
            "signing_keys_loaded",
            "Signing keys currently loaded (1 per kid and state)",
            signing_keys.clone(),
        );
        let keyset_reload_errors = Counter::default();
        registry.register(
            "keyset_reload_errors",
            "Key set updates that were rejected (the last good set stays in use)",
            keyset_reload_errors.clone(),
        );
        let keyset_generation = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "keyset_generation",
            "Number of key sets loaded since start (increments on every successful reload)",
            keyset_generation.clone(),
        );
        let dependency_up = Family::<DependencyLabels, Gauge>::default();
        registry.register(
            "dependency_up",
            "Whether a dependency answered its last check (1) or not (0)",
            dependency_up.clone(),
        );
        let security_events = Family::<EventLabels, Counter>::default();
        registry.register(
            "security_events",
            "Security-relevant events, by kind",
            security_events.clone(),
        );
        let security_events_dropped = Counter::default();
        registry.register(
            "security_events_dropped",
            "Security events not stored for the admin console (queue full or the database refused them); stoa_security_events_total still has them",
            security_events_dropped.clone(),
        );
        let provider_sign_ins = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "provider_sign_ins",
            "Sign-in and link flows back from an identity provider, by provider and outcome",
            provider_sign_ins.clone(),
        );
        let cache_requests = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_requests",
            "Cache lookups by kind and outcome (hit, miss, unavailable)",
            cache_requests.clone(),
        );
        let rate_limited = Family::<BucketLabels, Counter>::default();
        registry.register(
            "rate_limited_requests",
            "Requests refused with 429, by bucket",
            rate_limited.clone(),
        );
        let refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refused_requests",
            "Requests answered 503 by reason: overloaded (load shed), timeout, database_busy",
            refused.clone(),
        );
        let db_connection_lost = Family::<ConnectionLostLabels, Counter>::default();
        registry.register(
            "db_connection_lost",
            "Statements that lost their database connection (PostgreSQL restarted or failed over), by reason and outcome (retried: a read run again; unavailable: answered 503)",
            db_connection_lost.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer's queue was full (STOA_LOG_QUEUE_LINES)",
            log_lines_dropped.clone(),
        );
        let db_credentials = Family::<CredentialLabels, Gauge>::default();
        registry.register(
            "db_credentials_info",
            "The database role whose credentials the active pool uses (1)",
            db_credentials.clone(),
        );
        let db_credential_reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "db_credential_reloads",
            "Database credential file changes, by outcome (swapped, rejected)",
            db_credential_reloads.clone(),
        );
        let schema_version = Gauge::default();
        registry.register(
            "schema_version",
            "Newest migration applied to the database, as the last readiness check found it",
            schema_version.clone(),
        );
        let required_version = Gauge::<i64>::default();
        registry.register(
            "schema_required_version",
            "Newest expand migration this binary embeds: the schema version it needs to be ready",
            required_version.clone(),
        );
        required_version.set(required_schema_version);
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register("build_info", "Build information", build_info.clone());
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                schema_version: required_schema_version.to_string(),
            })
            .set(1);
        let jobs = JobMetrics::register(&mut registry);
        let db_reads = Family::<ReadLabels, Counter>::default();
        registry.register(
            "db_reads",
            "Content reads with a read replica configured, by pool (replica, primary) and reason",
            db_reads.clone(),
        );
        let db_replica_staleness = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "db_replica_staleness",
            "How far behind the primary the read replica may be (+Inf: not seen caught up yet)",
            prometheus_client::registry::Unit::Seconds,
            db_replica_staleness.clone(),
        );
        let read_write_announcements_failed = Counter::default();
        registry.register(
            "db_write_announcements_failed",
            "Writes not announced to the other pods (Redis unavailable): their authors may read a lagging replica elsewhere",
            read_write_announcements_failed.clone(),
        );
        let revocation_mirror_failures = Counter::default();
        registry.register(
            "revocation_mirror_failures",
            "Revocations not mirrored to Redis and announced (Redis unavailable): other pods refuse the token within a probe interval instead of at once",
            revocation_mirror_failures.clone(),
        );
        let metrics = Metrics {
            registry,
            http_requests,
            http_duration,
            http_in_flight,
            http_connections,
            http_busy,
            db_pool_size,
            db_pool_idle,
            db_pool_max,
            signing_keys,
            keyset_reload_errors,
            keyset_generation,
            dependency_up,
            security_events,
            provider_sign_ins,
            security_events_dropped,
            cache_requests,
            rate_limited,
            refused,
            db_connection_lost,
            log_lines_dropped,
            db_credentials,
            db_credential_reloads,
            schema_version,
            jobs,
            db_reads,
            db_replica_staleness,
            read_write_announcements_failed,
            revocation_mirror_failures,
        };
        metrics.create_known_series();
        metrics
    }

    /// Whether `dependency` answered its last check (or, for a feed, is live).
    pub fn set_dependency_up(&self, dependency: &'static str, up: bool) {
        self.dependency_up
            .get_or_create(&DependencyLabels { dependency })
            .set(i64::from(up));
    }

    pub fn count_security_event(&self, event: SecurityEvent) {
        self.security_events
            .get_or_create(&EventLabels {
                event: event.as_str(),
            })
            .inc();
    }

    /// A provider flow came back to the callback with `outcome` ([`PROVIDER_OUTCOMES`]).
    pub fn count_provider_outcome(&self, provider: &str, outcome: &'static str) {
        self.provider_sign_ins
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Creates every provider's outcome series at zero (the providers are configuration,
    /// known at start-up).
    pub fn create_provider_series<'a>(&self, providers: impl IntoIterator<Item = &'a str>) {
        for provider in providers {
            for outcome in PROVIDER_OUTCOMES {
                self.provider_sign_ins
                    .get_or_create(&ProviderLabels {
                        provider: provider.to_owned(),
                        outcome,
                    })
                    .inc_by(0);
            }
        }
    }

    fn create_known_series(&self) {
        for bucket in Bucket::ALL {
            self.rate_limited
                .get_or_create(&BucketLabels {
                    bucket: bucket.as_str(),
                })
                .inc_by(0);
        }
        for event in SecurityEvent::ALL {
            self.security_events
                .get_or_create(&EventLabels {
                    event: event.as_str(),
                })
                .inc_by(0);
        }
        for kind in CACHE_KINDS {
            for outcome in CACHE_OUTCOMES {
                self.cache_requests
                    .get_or_create(&CacheLabels { kind, outcome })
                    .inc_by(0);
            }
        }
        for outcome in CREDENTIAL_RELOAD_OUTCOMES {
            self.db_credential_reloads
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        for refusal in Refusal::ALL {
            self.refused
                .get_or_create(&RefusalLabels {
                    reason: refusal.as_str(),
                })
                .inc_by(0);
        }
    }

    /// Replaces the loaded-keys gauge with this key set and counts the load.
    pub fn publish_keys(&self, kids: &[(String, stoa_contract::keys::KeyState)]) {
        self.signing_keys.clear();
        for (kid, state) in kids {
            self.signing_keys
                .get_or_create(&KeyLabels {
                    kid: kid.clone(),
                    state: state.as_str(),
                })
                .set(1);
        }
        self.keyset_generation.inc();
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
