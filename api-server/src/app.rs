//! Start-up and shutdown: builds the state from the configuration, binds the listeners
//! and runs the API and admin servers until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use sqlx::PgPool;
use stoa_contract::pod::STATE_PATH;
use tokio::net::TcpListener;

use crate::auth::password::PasswordHashing;
use crate::auth::sealing::SecretSealer;
use crate::auth::tokens::{KeyRing, TokenService};
use crate::config::Config;
use crate::config::DatabaseUrlSource;
use crate::db::Db;
use crate::http::connections::{Connections, Peer};
use crate::keys::{KeySetFile, generate_keyset};
use crate::kv::Kv;
use crate::metrics::Metrics;
use crate::state::{AppState, Parts};
use stoa_contract::mfa_keys::MfaKeySetFile;

pub struct App {
    pub state: AppState,
    listener: TcpListener,
    admin_listener: TcpListener,
}

/// Loads the key set named by the configuration (with the bytes read, for the watcher), or
/// (only in `--dev`, where no directory is configured) generates one in memory.
fn load_keys(config: &Config) -> anyhow::Result<(KeySetFile, Option<Vec<u8>>)> {
    match &config.auth.keys_dir {
        Some(dir) => {
            let (file, bytes) = KeySetFile::read_dir_with_bytes(dir)?;
            Ok((file, Some(bytes)))
        }
        None => {
            tracing::warn!(
                "DEVELOPMENT KEY SET GENERATED: tokens will not survive a restart. Never use --dev in production; set STOA_JWT_KEYS_DIR."
            );
            Ok((generate_keyset(), None))
        }
    }
}

/// The MFA key set named by the configuration (with the bytes read, for the watcher), or
/// the fixed development key when none is configured (only `--dev` and commands that never
/// touch second factors get that far: `serve` refuses to start without one).
fn load_sealer(config: &Config) -> anyhow::Result<(SecretSealer, Option<Vec<u8>>)> {
    match &config.auth.mfa_keys_dir {
        Some(dir) => {
            let (file, bytes) = MfaKeySetFile::read_dir_with_bytes(dir)?;
            let sealer = SecretSealer::from_file(&file).context("invalid MFA key set")?;
            Ok((sealer, Some(bytes)))
        }
        None => Ok((SecretSealer::development(), None)),
    }
}

/// A listener on `addr` with room for `backlog` connections not yet accepted.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted server can listen again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

impl App {
    /// Builds everything that can fail at start-up, so `serve` either runs or exits with a
    /// clear error. `pool` overrides the configured database (tests pass their own).
    pub async fn build(config: Config, pool: Option<PgPool>) -> anyhow::Result<App> {
        let listener = listen(config.http.listen_addr, config.http.listen_backlog)
            .with_context(|| format!("cannot listen on {}", config.http.listen_addr))?;
        let admin_listener = TcpListener::bind(config.http.admin_addr)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", config.http.admin_addr))?;
        let (keyset, keyset_bytes) = load_keys(&config)?;
        let (sealer, mfa_keys_bytes) = load_sealer(&config)?;
        if mfa_keys_bytes.is_none() {
            tracing::warn!(
                "DEVELOPMENT MFA KEY: second-factor secrets are encrypted under a fixed, public key. Never use --dev in production; set STOA_MFA_KEYS_DIR."
            );
        }
        let state = assemble(config, pool, &keyset, sealer)?;
        spawn_background_tasks(&state, keyset_bytes, mfa_keys_bytes);
        Ok(App {
            state,
            listener,
            admin_listener,
        })
    }

    /// The state alone, for a command that serves requests in-process (`stoa-api seed`):
    /// no listeners, no background tasks (revocation checks read PostgreSQL directly), and
    /// a key set of its own, since its tokens never leave the process.
    pub fn state_only(config: Config, pool: Option<PgPool>) -> anyhow::Result<AppState> {
        let (sealer, _) = load_sealer(&config)?;
        assemble(config, pool, &generate_keyset(), sealer)
    }
}

/// The state, from the configuration and the signing key set. Over ~80 lines: every
/// part of the state is made here, in the order each needs the ones before it.
fn assemble(
    config: Config,
    pool: Option<PgPool>,
    keyset: &KeySetFile,
    sealer: SecretSealer,
) -> anyhow::Result<AppState> {
    let ring = KeyRing::from_file(keyset).context("invalid signing key set")?;
    let metrics = Arc::new(Metrics::new(crate::schema::required_version()));
    metrics.publish_keys(ring.kids());
    let tokens = TokenService::new(
        ring,
        config.auth.issuer.clone(),
        config.auth.audience.clone(),
        config.auth.access_token_ttl,
        config.auth.leeway,
        config.auth.token_cache_entries,
    );
    let passwords = PasswordHashing::new(&config.auth)?;
    let pool = match pool {
        Some(pool) => crate::db::pool_over(pool, &config.database),
        None => crate::db::pool(&config.database.url, &config.database),
    }
    .context("invalid database URL")?;
    let database = Arc::new(
        Db::new(pool, &config.database.url)
            .with_replica(&config.database, &config.database.url)
            .context("invalid read replica URL")?,
    );
    let kv = match &config.redis {
        Some(target) => Some(Kv::start(
            target,
            config.redis_ca_file.as_deref(),
            config.redis_timeout,
            metrics.clone(),
        )?),
        None => {
            tracing::info!(
                "no Redis (STOA_REDIS_URL, _SENTINELS or _CLUSTER): rate limits and revocation checks run without Redis; no response cache"
            );
            None
        }
    };
    if let Some(kv) = &kv {
        let database = database.clone();
        let window = crate::auth::revocation::MirrorWindow::of(&config.auth);
        let since = Arc::new(std::sync::Mutex::new(chrono::Utc::now()));
        let catch_up_db = database.clone();
        kv.set_catch_up(Box::new(move |conn| {
            let database = catch_up_db.clone();
            let since = since.clone();
            Box::pin(async move {
                let pool = database.pool().clone();
                let from = *since.lock().unwrap_or_else(|p| p.into_inner());
                let next = crate::auth::revocation::catch_up(&pool, conn, window, from).await?;
                *since.lock().unwrap_or_else(|p| p.into_inner()) = next;
                Ok(())
            })
        }));
        kv.set_resync(Box::new(move |conn| {
            let database = database.clone();
            Box::pin(async move {
                let pool = database.pool().clone();
                let restored = crate::auth::revocation::resync(&pool, conn.clone(), window).await?;
                crate::cache::flush(conn).await?;
                tracing::info!(
                    revocations = restored,
                    "redis resynced: revocations restored, cache flushed"
                );
                Ok(())
            })
        }));
    }
    let providers = crate::oauth::Providers::new(&config.sign_in, config.auth.leeway)?;
    metrics.create_provider_series(config.sign_in.providers.iter().map(|p| p.name.as_str()));
    let state = AppState::new(Parts {
        config,
        database,
        tokens,
        sealer,
        passwords,
        metrics,
        kv,
        providers,
    });
    Ok(state)
}

/// The feeds, watchers and monitors a serving replica runs beside its requests.
fn spawn_background_tasks(
    state: &AppState,
    keyset_bytes: Option<Vec<u8>>,
    mfa_keys_bytes: Option<Vec<u8>>,
) {
    state.security_log.spawn_writer(state.database.clone());
    let keys_dir = state.config.auth.keys_dir.clone();
    let url_source = state.config.database.url_source.clone();
    let initial_url = state.config.database.url.clone();
    let (local, window) = state.revocations.feed();
    match &state.kv {
        Some(kv) => {
            let database = state.database.clone();
            crate::auth::denylist::spawn(
                local,
                kv.clone(),
                move || database.pool().as_ref().clone(),
                window,
                state.metrics.clone(),
            );
            if let Some(near) = state.cache.near() {
                crate::cache::near::spawn(near.clone(), kv.clone(), state.metrics.clone());
            }
        }
        None => crate::auth::revocations_listen::spawn(
            local,
            state.database.clone(),
            window,
            state.config.database.acquire_timeout,
            state.metrics.clone(),
        ),
    }
    if let Some(routing) = state.reads.routing()
        && let Some(read) = &state.config.database.read
    {
        crate::reads::lag::spawn(
            routing.clone(),
            state.database.clone(),
            read.lag_check_interval,
            state.config.database.acquire_timeout,
        );
        match &state.kv {
            Some(kv) => crate::reads::writes::spawn(routing.clone(), kv.clone()),
            None => tracing::warn!(
                "read replica without STOA_REDIS_URL: pods cannot tell each other who wrote, so signed-in reads stay on the primary"
            ),
        }
    }
    crate::watch::publish_credentials(&state.database, &state.metrics);
    crate::server_limits::spawn_reader(state.clone());
    if let (Some(dir), Some(loaded)) = (keys_dir, keyset_bytes) {
        crate::watch::spawn_keyset_watcher(state.clone(), dir, loaded);
    }
    // Rows in the clear or under a retired key are sealed again now, and after every
    // change of the MFA key set.
    crate::watch::spawn_reseal(state.clone());
    if let (Some(dir), Some(loaded)) = (state.config.auth.mfa_keys_dir.clone(), mfa_keys_bytes) {
        crate::watch::spawn_mfa_keys_watcher(state.clone(), dir, loaded);
    }
    if let DatabaseUrlSource::File(path) = url_source {
        crate::watch::spawn_credentials_watcher(
            state.database.clone(),
            state.metrics.clone(),
            &state.config,
            path,
            initial_url,
        );
    }
}

impl App {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then: readiness turns false, the server keeps
    /// serving for `shutdown_delay` (so load balancers stop sending), then stops accepting
    /// and drains in-flight requests for at most `shutdown_timeout`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let delay = state.config.http.shutdown_delay;
        let drain_timeout = state.config.http.shutdown_timeout;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if state.config.worker.in_process {
            let worker = crate::jobs::worker::Worker::new(
                state.database.clone(),
                state.metrics.clone(),
                &state.config,
            );
            tokio::spawn(worker.run(stop_rx.clone(), drain_timeout));
        }

        let signal_state = state.clone();
        tokio::spawn(async move {
            shutdown.await;
            signal_state.begin_shutdown();
            tracing::info!(delay = ?delay, "shutdown requested: reporting not ready, then draining");
            tokio::time::sleep(delay).await;
            let _ = stop_tx.send(true);
        });

        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let connections = Connections::new(
            self.listener,
            state.config.http.max_connections,
            state.metrics.http_connections.clone(),
        );
        let api = axum::serve(
            connections,
            axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<Peer>(
                crate::http::service(state.clone()),
            ),
        )
        .with_graceful_shutdown(stopped(stop_rx.clone()));
        let admin = axum::serve(self.admin_listener, admin_router(state.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()));

        let api_addr = api.local_addr()?;
        tracing::info!(addr = %api_addr, "stoa-api listening");

        let servers = async { tokio::try_join!(api.into_future(), admin.into_future()) };
        let deadline = async {
            stopped(stop_rx.clone()).await;
            tokio::time::sleep(drain_timeout).await;
        };
        tokio::select! {
            result = servers => { result?; tracing::info!("drained, exiting"); }
            () = deadline => tracing::warn!(timeout = ?drain_timeout, "drain timed out; exiting with requests in flight"),
        }
        state.database.close().await;
        Ok(())
    }
}

/// The admin port: Prometheus metrics and readiness in detail (kept off the public port).
fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(crate::http::health::readyz_detail))
        .route(STATE_PATH, get(crate::http::health::pod_state))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::response::Response {
    crate::admin_port::metrics_response(&state.metrics, &state.db())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// Time to wait for a database during `--dev` start-up.
pub const DEV_DB_WAIT: Duration = Duration::from_secs(10);
