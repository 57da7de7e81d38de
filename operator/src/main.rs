//! The `stoa-operator` command: `run` (default) starts the controller; `crd` prints the CRD.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::runtime::Controller;
use kube::runtime::watcher;
use kube::{Api, Client};
use stoa_operator::controller::{Context, error_policy, reconcile};
use stoa_operator::crd::Stoa;
use stoa_operator::metrics::Metrics;

#[derive(Parser)]
#[command(
    name = "stoa-operator",
    version,
    about = "Kubernetes operator for Stoa"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the Stoa CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "STOA_OPERATOR_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "STOA_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Elect a leader through a Lease so several replicas can run.
    #[arg(long, env = "STOA_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    #[arg(
        long,
        env = "STOA_OPERATOR_LEASE_NAME",
        default_value = "stoa-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease (defaults to the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// `json` or `pretty`.
    #[arg(long, env = "STOA_OPERATOR_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        return match stoa_operator::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        _ => RunArgs::parse_from(["stoa-operator"]),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone)]
struct Health {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_format == "pretty" {
        builder.compact().init();
    } else {
        builder.json().flatten_event(true).init();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();

    let client = Client::try_default()
        .await
        .context("cannot configure the Kubernetes client")?;
    let metrics = Arc::new(Metrics::new());
    let health = Health {
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(false)),
    };
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.http_addr))?;
    let server = axum::serve(listener, http_router(health.clone()));
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "health server stopped");
        }
    });

    // Leader election: only the holder of the Lease reconciles.
    let _lease = if args.leader_election {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
                .with_namespace(&args.lease_namespace)
                .with_duration(15)
                .with_grace(5)
                .build()
                .await
                .context("cannot set up leader election")?;
        let (mut leading, task) = manager.watch().await;
        tracing::info!(lease = %args.lease_name, "waiting for leadership");
        while !*leading.borrow_and_update() {
            leading.changed().await.context("leader election stopped")?;
        }
        metrics.leader.set(1);
        tracing::info!("became leader");
        // Losing the lease ends the process; the next leader takes over cleanly.
        tokio::spawn(async move {
            while leading.changed().await.is_ok() {
                if !*leading.borrow_and_update() {
                    tracing::error!("lost leadership; exiting");
                    std::process::exit(1);
                }
            }
        });
        Some(task)
    } else {
        None
    };

    let stoas: Api<Stoa> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let owned =
        |_: ()| watcher::Config::default().labels("app.kubernetes.io/managed-by=stoa-operator");
    let namespace = args.namespace.as_deref();
    let context = Arc::new(Context::new(client.clone(), metrics.clone()));
    health.ready.store(true, Ordering::SeqCst);
    tracing::info!(namespace = ?args.namespace, "starting controller");
    Controller::new(stoas, watcher::Config::default())
        .owns(scoped::<Deployment>(&client, namespace), owned(()))
        .owns(scoped::<Service>(&client, namespace), owned(()))
        .owns(scoped::<ConfigMap>(&client, namespace), owned(()))
        .owns(scoped::<ServiceAccount>(&client, namespace), owned(()))
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile loop");
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
}

/// An API over one namespace, or all of them.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn http_router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                if h.ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move {
                match h.metrics.encode() {
                    Ok(body) => (StatusCode::OK, body),
                    Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                }
            }),
        )
        .with_state(health)
}
