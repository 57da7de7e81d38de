//! Test helper: the real server on a random port over a fresh database (from
//! `#[sqlx::test]`), driven over HTTP.
#![allow(dead_code, clippy::unwrap_used)]

pub mod oidc;
pub mod pgbouncer;
pub mod redis_ha;
pub mod replica;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use stoa_api::app::App;
use stoa_api::config::{Config, Env};

pub struct TestApp {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub client: reqwest::Client,
    pub pool: PgPool,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Response {
    pub async fn read(res: reqwest::Response) -> Response {
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Response {
            status,
            headers,
            body,
            text,
        }
    }
}

/// The `stoa-api` binary with none of the caller's `STOA_` settings: only what each test
/// sets.
pub fn stoa_api() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stoa-api"));
    for (key, _) in std::env::vars() {
        if key.starts_with("STOA_") {
            command.env_remove(key);
        }
    }
    command
}

/// The server's pool type over a test database's pool (the same connections).
pub fn db(pool: &PgPool) -> stoa_api::db::Pool {
    stoa_api::db::Pool::new(pool.clone())
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

/// A TCP port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 10 s for a server of the test's own to accept connections on `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let ready = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(ready, "{what} did not start on port {port}");
}

/// Test settings: random ports, cheap argon2 parameters (the real ones are the default).
pub fn test_env(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("STOA_LISTEN_ADDR", "127.0.0.1:0"),
        ("STOA_ADMIN_ADDR", "127.0.0.1:0"),
        ("STOA_ARGON2_MEMORY_KIB", "1024"),
        ("STOA_ARGON2_ITERATIONS", "1"),
        ("STOA_LOG", "warn"),
        // Tests register many users from one address; rate-limit tests lower these.
        ("STOA_RATE_LIMIT_AUTH", "100000/1m"),
        ("STOA_RATE_LIMIT_LOGIN_PER_ACCOUNT", "100000/1m"),
        ("STOA_RATE_LIMIT_LOGIN_ACCOUNT_CEILING", "100000/1m"),
        ("STOA_RATE_LIMIT_PER_IP", "100000/1m"),
        ("STOA_RATE_LIMIT_PER_USER", "100000/1m"),
        ("STOA_RATE_LIMIT_MFA", "100000/1m"),
        ("STOA_RELOAD_INTERVAL", "100ms"),
        // Job tests start workers of their own.
        ("STOA_WORKER_IN_PROCESS", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

impl TestApp {
    pub async fn spawn(pool: PgPool) -> TestApp {
        TestApp::spawn_with(pool, &[]).await
    }

    pub async fn spawn_with(pool: PgPool, extra: &[(&str, &str)]) -> TestApp {
        let env = test_env(extra);
        let config =
            Config::from_env(&Env::new(move |k| env.get(k).cloned()), true).expect("test config");
        let app = App::build(config, Some(pool.clone()))
            .await
            .expect("app builds");
        let addr = app.local_addr().unwrap();
        let admin = app.admin_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            admin,
            client: reqwest::Client::new(),
            pool,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends the shutdown signal (as SIGTERM would).
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.header("Authorization", format!("Token {token}"));
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        Response::read(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.request(Method::GET, path, token, None).await
    }
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        self.request(Method::POST, path, token, Some(body)).await
    }
    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        self.request(Method::PUT, path, token, Some(body)).await
    }
    pub async fn delete(&self, path: &str, token: Option<&str>) -> Response {
        self.request(Method::DELETE, path, token, None).await
    }

    /// Registers `name` (email `name@example.com`, password `password-<name>`) and returns
    /// the access token.
    pub async fn register(&self, name: &str) -> String {
        let res = self
            .post(
                "/api/users",
                None,
                json!({"user": {"username": name, "email": format!("{name}@example.com"), "password": format!("password-{name}")}}),
            )
            .await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
        res.body["user"]["token"].as_str().unwrap().to_owned()
    }

    /// Creates an article and returns its slug.
    pub async fn article(&self, token: &str, title: &str, tags: &[&str]) -> String {
        let res = self
            .post(
                "/api/articles",
                Some(token),
                json!({"article": {"title": title, "description": "about it", "body": "the body", "tagList": tags}}),
            )
            .await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
        res.body["article"]["slug"].as_str().unwrap().to_owned()
    }

    /// A GET on the admin port (metrics, readiness detail).
    pub async fn admin_get(&self, path: &str) -> Response {
        let res = self
            .client
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .unwrap();
        Response::read(res).await
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.signal_shutdown();
    }
}

/// The field errors of a 422 body.
pub fn errors(res: &Response, field: &str) -> Vec<String> {
    res.body["errors"][field]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A private `redis-server` on a free port, which a test can stop and restart.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    /// With extra `redis-server` arguments (e.g. a maxmemory policy).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            port,
            child: None,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// How many times Redis has run `command` (`INFO commandstats`; commands a script
    /// runs count too).
    pub async fn calls(&self, command: &str) -> u64 {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// (Re)starts the server with empty data, as a restart without persistence would.
    pub async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` every 50 ms for up to 10 s.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(std::time::Duration::from_secs(10), what, check).await;
}

/// [`eventually`] with a deadline of its own, for what depends on another server starting
/// (a streaming replica catching up takes longer on a loaded machine).
pub async fn eventually_within<F, Fut>(deadline: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..deadline.as_millis().div_ceil(50) {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Signs `name` in (as registered by [`TestApp::register`]): (access token, refresh token).
pub async fn login(app: &TestApp, name: &str) -> (String, String) {
    let res = app
        .post("/api/users/login", None, json!({"user": {"email": format!("{name}@example.com"), "password": format!("password-{name}")}}))
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    (
        res.body["user"]["token"].as_str().unwrap().to_owned(),
        res.body["user"]["refreshToken"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

/// Seconds since the epoch, as an authenticator app reads its clock.
pub fn unix_now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap()
}

/// Turns TOTP on for the account behind `token` (`password`: its current password; none
/// for an account without one, just signed in with a provider); the authenticator, to
/// make codes with. The confirming code is the previous time step's, so the current
/// one stays unused for the test's sign-in.
pub async fn enable_totp(app: &TestApp, token: &str, password: Option<&str>) -> totp_rs::TOTP {
    let body = password.map_or_else(|| json!({}), |p| json!({"currentPassword": p}));
    let enrol = app.post("/api/user/mfa/totp", Some(token), body).await;
    assert_eq!(enrol.status, StatusCode::OK, "{}", enrol.text);
    let totp = totp_rs::TOTP::from_url(enrol.body["totp"]["uri"].as_str().unwrap()).unwrap();
    let confirm = app
        .post(
            "/api/user/mfa/totp/confirm",
            Some(token),
            json!({"code": totp.generate(unix_now() - 30)}),
        )
        .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
    totp
}

/// A key set for replicas that must accept each other's tokens.
pub fn shared_keys() -> tempfile::TempDir {
    let keys = tempfile::tempdir().unwrap();
    stoa_api::keys::generate_keyset()
        .write_dir(keys.path())
        .unwrap();
    keys
}

pub const FEED_LIVE: &str = r#"stoa_dependency_up{dependency="revocation_feed"} 1"#;

pub async fn wait_for_live_feeds(apps: [&TestApp; 2]) {
    for app in apps {
        eventually("the revocation feed is live", || async {
            app.metrics().await.contains(FEED_LIVE)
        })
        .await;
    }
}

/// Two replicas sharing one database, one Redis and one key set, their revocation feeds
/// live.
pub struct Replicas {
    pub redis: RedisServer,
    pub keys: tempfile::TempDir,
    pub a: TestApp,
    pub b: TestApp,
}

impl Replicas {
    pub async fn start(pool: PgPool) -> Replicas {
        let redis = RedisServer::start().await;
        let keys = shared_keys();
        let (redis_url, keys_dir) = (redis.url(), keys.path().to_str().unwrap().to_owned());
        let env = [
            ("STOA_REDIS_URL", redis_url.as_str()),
            ("STOA_JWT_KEYS_DIR", keys_dir.as_str()),
        ];
        let a = TestApp::spawn_with(pool.clone(), &env).await;
        let b = TestApp::spawn_with(pool, &env).await;
        wait_for_live_feeds([&a, &b]).await;
        Replicas { redis, keys, a, b }
    }
}

/// `stoa-api serve` as a process of its own (the binary's runtime and allocator, which the
/// in-process [`TestApp`] does not have), on a test database, with generated key sets.
pub struct Served {
    pub child: tokio::process::Child,
    /// The public port's address, from the "starting" log line.
    pub api: String,
    /// The rest of the server's log, one JSON line each.
    pub lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    _keys: [tempfile::TempDir; 2],
}

impl Served {
    /// Starts it with [`test_env`]'s settings and `extra`, and waits until it serves (its
    /// "starting" line: `extra` must keep `STOA_LOG` at `info` or below).
    pub async fn start(database_url: &str, extra: &[(&str, &str)]) -> Served {
        use tokio::io::AsyncBufReadExt;
        let keys = tempfile::tempdir().unwrap();
        stoa_contract::keys::generate_keyset()
            .write_dir(keys.path())
            .unwrap();
        let mfa_keys = tempfile::tempdir().unwrap();
        stoa_contract::mfa_keys::generate_mfa_keyset()
            .write_dir(mfa_keys.path())
            .unwrap();
        let mut env = test_env(&[("STOA_LOG", "info"), ("STOA_SHUTDOWN_DELAY", "0s")]);
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let mut child = tokio::process::Command::from(stoa_api())
            .arg("serve")
            .envs(env)
            .env("STOA_DATABASE_URL", database_url)
            .env("STOA_JWT_KEYS_DIR", keys.path())
            .env("STOA_MFA_KEYS_DIR", mfa_keys.path())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let starting = async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("the server started");
                let event: Value = serde_json::from_str(&line).unwrap();
                if event["message"] == "starting" {
                    return event["api"].as_str().unwrap().to_owned();
                }
            }
        };
        let api = tokio::time::timeout(std::time::Duration::from_secs(30), starting)
            .await
            .expect("the server logged \"starting\" within 30 s");
        Served {
            child,
            api,
            lines,
            _keys: [keys, mfa_keys],
        }
    }

    /// Asks it to stop as Kubernetes does (SIGTERM).
    pub fn terminate(&self) {
        let pid = self.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Its resident memory now (`VmRSS`), in KiB.
    pub fn resident_kib(&self) -> u64 {
        self.memory_kib("VmRSS")
    }

    /// Its peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.memory_kib("VmHWM")
    }

    fn memory_kib(&self, field: &str) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
    }
}
