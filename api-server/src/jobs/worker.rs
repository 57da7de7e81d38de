//! `stoa-api worker`: runs queued jobs (`STOA_WORKER_CONCURRENCY` at once), ticks the
//! schedules, and reports the queue (metrics, and the pod state the operator scales the
//! worker Deployment on). Stops claiming on SIGTERM and lets running jobs finish for at
//! most `STOA_SHUTDOWN_TIMEOUT`; a job cut short runs again after its lease.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use sqlx::postgres::{PgListener, PgPoolOptions};
use stoa_contract::pod::{PodState, QueueDepth, STATE_PATH};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use super::Kind;
use super::kinds::{self, Context};
use super::queue::{self, Claim, Claimed, Retry};
use super::schedule::{self, Schedule, Tick};
use crate::auth::revocation::MirrorWindow;
use crate::config::{Config, DatabaseUrlSource, WorkerConfig};
use crate::db::{Db, Pool};
use crate::metrics::{JobKindLabels, JobLabels, JobOutcomeLabels, Metrics};

/// PostgreSQL channel the `jobs` insert trigger notifies.
const CHANNEL: &str = "stoa_jobs";
/// How often the queue gauges (and the pod state's queue) are read.
const DEPTH_EVERY: Duration = Duration::from_secs(5);
/// How often the wake-up listener checks its connection and the credentials in use.
const LISTENER_PING: Duration = Duration::from_secs(30);

pub struct Worker {
    database: Arc<Db>,
    metrics: Arc<Metrics>,
    config: WorkerConfig,
    context: Context,
    schedules: Vec<Schedule>,
    retry: Retry,
    /// Names this process in `jobs.locked_by`: host, process id and a random part, so two
    /// processes never share a lease.
    id: String,
    wake: Notify,
    depth: arc_swap::ArcSwap<QueueDepth>,
}

impl Worker {
    pub fn new(database: Arc<Db>, metrics: Arc<Metrics>, config: &Config) -> Arc<Worker> {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        let id = format!(
            "{host}:{}:{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Arc::new(Worker {
            database,
            metrics,
            config: config.worker.clone(),
            context: Context {
                mirror: MirrorWindow::of(&config.auth),
                retention: config.worker.retention,
                security_event_retention: config.worker.security_event_retention,
            },
            schedules: vec![
                Schedule {
                    kind: Kind::PurgeExpired,
                    every: config.auth.purge_interval,
                },
                Schedule {
                    kind: Kind::RecountCounters,
                    every: config.worker.recount_interval,
                },
            ],
            retry: Retry {
                base: config.worker.backoff_base,
                max: config.worker.backoff_max,
            },
            id,
            wake: Notify::new(),
            depth: arc_swap::ArcSwap::from_pointee(QueueDepth::default()),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The queue as last read.
    pub fn depth(&self) -> QueueDepth {
        **self.depth.load()
    }

    /// Runs until `stop` turns true, then waits for the jobs in progress (at most
    /// `drain_timeout`).
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>, drain_timeout: Duration) {
        tracing::info!(worker = %self.id, concurrency = self.config.concurrency, "worker started");
        let background = [
            tokio::spawn(self.clone().listen(stop.clone())),
            tokio::spawn(self.clone().schedule(stop.clone())),
            tokio::spawn(self.clone().watch_depth(stop.clone())),
        ];
        let runners: Vec<_> = (0..self.config.concurrency)
            .map(|_| tokio::spawn(self.clone().drain(stop.clone())))
            .collect();
        let mut stopped = stop.clone();
        let _ = stopped.wait_for(|stop| *stop).await;
        self.wake.notify_waiters();
        let all = futures::future::join_all(runners);
        if tokio::time::timeout(drain_timeout, all).await.is_err() {
            tracing::warn!(timeout = ?drain_timeout,
                "jobs still running at the drain deadline; they run again after their lease");
        }
        for task in background {
            task.abort();
        }
        tracing::info!(worker = %self.id, "worker stopped");
    }

    /// One runner: claims and runs jobs until told to stop.
    async fn drain(self: Arc<Self>, stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            // Registered before the claim, so a job enqueued after an empty claim wakes us.
            let woken = self.wake.notified();
            let pool = self.database.pool().as_ref().clone();
            match queue::claim(&pool, &self.id, self.config.lease).await {
                Ok(Claim::Job(job)) => self.execute(&pool, job).await,
                Ok(Claim::Expired { id, kind }) => {
                    self.count(kind, "dead");
                    tracing::error!(
                        job = id,
                        kind = kind.as_str(),
                        "job is dead: its worker stopped during its last attempt"
                    );
                }
                Ok(Claim::Empty) => {
                    let mut stop = stop.clone();
                    tokio::select! {
                        () = woken => {}
                        () = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = stop.wait_for(|stop| *stop) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        error = crate::db::describe_error(&error),
                        "cannot claim a job"
                    );
                    tokio::time::sleep(self.config.poll_interval).await;
                }
            }
        }
    }

    async fn execute(&self, pool: &Pool, job: Claimed) {
        let started = Instant::now();
        self.metrics.jobs.running.inc();
        let outcome = tokio::time::timeout(self.config.job_timeout, self.attempt(pool, &job)).await;
        self.metrics.jobs.running.dec();
        let elapsed = started.elapsed();
        self.metrics.jobs.busy.inc_by(elapsed.as_secs_f64());
        let kind = job.kind.as_str();
        self.metrics
            .jobs
            .duration
            .get_or_create(&JobKindLabels { kind })
            .observe(elapsed.as_secs_f64());
        let error = match outcome {
            Ok(Ok(Some(result))) => {
                self.count(job.kind, "done");
                tracing::info!(job = job.id, kind, attempt = job.attempt, %result,
                    duration_ms = elapsed.as_millis() as u64, "job done");
                return;
            }
            Ok(Ok(None)) => {
                self.count(job.kind, "lost");
                tracing::warn!(
                    job = job.id,
                    kind,
                    "job lease ran out before it started; another worker has it"
                );
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!(
                "timed out after {:?} (STOA_JOB_TIMEOUT)",
                self.config.job_timeout
            ),
        };
        let delay = self.retry.delay(job.attempt, rand::random::<f64>());
        match queue::fail(pool, &job, &self.id, &error, delay).await {
            Ok(Some(state)) if state == "dead" => {
                self.count(job.kind, "dead");
                tracing::error!(
                    job = job.id,
                    kind,
                    attempt = job.attempt,
                    error,
                    "job failed for the last time: dead (stoa-api jobs list --dead)"
                );
            }
            Ok(Some(state)) if state == "done" => {
                self.count(job.kind, "superseded");
                tracing::info!(
                    job = job.id,
                    kind,
                    error,
                    "job failed; a newer job with its key is queued and will do the work"
                );
            }
            Ok(Some(_)) => {
                self.count(job.kind, "retried");
                tracing::warn!(
                    job = job.id,
                    kind,
                    attempt = job.attempt,
                    error,
                    retry_in_ms = delay.as_millis() as u64,
                    "job failed; will retry"
                );
            }
            Ok(None) => self.count(job.kind, "lost"),
            Err(e) => tracing::warn!(
                job = job.id,
                kind,
                error = crate::db::describe_error(&e),
                "cannot record a failed attempt; the job runs again after its lease"
            ),
        }
    }

    /// The job's transaction: lock the row, run the handler, mark it done, commit.
    /// `Ok(None)`: the job is no longer ours.
    async fn attempt(
        &self,
        pool: &Pool,
        job: &Claimed,
    ) -> Result<Option<serde_json::Value>, kinds::JobError> {
        let mut tx = pool.begin().await?;
        // The pool's statement timeout is the API's; a job has its own deadline.
        sqlx::query("SELECT set_config('statement_timeout', $1, true)")
            .bind(format!("{}ms", self.config.job_timeout.as_millis()))
            .execute(&mut tx)
            .await?;
        if !queue::hold(&mut tx, job, &self.id).await? {
            return Ok(None);
        }
        let result = kinds::run(&mut tx, job.kind, &job.payload, self.context).await?;
        queue::finish(&mut tx, job).await?;
        tx.commit().await?;
        Ok(Some(result))
    }

    fn count(&self, kind: Kind, outcome: &'static str) {
        let kind = kind.as_str();
        self.metrics
            .jobs
            .attempts
            .get_or_create(&JobOutcomeLabels { kind, outcome })
            .inc();
    }

    /// Wakes the runners when a job is enqueued (the insert trigger's notification), so
    /// a new job starts at once rather than at the next poll. Listens again as the new
    /// role after a credential rotation (the old role's sessions must end).
    async fn listen(self: Arc<Self>, stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            if let Err(error) = self.listen_once().await {
                tracing::debug!(error = %error, "job listener reconnects");
                tokio::time::sleep(self.config.poll_interval).await;
            }
        }
    }

    async fn listen_once(&self) -> anyhow::Result<()> {
        let pool = self.database.pool().clone();
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(pool.session_options().clone());
        let mut listener = PgListener::connect_with(&own).await?;
        listener.listen(CHANNEL).await?;
        loop {
            match tokio::time::timeout(LISTENER_PING, listener.try_recv()).await {
                Ok(Ok(Some(_))) => self.wake.notify_waiters(),
                Ok(Ok(None)) => anyhow::bail!("the listening connection was lost"),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    if !Arc::ptr_eq(&self.database.pool(), &pool) {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn schedule(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.config.poll_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            ticks.tick().await;
            let pool = self.database.pool().as_ref().clone();
            match schedule::tick(&pool, &self.schedules, self.config.max_attempts).await {
                Ok(Tick::Enqueued(kinds)) if !kinds.is_empty() => {
                    let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                    tracing::info!(?kinds, "scheduled jobs enqueued");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    error = crate::db::describe_error(&error),
                    "cannot run the schedules; retrying next tick"
                ),
            }
        }
    }

    async fn watch_depth(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(DEPTH_EVERY);
        while !*stop.borrow() {
            ticks.tick().await;
            let pool = self.database.pool().as_ref().clone();
            match queue::depth(&pool).await {
                Ok(depth) => self.publish_depth(&depth),
                Err(error) => tracing::debug!(
                    error = crate::db::describe_error(&error),
                    "cannot read the queue depth"
                ),
            }
        }
    }

    fn publish_depth(&self, rows: &[queue::Depth]) {
        let mut total = QueueDepth::default();
        for kind in Kind::ALL {
            let row = rows.iter().find(|r| r.kind == kind.as_str());
            let row = row.cloned().unwrap_or_default();
            let name = kind.as_str();
            for (state, count) in [
                ("queued", row.queued),
                ("delayed", row.delayed),
                ("running", row.running),
                ("dead", row.dead),
            ] {
                self.metrics
                    .jobs
                    .jobs
                    .get_or_create(&JobLabels { kind: name, state })
                    .set(count);
            }
            self.metrics
                .jobs
                .oldest_due
                .get_or_create(&JobKindLabels { kind: name })
                .set(row.oldest_due_seconds);
            total.queued += u64::try_from(row.queued).unwrap_or(0);
            total.running += u64::try_from(row.running).unwrap_or(0);
            total.oldest_due_seconds = total.oldest_due_seconds.max(row.oldest_due_seconds);
        }
        self.depth.store(Arc::new(total));
    }
}

/// `stoa-api worker`: the worker with its own admin port (metrics, health, the pod state
/// the operator reads) and, with `STOA_DATABASE_URL_FILE`, live credential rotation.
pub async fn run_process(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new(crate::schema::required_version()));
    let pool =
        crate::db::pool(&config.database.url, &config.database).context("invalid database URL")?;
    let database = Arc::new(Db::new(pool, &config.database.url));
    crate::watch::publish_credentials(&database, &metrics);
    if let DatabaseUrlSource::File(path) = &config.database.url_source {
        crate::watch::spawn_credentials_watcher(
            database.clone(),
            metrics.clone(),
            &config,
            path.clone(),
            config.database.url.clone(),
        );
    }
    let admin = TcpListener::bind(config.http.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", config.http.admin_addr))?;
    let admin_addr = admin.local_addr()?;
    let worker = Worker::new(database.clone(), metrics.clone(), &config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_state = AdminState {
        worker: worker.clone(),
        database: database.clone(),
        metrics,
    };
    let mut admin_stop = stop_rx.clone();
    let admin_server =
        axum::serve(admin, admin_router(admin_state)).with_graceful_shutdown(async move {
            let _ = admin_stop.wait_for(|stop| *stop).await;
        });
    tracing::info!(admin = %admin_addr, "stoa-api worker: admin port listening");
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: finishing running jobs");
        let _ = stop_tx.send(true);
    });
    let admin_task = tokio::spawn(admin_server.into_future());
    worker.run(stop_rx, config.http.shutdown_timeout).await;
    let _ = admin_task.await;
    database.pool().close().await;
    Ok(())
}

#[derive(Clone)]
struct AdminState {
    worker: Arc<Worker>,
    database: Arc<Db>,
    metrics: Arc<Metrics>,
}

fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(STATE_PATH, get(pod_state))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> axum::response::Response {
    crate::admin_port::metrics_response(&state.metrics, &state.database.pool())
}

/// Ready when the database answers: a worker needs nothing else.
async fn readyz(State(state): State<AdminState>) -> (axum::http::StatusCode, &'static str) {
    let pool = state.database.pool().as_ref().clone();
    let check = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&pool),
    )
    .await;
    let up = matches!(check, Ok(Ok(_)));
    state.metrics.set_dependency_up("postgres", up);
    if up {
        (axum::http::StatusCode::OK, "ready")
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "database unreachable",
        )
    }
}

async fn pod_state(State(state): State<AdminState>) -> axum::Json<PodState> {
    axum::Json(PodState {
        keys: Vec::new(),
        database: (*state.database.credential()).clone(),
        schema_version: None,
        in_flight: u64::try_from(state.metrics.jobs.running.get()).unwrap_or(0),
        busy_seconds: state.metrics.jobs.busy.get(),
        limits: None,
        queue: Some(state.worker.depth()),
    })
}
