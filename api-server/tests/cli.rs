#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The `stoa-api` command line: check-config, migrate, keys generate, admin, jobs.
mod common;

use common::{Served, TestApp, stoa_api};
use sqlx::PgPool;

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
        .env("STOA_MFA_KEYS_DIR", keys.path())
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

/// Runs `stoa-api credentials ...` with `admin_url`; returns (exit code, report).
fn credentials(
    admin_url: &str,
    args: &[&str],
) -> (i32, stoa_contract::credential_rotation::CredentialReport) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = stoa_api()
        .arg("credentials")
        .args(args)
        .arg("--report-file")
        .arg(report.path())
        .env("STOA_DATABASE_URL", admin_url)
        .env("STOA_LOG", "warn")
        .output()
        .unwrap();
    let line = std::fs::read_to_string(report.path()).unwrap();
    (
        out.status.code().unwrap(),
        serde_json::from_str(&line).unwrap(),
    )
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn credential_steps_create_grant_expire_and_drop_the_roles(pool: PgPool) {
    let admin = url_of(&pool);
    let group = format!("stoa_t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let [role_a, _role_b] = stoa_contract::credential_rotation::login_roles(&group);
    let password = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        password.path(),
        stoa_contract::credential_rotation::generate_password(),
    )
    .unwrap();
    let password_path = password.path().to_str().unwrap();

    // Publish: roles exist, the login role is in the group, and it can use the tables.
    for _ in 0..2 {
        let (code, report) = credentials(
            &admin,
            &[
                "publish",
                "--group",
                &group,
                "--role",
                &role_a,
                "--password-file",
                password_path,
            ],
        );
        assert_eq!(code, 0, "{report:?}");
        assert!(report.ok, "idempotent: {report:?}");
    }
    let options = pool.connect_options().as_ref().clone();
    let as_a = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            options
                .clone()
                .username(&role_a)
                .application_name("api-7d9f"),
        )
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO users (username, email, password_hash) VALUES ('rot', 'rot@example.com', 'x')",
    )
    .execute(&as_a)
    .await
    .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&as_a)
        .await
        .unwrap();
    assert_eq!(n, 1);

    // Expire waits for the role's sessions and names the pods that hold them.
    let (code, report) = credentials(
        &admin,
        &["expire", "--role", &role_a, "--wait-seconds", "1"],
    );
    assert_eq!(
        code,
        stoa_contract::credential_rotation::EXIT_SESSIONS_REMAIN
    );
    assert_eq!(report.remaining, ["api-7d9f"]);
    as_a.close().await;
    let (code, report) = credentials(
        &admin,
        &["expire", "--role", &role_a, "--wait-seconds", "5"],
    );
    assert_eq!(code, 0, "{report:?}");
    let (has_password, can_login): (bool, bool) = sqlx::query_as(
        "SELECT rolpassword IS NOT NULL, rolcanlogin FROM pg_authid WHERE rolname = $1",
    )
    .bind(&role_a)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!has_password && !can_login);
    assert!(
        sqlx::postgres::PgPoolOptions::new()
            .connect_with(options.clone().username(&role_a))
            .await
            .is_err(),
        "an expired role cannot sign in, even where the network is trusted"
    );

    // Names that could inject SQL never reach the database.
    let (code, report) = credentials(&admin, &["drop", "--group", "x\"; DROP TABLE users; --"]);
    assert_eq!(code, 1);
    assert!(
        report.message.contains("not a valid role name"),
        "{report:?}"
    );

    let (code, report) = credentials(&admin, &["drop", "--group", &group]);
    assert_eq!(code, 0, "{report:?}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1")
        .bind(format!("{group}%"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// The served process writes one JSON access line per request, or one in
/// `STOA_ACCESS_LOG_EVERY`, and flushes its log queue when it stops.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn access_logs_are_json_lines_sampled_one_in_n(pool: PgPool) {
    let mut served = Served::start(
        &url_of(&pool),
        &[("STOA_ACCESS_LOG_EVERY", "4"), ("STOA_LOG", "info")],
    )
    .await;
    let api = served.api.clone();
    let http = reqwest::Client::new();
    for n in 0..8 {
        let res = http
            .get(format!("http://{api}/api/articles?n={n}"))
            .header("x-request-id", format!("req-{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // SIGTERM: graceful shutdown, then the log queue is flushed.
    served.terminate();
    let mut access = Vec::new();
    while let Some(line) = served.lines.next_line().await.unwrap() {
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["target"] == "stoa::access" {
            access.push(event);
        }
    }
    assert!(served.child.wait().await.unwrap().success());
    let ids: Vec<&str> = access
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["req-0", "req-4"], "{access:?}");
    assert_eq!(access[0]["path"], "/api/articles");
    assert_eq!(access[0]["status"], 200);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn search_language_prints_sets_and_refuses_unknown_languages(pool: PgPool) {
    let url = url_of(&pool);
    let run = |args: &[&str]| {
        stoa_api()
            .arg("search-language")
            .args(args)
            .env("STOA_DATABASE_URL", &url)
            .env("STOA_LOG", "warn")
            .output()
            .unwrap()
    };
    let current = run(&[]);
    assert!(current.status.success());
    assert_eq!(String::from_utf8_lossy(&current.stdout).trim(), "english");
    let set = run(&["german"]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert!(String::from_utf8_lossy(&set.stdout).contains("0 articles re-indexed"));
    let unknown = run(&["klingon"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("unknown text search configuration \"klingon\"")
    );
    assert_eq!(String::from_utf8_lossy(&run(&[]).stdout).trim(), "german");
}

/// The first admin comes from the command line (nothing in the API can make one): the
/// role reaches the user's next token; withdrawing it ends their sessions at once.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_first_admin_is_made_on_the_command_line_and_never_through_the_api(pool: PgPool) {
    use common::login;
    use reqwest::StatusCode;
    use serde_json::json;

    let url = url_of(&pool);
    let admin = |args: &[&str]| {
        stoa_api()
            .arg("admin")
            .args(args)
            .env("STOA_DATABASE_URL", &url)
            .env("STOA_LOG", "warn")
            .output()
            .unwrap()
    };
    let app = TestApp::spawn(pool.clone()).await;
    let token = app.register("alice").await;
    assert_eq!(
        app.get("/api/admin/users", Some(&token)).await.status,
        StatusCode::FORBIDDEN
    );
    // A client that asks for the role gets nothing (the field is not part of the API).
    app.put(
        "/api/user",
        Some(&token),
        json!({"user": {"bio": "hi", "role": "admin"}}),
    )
    .await;
    let (token, _) = login(&app, "alice").await;
    assert_eq!(
        app.get("/api/admin/users", Some(&token)).await.status,
        StatusCode::FORBIDDEN
    );

    let granted = admin(&["grant", "alice"]);
    let stdout = String::from_utf8_lossy(&granted.stdout);
    assert!(granted.status.success(), "{stdout}");
    assert!(stdout.contains("alice is now admin"), "{stdout}");
    // The token issued before the grant does not carry the role; the next one does.
    assert_eq!(
        app.get("/api/admin/users", Some(&token)).await.status,
        StatusCode::FORBIDDEN
    );
    let (token, _) = login(&app, "alice").await;
    let users = app.get("/api/admin/users", Some(&token)).await;
    assert_eq!(users.status, StatusCode::OK, "{}", users.text);
    assert_eq!(users.body["users"][0]["role"], "admin");
    assert!(String::from_utf8_lossy(&admin(&["grant", "alice"]).stdout).contains("already admin"));

    // Withdrawn: the admin's sessions end, their token is refused everywhere at once.
    let revoked = admin(&["revoke", "alice"]);
    assert!(revoked.status.success());
    assert!(String::from_utf8_lossy(&revoked.stdout).contains("session(s) ended"));
    common::eventually("the demoted admin's token is refused", || async {
        app.get("/api/admin/users", Some(&token)).await.status == StatusCode::UNAUTHORIZED
    })
    .await;

    let unknown = admin(&["grant", "nobody"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no user named \"nobody\""));
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn dead_jobs_are_listed_and_retried_from_the_command_line(pool: PgPool) {
    let url = url_of(&pool);
    let jobs = |args: &[&str]| {
        stoa_api()
            .arg("jobs")
            .args(args)
            .env("STOA_DATABASE_URL", &url)
            .env("STOA_LOG", "warn")
            .output()
            .unwrap()
    };
    let dead: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, state, attempts, max_attempts, last_error, finished_at)
         VALUES ('export_account', 'dead', 5, 5, 'database: connection refused', now())
         RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO jobs (kind) VALUES ('purge_expired')")
        .execute(&pool)
        .await
        .unwrap();

    let listed = jobs(&["list", "--dead"]);
    let out = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.status.success(), "{out}");
    assert!(
        out.contains("# export_account: 0 queued, 0 delayed, 0 running, 1 dead"),
        "{out}"
    );
    let rows: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "only the dead job: {out}");
    assert_eq!(rows[0]["id"], dead);
    assert_eq!(rows[0]["lastError"], "database: connection refused");

    let retried = jobs(&["retry", &dead.to_string()]);
    assert!(retried.status.success());
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM jobs WHERE id = $1")
            .bind(dead)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("queued", 0));
    let again = jobs(&["retry", &dead.to_string()]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8(again.stderr)
            .unwrap()
            .contains("is not dead")
    );
}

/// Runs `serve --dev` on `url` until it logs that it is starting (its migrations done),
/// then stops it; fails the test, with the server's stderr, if it does not start.
async fn serve_dev_starts(url: &str) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::from(stoa_api())
        .args(["serve", "--dev"])
        .env("STOA_DATABASE_URL", url)
        .env("STOA_LISTEN_ADDR", "127.0.0.1:0")
        .env("STOA_ADMIN_ADDR", "127.0.0.1:0")
        .env("STOA_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let started = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(r#""message":"starting""#) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let _ = child.start_kill();
    let output = child.wait_with_output().await.unwrap();
    assert!(
        started,
        "serve --dev did not start: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `serve --dev` migrates like `stoa-api migrate`: a development database that is ahead
/// by an expand step (another branch's migration) is tolerated, not refused with
/// "previously applied but is missing".
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn serve_dev_tolerates_a_database_ahead_by_an_expand_step(pool: PgPool) {
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000001, 'a later branch adds a column', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    serve_dev_starts(&url_of(&pool)).await;
}

#[test]
fn output_piped_into_a_reader_that_stops_early_is_not_a_crash() {
    use std::process::Stdio;
    // The reader is gone before the command writes (it takes a few milliseconds to start),
    // as with `stoa-api openapi | head` once head has its lines.
    let mut child = stoa_api()
        .arg("openapi")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `make run` on a fresh machine: `serve --dev` creates its database (a name that needs
/// quoting here) and migrates it before it starts.
#[sqlx::test(migrations = false)]
async fn serve_dev_creates_and_migrates_a_missing_database(pool: PgPool) {
    let options = pool.connect_options();
    let name = format!("stoa-dev-{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\""
    )))
    .execute(&pool)
    .await
    .unwrap();
    let url = format!(
        "postgres://{}@{}:{}/{name}",
        options.get_username(),
        options.get_host(),
        options.get_port()
    );
    serve_dev_starts(&url).await;
    let created = sqlx::PgPool::connect(&url).await.unwrap();
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&created)
        .await
        .unwrap();
    created.close().await;
    assert!(migrations > 10, "{migrations} migrations applied");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{name}\" WITH (FORCE)"
    )))
    .execute(&pool)
    .await
    .unwrap();
}
