#![allow(dead_code)] // each test crate uses part of it
//! Shared by the cross-component tests: a real stoa-api server on port 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sqlx::PgPool;
use stoa_api::app::App;
use stoa_api::config::{Config, Env};

/// A running stoa-api: its public and admin base URLs, and a sender that stops it
/// (dropping the sender stops it too).
pub struct Served {
    pub base: String,
    pub admin: String,
    pub stop: tokio::sync::oneshot::Sender<()>,
}

/// A running stoa-api on `pool`, with its key set read from `keys_dir` and a fresh MFA
/// key set of its own (in `keys_dir/.mfa`).
pub async fn serve(pool: PgPool, keys_dir: &Path) -> Served {
    let mfa_dir = keys_dir.join(".mfa");
    stoa_contract::mfa_keys::generate_mfa_keyset()
        .write_dir(&mfa_dir)
        .unwrap();
    serve_with_mfa_keys(pool, keys_dir, &mfa_dir).await
}

/// A running stoa-api on `pool`, with its signing keys from `keys_dir` and its MFA key set
/// from `mfa_keys_dir`.
pub async fn serve_with_mfa_keys(pool: PgPool, keys_dir: &Path, mfa_keys_dir: &Path) -> Served {
    let env: HashMap<&str, String> = HashMap::from([
        ("STOA_LISTEN_ADDR", "127.0.0.1:0".into()),
        ("STOA_ADMIN_ADDR", "127.0.0.1:0".into()),
        // The pool is handed over directly; the URL only has to be valid.
        (
            "STOA_DATABASE_URL",
            "postgres://unused@127.0.0.1/unused".into(),
        ),
        ("STOA_JWT_KEYS_DIR", keys_dir.to_str().unwrap().into()),
        ("STOA_MFA_KEYS_DIR", mfa_keys_dir.to_str().unwrap().into()),
        ("STOA_ARGON2_MEMORY_KIB", "1024".into()),
        ("STOA_ARGON2_ITERATIONS", "1".into()),
        ("STOA_LOG", "warn".into()),
    ]);
    let config = Config::from_env(&Env::new(move |k| env.get(k).cloned()), false).unwrap();
    let app = App::build(config, Some(pool)).await.unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    let admin = format!("http://{}", app.admin_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    Served { base, admin, stop }
}

/// The stoa-api binary of this workspace (built by `cargo test --workspace`, which the
/// README's test command runs).
pub fn stoa_api_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("stoa-api");
    assert!(
        binary.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (make test)",
        binary.display()
    );
    binary
}

/// A URL for the database behind `pool` (trust authentication: no password).
pub fn url_of(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap()
    )
}
