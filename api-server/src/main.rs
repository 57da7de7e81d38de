//! The `stoa-api` command: `serve` (default), `migrate`, `check-config`, `keys generate`,
//! `openapi`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use stoa_api::app::{App, shutdown_signal};
use stoa_api::config::Config;
use stoa_api::database_roles::{self, CredentialError};
use stoa_api::freed_memory::FreedMemory;
use stoa_api::schema::{self, MigrationError};
use stoa_api::{db, keys, telemetry};
use stoa_contract::credential_rotation::{CredentialReport, EXIT_SESSIONS_REMAIN};
use stoa_contract::migration::{self, MigrationReport, Phase};

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
    /// Apply pending database migrations (safe to run concurrently) and exit: 0 when done,
    /// 3 when the database holds a contract migration this binary does not know, 1 otherwise.
    Migrate {
        /// `expand`: additive steps only (while older pods still serve); `all`: contract
        /// steps too (once no older pod remains).
        #[arg(long, value_enum, default_value_t = PhaseArg::All)]
        phase: PhaseArg,
        /// Migrate even though the database holds contract steps this binary does not know
        /// (an approved rollback).
        #[arg(long)]
        allow_newer_contract: bool,
        /// Also write a one-line JSON report here (a Job's termination-message path).
        #[arg(long)]
        report_file: Option<PathBuf>,
    },
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
    /// The key set that encrypts second-factor secrets (`mfa-keys.json`).
    MfaKeys {
        #[command(subcommand)]
        command: MfaKeysCommand,
    },
    /// Run background jobs and the maintenance schedules (one process per pod; run as
    /// many as the queue needs: they share the work through the database).
    Worker,
    /// Inspect the job queue, and retry dead jobs.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Print the settings reference (Markdown; `make docs` writes it into the book).
    Reference {
        #[command(subcommand)]
        what: ReferenceCommand,
    },
    /// Load a small, fixed demo data set for front-end work (users with the password
    /// `stoa-demo-password`, articles with tags, follows, favorites, comments) through the
    /// API's own handlers. Refuses a database that already has users, unless --force.
    Seed {
        /// The development database (`serve --dev`'s): created and migrated if needed.
        #[arg(long)]
        dev: bool,
        /// Load even though the database has users (demo users that exist are reused;
        /// articles they already have are not written again).
        #[arg(long, conflicts_with = "if_empty")]
        force: bool,
        /// Succeed without loading anything when the database has users.
        #[arg(long)]
        if_empty: bool,
    },
    /// Set the language of article search (a PostgreSQL text search configuration such
    /// as `english`, `german` or `simple`) and recompute every article's search vector;
    /// without LANGUAGE, print the current one.
    SearchLanguage { language: Option<String> },
    /// Account administration with the database credential, for the first admin and for
    /// break-glass access: nothing in the API can make an admin.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Database credential rotation steps, run by the operator as Jobs with the admin
    /// credential (STOA_DATABASE_URL / _FILE). Exit 4: sessions of the role remain.
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
        /// Also write a one-line JSON report here (a Job's termination-message path).
        #[arg(long, global = true)]
        report_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ReferenceCommand {
    /// Every `STOA_*` setting: default, bounds, meaning.
    Settings,
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Create the group and login roles if missing, grant the group the application's
    /// privileges, and set ROLE's password (read from a file, never an argument).
    Publish {
        #[arg(long)]
        group: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        password_file: PathBuf,
    },
    /// Wait until no session of ROLE remains, then remove its password.
    Expire {
        #[arg(long)]
        role: String,
        #[arg(long, default_value_t = 60)]
        wait_seconds: u64,
        /// End ROLE's idle sessions instead of waiting for them: behind a transaction
        /// pooler they are the pooler's server connections, kept after every client moved
        /// to the new role (PgBouncer keeps one for `server_idle_timeout`, 10 min by default).
        #[arg(long)]
        end_idle_sessions: bool,
    },
    /// Drop the login roles and the group.
    Drop {
        #[arg(long)]
        group: String,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Jobs not yet done, newest first, as JSON lines; with the queue's depth by kind.
    List {
        /// Only dead jobs (failed on every attempt).
        #[arg(long)]
        dead: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Queue a dead job again with a fresh set of attempts.
    Retry { id: i64 },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Give USERNAME the admin role (in the token of their next sign-in or refresh).
    Grant { username: String },
    /// Withdraw USERNAME's admin role and end their sessions.
    Revoke { username: String },
    /// Disable USERNAME's account and end their sessions.
    Disable { username: String },
    /// Re-enable USERNAME's account.
    Enable { username: String },
    /// Turn off USERNAME's second factor (lost authenticator and recovery codes) and end
    /// their sessions.
    ResetMfa { username: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PhaseArg {
    Expand,
    All,
}

impl From<PhaseArg> for Phase {
    fn from(phase: PhaseArg) -> Phase {
        match phase {
            PhaseArg::Expand => Phase::Expand,
            PhaseArg::All => Phase::All,
        }
    }
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

#[derive(Subcommand)]
enum MfaKeysCommand {
    /// Write a fresh MFA key set (one active key) to DIR/mfa-keys.json.
    Generate {
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing key set (every secret sealed under it is lost).
        #[arg(long)]
        force: bool,
    },
    /// Add a new active key to DIR/mfa-keys.json; the current one is retired (still
    /// decrypts). Serving pods seal every secret again under the new key once they load it.
    Rotate {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Remove a retired key from DIR/mfa-keys.json. Refused while the database
    /// (STOA_DATABASE_URL) still holds secrets sealed under it.
    Drop {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        kid: String,
    },
    /// Second-factor secrets per sealing key, from the database.
    Status,
    /// Seal every secret in the clear or under a retired key with the active key of
    /// STOA_MFA_KEYS_DIR now (serving pods do this by themselves).
    Reseal,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let freed_memory = FreedMemory::mimalloc();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    freed_memory.install(&mut builder);
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.spawn(freed_memory.make_up_owed_collections());
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("error: {e:#}");
            let refused = matches!(
                e.downcast_ref::<MigrationError>(),
                Some(MigrationError::NewerContract { .. })
            );
            let busy = matches!(
                e.downcast_ref::<CredentialError>(),
                Some(CredentialError::SessionsRemain { .. })
            );
            if refused {
                ExitCode::from(migration::EXIT_NEWER_CONTRACT as u8)
            } else if busy {
                ExitCode::from(EXIT_SESSIONS_REMAIN as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Writes a command's output; a reader that went away (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// One arm per subcommand, each a call or two: it stays whole so the command line reads
/// as one table (over ~80 lines for that reason).
async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve { dev: false }) {
        Command::Serve { dev } => serve(dev).await,
        Command::Migrate {
            phase,
            allow_newer_contract,
            report_file,
        } => migrate(phase.into(), allow_newer_contract, report_file).await,
        Command::CheckConfig { dev } => {
            let config = Config::from_process_env(dev)?;
            let mut text = String::new();
            for (key, value) in config.redacted() {
                text.push_str(&format!("{key}={value}\n"));
            }
            text.push_str("# configuration is valid\n");
            emit(&text)
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
        Command::MfaKeys { command } => mfa_keys(command).await,
        Command::SearchLanguage { language } => {
            let config = Config::from_process_env_for_migrate()?;
            let pool = command_pool(&config).await?;
            match language {
                None => println!("{}", stoa_api::search::language(&pool).await?),
                Some(language) => {
                    let rewritten = stoa_api::search::set_language(&pool, &language).await?;
                    println!("search language {language}: {rewritten} articles re-indexed");
                }
            }
            Ok(())
        }
        Command::Admin { command } => admin(command).await,
        Command::Worker => {
            let config = Config::from_process_env_for_worker()?;
            let _logging = telemetry::init(&config);
            let _error_tracking = stoa_api::error_tracking::init(&config);
            stoa_api::jobs::worker::run_process(config, shutdown_signal()).await
        }
        Command::Jobs { command } => jobs(command).await,
        Command::Seed {
            dev,
            force,
            if_empty,
        } => {
            let when = if force {
                stoa_api::seed::WhenNotEmpty::Load
            } else if if_empty {
                stoa_api::seed::WhenNotEmpty::Skip
            } else {
                stoa_api::seed::WhenNotEmpty::Refuse
            };
            seed(dev, when).await
        }
        Command::Openapi => emit(&format!(
            "{}\n",
            stoa_api::http::openapi_document().to_pretty_json()?
        )),
        Command::Reference {
            what: ReferenceCommand::Settings,
        } => emit(&stoa_api::config::settings_reference()?),
        Command::Credentials {
            command,
            report_file,
        } => credentials(command, report_file).await,
    }
}

/// One connection for a command (migrate, admin, search-language), with the setting's
/// connect deadline.
async fn command_pool(config: &Config) -> anyhow::Result<db::Pool> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(config.database.acquire_timeout)
        .connect_with(db::migration_connect_options(&config.database.url)?)
        .await
        .context("cannot connect to the database")?;
    Ok(db::Pool::new(pool))
}

async fn mfa_keys(command: MfaKeysCommand) -> anyhow::Result<()> {
    use stoa_api::auth::sealing;
    use stoa_contract::mfa_keys::{MFA_KEYS_FILE, MfaKeySetFile, generate_mfa_keyset};
    let read = |dir: &std::path::Path| -> anyhow::Result<MfaKeySetFile> {
        Ok(MfaKeySetFile::read_dir_with_bytes(dir)?.0)
    };
    let database = || async {
        let config = Config::from_process_env_for_migrate()?;
        command_pool(&config).await
    };
    match command {
        MfaKeysCommand::Generate { dir, force } => {
            if dir.join(MFA_KEYS_FILE).exists() && !force {
                anyhow::bail!(
                    "{} already exists; pass --force to replace it (secrets sealed under it become unreadable)",
                    dir.join(MFA_KEYS_FILE).display()
                );
            }
            let set = generate_mfa_keyset();
            set.write_dir(&dir)
                .with_context(|| format!("cannot write {}", dir.display()))?;
            println!(
                "wrote {} (active kid {})",
                dir.join(MFA_KEYS_FILE).display(),
                set.keys[0].kid
            );
        }
        MfaKeysCommand::Rotate { dir } => {
            let mut set = read(&dir)?;
            set.parse()?;
            let kid = set.rotate().kid.clone();
            set.write_dir(&dir)
                .with_context(|| format!("cannot write {}", dir.display()))?;
            println!("new active MFA key {kid}; the previous keys are retired (still decrypt)");
        }
        MfaKeysCommand::Drop { dir, kid } => drop_mfa_key(read(&dir)?, &dir, &kid).await?,
        MfaKeysCommand::Status => {
            let pool = database().await?;
            for (kid, rows) in sealing::rows_per_key(&pool).await? {
                println!("{}\t{rows}", kid.as_deref().unwrap_or("(in the clear)"));
            }
        }
        MfaKeysCommand::Reseal => reseal_mfa_secrets().await?,
    }
    Ok(())
}

/// `stoa-api mfa-keys drop`: refused while the database holds secrets sealed under `kid`.
async fn drop_mfa_key(
    mut set: stoa_contract::mfa_keys::MfaKeySetFile,
    dir: &std::path::Path,
    kid: &str,
) -> anyhow::Result<()> {
    let config = Config::from_process_env_for_migrate()?;
    let pool = command_pool(&config).await?;
    let sealed = stoa_api::auth::sealing::rows_per_key(&pool)
        .await?
        .into_iter()
        .find(|(key, _)| key.as_deref() == Some(kid))
        .map_or(0, |(_, rows)| rows);
    if sealed > 0 {
        anyhow::bail!(
            "{sealed} second-factor secrets are still sealed under {kid}: run `stoa-api mfa-keys reseal` (or wait for the serving pods) first"
        );
    }
    if !set.drop_retired(kid) {
        anyhow::bail!("{kid} is not a retired key in {}", dir.display());
    }
    set.write_dir(dir)
        .with_context(|| format!("cannot write {}", dir.display()))?;
    println!("dropped retired MFA key {kid}");
    Ok(())
}

/// `stoa-api mfa-keys reseal`: one pass with the key set of STOA_MFA_KEYS_DIR.
async fn reseal_mfa_secrets() -> anyhow::Result<()> {
    use stoa_api::auth::sealing::{self, SecretSealer};
    let config = Config::from_process_env_for_migrate()?;
    let dir = config
        .auth
        .mfa_keys_dir
        .clone()
        .ok_or_else(|| anyhow::anyhow!("STOA_MFA_KEYS_DIR is not set: nothing to seal with"))?;
    let (file, _) = stoa_contract::mfa_keys::MfaKeySetFile::read_dir_with_bytes(&dir)?;
    let sealer = SecretSealer::from_file(&file)?;
    let pool = command_pool(&config).await?;
    let report = sealing::reseal_all(&pool, &sealer).await?;
    println!(
        "resealed {} under {}; {} sealed under keys not in this set",
        report.resealed,
        sealer.active_kid(),
        report.unreadable
    );
    if report.unreadable > 0 {
        anyhow::bail!("some secrets could not be opened with this key set");
    }
    Ok(())
}

async fn admin(command: AdminCommand) -> anyhow::Result<()> {
    use stoa_api::auth::Role;
    use stoa_api::auth::accounts::{self, Change};
    let (username, change) = match command {
        AdminCommand::Grant { username } => (username, Change::SetRole(Role::Admin)),
        AdminCommand::Revoke { username } => (username, Change::SetRole(Role::User)),
        AdminCommand::Disable { username } => (username, Change::Disable),
        AdminCommand::Enable { username } => (username, Change::Enable),
        AdminCommand::ResetMfa { username } => return reset_mfa(username).await,
    };
    let config = Config::from_process_env_for_migrate()?;
    let _logging = telemetry::init(&config);
    let pool = command_pool(&config).await?;
    let changed = accounts::change(&pool, &username, change, None).await?;
    let account = &changed.account;
    let state = if account.disabled_at.is_some() {
        "disabled"
    } else {
        "enabled"
    };
    let outcome = if changed.changed { "now" } else { "already" };
    // Replicas hear of the ended sessions from PostgreSQL (without Redis) or from the
    // revocation catch-up every replica runs on each dependency probe (with Redis).
    println!(
        "{username} is {outcome} {} ({state}); {} session(s) ended",
        account.role,
        changed.revoked_families.len()
    );
    tracing::info!(target: "stoa::security", event = "admin_action", action = change.action(),
        user_id = %account.id, sessions_revoked = changed.revoked_families.len(),
        "account changed from the command line");
    Ok(())
}

async fn jobs(command: JobsCommand) -> anyhow::Result<()> {
    use stoa_api::jobs::queue;
    let config = Config::from_process_env_for_migrate()?;
    let pool = command_pool(&config).await?;
    match command {
        JobsCommand::List { dead, limit } => {
            for depth in queue::depth(&pool).await? {
                println!(
                    "# {}: {} queued, {} delayed, {} running, {} dead; oldest due {:.0} s",
                    depth.kind,
                    depth.queued,
                    depth.delayed,
                    depth.running,
                    depth.dead,
                    depth.oldest_due_seconds
                );
            }
            for job in queue::list(&pool, dead, limit.clamp(1, 10_000)).await? {
                println!("{}", serde_json::to_string(&job)?);
            }
        }
        JobsCommand::Retry { id } => {
            if !queue::retry_dead(&pool, id).await? {
                anyhow::bail!("job {id} is not dead (only dead jobs are retried)");
            }
            println!("job {id} queued again");
        }
    }
    Ok(())
}

/// `stoa-api admin reset-mfa`.
async fn reset_mfa(username: String) -> anyhow::Result<()> {
    let config = Config::from_process_env_for_migrate()?;
    let _logging = telemetry::init(&config);
    let pool = command_pool(&config).await?;
    let (user_id, ended) = stoa_api::auth::accounts::reset_mfa(&pool, &username, None).await?;
    match ended {
        None => println!("{username} has no second factor; nothing changed"),
        Some(families) => {
            println!(
                "{username}: second factor removed; {} session(s) ended",
                families.len()
            );
            tracing::info!(target: "stoa::security", event = "admin_action", action = "reset_mfa",
                user_id = %user_id, sessions_revoked = families.len(),
                "second factor reset from the command line");
        }
    }
    Ok(())
}

async fn credentials(
    command: CredentialsCommand,
    report_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let config = Config::from_process_env_for_migrate()?;
    let _logging = telemetry::init(&config);
    let result = async {
        let mut conn = tokio::time::timeout(
            config.database.acquire_timeout,
            sqlx::ConnectOptions::connect(&db::migration_connect_options(&config.database.url)?),
        )
        .await
        .context("timed out connecting to the database")?
        .context("cannot connect to the database")?;
        let done = match command {
            CredentialsCommand::Publish {
                group,
                role,
                password_file,
            } => {
                let password = std::fs::read_to_string(&password_file)
                    .with_context(|| format!("cannot read {}", password_file.display()))?;
                database_roles::publish(&mut conn, &group, &role, password.trim()).await?;
                format!("{role} (in {group}) has the new password")
            }
            CredentialsCommand::Expire {
                role,
                wait_seconds,
                end_idle_sessions,
            } => {
                let idle = if end_idle_sessions {
                    database_roles::IdleSessions::End
                } else {
                    database_roles::IdleSessions::Wait
                };
                database_roles::expire(&mut conn, &role, Duration::from_secs(wait_seconds), idle)
                    .await?;
                format!("{role} has no session left and no password")
            }
            CredentialsCommand::Drop { group } => {
                database_roles::drop_roles(&mut conn, &group).await?;
                format!("dropped {group} and its login roles")
            }
        };
        anyhow::Ok(done)
    }
    .await;
    let report = match &result {
        Ok(message) => CredentialReport {
            ok: true,
            message: message.clone(),
            remaining: Vec::new(),
        },
        Err(e) => CredentialReport {
            ok: false,
            message: format!("{e:#}"),
            remaining: match e.downcast_ref() {
                Some(CredentialError::SessionsRemain { remaining, .. }) => remaining.clone(),
                _ => Vec::new(),
            },
        },
    };
    if let Some(path) = report_file {
        let line = serde_json::to_string(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, line) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the report");
        }
    }
    println!("{}", report.message);
    result.map(|_| ())
}

async fn seed(dev: bool, when: stoa_api::seed::WhenNotEmpty) -> anyhow::Result<()> {
    let mut config = Config::from_process_env_for_seed(dev)?;
    if std::env::var_os("STOA_LOG").is_none() {
        // Its requests' access log would bury the one line of result.
        config.log_filter = "warn".to_owned();
    }
    let _logging = telemetry::init(&config);
    if dev {
        prepare_dev_database(&config).await?;
    }
    // The command's own requests, from this host: no budget to spend.
    config.rate_limits.enabled = false;
    let state = App::state_only(config, None)?;
    let pool = state.db().as_ref().clone();
    if dev {
        migrate_dev_database(&pool).await?;
    }
    let summary = stoa_api::seed::load(stoa_api::http::router(state), &pool, when).await?;
    println!("{summary}");
    Ok(())
}

/// `--dev`: the development database gets every migration, through the same migrator as
/// `stoa-api migrate` (a database ahead by expand steps, e.g. after switching to an older
/// branch, is tolerated; one ahead by a contract step is refused with the reason).
async fn migrate_dev_database(pool: &db::Pool) -> anyhow::Result<()> {
    let run = schema::migrate(pool, Phase::All, false)
        .await
        .context("migrating the development database")?;
    if !run.applied.is_empty() {
        tracing::info!(applied = ?run.applied, "development database migrated");
    }
    Ok(())
}

/// `--dev`: the development database exists (created if PostgreSQL has none).
async fn prepare_dev_database(config: &Config) -> anyhow::Result<()> {
    tracing::warn!("running in --dev mode: not for production");
    tokio::time::timeout(
        stoa_api::app::DEV_DB_WAIT,
        db::create_database_if_missing(&config.database.url),
    )
    .await
    .context("timed out connecting to PostgreSQL")?
    .context("cannot create the development database (is PostgreSQL running?)")
}

async fn serve(dev: bool) -> anyhow::Result<()> {
    let config = Config::from_process_env(dev)?;
    let _logging = telemetry::init(&config);
    // Declared after the log writer's guard, so dropped before it: queued events are
    // flushed while logging still works.
    let _error_tracking = stoa_api::error_tracking::init(&config);
    if dev {
        prepare_dev_database(&config).await?;
    }
    let app = App::build(config, None).await?;
    if dev {
        migrate_dev_database(&app.state.db()).await?;
    }
    tracing::info!(
        api = %app.local_addr()?,
        admin = %app.admin_addr()?,
        schema = schema::required_version(),
        "starting"
    );
    app.run(shutdown_signal()).await
}

async fn migrate(
    phase: Phase,
    allow_newer_contract: bool,
    report_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let config = Config::from_process_env_for_migrate()?;
    let _logging = telemetry::init(&config);
    let mut report = MigrationReport {
        outcome: migration::Outcome::Failed,
        phase,
        schema_version: None,
        required_version: schema::required_version(),
        applied: Vec::new(),
        unknown_contract: Vec::new(),
        unknown_expand: Vec::new(),
        pending_contract: Vec::new(),
        message: String::new(),
    };
    let result = run_migrations(&config, phase, allow_newer_contract, &mut report).await;
    if let Err(e) = &result {
        report.message = format!("{e:#}");
        if let Some(MigrationError::NewerContract { versions }) = e.downcast_ref() {
            report.outcome = migration::Outcome::NewerContract;
            report.unknown_contract.clone_from(versions);
        }
    }
    if let Some(path) = report_file {
        // The report is for the operator; failing to write it must not hide the outcome.
        if let Err(e) = std::fs::write(&path, report.to_line()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the migration report");
        }
    }
    result
}

async fn run_migrations(
    config: &Config,
    phase: Phase,
    allow_newer_contract: bool,
    report: &mut MigrationReport,
) -> anyhow::Result<()> {
    let pool = command_pool(config).await?;
    let run = schema::migrate(&pool, phase, allow_newer_contract).await?;
    let (unknown_contract, unknown_expand) = run.after.unknown();
    report.outcome = migration::Outcome::Applied;
    report.schema_version = run.after.version();
    report.applied.clone_from(&run.applied);
    report.unknown_contract = unknown_contract;
    report.unknown_expand = unknown_expand;
    report.pending_contract = run.after.pending_contract();
    report.message = format!(
        "schema at {} ({} applied by this run, phase {})",
        report
            .schema_version
            .map_or_else(|| "no version".to_owned(), |v| v.to_string()),
        run.applied.len(),
        phase.as_str()
    );
    tracing::info!(applied = ?run.applied, schema_version = ?report.schema_version, phase = phase.as_str(), "migrations applied");
    println!("{}", report.message);
    Ok(())
}
