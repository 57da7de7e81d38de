//! The `stoa-api` command: `serve` (default), `migrate`, `check-config`, `keys generate`,
//! `openapi`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use stoa_api::app::{App, shutdown_signal};
use stoa_api::config::Config;
use stoa_api::{db, keys, telemetry};

/// mimalloc returns freed memory to the OS promptly; with glibc's allocator the large
/// argon2 work areas (19 MiB each) ratchet up the resident size of a long-running server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "stoa-api", version, about = "The Stoa REST API server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve {
        /// Local development: generated key set, database created and migrated, readable logs.
        #[arg(long)]
        dev: bool,
    },
    /// Apply pending database migrations (safe to run concurrently) and exit.
    Migrate,
    /// Print the effective configuration with secrets redacted, and exit non-zero if invalid.
    CheckConfig {
        #[arg(long)]
        dev: bool,
    },
    /// Signing key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a fresh key set (one active Ed25519 key) to DIR/keyset.json.
    Generate {
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing key set.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve { dev: false }) {
        Command::Serve { dev } => serve(dev).await,
        Command::Migrate => migrate().await,
        Command::CheckConfig { dev } => {
            let config = Config::from_process_env(dev)?;
            for (key, value) in config.redacted() {
                println!("{key}={value}");
            }
            println!("# configuration is valid");
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Generate { dir, force },
        } => {
            if dir.join(keys::KEYSET_FILE).exists() && !force {
                anyhow::bail!(
                    "{} already exists; pass --force to replace it",
                    dir.join(keys::KEYSET_FILE).display()
                );
            }
            let set = keys::generate_keyset();
            set.write_dir(&dir)
                .with_context(|| format!("cannot write {}", dir.display()))?;
            println!(
                "wrote {} (active kid {})",
                dir.join(keys::KEYSET_FILE).display(),
                set.keys[0].kid
            );
            Ok(())
        }
        Command::Openapi => {
            println!("{}", stoa_api::http::openapi_document().to_pretty_json()?);
            Ok(())
        }
    }
}

async fn serve(dev: bool) -> anyhow::Result<()> {
    let config = Config::from_process_env(dev)?;
    telemetry::init(config.log_format, &config.log_filter);
    if dev {
        tracing::warn!("running in --dev mode: not for production");
        tokio::time::timeout(
            stoa_api::app::DEV_DB_WAIT,
            db::create_database_if_missing(&config.database.url),
        )
        .await
        .context("timed out connecting to PostgreSQL")?
        .context("cannot create the development database (is PostgreSQL running?)")?;
    }
    let app = App::build(config, None).await?;
    if dev {
        db::MIGRATOR
            .run(&**app.state.db())
            .await
            .context("migrating the development database")?;
    }
    tracing::info!(
        api = %app.local_addr()?,
        admin = %app.admin_addr()?,
        schema = db::required_schema_version(),
        "starting"
    );
    app.run(shutdown_signal()).await
}

async fn migrate() -> anyhow::Result<()> {
    let config = Config::from_process_env_for_migrate()?;
    telemetry::init(config.log_format, &config.log_filter);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(config.database.acquire_timeout)
        .connect_with(db::connect_options(&config.database.url, &config.database)?)
        .await
        .context("cannot connect to the database")?;
    let before = db::schema_status(&pool).await?;
    db::MIGRATOR.run(&pool).await.context("migration failed")?;
    let after = db::schema_status(&pool).await?;
    tracing::info!(?before, ?after, "migrations applied");
    println!(
        "schema is at version {} (was {:?})",
        db::required_schema_version(),
        before
    );
    Ok(())
}
