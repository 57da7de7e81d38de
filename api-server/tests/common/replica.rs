//! A PostgreSQL primary and a hot standby streaming from it (`pg_basebackup -R`), each a
//! server of the test's own on a free port, stopped on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::tls::{as_server_user, initdb, owned_by_server_user};

pub struct ReplicatedPostgres {
    pub primary: u16,
    pub standby: u16,
    servers: Vec<Child>,
    _dir: tempfile::TempDir,
}

fn start_server(bin: &Path, data: &Path, port: u16) -> Child {
    as_server_user(&bin.join("postgres"))
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(data)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

impl ReplicatedPostgres {
    pub fn start(bin: &Path) -> ReplicatedPostgres {
        let dir = tempfile::tempdir().unwrap();
        owned_by_server_user(dir.path());
        let primary_data: PathBuf = dir.path().join("primary");
        initdb(bin, &primary_data);
        std::fs::write(
            primary_data.join("pg_hba.conf"),
            "local all all trust\n\
             host all all 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        owned_by_server_user(&primary_data);
        let primary = super::free_port();
        let mut servers = vec![start_server(bin, &primary_data, primary)];
        super::wait_for_port(primary, "the primary PostgreSQL");

        let standby_data = dir.path().join("standby");
        let status = as_server_user(&bin.join("pg_basebackup"))
            .args(["-h", "127.0.0.1", "-p", &primary.to_string()])
            .args(["-U", "postgres", "-R", "-X", "stream", "--no-sync", "-D"])
            .arg(&standby_data)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_basebackup failed");
        let standby = super::free_port();
        servers.push(start_server(bin, &standby_data, standby));
        super::wait_for_port(standby, "the standby PostgreSQL");
        ReplicatedPostgres {
            primary,
            standby,
            servers,
            _dir: dir,
        }
    }

    /// A URL for `database` on the primary, as `user`.
    pub fn primary_url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.primary)
    }

    /// A URL for `database` on the standby that names no user.
    pub fn standby_url(&self, database: &str) -> String {
        format!("postgres://127.0.0.1:{}/{database}", self.standby)
    }

    /// Stops the standby (fast shutdown).
    pub fn stop_standby(&mut self) {
        if self.servers.len() > 1 {
            stop(&mut self.servers.remove(1));
        }
    }
}

fn stop(server: &mut Child) {
    // SIGINT: PostgreSQL's fast shutdown. `kill` reaches it through runuser.
    let _ = Command::new("pkill")
        .args(["-INT", "-P", &server.id().to_string()])
        .status();
    let _ = Command::new("kill")
        .args(["-INT", &server.id().to_string()])
        .status();
    let _ = server.wait();
}

impl Drop for ReplicatedPostgres {
    fn drop(&mut self) {
        for server in self.servers.iter_mut().rev() {
            stop(server);
        }
    }
}
