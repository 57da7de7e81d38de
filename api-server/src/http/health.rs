//! Liveness, readiness and the public key set.

use std::time::{Duration, Instant};

use crate::api_routes;
use crate::http::routing::RouteTable;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use stoa_contract::pod::{LoadedKey, PodState};

use crate::keys::KeyState;
use crate::schema::{SchemaState, SchemaStatus};
use crate::state::AppState;

pub fn router<T: RouteTable>() -> T {
    T::empty()
        .routes(api_routes!(healthz))
        .routes(api_routes!(readyz))
        .routes(api_routes!(jwks))
}

/// Liveness: the process serves requests. Touches no dependency.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "alive", content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub checks: Checks,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checks {
    pub database: Check,
    pub schema: Check,
    pub signing_keys: Check,
    /// Optional: `disabled`, `up` or `degraded` (Redis down; fallbacks in use). Never fails readiness.
    pub redis: Check,
    /// With a read replica only: `current`, or `behind` (reads on the primary). Never fails
    /// readiness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_replica: Option<Check>,
    pub lifecycle: Check,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// `up`, `down`, `current`, `ahead`, `behind`, `dirty`, `loaded`, `serving`, `draining`,
    /// `unknown`, `disabled`, `degraded`.
    pub status: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

impl Check {
    fn ok(status: &'static str, detail: Option<String>) -> Self {
        Check {
            status,
            ok: true,
            detail,
            latency_ms: None,
        }
    }
    fn failed(status: &'static str, detail: impl Into<String>) -> Self {
        Check {
            status,
            ok: false,
            detail: Some(detail.into()),
            latency_ms: None,
        }
    }
}

/// How long a readiness probe waits for the database before calling it down.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness: the database answers, it has every expand migration this binary embeds
/// (newer migrations are tolerated: rollbacks and mid-rollout scale-ups keep serving), a
/// signing key is loaded, and the process is not shutting down.
///
/// The public port answers only the verdict; which dependency failed, the schema versions,
/// the Redis state and the key count are for operators: the admin port's `/readyz`.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = ReadinessVerdict), (status = 503, body = ReadinessVerdict)))]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (status, readiness) = readiness(&state).await;
    (
        status,
        axum::Json(ReadinessVerdict {
            status: readiness.status,
        }),
    )
}

/// The public readiness answer.
#[derive(Serialize, ToSchema)]
pub struct ReadinessVerdict {
    /// `ready` or `not_ready`.
    pub status: &'static str,
}

/// Readiness with every check's detail (served on the admin port).
pub async fn readyz_detail(State(state): State<AppState>) -> impl IntoResponse {
    let (status, readiness) = readiness(&state).await;
    (status, axum::Json(readiness))
}

/// What this pod has loaded, for the operator (admin port only): it confirms each step of
/// a key or credential rotation against every pod before taking the next.
pub async fn pod_state(State(state): State<AppState>) -> axum::Json<PodState> {
    let ring = state.tokens.ring();
    let schema_version = state.metrics.schema_version.get();
    axum::Json(PodState {
        keys: ring
            .kids()
            .iter()
            .map(|(kid, key_state)| LoadedKey {
                kid: kid.clone(),
                state: *key_state,
            })
            .collect(),
        database: (*state.database.credential()).clone(),
        schema_version: (schema_version > 0).then_some(schema_version),
        in_flight: u64::try_from(state.metrics.http_in_flight.get()).unwrap_or(0),
        busy_seconds: state.metrics.http_busy.get(),
        limits: state.server_limits.load_full().map(|l| *l),
        queue: None,
    })
}

/// Runs every readiness check.
pub async fn readiness(state: &AppState) -> (StatusCode, Readiness) {
    let (database, schema) = database_checks(state).await;
    state.metrics.set_dependency_up("postgres", database.ok);
    let signing_keys = signing_key_check(state);
    let lifecycle = if state.is_shutting_down() {
        Check::failed("draining", "shutting down")
    } else {
        Check::ok("serving", None)
    };
    // Redis and the read replica never make a pod unready: it serves without them.
    let ready = database.ok && schema.ok && signing_keys.ok && lifecycle.ok;
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        checks: Checks {
            database,
            schema,
            signing_keys,
            redis: redis_check(state),
            read_replica: read_replica_check(state),
            lifecycle,
        },
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// The database (reachable within the check's timeout, and how fast) and its schema.
async fn database_checks(state: &AppState) -> (Check, Check) {
    let started = Instant::now();
    let pool = state.db().clone();
    match tokio::time::timeout(DB_CHECK_TIMEOUT, SchemaState::read(&*pool)).await {
        Ok(Ok(found)) => {
            let mut database = Check::ok("up", None);
            database.latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            state
                .metrics
                .schema_version
                .set(found.version().unwrap_or(0));
            (database, schema_check(found.status()))
        }
        Ok(Err(e)) => (
            Check::failed("down", crate::db::describe_error(&e)),
            Check::failed("unknown", "database unreachable"),
        ),
        Err(_) => (
            Check::failed("down", "timed out"),
            Check::failed("unknown", "database unreachable"),
        ),
    }
}

fn signing_key_check(state: &AppState) -> Check {
    let ring = state.tokens.ring();
    let active = ring
        .kids()
        .iter()
        .find(|(_, s)| *s == KeyState::Active)
        .map(|(k, _)| k.clone());
    match active {
        Some(kid) => Check::ok(
            "loaded",
            Some(format!("active kid {kid}, {} keys", ring.kids().len())),
        ),
        None => Check::failed("missing", "no active signing key"),
    }
}

fn redis_check(state: &AppState) -> Check {
    match &state.kv {
        None => Check::ok(
            "disabled",
            Some("not configured; in-process fallbacks".into()),
        ),
        Some(kv) if kv.is_up() => Check::ok("up", None),
        Some(_) => Check::ok(
            "degraded",
            Some("unreachable; using PostgreSQL and in-process fallbacks, no cache".into()),
        ),
    }
}

fn read_replica_check(state: &AppState) -> Option<Check> {
    state.reads.replica_status().map(|(current, staleness)| {
        let behind = staleness.map_or_else(
            || "not seen caught up yet".to_owned(),
            |s| format!("at most {} ms behind", s.as_millis()),
        );
        if current {
            Check::ok("current", Some(behind))
        } else {
            Check::ok("behind", Some(format!("{behind}; reads go to the primary")))
        }
    })
}

/// The schema check: the version found, the version this binary needs, and what else the
/// database holds (newer steps of a later release, this release's pending contract steps).
fn schema_check(status: SchemaStatus) -> Check {
    match status {
        SchemaStatus::Current {
            version,
            required,
            newer,
            pending_contract,
        } => {
            let mut detail = format!("database at {version}, this binary needs {required}");
            if newer > 0 {
                detail.push_str(&format!(
                    "; {newer} newer migration(s) this binary does not know (tolerated)"
                ));
            }
            if pending_contract > 0 {
                detail.push_str(&format!(
                    "; {pending_contract} contract step(s) pending until the rollout completes"
                ));
            }
            Check::ok(if newer > 0 { "ahead" } else { "current" }, Some(detail))
        }
        SchemaStatus::Behind {
            version,
            required,
            missing,
        } => Check::failed(
            "behind",
            format!(
                "database at {}, this binary needs {required} ({missing} migration(s) missing); run `stoa-api migrate`",
                version.map_or_else(|| "no schema".into(), |v| v.to_string())
            ),
        ),
        SchemaStatus::Dirty { version } => Check::failed(
            "dirty",
            format!("migration {version} failed half-way; the schema needs repair"),
        ),
    }
}

/// The public keys that verify access tokens (JWK Set).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "JWK Set", content_type = "application/json")))]
async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.tokens.ring().jwks_json();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            // Short: verifiers must pick up a new `next` key well before it signs.
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        body.to_string(),
    )
}
