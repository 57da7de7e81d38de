//! A real PgBouncer (Debian's `pgbouncer`) in transaction mode, started by a test on a free
//! port in front of the machine's PostgreSQL, stopped on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::tls::{as_server_user, owned_by_server_user};

/// How clients prove who they are to the pooler.
pub enum Auth {
    /// No check; the user must be listed (PgBouncer's `trust`).
    Trust,
    /// SCRAM against the role's secret in PostgreSQL, looked up with `auth_query` as
    /// `postgres`: what CloudNativePG's Pooler and most setups do, so that a role created
    /// or rotated in PostgreSQL logs in through the pooler with no change to its files.
    AuthQuery,
}

const ADMIN_PASSWORD: &str = "bouncer-admin";

pub struct PgBouncer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl PgBouncer {
    /// PgBouncer in transaction mode with at most `server_connections` server
    /// connections per database and user, fewer than the clients it serves, so that
    /// clients really do share servers from one transaction to the next. `None` (SKIP)
    /// when pgbouncer is not installed, unless STOA_REQUIRE_TOOLS=1 (CI).
    pub fn start(auth: Auth, server_connections: u32) -> Option<PgBouncer> {
        let bin = Path::new(PGBOUNCER);
        if !bin.is_file() {
            assert!(
                std::env::var("STOA_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "pgbouncer is required (STOA_REQUIRE_TOOLS=1): apt-get install pgbouncer"
            );
            eprintln!(
                "SKIP: pgbouncer is not installed (scripts/ensure-services.sh --with-test-tools installs it)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (auth_type, auth_query) = match auth {
            Auth::Trust => ("trust", ""),
            Auth::AuthQuery => (
                "scram-sha-256",
                "auth_user = postgres\nauth_query = SELECT usename, passwd FROM pg_shadow WHERE usename = $1",
            ),
        };
        // The admin console's user (and `auth_query`'s); PostgreSQL itself trusts it.
        std::fs::write(
            dir.path().join("userlist.txt"),
            format!("\"postgres\" \"{ADMIN_PASSWORD}\"\n"),
        )
        .unwrap();
        // A free port can be taken again before PgBouncer binds it (tests run in
        // parallel): then it says so in its log and exits, and another port is tried.
        for _ in 0..5 {
            let port = super::free_port();
            let config = format!(
                "[databases]\n\
                 * = host=127.0.0.1 port=5432\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 pool_mode = transaction\n\
                 auth_type = {auth_type}\n\
                 auth_file = {dir}/userlist.txt\n\
                 {auth_query}\n\
                 admin_users = postgres\n\
                 max_client_conn = 1000\n\
                 default_pool_size = {server_connections}\n\
                 logfile = {dir}/pgbouncer-{port}.log\n",
                dir = dir.path().display(),
            );
            std::fs::write(dir.path().join("pgbouncer.ini"), config).unwrap();
            // PgBouncer refuses to run as root.
            owned_by_server_user(dir.path());
            let mut child = as_server_user(bin)
                .arg(dir.path().join("pgbouncer.ini"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let log = dir.path().join(format!("pgbouncer-{port}.log"));
            if came_up(&mut child, &log) {
                return Some(PgBouncer { port, dir, child });
            }
            stop(&mut child);
        }
        panic!("PgBouncer did not start in 5 attempts")
    }

    /// A URL through the pooler to `database`, as `user` (no password) or, with `None`,
    /// naming no user (the server then logs in with its direct URL's credentials).
    pub fn url(&self, user: Option<&str>, database: &str) -> String {
        match user {
            Some(user) => format!("postgres://{user}@127.0.0.1:{}/{database}", self.port),
            None => format!("postgres://127.0.0.1:{}/{database}", self.port),
        }
    }

    /// A `SHOW` of PgBouncer's admin console, as psql prints it unaligned (`|` between
    /// fields, a header line first).
    pub fn show(&self, what: &str) -> String {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "pgbouncer", "-A", "-c"])
            .env("PGPASSWORD", ADMIN_PASSWORD)
            .arg(format!("SHOW {what}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The values of `column` in a [`PgBouncer::show`] output, one per row.
    pub fn column(&self, shown: &str, column: &str) -> Vec<String> {
        self.rows(shown)
            .into_iter()
            .filter_map(|row| row.get(column).cloned())
            .collect()
    }

    fn rows(&self, shown: &str) -> Vec<std::collections::HashMap<String, String>> {
        let mut lines = shown.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('|').collect();
        lines
            // psql's footer: "(N rows)".
            .filter(|line| line.contains('|'))
            .map(|line| {
                header
                    .iter()
                    .map(|h| (*h).to_owned())
                    .zip(line.split('|').map(str::to_owned))
                    .collect()
            })
            .collect()
    }

    /// Transactions PgBouncer has served for `database` (`SHOW STATS`).
    pub fn transactions(&self, database: &str) -> u64 {
        self.rows(&self.show("STATS"))
            .into_iter()
            .find(|row| row.get("database").is_some_and(|d| d == database))
            .map_or(0, |row| row["total_xact_count"].parse().unwrap())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("pgbouncer-{}.log", self.port)))
            .unwrap_or_default()
    }
}

/// Waits up to 10 s for PgBouncer's own word that it listens ("process up", after
/// "listening on"); `false` if it exits or cannot listen.
fn came_up(child: &mut Child, log: &Path) -> bool {
    for _ in 0..200 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("cannot listen") || child.try_wait().unwrap().is_some() {
            return false;
        }
        if text.contains("process up") {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// Stops PgBouncer; `kill` reaches it through runuser.
fn stop(child: &mut Child) {
    let pid = child.id().to_string();
    let _ = Command::new("pkill").args(["-INT", "-P", &pid]).status();
    let _ = Command::new("kill").args(["-INT", &pid]).status();
    let _ = child.wait();
}

/// Where Debian's package puts it.
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

impl Drop for PgBouncer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
