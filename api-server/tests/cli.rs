#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The `stoa-api` command line: check-config, migrate, keys generate.
mod common;

use std::process::Command;

use common::TestApp;
use sqlx::PgPool;

fn stoa_api() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stoa-api"));
    // Start from a clean slate: only what each test sets.
    for (key, _) in std::env::vars() {
        if key.starts_with("STOA_") {
            command.env_remove(key);
        }
    }
    command
}

fn url_of(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}:hunter2@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap()
    )
}

#[test]
fn check_config_prints_settings_with_secrets_redacted() {
    let keys = tempfile::tempdir().unwrap();
    let out = stoa_api()
        .args(["check-config"])
        .env(
            "STOA_DATABASE_URL",
            "postgres://stoa:hunter2@db.internal:5432/stoa",
        )
        .env("STOA_REDIS_URL", "redis://:s3cret@cache:6379")
        .env("STOA_JWT_KEYS_DIR", keys.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("STOA_DATABASE_URL=postgres://stoa:<redacted>@db.internal:5432/stoa"),
        "{stdout}"
    );
    assert!(stdout.contains("STOA_ACCESS_TOKEN_TTL=15m"));
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("s3cret"),
        "{stdout}"
    );
}

#[test]
fn check_config_names_the_bad_variable_and_fails() {
    let out = stoa_api()
        .args(["check-config"])
        .env("STOA_DATABASE_URL", "postgres://stoa:hunter2@db/stoa")
        .env("STOA_JWT_KEYS_DIR", "/tmp")
        .env("STOA_RATE_LIMIT_PER_IP", "lots")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(stderr.contains("STOA_RATE_LIMIT_PER_IP"), "{stderr}");
    assert!(!stderr.contains("hunter2"));

    let missing = stoa_api().args(["check-config"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8(missing.stderr)
            .unwrap()
            .contains("STOA_DATABASE_URL is required")
    );
}

#[test]
fn keys_generate_writes_a_key_set_the_server_accepts_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = stoa_api()
        .args(["keys", "generate", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let file = stoa_api::keys::KeySetFile::read_dir(dir.path()).unwrap();
    stoa_api::auth::tokens::KeyRing::from_file(&file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("keyset.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private keys are not readable by others");
    let again = stoa_api()
        .args(["keys", "generate", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "an existing key set is not replaced without --force"
    );
}

#[sqlx::test(migrations = false)]
async fn migrate_applies_the_schema_once_even_when_run_concurrently(pool: PgPool) {
    let url = url_of(&pool);
    // Two migrators at once: the advisory lock serialises them; both succeed.
    let runs: Vec<_> = (0..2)
        .map(|_| {
            stoa_api()
                .arg("migrate")
                .env("STOA_DATABASE_URL", &url)
                .env("STOA_LOG", "warn")
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let status = tokio::task::spawn_blocking(move || run.wait_with_output().unwrap())
            .await
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    // Reversible migrations appear twice in the migrator (up and down).
    let mut embedded: Vec<i64> = stoa_api::db::MIGRATOR.iter().map(|m| m.version).collect();
    embedded.dedup();
    assert_eq!(versions, embedded);
    // Idempotent.
    let again = stoa_api()
        .arg("migrate")
        .env("STOA_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(again.status.success());

    let unreachable = stoa_api()
        .arg("migrate")
        .env("STOA_DATABASE_URL", "postgres://nobody:pw@127.0.0.1:1/none")
        .env("STOA_DB_ACQUIRE_TIMEOUT", "1s")
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8(unreachable.stderr).unwrap();
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
}

#[sqlx::test(migrations = false)]
async fn the_expand_phase_leaves_contract_steps_for_after_the_rollout(pool: PgPool) {
    let url = url_of(&pool);
    let report = tempfile::NamedTempFile::new().unwrap();
    let run = |phase: &str| {
        stoa_api()
            .args(["migrate", "--phase", phase, "--report-file"])
            .arg(report.path())
            .env("STOA_DATABASE_URL", &url)
            .env("STOA_LOG", "warn")
            .output()
            .unwrap()
    };
    let contract_steps: Vec<i64> = stoa_api::db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .filter(|m| stoa_contract::migration::is_contract(&m.description))
        .map(|m| m.version)
        .collect();
    assert!(
        !contract_steps.is_empty(),
        "this release has a contract step"
    );

    let expand = run("expand");
    assert!(
        expand.status.success(),
        "{}",
        String::from_utf8_lossy(&expand.stderr)
    );
    let parsed: stoa_contract::migration::MigrationReport =
        serde_json::from_str(&std::fs::read_to_string(report.path()).unwrap()).unwrap();
    assert_eq!(parsed.pending_contract, contract_steps);
    assert!(parsed.applied.iter().all(|v| !contract_steps.contains(v)));

    // The release serves before its contract steps run.
    let app = TestApp::spawn(pool.clone()).await;
    let ready = app.admin_get("/readyz").await;
    assert_eq!(ready.status, reqwest::StatusCode::OK, "{}", ready.text);
    let detail = ready.body["checks"]["schema"]["detail"].as_str().unwrap();
    assert!(detail.contains("contract step(s) pending"), "{detail}");

    let all = run("all");
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    let parsed: stoa_contract::migration::MigrationReport =
        serde_json::from_str(&std::fs::read_to_string(report.path()).unwrap()).unwrap();
    assert_eq!(parsed.applied, contract_steps);
    assert!(parsed.pending_contract.is_empty());
}
