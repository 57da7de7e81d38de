//! TLS servers for tests: a throw-away CA, and PostgreSQL and Redis started with a
//! certificate it signed, each on a free port, stopped on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA made for one test, and a server certificate it signed for `localhost`.
pub struct ThrowawayCa {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ThrowawayCa {
    pub fn new() -> ThrowawayCa {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Stoa throw-away test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = params.signed_by(&server_key, &issuer).unwrap();
        let write = |name: &str, contents: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        };
        ThrowawayCa {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("server.pem", server_cert.pem()),
            key: write("server.key", server_key.serialize_pem()),
            dir,
        }
    }
}

/// Hands `path` (recursively) to the PostgreSQL server's user when the tests run as root,
/// which PostgreSQL refuses to run as.
pub fn owned_by_server_user(path: &Path) {
    if is_root() {
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// PostgreSQL's own programs refuse to run as root: there, they run as `postgres`.
pub fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A new cluster in `pgdata`: superuser `postgres`, trust authentication.
pub fn initdb(bin: &Path, pgdata: &Path) {
    let status = as_server_user(&bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(pgdata)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "initdb failed");
}

/// The directory of `initdb` and `postgres` (Debian puts them outside PATH).
pub fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop()
}

/// A PostgreSQL of a test's own: a fresh cluster (trust authentication, no fsync) on a
/// free port, stopped on drop, restartable.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    pgdata: PathBuf,
    settings: Vec<String>,
    server: Option<Child>,
    _data: tempfile::TempDir,
}

impl Postgres {
    /// Starts a new cluster with `settings` (`name=value`, as `-c` options);
    /// `configure` may write into its data directory first (as the server's user).
    pub fn start(bin: &Path, settings: &[&str], configure: impl FnOnce(&Path)) -> Postgres {
        let data = tempfile::tempdir().unwrap();
        owned_by_server_user(data.path());
        let pgdata = data.path().join("pgdata");
        initdb(bin, &pgdata);
        configure(&pgdata);
        owned_by_server_user(&pgdata);
        let mut server = Postgres {
            port: super::free_port(),
            bin: bin.to_owned(),
            pgdata,
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
            server: None,
            _data: data,
        };
        server.spawn();
        server
    }

    /// Starts the server on its cluster and port (again, after [`Postgres::stop`]).
    pub fn spawn(&mut self) {
        let mut command = as_server_user(&self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.pgdata)
            .args(["-c", "fsync=off"]);
        for setting in &self.settings {
            command.args(["-c", setting]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.server = Some(child);
        super::wait_for_port(self.port, "the test's PostgreSQL");
    }

    /// Fast shutdown (SIGINT): every session is ended with 57P01, as on a restart.
    /// `kill` reaches the server through runuser.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let pid = server.id().to_string();
            let _ = Command::new("pkill").args(["-INT", "-P", &pid]).status();
            let _ = Command::new("kill").args(["-INT", &pid]).status();
            let _ = server.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL that accepts only TLS connections (`hostssl` in pg_hba.conf; plain TCP
/// is rejected), trusting every TLS client.
pub struct TlsPostgres {
    pub port: u16,
    _server: Postgres,
}

impl TlsPostgres {
    pub fn start(bin: &Path, ca: &ThrowawayCa) -> TlsPostgres {
        let server = Postgres::start(
            bin,
            &[
                "listen_addresses=localhost",
                "ssl=on",
                "ssl_cert_file=server.pem",
                "ssl_key_file=server.key",
            ],
            |pgdata| {
                std::fs::write(
                    pgdata.join("pg_hba.conf"),
                    "local all all trust\n\
                     hostssl all all 127.0.0.1/32 trust\n\
                     hostssl all all ::1/128 trust\n\
                     host all all 0.0.0.0/0 reject\n\
                     host all all ::/0 reject\n",
                )
                .unwrap();
                for (from, to) in [(&ca.cert, "server.pem"), (&ca.key, "server.key")] {
                    std::fs::copy(from, pgdata.join(to)).unwrap();
                }
                let key = pgdata.join("server.key");
                let mut permissions = std::fs::metadata(&key).unwrap().permissions();
                std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
                std::fs::set_permissions(&key, permissions).unwrap();
            },
        );
        TlsPostgres {
            port: server.port,
            _server: server,
        }
    }
}

/// A Redis that speaks only TLS, with an ACL user `stoa` (password `stoa-secret`) and
/// the default user off.
pub struct TlsRedis {
    pub port: u16,
    _dir: tempfile::TempDir,
    server: Child,
}

pub const REDIS_USER: &str = "stoa";
pub const REDIS_PASSWORD: &str = "stoa-secret";

impl TlsRedis {
    pub fn start(ca: &ThrowawayCa) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let config = dir.path().join("redis.conf");
        std::fs::write(
            &config,
            format!(
                "port 0\ntls-port {port}\nbind 127.0.0.1 ::1\nsave \"\"\nappendonly no\n\
                 tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                 tls-auth-clients no\n\
                 user default off\n\
                 user {REDIS_USER} on >{REDIS_PASSWORD} ~* &* +@all\n",
                cert = ca.cert.display(),
                key = ca.key.display(),
                ca = ca.ca.display(),
            ),
        )
        .unwrap();
        let server = Command::new("redis-server")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        super::wait_for_port(port, "the TLS Redis");
        TlsRedis {
            port,
            _dir: dir,
            server,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
