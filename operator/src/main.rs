//! The `stoa-operator` command: `run` (default) starts the controller; `crd` prints the CRD.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use stoa_operator::controller::{Context, error_policy, reconcile, service_monitor_supported};
use stoa_operator::metrics::Metrics;
use stoa_operator::startup::{self, Health};

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
    /// Print a reference page of the book (Markdown; `make docs` writes them).
    Reference {
        #[command(subcommand)]
        what: ReferenceCommand,
    },
    /// Print the Stoa CustomResourceDefinition as YAML.
    Crd {
        /// Print the Helm chart's template (upgradable, kept on uninstall) instead.
        #[arg(long)]
        helm: bool,
    },
    /// Print, without a cluster, the objects the reconciler would apply for the Stoa(s) in
    /// a file (the same builders), to review or diff a change before applying it.
    Render {
        /// A YAML file with one or more Stoas (`-` for standard input); a `status` (as
        /// `kubectl get stoa -o yaml` prints it) supplies what was approved so far.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// A directory of YAML files with the objects that exist now (e.g. `kubectl get
        /// deploy,svc,cm,... -o yaml`): each rendered object is marked new, changed or
        /// unchanged, as the reconciler would judge it.
        #[arg(long)]
        existing: Option<PathBuf>,
        /// Namespace for Stoas whose metadata has none.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// The operator's namespace (its NetworkPolicy rule).
        #[arg(long, default_value = "stoa-system")]
        operator_namespace: String,
        /// The cluster has the Prometheus Operator's ServiceMonitor type.
        #[arg(long)]
        service_monitors: bool,
    },
}

#[derive(Subcommand)]
enum ReferenceCommand {
    /// Every field of the `Stoa` resource, from the CRD's schema.
    Crd,
    /// Every condition and reason the operator reports.
    Conditions,
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
    /// The operator's namespace (from the downward API): where its Lease lives, and which
    /// namespace the Stoa NetworkPolicies let reach the pods' admin port.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's name in the Lease (from the downward API).
    #[arg(long, env = "POD_NAME", default_value = "stoa-operator")]
    pod_name: String,
    /// `json` or `pretty`.
    #[arg(long, env = "STOA_OPERATOR_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

/// Reads the Stoa file (and the existing objects) for `render`.
fn render(
    file: &Path,
    existing: Option<&Path>,
    namespace: &str,
    options: &stoa_operator::render::Options,
) -> Result<String, String> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let input = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("cannot read stdin: {e}"))?
    } else {
        read(file)?
    };
    let existing = match existing {
        None => None,
        Some(dir) => {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            let mut objects = Vec::new();
            for entry in entries.flatten() {
                let path = entry.path();
                let yaml = matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                );
                if yaml {
                    objects.extend(stoa_operator::render::documents(&read(&path)?)?);
                }
            }
            Some(objects)
        }
    };
    stoa_operator::render::render_documents(&input, existing.as_deref(), namespace, options)
}

/// Writes a command's output; a reader that went away (`| head`) is not a failure.
fn emit(text: &str) -> ExitCode {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot write the output: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Reference { what }) = &cli.command {
        return emit(&match what {
            ReferenceCommand::Crd => stoa_operator::crd_reference::reference(),
            ReferenceCommand::Conditions => stoa_operator::conditions::reference(),
        });
    }
    if let Some(Command::Crd { helm }) = cli.command {
        let yaml = if helm {
            stoa_operator::crd_helm_template()
        } else {
            stoa_operator::crd_yaml()
        };
        return match yaml {
            Ok(yaml) => emit(&yaml),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Render {
        file,
        existing,
        namespace,
        operator_namespace,
        service_monitors,
    }) = cli.command
    {
        let options = stoa_operator::render::Options {
            service_monitors,
            operator_namespace: Some(operator_namespace),
        };
        return match render(&file, existing.as_deref(), &namespace, &options) {
            Ok(yaml) => emit(&yaml),
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

/// Waits until this replica holds the Lease. Losing it later, or no longer being sure of
/// it, ends the process (reconciles in flight stop with it); the next leader takes over
/// cleanly. The returned task keeps renewing the Lease.
async fn lead(
    client: &Client,
    args: &RunArgs,
    metrics: &Metrics,
) -> anyhow::Result<
    tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
> {
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&args.pod_name)
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
    let leases: Api<Lease> = Api::namespaced(client.clone(), &args.lease_namespace);
    let (name, identity) = (args.lease_name.clone(), args.pod_name.clone());
    tokio::spawn(async move {
        let why =
            stoa_operator::leader::lost(leading, leases, &name, &identity, Duration::from_secs(5))
                .await;
        tracing::error!(reason = %why, "stopped leading; exiting");
        std::process::exit(1);
    });
    Ok(task)
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
    let namespace = args.namespace.as_deref();
    // One clear line for a missing CRD or permission, before anything else starts.
    startup::preflight(&client, namespace).await?;
    let service_monitors = service_monitor_supported(&client)
        .await
        .context("cannot check for the ServiceMonitor CRD")?;

    let metrics = Arc::new(Metrics::new());
    let health = Health::new(metrics.clone());
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.http_addr))?;
    let server = axum::serve(listener, startup::router(health.clone()));
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    // Ready now, leader or not: a standby must pass its readiness probe, or a rolling
    // update of the operator (which waits for the new pod to be Ready) never completes.
    health.mark_started();

    // Leader election: only the holder of the Lease reconciles.
    let _lease = if args.leader_election {
        Some(lead(&client, &args, &metrics).await?)
    } else {
        None
    };

    let context = Arc::new(
        Context::new(client.clone(), metrics.clone())
            .with_service_monitors(service_monitors)
            .with_operator_namespace(&args.lease_namespace),
    );
    tracing::info!(namespace = ?args.namespace, service_monitors, "starting controller");
    let controller = stoa_operator::triggers::controller(&client, namespace, service_monitors);
    controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                // Logged with its retry delay by the error policy.
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                // A reconcile queued for an object deleted meanwhile: expected.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(object = %obj, "object gone before its reconcile");
                }
                Err(e) => tracing::warn!(error = %e, "controller stream error"),
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
}
